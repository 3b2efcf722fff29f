"""The autotune CLI's argument checks (issue 25): every bad value is refused before any work
(no sweep, no storage file) with argparse's one-line error naming the flag and exit code 2; the
progress bar counts toward the study's budget; a budget past the search space's size stops
once every config is timed; a sweep that needs a GPU refuses before creating a storage file."""
import os
import subprocess
import sys

import optuna
import pytest
import torch

from autotune import space
from autotune.__main__ import SEED_MAX, main

optuna.logging.set_verbosity(optuna.logging.WARNING)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = ["--kernel", "fc2", "--m", "64", "--n", "64", "--k", "64"]


@pytest.fixture(autouse=True)
def _run_in_tmp(tmp_path, monkeypatch):
    """The CLI's default storage is ./autotune_studies.journal: run where an empty folder shows it."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    monkeypatch.chdir(tmp_path)


class NeverRun:
    """A runner a refused sweep must never build."""

    def __init__(self, problem):
        raise AssertionError("the sweep ran")


def assert_usage_error(exc, capsys, flag: str, needle: str):
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if ": error: " in ln]
    assert len(errors) == 1 and flag in errors[0] and needle in errors[0], err


def bad_sweep_args(tmp_path):
    a_dir = tmp_path / "a_dir"
    a_dir.mkdir()
    return [
        (["--seed", "-5"], "--seed", "must be 0 or more, got -5"),
        (["--seed", str(SEED_MAX + 1)], "--seed", f"must be at most {SEED_MAX}"),
        (["--seed", "1.5"], "--seed", "expected a whole number"),
        (["--storage", ""], "--storage", "empty"),
        (["--storage", "  "], "--storage", "empty"),
        (["--storage", str(a_dir)], "--storage", "is a folder"),
        (["--storage", f"sqlite:///{a_dir}"], "--storage", "is a folder"),
        (["--storage", str(tmp_path / "missing" / "s.journal")], "--storage", "does not exist"),
        (["--out", "/nonexistent/x.md"], "--out", "folder /nonexistent does not exist"),
        (["--out", str(a_dir)], "--out", "is a folder"),
        (["--try", "tile_n=96"], "--try", "not in the space"),
    ]


def test_bad_sweep_arguments_are_refused_before_the_sweep(tmp_path, capsys):
    for argv, flag, needle in bad_sweep_args(tmp_path):
        with pytest.raises(SystemExit) as exc:
            main(["sweep", *SHAPE, "--trials", "3", *argv], runner_factory=NeverRun, timer=None, arch="sm90")
        assert_usage_error(exc, capsys, flag, needle)
        with pytest.raises(SystemExit) as exc:  # and the same through --simulate's own runner
            main(["sweep", *SHAPE, "--trials", "3", "--simulate", *argv])
        assert_usage_error(exc, capsys, flag, needle)
    assert sorted(os.listdir(tmp_path)) == ["a_dir"] and os.listdir(tmp_path / "a_dir") == []


def test_the_largest_seed_is_accepted(tmp_path):
    assert main(["sweep", *SHAPE, "--trials", "3", "--simulate", "--quiet", "--seed", str(SEED_MAX),
                 "--workers", "2", "--storage", str(tmp_path / "s.journal")]) == 0


@pytest.mark.parametrize("out,needle", [
    ("/nonexistent/x.png", "folder /nonexistent does not exist"),
    ("x.txt", "cannot write a .txt image"),
    ("x.docx", "use one of"),
])
def test_bad_plot_out_is_refused_before_plotting(out, needle, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["plot", "--study", "s", "--storage", str(tmp_path / "none.journal"), "--out", out])
    assert_usage_error(exc, capsys, "--out", needle)
    assert os.listdir(tmp_path) == []


def test_plot_writes_the_format_out_names(tmp_path):
    url = f"sqlite:///{tmp_path}/p.db"
    study = optuna.create_study(study_name="s", storage=url)
    study.optimize(lambda t: t.suggest_float("x", 0, 1) ** 2, n_trials=3)
    assert main(["plot", "--study", "s", "--storage", url, "--out", str(tmp_path / "p.svg")]) == 0
    assert b"<svg" in (tmp_path / "p.svg").read_bytes()[:1000]


@pytest.mark.parametrize("argv", [["--seed", "-5"], ["--storage", ""], ["--out", "/nonexistent/x.md"]])
def test_the_installed_command_prints_no_traceback(argv):
    run = subprocess.run([sys.executable, "-m", "autotune", "sweep", *SHAPE, "--simulate", *argv],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr and run.stderr.strip().splitlines()[-1].startswith(
        "python -m autotune sweep: error: argument " + argv[0]), run.stderr


class RecordingBar:
    """Stands in for tqdm: what total and start each bar was given, and how far it got."""

    bars: list = []

    def __init__(self, total=None, initial=0, **kwargs):
        self.total, self.n = total, initial
        self.initial = initial
        RecordingBar.bars.append(self)

    def update(self, k=1):
        self.n += k

    def set_postfix(self, *a, **k):
        pass

    def close(self):
        pass


def test_progress_bar_counts_toward_the_trial_budget(monkeypatch, tmp_path):
    import tqdm

    monkeypatch.setattr(tqdm, "tqdm", RecordingBar)
    RecordingBar.bars = []
    journal = str(tmp_path / "s.journal")
    assert main(["sweep", *SHAPE, "--trials", "7", "--simulate", "--storage", journal]) == 0
    (bar,) = RecordingBar.bars
    assert (bar.total, bar.initial, bar.n) == (7, 0, 7)
    RecordingBar.bars = []  # a rerun with a larger budget resumes the study: the bar starts at what it holds
    assert main(["sweep", *SHAPE, "--trials", "10", "--simulate", "--storage", journal]) == 0
    (bar,) = RecordingBar.bars
    assert (bar.total, bar.initial, bar.n) == (10, 7, 10)


def test_a_budget_past_the_space_times_every_config_once(capsys):
    """--trials far beyond the space: each distinct config is timed once, then the sweep stops."""
    from autotune import tuner
    from autotune.problem import Problem
    from autotune.simulate import SimulatedRunner, simulated_timer
    from autotune.storage import open_store
    from autotune.worker import SweepSpec, Worker
    from cute_kernels.tuned_store import ShapeKey

    size = len(space.grid())
    huge = 99999999999999999999
    assert main(["sweep", *SHAPE, "--trials", str(huge), "--simulate", "--quiet"]) == 0
    assert f"| {size} (" in capsys.readouterr().out
    prob = Problem("fc2", ShapeKey("bfloat16", 128, 128, 64))
    worker = Worker(open_store(None), SweepSpec(arch="sm90", trials=huge, simulated=True, write=False),
                    SimulatedRunner, simulated_timer)
    assert worker.run([prob])[prob].trials == size
    params = [tuple(sorted(t.params.items())) for t in worker.study(prob).trials]
    assert len(params) == size and len(set(params)) == size
    assert sum(1 for t in worker.study(prob).trials if t.user_attrs.get("default")) == 1
    # the library's one-process sweep stops the same way, and a resumed study adds only what it lacks
    storage = optuna.storages.InMemoryStorage()
    first = tuner.sweep(prob, SimulatedRunner(prob), simulated_timer, arch="sm90", storage=storage, n_trials=50,
                        write=False, progress=False)
    assert first.trials == 50
    again = tuner.sweep(prob, SimulatedRunner(prob), simulated_timer, arch="sm90", storage=storage, n_trials=huge,
                        write=False, progress=False)
    assert again.trials >= size
    study = optuna.load_study(study_name=tuner.study_name(prob, "sm90"), storage=storage)
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == size


@pytest.mark.parametrize("extra", [[], ["--storage", "sqlite:///s.db"], ["--workers", "2", "--gpus", "0,1"]])
def test_a_real_sweep_without_a_gpu_refuses_before_creating_storage(extra, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["sweep", *SHAPE, "--trials", "3", *extra]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("text", ["format: 1\nother: {}\n", "", "# only a comment\n"])
def test_show_reports_a_file_the_lookup_skips_as_the_lookup_does(text, tmp_path, capsys, caplog):
    """A YAML without `entries:` (or empty): `show` prints the lookup's own warning naming the file
    and exits 1, instead of reporting "no tuned configs"."""
    import logging

    from cute_kernels.config_lookup import clear_cache, tuned_entries

    (tmp_path / "sm90").mkdir()
    (tmp_path / "sm90" / "fc2.yaml").write_text(text)
    assert main(["show", "--root", str(tmp_path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    clear_cache()
    with caplog.at_level(logging.WARNING, logger="cute_kernels"):
        assert tuned_entries("sm90", "fc2", str(tmp_path)) == {}
    (logged,) = [r.getMessage() for r in caplog.records]
    assert lines[0] == f"WARNING {logged}" and "fc2.yaml" in lines[0], lines
    assert lines[1:] == [f"no usable tuned configs under {tmp_path}"]
    clear_cache()


def test_show_warns_about_a_bad_entry_and_lists_the_good_ones(tmp_path, capsys):
    from autotune.problem import Problem
    from cute_kernels.tuned_store import ShapeKey, file_path, make_record, merge_write

    prob = Problem("fc2", ShapeKey("bfloat16", 4096, 2048, 512))
    good = make_record(prob.shape, prob.default_config(), time_ms=1.0, default_time_ms=1.5, device="H100",
                       dsl_version="4.8.1", date="2026-01-01", trials=3)
    merge_write(file_path("sm90", "fc2", str(tmp_path)), {prob.shape.key(): good, "dense/m1_n8_k8": {"config": 7}})
    assert main(["show", "--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("WARNING ignoring tuned config: ") and "dense/m1_n8_k8" in out.splitlines()[0]
    assert prob.shape.key() in out and "no usable" not in out
