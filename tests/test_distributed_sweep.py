"""Several sweep workers on one study (simulated cost model): exact trial counts, resumption,
a worker killed with kill -9 mid-trial, concurrent YAML writers.  On a JournalStorage file and
on a real PostgreSQL server (tests/pg_server.py starts one; CI installs it, so there a missing
server fails the test instead of skipping it).

Workers are forked from the test process (a fresh interpreter per worker costs ~10 s of
imports on a loaded 2-core CI box); one test goes through the real launcher (`--workers`,
subprocesses pinned with CUDA_VISIBLE_DEVICES).
"""
import multiprocessing as mp
import os
import re
import signal
import time

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from autotune.__main__ import main
from autotune.storage import open_store
from autotune.worker import FINISHING_ATTR, RESULT_ATTR

optuna.logging.set_verbosity(optuna.logging.WARNING)
FORK = mp.get_context("fork")
SHAPE = ["--kernel", "fc2", "--m", "2048", "--n", "2048", "--k", "512"]
STUDY = "simulated/fc2/sm90/bfloat16/dense/m2048_n2048_k512"
FAST_HB = ["--heartbeat", "1", "--grace", "2"]


@pytest.fixture(autouse=True)
def _run_in_tmp(tmp_path, monkeypatch):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def pg():
    from pg_server import missing_reason, postgres_server

    why = missing_reason()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL tests: {why}")
        pytest.skip(why)
    with postgres_server() as db_url:
        yield db_url


@pytest.fixture(params=["journal", "postgres"])
def storage(request, tmp_path):
    if request.param == "journal":
        return str(tmp_path / "studies.journal")
    return request.getfixturevalue("pg")(f"t{os.getpid()}_{time.time_ns() % 10**9}")


def _child(argv, env, log_path):
    import sys
    import traceback

    sys.stdout = sys.stderr = open(log_path, "w", buffering=1)
    os.environ.update(env)
    code = 1
    try:
        code = main(argv)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        os._exit(code)


def fork_worker(tmp_path, argv, i, n, gpu="0"):
    """Worker i of n as a forked process; its output goes to tmp_path/worker<i>.log."""
    log = str(tmp_path / f"worker{i}.log")
    p = FORK.Process(target=_child, args=(["sweep", *argv, "--worker", str(i), "--workers-total", str(n)],
                                          {"CUDA_VISIBLE_DEVICES": gpu}, log))
    p.start()
    p.log = log
    return p


def timed_count(p) -> int:
    m = re.search(r"timed (\d+) trials", open(p.log).read())
    assert m, open(p.log).read()[-2000:]
    return int(m.group(1))


def load(storage, name=STUDY):
    return optuna.load_study(study_name=name, storage=open_store(storage).storage)


def states(study) -> dict:
    out = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def done(study) -> int:
    s = states(study)
    return s.get("COMPLETE", 0) + s.get("PRUNED", 0)


def test_launcher_pins_workers_counts_exactly_and_resumes(tmp_path, capsys):
    """`--workers 2 --gpus 3,5`: two worker processes (CUDA_VISIBLE_DEVICES 3 and 5) on one journal,
    two shapes, exactly --trials trials each, every shape finished once; reruns resume."""
    journal = str(tmp_path / "j.journal")
    args = ["sweep", "--preset", "moe-e8", "--only", "fc2", "--simulate", "--storage", journal, "--quiet"]
    assert main(args + ["--trials", "8", "--workers", "2", "--gpus", "3,5"]) == 0
    out = capsys.readouterr().out
    names = ["simulated/fc2/sm90/bfloat16/grouped/m16384_n2688_k1856_e8",
             "simulated/fc2_dgrad_dsrelu/sm90/bfloat16/grouped/m16384_n1856_k2688_e8"]
    for name in names:
        study = load(journal, name)
        assert states(study).keys() <= {"COMPLETE", "PRUNED"} and done(study) == 8, states(study)
        trials = study.get_trials(deepcopy=False)
        assert {t.user_attrs["gpu"] for t in trials} <= {"3", "5"}
        assert sum(1 for t in trials if t.user_attrs.get("default")) == 1
        assert study.user_attrs[RESULT_ATTR]["trials"] == 8
    assert out.count("| 8 (") == 2, out
    assert "not written (simulated)" in out and "stored | yes" not in out
    assert "simulated sweep" in out and "j.journal" in out
    # a rerun with a larger budget runs only the missing trials, then is finished again
    assert main(args + ["--trials", "11"]) == 0
    assert [done(load(journal, n)) for n in names] == [11, 11]
    assert load(journal, names[0]).user_attrs[RESULT_ATTR]["trials"] == 11
    # the same budget again: nothing to run, nothing re-finished
    before = len(load(journal, names[0]).trials)
    assert main(args + ["--trials", "11"]) == 0
    assert len(load(journal, names[0]).trials) == before
    assert not os.path.exists("autotune_studies.journal"), "a simulated sweep touched the real default storage"


def test_forked_workers_count_exactly(tmp_path, storage):
    """Three workers, one shape: COMPLETE + PRUNED == --trials, nothing left RUNNING or WAITING,
    and the trials the workers say they timed add up to exactly that (none twice, none lost)."""
    argv = [*SHAPE, "--trials", "14", "--simulate", "--simulate-delay", "0.02", "--storage", storage, *FAST_HB]
    procs = [fork_worker(tmp_path, argv, i + 1, 3, gpu=str(i)) for i in range(3)]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0, open(p.log).read()[-3000:]
    study = load(storage)
    assert states(study).keys() <= {"COMPLETE", "PRUNED"}, states(study)
    assert done(study) == 14
    assert sum(timed_count(p) for p in procs) == 14
    assert sum(1 for t in study.trials if t.user_attrs.get("default")) == 1
    assert study.user_attrs[RESULT_ATTR]["trials"] == 14
    finishers = {study.user_attrs[FINISHING_ATTR]["worker"]}
    assert len(finishers) == 1


def _wait_running_trial_of(storage, pid, timeout=40):
    """Wait until worker `pid` holds a RUNNING trial that has been running a little while."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            study = load(storage)
        except KeyError:
            time.sleep(0.1)
            continue
        mine = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if t.user_attrs.get("worker", "").endswith(f":{pid}")]
        if mine and done(study) >= 1:
            return mine
        time.sleep(0.05)
    raise AssertionError(f"worker {pid} never held a running trial")


def test_kill9_mid_trial_others_finish(tmp_path, storage):
    """kill -9 one of two workers while it times a trial: the survivor reaps it after the grace
    period (FAIL, retried), and the study ends with exactly --trials done, nothing RUNNING."""
    argv = [*SHAPE, "--trials", "8", "--simulate", "--simulate-delay", "0.4", "--storage", storage, *FAST_HB]
    victim = fork_worker(tmp_path, argv, 1, 2)
    _wait_running_trial_of(storage, victim.pid)
    survivor = fork_worker(tmp_path, argv, 2, 2)
    time.sleep(0.3)
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(10)
    survivor.join(90)
    assert survivor.exitcode == 0, open(survivor.log).read()[-3000:]
    study = load(storage)
    trials = study.get_trials(deepcopy=False)
    s = states(study)
    assert s.get("RUNNING", 0) == 0 and s.get("WAITING", 0) == 0, s
    assert done(study) == 8
    failed = [t for t in trials if t.state == TrialState.FAIL]
    # only the victim's trials failed (one killed before its "worker" attribute was written has none)
    assert failed and all(t.user_attrs.get("worker", f":{victim.pid}").endswith(f":{victim.pid}") for t in failed)
    retried = {t.system_attrs.get("failed_trial") for t in trials if t.state != TrialState.FAIL}
    assert {t.number for t in failed} <= retried, "each killed trial is retried"
    assert study.user_attrs[RESULT_ATTR]["trials"] == 8
    assert study.user_attrs[RESULT_ATTR]["failed"] == len(failed)


def test_rerun_resumes_after_every_worker_died(tmp_path, storage):
    """The only worker is killed mid-trial; a rerun reaps its trials once the grace period is
    over, retries them and completes the budget exactly."""
    argv = [*SHAPE, "--trials", "6", "--simulate", "--simulate-delay", "0.3", "--storage", storage, *FAST_HB]
    victim = fork_worker(tmp_path, argv, 1, 1)
    _wait_running_trial_of(storage, victim.pid)
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(10)
    assert states(load(storage)).get("RUNNING", 0) >= 1
    assert main(["sweep", *argv, "--quiet"]) == 0  # in this process
    study = load(storage)
    s = states(study)
    assert s.get("RUNNING", 0) == 0 and s.get("WAITING", 0) == 0 and done(study) == 6, s
    assert s.get("FAIL", 0) >= 1
    assert study.user_attrs[RESULT_ATTR]["trials"] == 6


def _write_entries(path, worker, n, barrier):
    from cute_kernels.config import GemmConfig
    from cute_kernels.tuned_store import ShapeKey, make_record, merge_write

    barrier.wait()
    code = 0
    try:
        for i in range(n):
            sk = ShapeKey("bfloat16", 128 * (worker + 1), 64 * (i + 1), 256)
            merge_write(path, {sk.key(): make_record(sk, GemmConfig(), time_ms=1.0, default_time_ms=1.1,
                                                     device="test", dsl_version="x", date="2026-01-01", trials=1)})
    except BaseException:
        code = 1
    os._exit(code)


def test_concurrent_yaml_writers_lose_no_entry(tmp_path):
    """Six processes each merge five entries (different shapes) into one YAML file at once."""
    from cute_kernels.tuned_store import read_file

    path = str(tmp_path / "sm90" / "fc2.yaml")
    barrier = FORK.Barrier(6)
    procs = [FORK.Process(target=_write_entries, args=(path, w, 5, barrier)) for w in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    entries = read_file(path)
    assert len(entries) == 30
    assert yaml.safe_load(open(path))["format"] == 1
    leftovers = [f for f in os.listdir(tmp_path / "sm90") if f != "fc2.yaml" and not f.startswith(".")]
    assert leftovers == [], leftovers


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_the_documented_bare_postgresql_url_works_with_the_postgres_extra(scheme, pg, capsys):
    """`--storage postgresql://user@host:port/db` as README and docs/distributed-sweep.md write it,
    with the driver the `[postgres]` extra installs (SQLAlchemy alone maps it to psycopg 3)."""
    url = pg(f"bare_{scheme}_{os.getpid()}")
    bare = scheme + "://" + url.split("://", 1)[1]
    assert main(["sweep", "--kernel", "fc2", "--m", "64", "--n", "64", "--k", "64", "--trials", "3", "--simulate",
                 "--quiet", "--storage", bare]) == 0
    assert "postgresql" in capsys.readouterr().out
    store = open_store(bare)
    assert store.kind == "postgresql" and store.spec == bare
    assert done(load(bare, "simulated/fc2/sm90/bfloat16/dense/m64_n64_k64")) == 3


def test_bare_postgresql_url_takes_the_installed_driver(monkeypatch):
    import importlib.util

    from autotune.storage import StorageError, pg_driver_url

    real = importlib.util.find_spec
    for installed, want in ((("psycopg2",), "postgresql+psycopg2://u@h:5/db"),
                            (("psycopg", "psycopg2"), "postgresql+psycopg://u@h:5/db")):
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a, _i=installed: real("os") if name in _i else None)
        assert pg_driver_url("postgresql://u@h:5/db") == want
        assert pg_driver_url("postgres://u@h:5/db") == want
        assert pg_driver_url("postgresql+psycopg2://u@h:5/db") == "postgresql+psycopg2://u@h:5/db"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(StorageError, match=r"cute-kernels\[postgres\]") as exc:
        pg_driver_url("postgresql://u:secret@h:5/db")
    assert "secret" not in str(exc.value)
