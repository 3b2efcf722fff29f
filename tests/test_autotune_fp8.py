"""The autotuner on the FP8 kernels, on CPU: their own search space (sm90/space_fp8.py), points
the FP8 mainloop cannot run pruned by block_scaled_errors, a sweep writing an FP8 entry that
the lookup (and the FP8 op's key) then reads, the CLI's simulated and compile-only modes, and
FP8 operand alignment and dtype checks of the command line."""
import dataclasses

import pytest

from autotune import space, tuner
from autotune.__main__ import main
from autotune.problem import Problem
from cute_kernels import config_lookup as cl
from cute_kernels.sm90 import space_fp8
from cute_kernels.sm90.config import FP8_DEFAULT_CONFIG
from cute_kernels.tuned_store import ShapeKey, file_path, read_file

FC1 = Problem("fp8_fc1_srelu", ShapeKey("float8_e4m3fn", 8192, 16384, 4096))
FC2_GROUPED = Problem("fp8_fc2", ShapeKey("float8_e5m2+float8_e4m3fn", 16384, 2688, 1856, 8))


class FakeRunner:
    """Records what it compiles; every config it is given must be one the FP8 kernel can run."""

    def __init__(self, problem):
        self.problem, self.prepared = problem, []

    def prepare(self, cfg):
        assert self.problem.config_errors(cfg) == [], cfg
        self.prepared.append(cfg)

    def check(self, cfg):
        return 1e-3

    def timed(self, cfg):
        return cfg


def cost(cfg) -> float:  # 256-wide tiles on a 2x1 cluster with explicit 4 stages win
    return (1.0 + (0.0 if cfg.tile_n == 256 else 0.3) + (0.0 if (cfg.cluster_m, cfg.cluster_n) == (2, 1) else 0.1)
            + (0.0 if cfg.ab_stages == 4 else 0.05) + 0.01 * abs(cfg.swizzle - 4))


def test_fp8_space_round_trip_and_its_own_grid():
    g = space.grid(block_scaled=True)
    assert space.grid_values(block_scaled=True) is space_fp8.GRID and len(g) == 1 * 2 * 1 * 3 * 2 * 3 * 2 * 3 * 4
    for params in g[::37]:
        cfg = space.to_config(params, block_scaled=True)
        assert space.to_params(cfg, block_scaled=True) == params
        assert cfg.tile_k == 128 and (cfg.tile_m, cfg.schedule) in ((128, "cooperative"), (256, "cooperative"),
                                                                    (64, "pingpong"), (128, "pingpong"))
    assert space.in_space(FP8_DEFAULT_CONFIG, block_scaled=True) and not space.in_space(FP8_DEFAULT_CONFIG)
    assert FC1.space_kw == {"block_scaled": True} and Problem("fc2", ShapeKey("bfloat16", 8, 8, 8)).space_kw == {}
    # some points cannot run: the rules say why
    errors = [FC1.config_errors(space.to_config(p, block_scaled=True)) for p in g]
    assert any(errors) and not all(errors)
    with pytest.raises(ValueError, match="FP8"):
        Problem("fp8_fc2", ShapeKey("bfloat16", 8, 8, 8))


@pytest.mark.parametrize("problem", [FC1, FC2_GROUPED])
def test_fp8_sweep_prunes_what_cannot_run_and_writes_an_entry_the_op_reads(problem, tmp_path, monkeypatch):
    root = str(tmp_path)
    runner = FakeRunner(problem)
    res = tuner.sweep(problem, runner, cost, arch="sm90", storage=None, n_trials=30, seed=2, root=root,
                      device="FakeGPU", dsl_version="4.8.1", progress=False)
    assert runner.prepared[0] == FP8_DEFAULT_CONFIG  # the default first
    assert set(res.pruned_reasons) <= {"invalid"}
    assert res.accepted and res.written == file_path("sm90", problem.kernel, root)
    rec = read_file(res.written)[problem.shape.key()]
    assert rec["dtype"] == problem.shape.dtype and problem.shape.key().startswith(problem.shape.dtype + "/")
    best = space.to_config(res.best_params, block_scaled=True)
    monkeypatch.setenv("CUTE_KERNELS_TUNED_CONFIGS", root)
    cl.clear_cache()
    try:
        s = problem.shape
        assert cl.lookup_config(problem.kernel, arch="sm90", dtype=s.dtype, m=s.m, n=s.n, k=s.k,
                                num_experts=max(s.experts, 1), grouped=bool(s.experts)) == best
        from cute_kernels.fp8.epilogue import Fp8Epilogue
        from cute_kernels.fp8.ops import _family_launch_key
        from cute_kernels.registry import get_kernel, operand_dtypes

        spec = get_kernel(problem.kernel).epilogue
        epi = Fp8Epilogue(dataclasses.replace(spec, quantized=""), quantized=spec.quantized)
        fa, fb = ("e4m3" if d == "float8_e4m3fn" else "e5m2" for d in operand_dtypes(s.dtype))
        key = _family_launch_key(epi, s.m, s.n, s.k, max(s.experts, 1), bool(s.experts), fa, fb, None, cl.tuned_root())
        assert key.cfg == best
    finally:
        cl.clear_cache()


def test_budget_counts_the_fp8_space():
    n = len(space.grid(block_scaled=True))
    assert tuner.study_budget(10 ** 6, space_kw=FC1.space_kw) == n
    assert tuner.study_budget(10 ** 6) == len(space.grid())


def test_cli_simulated_fp8_sweep(capsys, tmp_path):
    rc = main(["sweep", "--kernel", "fp8_fc1_srelu", "--m", "4096", "--n", "1856", "--k", "2688", "--experts", "8",
               "--simulate", "--trials", "5", "--quiet", "--try", "tile_n=256,ab_stages=4", "--root", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0 and "fp8_fc1_srelu float8_e4m3fn M=4096 N=1856 K=2688 E=8" in out
    assert "tuned_configs/ not written" in out and not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv,needle", [
    (["--kernel", "fp8_fc2", "--m", "64", "--n", "2688", "--k", "1864"], "multiple of 16"),
    (["--kernel", "fc2", "--m", "64", "--n", "2688", "--k", "1856", "--dtype", "float8_e4m3fn"], "bfloat16 or float16"),
    (["--kernel", "fp8_fc2", "--m", "64", "--n", "2688", "--k", "1856", "--try", "tile_k=64"],
     "unknown parameter 'tile_k'"),
])
def test_cli_refuses_what_the_fp8_kernels_cannot_take(argv, needle, capsys):
    with pytest.raises(SystemExit):
        main(["sweep", *argv, "--simulate"])
    assert needle in capsys.readouterr().err


def test_compile_only_sweeps_the_fp8_space(capsys):
    """One compile class of the FP8 FC2 space compiles for sm_90a without a GPU (ptxas, where
    installed, reports no spill)."""
    rc = main(["compile-only", "--arch", "sm90", "--kernel", "fp8_fc2", "--limit", "1", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and "fp8_fc2: 6 configs left of 6" in out, out


# ---------------------------------------------------------------- the FP8 step's launches, fixed candidates
DGRAD = Problem("fp8_dgrad_dact", ShapeKey("float8_e4m3fn", 8192, 16384, 4096))


def _step_problems():
    from autotune.shapes import MODEL_PRESETS, fp8_step_shapes

    shapes = [s for name in ("dense-4096x16384", "moe-e8") for s in fp8_step_shapes(**MODEL_PRESETS[name])]
    return [Problem(s["kernel"], ShapeKey("float8_e4m3fn", s["m"], s["n"], s["k"], s["experts"])) for s in shapes]


def test_fp8_step_shapes_are_the_lookups_of_the_step():
    """Dense 8192 x 4096 -> 16384 and E=8 16384 tokens 2688 -> 1856: FC1 (M, F, H), FC2 and the
    FC1 data gradient (M, H, F), the FC2 data gradient with the activation derivative (M, F, H)."""
    got = {(p.kernel, p.shape.m, p.shape.n, p.shape.k, p.shape.experts) for p in _step_problems()}
    assert got == {("fp8_fc1_srelu", 8192, 16384, 4096, 0), ("fp8_fc2", 8192, 4096, 16384, 0),
                   ("fp8_dgrad_dact", 8192, 16384, 4096, 0), ("fp8_fc1_srelu", 16384, 1856, 2688, 8),
                   ("fp8_fc2", 16384, 2688, 1856, 8), ("fp8_dgrad_dact", 16384, 1856, 2688, 8)}


def test_candidate_list_builds_configs_every_step_launch_can_run():
    """Each candidate the tuner enqueues is a distinct non-default config the FP8 kernel's rules
    (config.block_scaled_errors with the launch's epilogue, dense or grouped) accept; the list is
    long enough that every launch gets 8 (the activation derivative: no 256-wide tiles)."""
    from cute_kernels.config import block_scaled_errors

    for problem in _step_problems():
        tries = tuner.candidate_tries(problem, len(space_fp8.CANDIDATES))
        base = space.to_params(problem.default_config(), block_scaled=True)
        cfgs = [space.to_config({**base, **t}, block_scaled=True) for t in tries]
        assert len(cfgs) >= 8 and len(set(cfgs)) == len(cfgs) and problem.default_config() not in cfgs
        for cfg in cfgs:
            assert block_scaled_errors(cfg, problem.spec.epilogue, arch="sm90", grouped=bool(problem.shape.experts),
                                       majors=("k", "k")) == [], (problem.label(), cfg)
        if problem.kernel == "fp8_dgrad_dact":
            assert all(c.tile_n == 128 and c.tile_m == 128 for c in cfgs)
        else:
            assert len(cfgs) >= 12 and cfgs[:8] == [space.to_config({**base, **t}, block_scaled=True)
                                                     for t in space_fp8.CANDIDATES[:8]]
        if problem.kernel == "fp8_fc2":  # the 256x128 tile: plain outputs only
            assert any(c.tile_m == 256 for c in cfgs)
        assert tuner.candidate_tries(problem, 6) == tries[:6]


def test_cli_fp8_step_with_candidates_times_the_default_and_n_candidates(capsys, tmp_path):
    rc = main(["sweep", "--preset", "dense-4096x16384,moe-e8", "--fp8", "--candidates", "3", "--simulate", "--quiet",
               "--root", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0 and "| 4 (4/0) |" in out and "FC2 data gradient + activation derivative" in out
    rows = [line for line in out.splitlines() if line.startswith("| fp8_")]
    assert len(set(rows)) == 6 and all("| 4 (4/0) |" in r for r in rows), rows  # (each also printed when done)
    assert "winner TFLOP/s" in out


@pytest.mark.parametrize("argv,needle", [
    (["--kernel", "fc2", "--m", "64", "--n", "2688", "--k", "1856", "--candidates", "2"], "fp8_* kernel"),
    (["--kernel", "fp8_fc2", "--m", "64", "--n", "2688", "--k", "1856", "--fp8"], "--fp8 takes"),
    (["--preset", "moe-e8", "--fp8", "--candidates", "99"], "the list holds"),
    (["--preset", "moe-e8,nope", "--fp8"], "unknown preset 'nope'"),
])
def test_cli_refuses_bad_fp8_step_arguments(argv, needle, capsys):
    with pytest.raises(SystemExit):
        main(["sweep", *argv, "--simulate"])
    assert needle in capsys.readouterr().err


def test_dgrad_dact_entry_is_read_by_its_launch_and_keyed_by_dtype(tmp_path, monkeypatch):
    """A tuned fp8_dgrad_dact entry, written by the sweep's storage code, is what the FP8 dgrad
    launch (the epilogue `fp8_dgrad_dact` builds) looks up; an fp8_fc2 entry of the same shape
    (timed with the plain epilogue) is not, nor one of another FP8 format, and bf16 lookups never
    see FP8 entries."""
    from cute_kernels.epilogue import EpilogueSpec
    from cute_kernels.fp8.epilogue import Fp8Epilogue
    from cute_kernels.fp8.ops import _family_launch_key, family_kernel
    from cute_kernels.fp8.recipe import Fp8Recipe
    from cute_kernels.tuned_store import make_record, merge_write

    root = str(tmp_path)
    recipe = Fp8Recipe()
    # the epilogue fp8_dgrad_dact builds for the training step's call (relu^2, postact recompute)
    epi = Fp8Epilogue(EpilogueSpec("dact", store_postact=True), quantized="", q_format=recipe.grad_format,
                      pow2_scales=recipe.pow2_scales)
    assert family_kernel(epi) == "fp8_dgrad_dact"
    tuned = dataclasses.replace(FP8_DEFAULT_CONFIG, cluster_m=2, cluster_n=1, epi_n=64)
    other = dataclasses.replace(FP8_DEFAULT_CONFIG, cluster_m=1, cluster_n=1)
    s = DGRAD.shape

    def write(kernel, dtype, cfg):
        sk = ShapeKey(dtype, s.m, s.n, s.k)
        rec = make_record(sk, cfg, time_ms=1.0, default_time_ms=1.2, device="H200", dsl_version="4.8.1",
                          date="2026-12-03", trials=7, timing="sustained")
        merge_write(file_path("sm90", kernel, root), {sk.key(): rec})

    write("fp8_fc2", "float8_e4m3fn", other)  # the plain GEMM's entry at the dgrad's shape
    write("fp8_dgrad_dact", "float8_e5m2+float8_e4m3fn", other)
    monkeypatch.setenv("CUTE_KERNELS_TUNED_CONFIGS", root)
    cl.clear_cache()
    try:
        def launch(fa="e4m3"):
            return _family_launch_key(epi, s.m, s.n, s.k, 1, False, fa, "e4m3", None, cl.tuned_root()).cfg

        assert launch() == FP8_DEFAULT_CONFIG and launch("e5m2") == other
        write("fp8_dgrad_dact", "float8_e4m3fn", tuned)
        cl.clear_cache()
        assert launch() == tuned and launch("e5m2") == other
        assert cl.lookup_config("fc2_dgrad_dsrelu", arch="sm90", dtype="bfloat16", m=s.m, n=s.n, k=s.k) \
            != tuned  # the bf16 kernel's lookup never takes an FP8 entry
    finally:
        cl.clear_cache()


def test_sweep_of_the_dgrad_writes_an_entry_its_launch_reads(tmp_path, monkeypatch):
    root = str(tmp_path)
    runner = FakeRunner(DGRAD)
    res = tuner.sweep(DGRAD, runner, cost, arch="sm90", storage=None, n_trials=1 + 6, root=root,
                      device="FakeGPU", progress=False, tries=tuner.candidate_tries(DGRAD, 6))
    assert res.trials == 7 and res.pruned == 0 and len(set(runner.prepared)) == 7
    assert res.accepted and res.written == file_path("sm90", "fp8_dgrad_dact", root)
    best = space.to_config(res.best_params, block_scaled=True)
    assert (best.cluster_m, best.cluster_n) == (2, 1)  # the cost model's favourite among 128-wide tiles
    monkeypatch.setenv("CUTE_KERNELS_TUNED_CONFIGS", root)
    cl.clear_cache()
    try:
        from cute_kernels.fp8.epilogue import Fp8Epilogue
        from cute_kernels.fp8.ops import _family_launch_key

        epi = Fp8Epilogue(DGRAD.spec.epilogue)
        s = DGRAD.shape
        assert _family_launch_key(epi, s.m, s.n, s.k, 1, False, "e4m3", "e4m3", None, cl.tuned_root()).cfg == best
    finally:
        cl.clear_cache()
