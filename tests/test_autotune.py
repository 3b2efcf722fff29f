"""Autotuner on CPU with an injected runner and timer: search space, pruning with
reasons, default-first, resumable storage, grid mode, YAML writing/merging, CLI."""
import logging
import os

import optuna
import pytest
import yaml

from autotune import space, tuner
from autotune.__main__ import main
from autotune.problem import Problem
from cute_kernels.config import GemmConfig, default_config, validation_errors
from cute_kernels.tuned_store import ShapeKey, file_path, read_file

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(autouse=True)
def _run_in_tmp(tmp_path, monkeypatch):
    """The CLI's default study storage is ./autotune_studies.db: keep it out of the repo
    (worker subprocesses still import the project through PYTHONPATH)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    monkeypatch.chdir(tmp_path)


def cost_ms(cfg: GemmConfig) -> float:
    """A synthetic cost model: wider tiles, 2x1 clusters and swizzle 4 are faster."""
    t = 1.0 + {128: 0.3, 192: 0.1, 256: 0.0}[cfg.tile_n]
    t += 0.2 if cfg.schedule == "pingpong" else 0.0
    t += {(1, 1): 0.15, (1, 2): 0.05, (2, 1): 0.0}[(cfg.cluster_m, cfg.cluster_n)]
    t += abs(cfg.swizzle - 4) * 0.01 + (0.02 if cfg.raster == "m" else 0.0) + (cfg.epi_stages - 2) * 0.005
    return t


class FakeRunner:
    """prepare fails for tile_n=192 with a 1x1 cluster; check fails for ping-pong with swizzle 8."""

    def __init__(self, problem):
        self.problem = problem
        self.prepared = []

    def prepare(self, cfg):
        if cfg.tile_n == 192 and cfg.cluster_size == 1:
            raise RuntimeError("simulated DSL compile error")
        self.prepared.append(cfg)

    def check(self, cfg):
        return 0.5 if (cfg.schedule == "pingpong" and cfg.swizzle == 8) else 1e-3

    def timed(self, cfg):
        return cfg


def timer(fn):
    return cost_ms(fn)


DENSE = Problem("fc1_srelu", ShapeKey("bfloat16", 8192, 16384, 4096))
GROUPED = Problem("fc2", ShapeKey("bfloat16", 16384, 2688, 1856, 8))


def test_space_round_trip_and_grid():
    g = space.grid()
    assert len(g) == 972
    for params in g[:50] + [p for p in g if p["schedule"] == "pingpong128"][:20]:
        assert space.to_params(space.to_config(params)) == params


def test_default_configs_of_benchmark_shapes_are_in_space():
    from autotune.shapes import GEMM_SHAPES

    for s in GEMM_SHAPES:
        g = bool(s.get("experts"))
        assert space.in_space(default_config(s["m"], s["n"], s["k"], grouped=g))


def test_sweep_prunes_with_reasons_and_writes_winner(tmp_path):
    root = str(tmp_path)
    runner = FakeRunner(DENSE)
    res = tuner.sweep(DENSE, runner, timer, arch="sm90", storage=None, n_trials=40, seed=1, root=root,
                      device="FakeGPU", dsl_version="4.8.1", progress=False)
    study_trials = res.trials
    assert study_trials == 40 and res.complete + res.pruned == 40
    assert res.pruned_reasons, "some trials must be pruned"
    assert set(res.pruned_reasons) <= {"invalid", "compile failed", "wrong result"}
    # the default config was the first trial
    dflt = default_config(8192, 16384, 4096, num_outputs=2)
    assert runner.prepared[0] == dflt
    assert res.accepted and res.best_ms < res.default_ms
    entries = read_file(file_path("sm90", "fc1_srelu", root))
    rec = entries[DENSE.shape.key()]
    for f in ("config", "shape", "dtype", "time_ms", "default_time_ms", "speedup", "device", "dsl_version", "date"):
        assert f in rec
    cfg = GemmConfig.from_dict(rec["config"])
    assert validation_errors(cfg, num_outputs=2) == []
    assert rec["speedup"] == pytest.approx(res.default_ms / res.best_ms, rel=1e-3)
    # the winner is never a config the runner failed to compile or check
    assert not (cfg.tile_n == 192 and cfg.cluster_size == 1)
    assert not (cfg.schedule == "pingpong" and cfg.swizzle == 8)


def test_pruned_trials_record_their_reason():
    study = tuner.open_study(DENSE, "sm90", None, grid=False, seed=0)
    tuner.run_trials(study, DENSE, FakeRunner(DENSE), timer, 60, arch="sm90", progress=False)
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    reasons = [t.user_attrs["pruned"] for t in pruned]
    assert all(r.split(":")[0] in {"invalid", "compile failed", "wrong result"} for r in reasons)
    assert any("simulated DSL compile error" in r for r in reasons) or any(r.startswith("wrong result") for r in reasons)


def test_grid_finds_the_cost_model_optimum_and_tpe_gets_close():
    grid_res = tuner.sweep(GROUPED, FakeRunner(GROUPED), timer, arch="sm90", storage=None, grid=True, write=False, progress=False)
    valid = [space.to_config(p) for p in space.grid()]
    valid = [c for c in valid if not validation_errors(c, grouped=True)
             and not (c.tile_n == 192 and c.cluster_size == 1) and not (c.schedule == "pingpong" and c.swizzle == 8)]
    assert grid_res.best_ms == pytest.approx(min(cost_ms(c) for c in valid))
    assert grid_res.trials == len(space.grid())
    tpe = tuner.sweep(GROUPED, FakeRunner(GROUPED), timer, arch="sm90", storage=None, n_trials=36, seed=0, write=False, progress=False)
    assert tpe.best_ms <= grid_res.best_ms * 1.03


def test_storage_is_resumable(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    study = tuner.open_study(DENSE, "sm90", url, grid=False, seed=0)
    tuner.run_trials(study, DENSE, FakeRunner(DENSE), timer, 6, arch="sm90", progress=False)
    again = tuner.open_study(DENSE, "sm90", url, grid=False, seed=0)
    assert len(again.trials) == 6
    tuner.run_trials(again, DENSE, FakeRunner(DENSE), timer, 4, arch="sm90", progress=False)
    final = optuna.load_study(study_name=DENSE.study_name("sm90"), storage=url)
    assert len(final.trials) == 10
    assert sum(1 for t in final.trials if t.user_attrs.get("default")) == 1


def test_merge_keeps_other_entries_and_is_stable(tmp_path):
    root = str(tmp_path)
    for prob in (DENSE, Problem("fc1_srelu", ShapeKey("bfloat16", 16384, 14848, 2688))):
        res = tuner.sweep(prob, FakeRunner(prob), timer, arch="sm90", storage=None, n_trials=40, root=root, progress=False)
        assert res.accepted, res.note
    path = file_path("sm90", "fc1_srelu", root)
    first = open(path).read()
    assert len(read_file(path)) == 2
    from cute_kernels.tuned_store import merge_write

    merge_write(path, {})
    assert open(path).read() == first, "rewriting the same entries changes nothing"
    assert list(yaml.safe_load(first)["entries"]) == sorted(read_file(path))


def test_cli_sweep_show_and_plot(tmp_path, capsys):
    root = str(tmp_path / "tc")
    rc = main(["sweep", "--kernel", "fc2", "--m", "4096", "--n", "4096", "--k", "1024", "--trials", "40",
               "--root", root, "--quiet", "--out", str(tmp_path / "table.md")],
              runner_factory=FakeRunner, timer=timer, arch="sm90", device="FakeGPU", dsl_version="4.8.1")
    assert rc == 0
    assert "fc2 bfloat16 M=4096 N=4096 K=1024" in open(tmp_path / "table.md").read()
    assert main(["show", "--root", root]) == 0
    assert "dense/m4096_n4096_k1024" in capsys.readouterr().out
    url = f"sqlite:///{tmp_path}/p.db"
    main(["sweep", "--preset", "moe-e8", "--only", "fc2", "--trials", "8", "--storage", url, "--no-write", "--quiet"],
         runner_factory=FakeRunner, timer=timer, arch="sm90")
    png = tmp_path / "study.png"
    assert main(["plot", "--study", "fc2/sm90/bfloat16/grouped/m16384_n2688_k1856_e8", "--storage", url, "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_sweep_without_gpu_says_so(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    assert main(["sweep", "--kernel", "fc2", "--m", "64", "--n", "64", "--k", "64", "--no-write"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_show_reports_a_corrupt_file(tmp_path, capsys):
    d = tmp_path / "sm90"
    d.mkdir()
    (d / "fc2.yaml").write_text("entries: [this, is, not, a, mapping")
    assert main(["show", "--root", str(tmp_path)]) == 1
    assert "fc2.yaml" in capsys.readouterr().out


def test_workers_share_one_study_through_storage(tmp_path):
    """--workers 2 on one SQLite file: two processes, exactly --trials trials between them."""
    url = f"sqlite:///{tmp_path}/w.db"
    rc = main(["sweep", "--kernel", "fc2", "--m", "2048", "--n", "2048", "--k", "512", "--trials", "10",
               "--workers", "2", "--storage", url, "--simulate", "--quiet"])
    assert rc == 0
    study = optuna.load_study(study_name="simulated/fc2/sm90/bfloat16/dense/m2048_n2048_k512", storage=url)
    assert len(study.trials) == 10
    assert all(t.state.is_finished() for t in study.trials)
    assert sum(1 for t in study.trials if t.user_attrs.get("default")) == 1


def test_simulated_sweep_writes_nothing(tmp_path):
    root = tmp_path / "tc"
    assert main(["sweep", "--kernel", "fc2", "--m", "64", "--n", "64", "--k", "64", "--trials", "30", "--simulate",
                 "--root", str(root), "--quiet"]) == 0
    assert not root.exists()


def test_weight_grad_sweep_is_k_grouped():
    """weight_grad problems: the default enqueued first is the weight-gradient default, and
    the whole space is valid (2x1 clusters: K-grouped tiles never straddle experts;
    ping-pong: each warpgroup skips the other's tile by that tile's own K extent)."""
    from cute_kernels.config import wgrad_default_config

    prob = Problem("weight_grad", ShapeKey("bfloat16", 1856, 2688, 16384, 8))
    assert prob.constraints["grouped_k"] and not prob.constraints["grouped"]
    assert prob.default_config() == wgrad_default_config(1856, 2688, 16384, 8)
    res = tuner.sweep(prob, FakeRunner(prob), timer, arch="sm90", storage=None, grid=True, write=False, progress=False)
    assert res.trials == len(space.grid()) == 972
    # the only invalid corner: 128-row ping-pong tiles 256 wide (256 accumulator registers) or
    # 192 wide with 64-column epilogue sub-tiles (spills)
    too_wide = [p for p in space.grid() if p["schedule"] == "pingpong128"
                and (p["tile_n"] == 256 or (p["tile_n"] == 192 and p["epi_n"] == 64))]
    assert res.pruned_reasons.get("invalid") == len(too_wide), res.pruned_reasons
    assert all((validation_errors(space.to_config(p), **prob.constraints) == []) == (p not in too_wide)
               for p in space.grid())
    assert space.to_config(res.best_params).cluster_m == 2  # the cost model's favourite, allowed here
    assert space.to_config(res.best_params).schedule == "cooperative"


def test_tries_are_enqueued_after_the_default(tmp_path):
    """--try puts overrides of the default at the front of a new study (after the default)."""
    url = f"sqlite:///{tmp_path}/t.db"
    assert main(["sweep", "--kernel", "fc2", "--m", "4096", "--n", "2048", "--k", "512", "--experts", "8",
                 "--trials", "3", "--try", "tile_n=128,cluster=2x1", "--try", "schedule=pingpong",
                 "--storage", url, "--simulate", "--quiet"]) == 0
    study = optuna.load_study(study_name="simulated/fc2/sm90/bfloat16/grouped/m4096_n2048_k512_e8", storage=url)
    trials = sorted(study.trials, key=lambda t: t.number)
    assert trials[0].user_attrs.get("default")
    assert (trials[1].params["tile_n"], trials[1].params["cluster"]) == (128, "2x1")
    assert trials[2].params["schedule"] == "pingpong"
    assert {k: v for k, v in trials[1].params.items() if k not in ("tile_n", "cluster")} == \
        {k: v for k, v in trials[0].params.items() if k not in ("tile_n", "cluster")}


@pytest.mark.parametrize("text,needle", [("tile_n=96", "not in the space"), ("tiles=128", "unknown parameter")])
def test_bad_try_is_refused_by_name(text, needle):
    with pytest.raises(ValueError, match=needle):
        space.parse_overrides(text)


def test_model_shapes_include_weight_gradients():
    from autotune.shapes import model_shapes

    shapes = model_shapes(2688, 1856, 8, [16384])
    wg = [(s["m"], s["n"], s["k"]) for s in shapes if s["kernel"] == "weight_grad"]
    assert wg == [(1856, 2688, 16384), (2688, 1856, 16384)]
    assert [(s["m"], s["n"], s["k"]) for s in shapes if s["kernel"] == "fc2_dgrad_dsrelu"] == [(16384, 1856, 2688)]


def test_cli_sweeps_weight_grad(tmp_path):
    assert main(["sweep", "--kernel", "weight_grad", "--m", "1856", "--n", "2688", "--k", "16384", "--experts", "8",
                 "--trials", "12", "--simulate", "--root", str(tmp_path / "tc"), "--quiet"]) == 0


@pytest.mark.parametrize("gain,stored", [(0.005, False), (0.05, True)])
def test_noise_level_winner_is_not_stored(tmp_path, gain, stored):
    """A winner that beats the default by less than MIN_GAIN on re-measurement is noise:
    the default is kept and nothing is written."""
    dflt = default_config(8192, 16384, 4096, num_outputs=2)

    def flat_timer(cfg):  # every config costs the same, except one a little faster
        return 1.0 - gain if (cfg.tile_n, cfg.swizzle) != (dflt.tile_n, dflt.swizzle) and cfg.tile_n == 128 else 1.0

    res = tuner.sweep(DENSE, FakeRunner(DENSE), flat_timer, arch="sm90", storage=None, n_trials=12, seed=3,
                      root=str(tmp_path), device="FakeGPU", dsl_version="4.8.1", progress=False, grid=True)
    assert res.accepted is stored, res.note
    path = file_path("sm90", "fc1_srelu", str(tmp_path))
    assert os.path.exists(path) is stored
    if not stored:
        assert "noise" in res.note


@pytest.mark.parametrize("stored_cost,overwritten", [(0.5, False), (0.995, False), (2.0, True)])
def test_sweep_keeps_a_stored_entry_it_does_not_beat(tmp_path, stored_cost, overwritten):
    """A sweep's winner replaces the stored entry for its shape only if it beats that entry
    (not just the default) by MIN_GAIN on re-measurement."""
    from cute_kernels.tuned_store import make_record, merge_write, read_file

    dflt = default_config(8192, 16384, 4096, num_outputs=2)
    stored = GemmConfig(tile_n=128, cluster_m=1, cluster_n=1, swizzle=1, raster="m")
    winner = GemmConfig(tile_n=256, cluster_m=1, cluster_n=2, swizzle=1, raster="m")
    assert len({dflt, stored, winner}) == 3
    path = file_path("sm90", "fc1_srelu", str(tmp_path))
    merge_write(path, {DENSE.shape.key(): make_record(DENSE.shape, stored, time_ms=stored_cost, default_time_ms=1.0,
                                                      device="FakeGPU", dsl_version="4.8.1", date="2026-01-01",
                                                      trials=1)})

    def timer(cfg):
        return {winner: 0.9, stored: stored_cost * 0.9}.get(cfg, 1.0)

    res = tuner.sweep(DENSE, FakeRunner(DENSE), timer, arch="sm90", storage=None, n_trials=2, seed=0,
                      root=str(tmp_path), device="FakeGPU", dsl_version="4.8.1", progress=False,
                      tries=[space.to_params(winner)])
    assert space.to_config(res.best_params) == winner
    kept = read_file(path)[DENSE.shape.key()]["config"]
    assert (GemmConfig.from_dict(kept) == winner) is overwritten, res.note
    assert res.accepted is overwritten
    if not overwritten:
        assert "stored entry kept" in res.note


def test_timer_modes_call_their_timing(monkeypatch):
    """make_timer: burst -> time_ms, sustained -> sustained_ms (ms only); the mode rides on
    the timer; an unknown mode is refused."""
    import autotune.timing as timing

    calls = []
    monkeypatch.setattr(timing, "time_ms", lambda fn, **kw: calls.append(("burst", kw)) or 1.5)
    monkeypatch.setattr(timing, "sustained_ms", lambda fn, **kw: calls.append(("sustained", kw)) or (2.5, 700.0, 1400.0))
    burst, sustained = timing.make_timer("burst"), timing.make_timer("sustained")
    assert (burst.mode, sustained.mode) == ("burst", "sustained")
    assert burst(lambda: None) == 1.5 and sustained(lambda: None) == 2.5
    assert [c[0] for c in calls] == ["burst", "sustained"]
    assert calls[1][1]["seconds"] > calls[1][1]["warm_s"] > 0
    with pytest.raises(ValueError, match="timing must be one of"):
        timing.make_timer("fast")


@pytest.mark.parametrize("mode", [None, "sustained"])
def test_sweep_records_how_it_timed(tmp_path, mode):
    """The written entry says whether its times are bursts or sustained (power-limit) runs."""
    dflt = default_config(8192, 16384, 4096, num_outputs=2)

    def timer(cfg):
        return 0.9 if cfg.tile_n == 128 and cfg != dflt else 1.0

    if mode is not None:
        timer.mode = mode
    res = tuner.sweep(DENSE, FakeRunner(DENSE), timer, arch="sm90", storage=None, n_trials=12, seed=3,
                      root=str(tmp_path), device="FakeGPU", dsl_version="4.8.1", progress=False, grid=True)
    assert res.accepted, res.note
    rec = read_file(file_path("sm90", "fc1_srelu", str(tmp_path)))[DENSE.shape.key()]
    assert rec["timing"] == (mode or "burst")


def test_cli_accepts_sustained_timing(tmp_path):
    assert main(["sweep", "--kernel", "fc2", "--m", "64", "--n", "64", "--k", "64", "--trials", "4", "--simulate",
                 "--timing", "sustained", "--quiet"]) == 0
    with pytest.raises(SystemExit):
        main(["sweep", "--kernel", "fc2", "--m", "64", "--n", "64", "--k", "64", "--simulate", "--timing", "fast"])


def test_sustained_timing_never_overlaps_a_compile():
    """A compile holds the GIL for long stretches; sustained timing is paced by the host, so
    under it no compile may run while a trial is timed."""
    import threading
    import time as _time

    events, lock = [], threading.Lock()

    class SlowCompiles(FakeRunner):
        def prepare(self, cfg):
            with lock:
                events.append(("compile", _time.perf_counter(), None))
            _time.sleep(0.03)
            with lock:
                events[-1] = (events[-1][0], events[-1][1], _time.perf_counter())
            super().prepare(cfg)

    def slow_timer(cfg):
        t0 = _time.perf_counter()
        _time.sleep(0.03)
        with lock:
            events.append(("time", t0, _time.perf_counter()))
        return cost_ms(cfg)

    slow_timer.mode = "sustained"
    study = tuner.open_study(DENSE, "sm90", None, grid=False, seed=0)
    tuner.run_trials(study, DENSE, SlowCompiles(DENSE), slow_timer, 8, arch="sm90", progress=False,
                     compile_workers=2)
    compiles = [(a, b) for k, a, b in events if k == "compile" and b is not None]
    timings = [(a, b) for k, a, b in events if k == "time"]
    assert compiles and timings
    overlaps = sum(1 for c in compiles for t in timings if c[0] < t[1] and t[0] < c[1])
    assert overlaps == 0, overlaps


@pytest.mark.parametrize("argv,needle", [
    (["--m", "-5", "--n", "64", "--k", "64"], "argument --m: must be at least 1, got -5"),
    (["--m", "0", "--n", "64", "--k", "64"], "argument --m: must be at least 1, got 0"),
    (["--m", "64", "--n", "64", "--k", "7"], "K=7 must be a multiple of 8"),
    (["--m", "64", "--n", "64", "--k", "64", "--trials", "-3"], "argument --trials: must be at least 1, got -3"),
    (["--m", "64", "--n", "64", "--k", "64", "--workers", "0"], "argument --workers: must be at least 1"),
    (["--m", "64", "--n", "12", "--k", "64"], "N=12 must be a multiple of 8"),
])
def test_cli_refuses_bad_sizes_with_an_argparse_error(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["sweep", "--kernel", "fc2", *argv, "--simulate"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_weight_grad_k_is_tokens_and_need_not_be_aligned(tmp_path):
    """weight_grad sums over K tokens: K=7 is fine there, M (a row of dy) must be aligned."""
    assert main(["sweep", "--kernel", "weight_grad", "--m", "64", "--n", "64", "--k", "7", "--trials", "2",
                 "--simulate", "--quiet"]) == 0
    with pytest.raises(SystemExit):
        main(["sweep", "--kernel", "weight_grad", "--m", "60", "--n", "64", "--k", "64", "--simulate"])


def test_simulated_sweep_keeps_out_of_real_storage_and_says_so(tmp_path, capsys):
    """--simulate: studies named simulated/..., in memory by default (no database file appears),
    and the table never claims "stored: yes"."""
    assert main(["sweep", "--kernel", "fc2", "--m", "4096", "--n", "2048", "--k", "512", "--trials", "12",
                 "--simulate", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)
    assert "| yes |" not in out and "simulated sweep" in out and "in memory" in out
    url = f"sqlite:///{tmp_path}/shared.db"  # even on a storage a real sweep uses: other names
    assert main(["sweep", "--kernel", "fc2", "--m", "4096", "--n", "2048", "--k", "512", "--trials", "3",
                 "--simulate", "--storage", url, "--quiet"]) == 0
    assert optuna.get_all_study_names(url) == ["simulated/fc2/sm90/bfloat16/dense/m4096_n2048_k512"]


def test_no_write_is_not_reported_as_stored(tmp_path, capsys):
    assert main(["sweep", "--kernel", "fc2", "--m", "4096", "--n", "4096", "--k", "1024", "--trials", "40",
                 "--root", str(tmp_path / "tc"), "--quiet", "--no-write"],
                runner_factory=FakeRunner, timer=timer, arch="sm90") == 0
    out = capsys.readouterr().out
    assert "not written (--no-write)" in out and "| yes |" not in out
    assert not (tmp_path / "tc").exists()


def test_plot_of_a_missing_study_says_so_and_creates_nothing(tmp_path, capsys):
    for storage in (str(tmp_path / "none.journal"), f"sqlite:///{tmp_path}/none.db"):
        assert main(["plot", "--study", "nope", "--storage", storage, "--out", str(tmp_path / "p.png")]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "no study storage" in err, err
    assert os.listdir(tmp_path) == []
    url = f"sqlite:///{tmp_path}/s.db"
    optuna.create_study(study_name="other", storage=url)
    assert main(["plot", "--study", "nope", "--storage", url, "--out", str(tmp_path / "p.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no study 'nope'" in err and "other" in err, err


def test_show_has_a_header_and_aligned_columns(tmp_path, capsys):
    from cute_kernels.tuned_store import make_record, merge_write

    for prob in (DENSE, GROUPED):
        merge_write(file_path("sm90", prob.kernel, str(tmp_path)),
                    {prob.shape.key(): make_record(prob.shape, prob.default_config(), time_ms=1.23456, default_time_ms=1.5,
                                                   device="NVIDIA H100", dsl_version="4.8.1", date="2026-01-01", trials=3)})
    assert main(["show", "--root", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["arch", "kernel", "shape"] and set(lines[1].replace(" ", "")) == {"-"}
    col = lines[0].index("time ms")
    assert all(ln[col:col + 7].strip().replace(".", "").isdigit() for ln in lines[2:]), lines
    assert len({ln.index("NVIDIA") for ln in lines[2:]}) == 1
