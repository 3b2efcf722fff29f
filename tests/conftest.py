"""Test setup: the `gpu` marker skips without CUDA; kernels compile for sm_90a on CPU; a run that
leaves new files in the repository root fails (tests write to tmp_path or a temporary directory)."""
import os
import sys

import pytest

os.environ.setdefault("CUTE_DSL_ARCH", "sm_90a")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# what pytest and Python themselves keep there (gitignored)
ALLOWED_NEW = {".pytest_cache", "__pycache__"}


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_sessionstart(session):
    session.config.stash[_root_key] = set(os.listdir(REPO_ROOT))


def pytest_sessionfinish(session, exitstatus):
    before = session.config.stash.get(_root_key, None)
    if before is None or hasattr(session.config, "workerinput"):  # xdist workers: the controller checks
        return
    new = sorted(set(os.listdir(REPO_ROOT)) - before - ALLOWED_NEW)
    if new:
        print(f"\nthe tests left new files in the repository root: {new}", file=sys.stderr)
        if session.exitstatus == 0:
            session.exitstatus = 1


_root_key = pytest.StashKey[set]()


@pytest.fixture
def root(tmp_path, monkeypatch):
    """An empty tuned-configs directory for the test (CUTE_KERNELS_TUNED_CONFIGS), the lookup's caches
    cleared before and after; yields its path as a str."""
    from cute_kernels import config_lookup

    monkeypatch.setenv("CUTE_KERNELS_TUNED_CONFIGS", str(tmp_path))
    config_lookup.clear_cache()
    yield str(tmp_path)
    config_lookup.clear_cache()
