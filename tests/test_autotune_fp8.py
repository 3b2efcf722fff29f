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
    assert space.grid_values(block_scaled=True) is space_fp8.GRID and len(g) == 2 * 2 * 1 * 3 * 2 * 3 * 2 * 3 * 4
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
