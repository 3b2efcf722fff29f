"""Run-time config lookup: exact, nearest M bucket, default; bad YAML falls back with a named warning."""
import logging

import pytest

from cute_kernels import config_lookup as cl
from cute_kernels.config import GemmConfig, default_config
from cute_kernels.tuned_store import ShapeKey, file_path, make_record, merge_write

TUNED = GemmConfig(tile_n=192, cluster_m=1, cluster_n=1, swizzle=4, raster="m", epi_stages=4)




def _write(root, kernel="fc2", sk=ShapeKey("bfloat16", 8192, 4096, 4096), cfg=TUNED):
    rec = make_record(sk, cfg, time_ms=1.0, default_time_ms=1.1, device="H100", dsl_version="4.8.1", date="2026-11-24", trials=24)
    merge_write(file_path("sm90", kernel, root), {sk.key(): rec})


def _look(m, n=4096, k=4096, **kw):
    return cl.lookup_config("fc2", arch="sm90", dtype="torch.bfloat16", m=m, n=n, k=k, **kw)


def test_exact_nearest_and_default(root):
    _write(root)
    assert _look(8192) == TUNED
    assert _look(6000) == TUNED  # same power-of-two bucket (4097..8192)
    assert _look(12000) == TUNED  # adjacent bucket
    assert _look(40000) == default_config(40000, 4096, 4096)  # two buckets away
    assert _look(8192, n=4104) == default_config(8192, 4104, 4096)  # N must match
    assert _look(8192, grouped=True, num_experts=8) == default_config(8192, 4096, 4096, grouped=True)


def test_source_is_reported(root):
    _write(root)
    assert cl.resolve("fc2", arch="sm90", dtype="bfloat16", m=8192, n=4096, k=4096)[1] == "tuned"
    assert cl.resolve("fc2", arch="sm90", dtype="bfloat16", m=5000, n=4096, k=4096)[1] == "tuned-nearest m=8192"
    assert cl.resolve("fc2", arch="sm90", dtype="float16", m=8192, n=4096, k=4096)[1] == "default"


def test_lookup_is_cached(root):
    _write(root)
    _look(8192)
    hits = cl._cached.cache_info().hits
    _look(8192)
    assert cl._cached.cache_info().hits == hits + 1


@pytest.mark.parametrize("text,needle", [
    ("entries: {bfloat16/dense/m8192_n4096_k4096: {config: {tile_n: 100}, shape: {m: 8192, n: 4096, k: 4096}, dtype: bfloat16}}", "config cannot run"),
    ("entries: {bfloat16/dense/m8192_n4096_k4096: {config: {tile_q: 1}, shape: {m: 8192, n: 4096, k: 4096}, dtype: bfloat16}}", "unknown GemmConfig fields"),
    ("entries: {bfloat16/dense/m1_n4096_k4096: {config: {}, shape: {m: 8192, n: 4096, k: 4096}, dtype: bfloat16}}", "key does not match"),
    ("entries: {bfloat16/dense/m8192_n4096_k4096: {shape: {m: 8192, n: 4096, k: 4096}, dtype: bfloat16}}", "missing field"),
    ("entries: [unclosed", "not valid YAML"),
    ("- just\n- a list\n", "expected a mapping"),
])
def test_bad_yaml_falls_back_with_named_warning(root, caplog, text, needle):
    path = file_path("sm90", "fc2", root)
    import os

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    with caplog.at_level(logging.WARNING, logger="cute_kernels.config"):
        cfg = _look(8192)
    assert cfg == default_config(8192, 4096, 4096)
    msgs = " ".join(r.getMessage() for r in caplog.records)
    assert needle in msgs and "fc2.yaml" in msgs


def test_weight_grad_lookup_default_and_k_grouped_validation(root, caplog):
    """weight_grad: M, N the gradient, K the tokens; untuned -> wgrad_default_config; its
    grouped entries are validated as K-grouped (2x1 clusters and ping-pong fine, a config
    that cannot run rejected with its reason)."""
    from cute_kernels.config import wgrad_default_config

    def look(m, n, k, e=0):
        return cl.lookup_config("weight_grad", arch="sm90", dtype="torch.bfloat16", m=m, n=n, k=k,
                                num_experts=e, grouped=bool(e))

    assert look(4096, 16384, 8192) == wgrad_default_config(4096, 16384, 8192)
    assert look(1856, 2688, 32768, 128) == wgrad_default_config(1856, 2688, 32768, 128)
    clustered_m = GemmConfig(tile_n=256, cluster_m=2, cluster_n=1, swizzle=4)
    _write(root, "weight_grad", ShapeKey("bfloat16", 1856, 2688, 16384, 8), clustered_m)
    cl.clear_cache()
    assert look(1856, 2688, 16384, 8) == clustered_m
    pingpong = GemmConfig(tile_m=64, tile_n=256, cluster_m=1, cluster_n=1, schedule="pingpong")
    _write(root, "weight_grad", ShapeKey("bfloat16", 2688, 1856, 16384, 8), pingpong)
    cl.clear_cache()
    assert look(2688, 1856, 16384, 8) == pingpong
    _write(root, "weight_grad", ShapeKey("bfloat16", 2688, 1856, 16384, 8),
           GemmConfig(tile_m=128, tile_n=256, cluster_m=1, cluster_n=1, schedule="pingpong"))
    cl.clear_cache()
    with caplog.at_level(logging.WARNING, logger="cute_kernels.config"):
        assert look(2688, 1856, 16384, 8) == wgrad_default_config(2688, 1856, 16384, 8)
    assert "256 registers" in caplog.text


def test_tuned_root_env_is_read_once_and_again_after_clear_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CUTE_KERNELS_TUNED_CONFIGS", str(tmp_path / "a"))
    cl.clear_cache()
    assert cl.tuned_root() == str(tmp_path / "a")
    monkeypatch.setenv("CUTE_KERNELS_TUNED_CONFIGS", str(tmp_path / "b"))
    assert cl.tuned_root() == str(tmp_path / "a")  # cached: os.environ is not read per launch
    cl.clear_cache()
    assert cl.tuned_root() == str(tmp_path / "b")
    monkeypatch.delenv("CUTE_KERNELS_TUNED_CONFIGS")
    cl.clear_cache()
    assert cl.tuned_root() is None
    cl.clear_cache()  # read again (lazily) once monkeypatch has restored the environment
