"""Every module under benchmarks/ and scripts/ against the current API, without a GPU: each
imports, each command's argument parser builds (`--help`) and parses its defaults, and the
report code (tables, summaries, plots) runs on a fake result; where that code reads the
offload scheduler or the autotuner, on real CPU objects of them (issue 25: bench_nemotron read
`OffloadScheduler.plans` after the planner renamed it and crashed after an hour of GPU time)."""
import argparse
import ast
import glob
import importlib
import importlib.util
import os
import runpy
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = sorted(os.path.relpath(p, ROOT) for d in ("benchmarks", "scripts") for p in glob.glob(f"{ROOT}/{d}/*.py"))
# module-level functions whose names say they format or summarise results: each needs a test
# below that runs it on a fake result (REPORT_TESTED lists those that have one)
REPORT_WORDS = ("report", "table", "summary", "render", "plot", "verdict", "format", "results", "metrics")
REPORT_TESTED = {
    "benchmarks/bench_fp8.py": {"format_wgrad_table"},
    "benchmarks/bench_gemm.py": {"format_table"},
    "benchmarks/bench_host_path.py": {"format_rows"},
    "benchmarks/bench_host_overhead.py": {"verdicts"},
    "benchmarks/bench_mlp.py": {"format_compile_table"},
    "benchmarks/bench_nemotron.py": {"report", "plot", "offload_summary", "routed_table"},
    "benchmarks/bench_untuned_m.py": {"format_table", "summary_lines"},
    "benchmarks/bench_fp8_untuned_m.py": {"format_table", "summary_lines"},
    "benchmarks/op_profile.py": {"format_op_summary"},
    "benchmarks/bench_offload.py": {"render_timeline"},  # tests/test_bench_offload.py
    "benchmarks/snapshot_analysis.py": {"plot"},  # tests/test_snapshot_analysis.py
    "scripts/compare_sm100_cutlass.py": {"metrics"},
    "scripts/fp8_training_check.py": {"verdict"},
    "scripts/gpu_sweep_scaling.py": {"results", "scaling_table"},
}
# ... and those that measure on the GPU as they build their table (nothing to fake)
GPU_MEASURING = {"benchmarks/bench_mlp.py": {"_quack_table"}}


def _tree(path):
    with open(os.path.join(ROOT, path)) as f:
        return ast.parse(f.read())


def _has_main_block(path) -> bool:
    return any(isinstance(n, ast.If) and "__main__" in ast.unparse(n.test) for n in _tree(path).body)


def load(path):
    """The module at `path` (benchmarks/ as its package, scripts/ by file)."""
    name = path[:-3].replace("/", ".")
    if path.startswith("benchmarks/"):
        return importlib.import_module(name)
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _Parsed(Exception):
    """Raised by the patched parser once the command's arguments parsed: nothing after it runs."""


def run_main(path, argv, monkeypatch):
    """Run `path` as `python path ARGV` in this process, stopping right after its arguments parse."""
    original = argparse.ArgumentParser.parse_known_args

    def parse_then_stop(self, *a, **k):
        ns, extra = original(self, *a, **k)
        raise _Parsed(ns)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [path, *argv])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(ROOT)
    runpy.run_path(os.path.join(ROOT, path), run_name="__main__")


def test_every_file_is_covered():
    assert "benchmarks/bench_nemotron.py" in MODULES and "scripts/gpu_sweep_scaling.py" in MODULES


@pytest.mark.parametrize("path", MODULES)
def test_imports_and_parses_its_arguments(path, monkeypatch, capsys, tmp_path):
    mod = load(path)
    assert mod is not None
    if not _has_main_block(path):
        return
    monkeypatch.setenv("OUT", str(tmp_path))
    with pytest.raises(SystemExit) as exc:
        run_main(path, ["--help"], monkeypatch)
    assert exc.value.code == 0, capsys.readouterr()
    assert "usage:" in capsys.readouterr().out
    with pytest.raises(_Parsed):  # the defaults parse (their types convert)
        run_main(path, [], monkeypatch)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("path", MODULES)
def test_report_code_has_a_fake_result_test(path):
    names = {n.name for n in _tree(path).body if isinstance(n, ast.FunctionDef)
             and any(w in n.name for w in REPORT_WORDS)}
    missing = names - REPORT_TESTED.get(path, set()) - GPU_MEASURING.get(path, set())
    assert not missing, f"{path}: add a test running {sorted(missing)} on a fake result to tests/test_scripts_cpu.py"


# ---------------------------------------------------------------- report code on fake results
def test_host_overhead_verdicts_compare_within_one_run():
    from benchmarks.bench_host_overhead import verdicts

    lines = verdicts({(8, False): 0.80, (8, True): 0.70, (0, False): 0.75}, eager_ms=1.60, graph_ms=1.45)
    assert lines == ["- target E=8 eager <= 1.1x graph replay: 1.10x (not met)",
                     "- target host <= 0.5x GPU, E=8 list splits: 0.55x (not met)",
                     "- target host <= 0.5x GPU, E=8 tensor splits: 0.48x (met)"]
    assert verdicts({}, eager_ms=1.5, graph_ms=1.45)[0].endswith("1.03x (met)")


def test_bench_gemm_table():
    from benchmarks.bench_gemm import format_table

    row = dict(shape="fc2 M=64", ours_ms=1.0, ours_tflops=500.0, torch_mm_ms=1.2, torch_mm_tflops=400.0,
               vs_torch_mm=1.2, torch_act_ms=1.5, vs_torch_act=1.5, rel_err=1e-3, host_us=12.0)
    text = format_table([row, {"shape": "fc1 M=64", "error": "boom"}])
    assert "| fc2 M=64 | 1.000 | 500 |" in text and "ERROR: boom" in text


def test_bench_gemm_table_with_compile_columns():
    """torch.compile columns for every mode any row has: ms and our speedup, an error in its own
    column, '-' where a row lacks the mode."""
    from benchmarks.bench_gemm import format_table

    base = dict(ours_ms=2.0, ours_tflops=500.0, torch_mm_ms=2.2, torch_mm_tflops=450.0, vs_torch_mm=1.1,
                rel_err=1e-3, host_us=12.0)
    rows = [dict(base, shape="fc1 A", torch_act_ms=3.0, vs_torch_act=1.5,
                 compile_ms={"default": 2.5, "max-autotune-no-cudagraphs": 2.1}),
            dict(base, shape="fc2 B", compile_ms={"default": "RuntimeError: boom"}),
            dict(base, shape="fc2 C")]
    lines = format_table(rows).splitlines()
    assert "| compile ms | vs compile | compile max-autotune ms | vs compile max-autotune |" in lines[0]
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert "| 2.500 | 1.25x | 2.100 | 1.05x |" in lines[2]
    assert "| ERROR: RuntimeError: boom | - | - | - |" in lines[3]
    assert "| 3.000 | 1.50x |" in lines[2] and lines[4].startswith("| fc2 C | 2.000 |")
    assert "compile" not in format_table([dict(base, shape="x")]).splitlines()[0]


def test_bench_gemm_compiled_baselines_report_failures(monkeypatch):
    """A compile that raises or computes something else is an error string in its column."""
    from benchmarks import bench_gemm

    x = torch.randn(16, 8)
    w = torch.randn(4, 8)
    ref = (x @ w.t()).float()
    results = {"right": lambda a, b: a @ b.t(), "wrong": lambda a, b: a @ b.t() + 1.0}

    def fake_compiled(fn, mode):
        if mode == "raises":
            raise RuntimeError("no compiler")
        return results[mode]

    monkeypatch.setattr(bench_gemm, "compiled", fake_compiled)
    monkeypatch.setattr(bench_gemm, "time_ms", lambda fn: (fn(), 1.25)[1])
    got = bench_gemm.compiled_baselines(bench_gemm._mm, (x, w), ref, ["right", "wrong", "raises"])
    assert got["right"] == 1.25
    assert got["wrong"].startswith("RuntimeError: compiled result off by")
    assert got["raises"] == "RuntimeError: no compiler"


def test_bench_fp8_wgrad_table():
    """TFLOP/s = 2*M*N*K / ms, ratios against torch._scaled_mm rowwise of the same shape, an error
    row keeps the table's shape, and the 900 TFLOP/s target line per shape reads our best FP8 burst."""
    from benchmarks.bench_fp8 import ROWWISE_CASE, WGRAD_SHAPES, format_wgrad_table

    fl = 2.0 * 16384 * 4096 * 8192  # 1.0995e12 FLOP: 1 ms is 1100 TFLOP/s
    a, b = WGRAD_SHAPES[0][0], WGRAD_SHAPES[1][0]
    rows = [dict(shape=a, case="ours fp8 wgrad 1D1D (fp32 out)", flops=fl, rel_err=1e-3, burst_ms=1.25,
                 sustained_ms=1.5, power_w=690.0),
            dict(shape=a, case="ours fp8 wgrad 1D1D (bf16 out)", flops=fl, rel_err=2e-3, burst_ms=1.1,
                 sustained_ms=1.4, power_w=690.0),
            dict(shape=a, case=ROWWISE_CASE, flops=fl, rel_err=1e-3, burst_ms=1.375, sustained_ms=1.75, power_w=700.0),
            dict(shape=b, case="ours fp8 wgrad 1D1D (fp32 out)", flops=fl, rel_err=1e-3, burst_ms=2.2),
            dict(shape=b, case=ROWWISE_CASE, flops=fl, error="RuntimeError: no rowwise")]
    lines = format_wgrad_table(rows)
    table = [line for line in lines if line.startswith("|")]
    assert all(line.count("|") == table[0].count("|") for line in table)
    assert table[2] == f"| {a} | ours fp8 wgrad 1D1D (fp32 out) | 1.00e-03 | 1.250 | 880 | 1.10 | 1.500 | 733 | 1.17 | 690 |"
    assert table[3].startswith(f"| {a} | ours fp8 wgrad 1D1D (bf16 out) | 2.00e-03 | 1.100 | 1000 | 1.25 |")
    assert table[5] == f"| {b} | ours fp8 wgrad 1D1D (fp32 out) | 1.00e-03 | 2.200 | 500 | - | - | - | - | - |"
    assert "error: RuntimeError: no rowwise" in table[6]
    assert f"- target >= 900 TFLOP/s burst, {a}: 1000 (met)" in lines
    assert f"- target >= 900 TFLOP/s burst, {b}: 500 (not met)" in lines


def test_bench_fp8_wgrad_shapes_are_the_dense_steps_and_selectable_alone(monkeypatch):
    """dW1 = dpreact^T x is (F, H) and dW2 = dy^T postact is (H, F), both over the dense step's
    tokens; `--no-gemm --no-grouped --no-step` leaves the weight-gradient table alone."""
    from benchmarks.bench_fp8 import STEP_SHAPES, WGRAD_SHAPES

    (_, m, h, f, e), = [s for s in STEP_SHAPES if s[4] == 0]
    assert [s[1:] for s in WGRAD_SHAPES] == [(m, f, h), (m, h, f)]
    with pytest.raises(_Parsed) as exc:
        run_main("benchmarks/bench_fp8.py", ["--no-gemm", "--no-grouped", "--no-step"], monkeypatch)
    ns = exc.value.args[0]
    assert ns.no_gemm and ns.no_grouped and ns.no_step and not ns.no_wgrad and not ns.no_sustained


def test_bench_fp8_grouped_wgrad_rows_are_the_grouped_steps_shapes():
    """The grouped E=8 step's dW1 (E, F, H) and dW2 (E, H, F) over its tokens; their rows have no
    rowwise ratio and no dense target line; the step table's grouped shape has the grouped-kernel
    variant behind its switch."""
    import inspect

    from benchmarks import bench_fp8
    from benchmarks.bench_fp8 import GROUPED_WGRAD_SHAPES, STEP_SHAPES, format_wgrad_table

    (_, m, h, f, e), = [s for s in STEP_SHAPES if s[4]]
    assert [s[1:] for s in GROUPED_WGRAD_SHAPES] == [(m, e, f, h), (m, e, h, f)]
    name = GROUPED_WGRAD_SHAPES[0][0]
    lines = format_wgrad_table([dict(shape=name, case="ours fp8 grouped wgrad 1D1D staged (fp32 out)",
                                     flops=2.0 * m * f * h, rel_err=1e-3, burst_ms=0.25)])
    assert lines[5].startswith(f"| {name} | ours fp8 grouped wgrad 1D1D staged (fp32 out) | 1.00e-03 | 0.250 | 654 | - |")
    assert not [line for line in lines if line.startswith("- target")]
    assert "CUTE_KERNELS_FP8_GROUPED_WGRAD" in inspect.getsource(bench_fp8.step_rows)


def test_bench_mlp_compile_table():
    from benchmarks.bench_mlp import format_compile_table

    rows = [{"shape": "dense", "variants": {"torch eager": (10.0, 10.5, 1728.0), "torch.compile": (9.7, 9.9, 704.0),
                                            "torch.compile max-autotune": "RuntimeError: boom",
                                            "cute": (9.5, 9.6, 960.0)}},
            {"shape": "E=8", "variants": {"torch eager": (2.0, 1.9, 450.0), "cute": "InputError: bad"}}]
    lines = format_compile_table(rows).splitlines()
    assert lines[2] == "| dense | torch eager | 10.00 | 10.50 | 1728 | 1.05x / 1.09x |"
    assert lines[3] == "| dense | torch.compile | 9.70 | 9.90 | 704 | 1.02x / 1.03x |"
    assert "| dense | torch.compile max-autotune | ERROR: RuntimeError: boom |" in lines[4]
    assert lines[5] == "| dense | cute | 9.50 | 9.60 | 960 | 1.00x / 1.00x |"
    assert lines[6] == "| E=8 | torch eager | 2.00 | 1.90 | 450 | - |"  # no cute time to compare with
    assert all(line.count("|") == lines[0].count("|") for line in lines)


def test_compile_modes_argument():
    from benchmarks.compiled_baseline import COMPILE_MODES, parse_modes

    assert parse_modes(",".join(COMPILE_MODES)) == ("default", "max-autotune-no-cudagraphs")
    assert parse_modes("none") == () and parse_modes("") == ()
    with pytest.raises(ValueError, match="unknown torch.compile mode"):
        parse_modes("default,fastest")


def _untuned_row(problem, m, base, nearest, wave=None, target=0.98):
    from cute_kernels.config import GemmConfig

    cfg = GemmConfig()
    lookups = {"nearest": {"source": "default", "config": cfg, "ms": {"burst": nearest, "sustained": nearest * 1.1},
                           "rel_err": 1e-3}}
    if wave is not None:
        lookups["wave"] = {"source": "wave default 128x192 c2x1", "config": GemmConfig(tile_n=192),
                           "ms": {"burst": wave, "sustained": wave * 1.1}, "rel_err": 1e-3}
    return {"problem": problem, "kernel": "fc2", "m": m, "n": 4096, "k": 16384, "baseline": "cuBLAS",
            "target": target, "baseline_ms": {"burst": base, "sustained": base * 1.1}, "lookups": lookups}


def test_bench_untuned_m_table_and_summary():
    """Speedup = baseline ms / ours per lookup and mode; the summary names the least speedup, its
    M and how many M values meet the target; an error row keeps the table's shape."""
    from benchmarks.bench_untuned_m import UNTUNED_M, format_table, summary_lines

    assert len(UNTUNED_M) == len(set(UNTUNED_M)) == 20 and all(1000 <= m <= 40000 for m in UNTUNED_M)
    rows = [_untuned_row("fc2_down", 1000, 1.0, 1.0, 0.8), _untuned_row("fc2_down", 5000, 2.0, 2.5, 2.0),
            {"problem": "fc2_down", "m": 7000, "n": 4096, "k": 16384, "baseline": "cuBLAS", "target": 0.98,
             "error": "RuntimeError: boom"},
            _untuned_row("fc1_srelu", 1337, 3.0, 2.0, target=1.15)]
    lines = format_table(rows).splitlines()
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert "| burst base ms | burst nearest ms | burst wave ms | burst nearest x | burst wave x |" in lines[0]
    assert "| 1.000 | 1.000 | 0.800 | 1.000x | 1.250x |" in lines[2]
    assert "| 2.000 | 2.500 | 2.000 | 0.800x | 1.000x |" in lines[3]
    assert "ERROR: RuntimeError: boom" in lines[4]
    assert "| 3.000 | 2.000 | - | 1.500x | - |" in lines[5]
    assert "128x192 c1x2 coop (wave default 128x192 c2x1)" in lines[2]
    summary = summary_lines(rows)
    assert "fc2_down nearest burst: least 0.800x at M=5000, 1/2 M values >= 0.98x vs cuBLAS (1 errors)" in summary
    assert "fc2_down wave burst: least 1.000x at M=5000, 2/2 M values >= 0.98x vs cuBLAS (1 errors)" in summary
    assert "fc1_srelu nearest sustained: least 1.500x at M=1337, 1/1 M values >= 1.15x vs cuBLAS" in summary
    assert summary_lines([rows[2]]) == ["fc2_down: no result (1 errors)"]


def test_bench_untuned_m_values_are_untuned_and_its_lookup_switch_works(monkeypatch):
    from benchmarks import bench_untuned_m as b
    from cute_kernels import config_lookup as cl

    monkeypatch.delenv("CUTE_KERNELS_TUNED_CONFIGS", raising=False)
    monkeypatch.setenv(cl.WAVE_LOOKUP_ENV, "0")
    cl.clear_cache()
    try:
        for kernel, n, k, _, _ in b.PROBLEMS.values():
            tuned = {m for m, _ in cl.tuned_entries("sm90", kernel).get(("bfloat16", n, k, 0), [])}
            assert not tuned & set(b.UNTUNED_M)
        b._use_lookup("wave")
        assert cl.wave_lookup_enabled()
        cfg, source = b.resolved_config("fc1_srelu", 12345, 16384, 4096, "wave")
        assert source.startswith("wave") and cl.lookup_config("fc1_srelu", arch="sm90", dtype="bfloat16", m=12345,
                                                               n=16384, k=4096) == cfg
        b._use_lookup("nearest")
        assert not cl.wave_lookup_enabled()
    finally:
        cl.clear_cache()


def test_bench_untuned_m_without_a_gpu_says_so_in_one_line(monkeypatch, capsys):
    from benchmarks import bench_untuned_m

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench_untuned_m.main(["--m", "1000"]) == 2  # (also in test_bench_no_gpu with no arguments)
    err = capsys.readouterr().err
    assert err.strip() == "bench_untuned_m needs a CUDA GPU"
    with pytest.raises(SystemExit) as exc:
        bench_untuned_m.main(["--kernels", "fc3"])
    assert exc.value.code == 2 and "unknown ['fc3']" in capsys.readouterr().err


def _fp8_untuned_row(problem, m, picked, rowwise, **ours):
    """A fake bench_fp8_untuned_m row: burst ms per case, sustained = 1.1 x burst."""
    label = {"default": "default", "wide": "128x256 c2x1", "c2x1": "128x128 c2x1"}
    cases = {"rowwise": rowwise} | {label[k]: v for k, v in ours.items()}
    cases = {lb: (dict(v) if isinstance(v, dict) else {"burst_ms": v, "sustained_ms": v * 1.1, "power_w": 650.0})
             for lb, v in cases.items()}
    return {"problem": problem, "m": m, "n": 16384, "k": 4096, "default": picked, "cases": cases,
            "rel_err": {lb: 2e-3 for lb in cases if lb != "rowwise"},
            "bitwise": {lb: True for lb in cases if lb not in ("rowwise", "default")}}


def test_bench_fp8_untuned_m_table_and_summary():
    """TFLOP/s = 2MNK / time and x rowwise = rowwise ms / ours per config and mode; the summary's
    geometric mean, least x rowwise (its M) and wins (ties count for each: the default running
    128x256 c2x1 wins where that config wins); an error row and a failed config keep the table's shape."""
    from benchmarks.bench_fp8_untuned_m import format_table, summary_lines

    same = {"burst_ms": 0.5, "sustained_ms": 0.55, "same_as": "128x256 c2x1"}
    rows = [_fp8_untuned_row("fc2_up", 1000, ("128x128 c1x2", "default"), 1.0, default=1.25, wide=1.0, c2x1=0.8),
            _fp8_untuned_row("fc2_up", 4321, ("128x256 c2x1", "tuned-nearest m=8192"), 0.5, default=same,
                             wide=0.5, c2x1={"error": "InputError: bad"}),
            {"problem": "fc2_up", "m": 9999, "n": 16384, "k": 4096, "error": "RuntimeError: boom"},
            _fp8_untuned_row("fc2_down", 2900, ("128x128 c1x2", "default"), 2.0, default=2.5, wide=2.0, c2x1=4.0)]
    rows[1]["bitwise"]["128x256 c2x1"] = False
    lines = format_table(rows).splitlines()
    assert all(line.count("|") == lines[0].count("|") for line in lines[:6])
    assert lines[0].startswith("| problem | M | N | K | default config | rel err | bitwise | burst rowwise TFLOP/s | "
                               "burst default TFLOP/s | burst 128x256 c2x1 TFLOP/s | burst 128x128 c2x1 TFLOP/s | "
                               "burst default x | burst 128x256 c2x1 x | burst 128x128 c2x1 x | sustained rowwise")
    flops = 2.0 * 1000 * 16384 * 4096
    assert (f"| 128x128 c1x2 (default) | 2.00e-03 | yes | {flops / 1e9:.0f} | {flops / 1.25e9:.0f} | "
            f"{flops / 1e9:.0f} | {flops / 0.8e9:.0f} | 0.800x | 1.000x | 1.250x |") in lines[2]
    assert "| 128x256 c2x1 (tuned-nearest m=8192) | 2.00e-03 | no: 128x256 c2x1 |" in lines[3]
    assert "| ERR | 1.000x | 1.000x | - |" in lines[3]
    assert "ERROR: RuntimeError: boom" in lines[4]
    assert "- error: fc2_up M=4321 128x128 c2x1: InputError: bad" in lines
    summary = summary_lines(rows)
    assert ("fc2_up burst default (ran 128x128 c1x2 at 1 M, 128x256 c2x1 at 1 M): geomean 0.894x rowwise, "
            "least 0.800x at M=1000, fastest of ours at 1/2 M (1 errors)") in summary
    assert "fc2_up burst 128x256 c2x1: geomean 1.000x rowwise, least 1.000x at M=1000, fastest of ours at 1/2 M (1 errors)" \
        in summary
    assert "fc2_up sustained 128x128 c2x1: geomean 1.250x rowwise, least 1.250x at M=1000, fastest of ours at 1/2 M " \
        "(1 errors)" in summary
    assert "fc2_down burst 128x256 c2x1: geomean 1.000x rowwise, least 1.000x at M=2900, fastest of ours at 1/1 M" \
        in summary
    assert "fc2_down burst 128x128 c2x1: geomean 0.500x rowwise, least 0.500x at M=2900, fastest of ours at 0/1 M" \
        in summary
    assert summary_lines([rows[2]]) == ["fc2_up: no result (1 errors)"]
    burst_only = [dict(r, cases={lb: {"burst_ms": c["burst_ms"]} for lb, c in r["cases"].items()}) for r in rows[:1]]
    assert "sustained" not in format_table(burst_only) and all("sustained" not in s for s in summary_lines(burst_only))


def test_bench_fp8_untuned_m_default_is_what_fp8_gemm_launches(monkeypatch):
    """The table's default config is the one fp8_gemm's launch key takes at each M (the tuned entry
    near 8192 for 16384 -> 4096, the kernel's default elsewhere), and the timed configs can run."""
    from benchmarks import bench_fp8_untuned_m as b
    from cute_kernels import config_lookup as cl
    from cute_kernels.epilogue import EpilogueSpec
    from cute_kernels.fp8.epilogue import Fp8Epilogue
    from cute_kernels.fp8.ops import _check_config_arg, _family_launch_key, family_kernel

    monkeypatch.delenv("CUTE_KERNELS_TUNED_CONFIGS", raising=False)
    cl.clear_cache()
    epi = Fp8Epilogue(EpilogueSpec("identity"))
    assert family_kernel(epi) == b.KERNEL
    sources = set()
    try:
        for n, k in b.PROBLEMS.values():
            for m in b.DEFAULT_M:
                cfg, source = b.default_config(m, n, k)
                assert _family_launch_key(epi, m, n, k, 1, False, "e4m3", "e4m3", None, cl.tuned_root()).cfg == cfg
                assert source != "tuned"  # untuned M values
                sources.add(source)
    finally:
        cl.clear_cache()
    assert "default" in sources and any(s.startswith("tuned-nearest") for s in sources)
    for cfg in b.CONFIGS.values():
        _check_config_arg(cfg, epi)  # InputError if the FP8 mainloop cannot run it
    assert len(b.DEFAULT_M) == 10 and set(b.DEFAULT_M) <= set(b.UNTUNED_M)


def test_bench_fp8_untuned_m_problem_on_cpu_fakes(monkeypatch):
    """bench_problem's flow with CPU stand-ins for the GPU calls: every config's output checked
    against the dequantized product (rel err) and the first (bitwise), a config that raises is
    reported and not timed, and the default is timed only when it runs none of the timed configs."""
    from benchmarks import bench_fp8_untuned_m as b
    from cute_kernels import config_lookup as cl
    from cute_kernels.fp8 import ops
    from cute_kernels.fp8.recipe import dequantize, quantize_1x128, quantize_128x128

    def operands(m, n, k, seed=0):  # small CPU operands whatever the shape
        g = torch.Generator().manual_seed(seed)
        x, w = torch.randn(72, 256, generator=g).bfloat16(), (torch.randn(256, 256, generator=g) * 0.02).bfloat16()
        return (x, w, *quantize_1x128(x), *quantize_128x128(w))

    calls, timed = [], []

    def fake_gemm(a, sa, b_, sb, config=None):
        calls.append(config)
        if config == b.CONFIGS["128x128 c2x1"]:
            raise RuntimeError("no kernel")
        out = (dequantize(a, sa.contiguous()) @ dequantize(b_, sb).t()).bfloat16()
        return out + 1 if config is None and bump else out

    def fake_measure(row, fn, sustained, seconds, warm_s):
        timed.append(fn)
        return dict(row, burst_ms=1.0, sustained_ms=1.1)

    monkeypatch.setattr(b, "fp8_operands", operands)
    monkeypatch.setattr(b, "measure", fake_measure)
    monkeypatch.setattr(b, "scaled_mm_rowwise", lambda *a: "rowwise fn")
    monkeypatch.setattr(ops, "fp8_gemm", fake_gemm)
    monkeypatch.delenv("CUTE_KERNELS_TUNED_CONFIGS", raising=False)
    cl.clear_cache()
    try:
        bump = False
        row = b.bench_problem("fc2_up", 1000, b.CONFIGS, True, 0.25)
        assert row["default"] == ("128x128 c1x2", "default") and calls[0] is None
        assert row["rel_err"].keys() == {"default", "128x256 c2x1"} and max(row["rel_err"].values()) < 1e-2
        assert row["bitwise"] == {"128x256 c2x1": True}
        assert row["cases"]["128x128 c2x1"] == {"error": "RuntimeError: no kernel"}
        assert list(row["cases"]) == ["128x128 c2x1", "rowwise", "default", "128x256 c2x1"] and len(timed) == 3
        assert timed[0] == "rowwise fn"
        timed.clear()
        bump = True  # the default's output differs from the others: said, not hidden
        row = b.bench_problem("fc2_down", 4321, b.CONFIGS, True, 0.25)
        assert row["default"] == ("128x256 c2x1", "tuned-nearest m=8192")
        assert row["bitwise"] == {"128x256 c2x1": False} and row["rel_err"]["default"] > 1e-1
        assert len(timed) == 2 and row["cases"]["default"] == dict(row["cases"]["128x256 c2x1"],
                                                                    same_as="128x256 c2x1")
    finally:
        cl.clear_cache()


def test_bench_fp8_untuned_m_arguments(monkeypatch, capsys):
    from benchmarks import bench_fp8_untuned_m as b

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert b.main(["--m", "1000", "--configs", "128x256c2x1", "--no-sustained"]) == 2
    assert capsys.readouterr().err.strip() == "bench_fp8_untuned_m needs a CUDA GPU"
    for argv, says in ((["--problems", "fc1_srelu"], "unknown ['fc1_srelu']"), (["--configs", "64x64c1x1"], "64x64c1x1"),
                       (["--m", "0"], "at least 1"), (["--m", "1e3"], "whole numbers"),
                       (["--sustained-s", "0"], "positive")):
        with pytest.raises(SystemExit) as exc:
            b.main(argv)
        assert exc.value.code == 2 and says in capsys.readouterr().err


def test_bench_host_path_rows():
    from benchmarks.bench_host_path import format_rows

    text = format_rows([("fc1_srelu", "dense M=64", 12.34), ("srelu_mlp step (fwd+bwd, 6 GEMMs)", "E=8, tensor splits", 99.0)])
    assert text.splitlines()[2] == "| fc1_srelu | dense M=64 | 12.3 |" and "| E=8, tensor splits | 99.0 |" in text


def _fake_step_events():
    """Two steps' worth of profiler events: per step a Python frame of ours issuing aten::select
    (with its aten::as_strided inside) and aten::empty, a CUDA launch call and a kernel on the GPU;
    and an op outside the steps."""
    from types import SimpleNamespace as Ev

    cpu, cuda = torch.autograd.DeviceType.CPU, torch.autograd.DeviceType.CUDA
    events = [Ev(name="aten::zeros", device_type=cpu, self_cpu_time_total=50.0, cpu_time_total=50.0, cpu_parent=None)]
    for _ in range(2):
        step = Ev(name="host_step", device_type=cpu, self_cpu_time_total=1.0, cpu_time_total=100.0, cpu_parent=None)
        torch_frame = Ev(name="torch/autograd/function.py(609): apply", device_type=cpu, self_cpu_time_total=2.0,
                         cpu_time_total=60.0, cpu_parent=step)
        ours = Ev(name="cute_kernels/host_args.py(72): splits_metadata", device_type=cpu, self_cpu_time_total=4.0,
                  cpu_time_total=50.0, cpu_parent=torch_frame)
        select = Ev(name="aten::select", device_type=cpu, self_cpu_time_total=3.0, cpu_time_total=5.0, cpu_parent=ours)
        inner = Ev(name="aten::as_strided", device_type=cpu, self_cpu_time_total=2.0, cpu_time_total=2.0,
                   cpu_parent=select)
        empty = Ev(name="aten::empty", device_type=cpu, self_cpu_time_total=6.0, cpu_time_total=6.0, cpu_parent=ours)
        launch = Ev(name="cuLaunchKernelEx", device_type=cpu, self_cpu_time_total=8.0, cpu_time_total=8.0,
                    cpu_parent=ours)
        kernel = Ev(name="kernel_cutlass_gemm", device_type=cuda, self_cpu_time_total=0.0, cpu_time_total=0.0,
                    cpu_parent=None, time_range=Ev(elapsed_us=lambda: 700.0))
        events += [step, torch_frame, ours, select, inner, empty, launch, kernel]
    return events


def test_op_profile_summary_of_fake_events():
    from benchmarks.op_profile import format_op_summary, summarize_events

    summary = summarize_events(_fake_step_events(), steps=2)
    assert summary["counts"] == {"aten_ops": 3.0, "torch_ops": 2.0, "launch_calls": 1.0, "gpu_kernels": 1.0}
    assert summary["step_us"] == 100.0 and summary["gpu_us"] == 700.0
    ops = {name: (n, us, caller) for name, n, us, caller in summary["torch_ops"]}
    assert ops == {"aten::select": (1.0, 5.0, "cute_kernels/host_args.py(72): splits_metadata"),
                   "aten::empty": (1.0, 6.0, "cute_kernels/host_args.py(72): splits_metadata")}
    assert summary["self_host"][0] == ("cuLaunchKernelEx", 1.0, 8.0)  # most own time first; aten::zeros is outside
    text = format_op_summary(dict(summary, wall_us=120.0, gc_collections=[0, 2, 0]), top=3)
    assert "host wall time 120 us (inside the step ranges 100 us)" in text
    assert "torch ops dispatched: 2.0 top-level (3.0 aten ops in all)" in text
    assert "CUDA launch calls: 1.0" in text and "on the GPU: 1.0 kernels, 0.0 copies/memsets, busy 700 us" in text
    assert "count): 3 (generation 0: 2, generation 2: 1)" in text
    assert "| aten::select | 1.0 | 5.0 | cute_kernels/host_args.py(72): splits_metadata |" in text
    assert len([line for line in text.splitlines() if line.startswith("| ") and "us per step" not in line
                and " op |" not in line]) == 3 + 2  # top 3 own-time rows, 2 torch op rows


def test_op_profile_records_without_python_frames_when_the_tracer_fails(monkeypatch):
    """torch's Python tracer sometimes records a name that is not UTF-8: after STACK_ATTEMPTS
    failed recordings the steps are recorded without Python frames, and the counts still come."""
    from benchmarks import op_profile
    import torch.profiler as tp

    real = tp.profile
    tries = []

    def flaky(*args, with_stack=False, **kw):
        tries.append(with_stack)
        if with_stack:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
        return real(*args, with_stack=with_stack, **kw)

    monkeypatch.setattr(tp, "profile", flaky)
    a = torch.randn(8, 8)
    summary = op_profile.profile_step_ops(lambda: a @ a, steps=2, warmup=1, cuda=False)
    assert tries == [True] * op_profile.STACK_ATTEMPTS + [False]
    assert summary["python_frames"] is False and summary["counts"]["torch_ops"] == 1.0
    assert "recorded without Python frames" in op_profile.format_op_summary(summary)


@pytest.mark.parametrize("path", ["benchmarks/bench_host_overhead.py", "benchmarks/bench_host_path.py"])
def test_host_benchmarks_parse_profile_ops(path, monkeypatch):
    with pytest.raises(_Parsed) as exc:
        run_main(path, ["--profile-ops", "15"], monkeypatch)
    assert exc.value.args[0].profile_ops == 15


def test_bench_host_path_profile_ops_runs_on_cpu(monkeypatch):
    """The same summary as the GPU's bench_host_overhead --profile-ops, of the stubbed E=8 step
    (on small tensors: what is counted does not depend on the sizes)."""
    from benchmarks import bench_host_path

    monkeypatch.setitem(bench_host_path.GROUPED, "m", 272)
    monkeypatch.setitem(bench_host_path.GROUPED, "h", 136)
    monkeypatch.setitem(bench_host_path.GROUPED, "f", 200)
    text = bench_host_path.profile_ops(5, steps=2)
    assert "torch ops dispatched:" in text and "| aten::empty |" in text


def _planned_cpu_scheduler():
    """An `auto` OffloadScheduler that has planned a 3-layer step on the CPU (pinned timings)."""
    from cute_kernels.mlp import srelu_mlp
    from offload import OffloadPolicy, OffloadScheduler

    g = torch.Generator().manual_seed(0)
    ws = [(torch.randn(64, 32, generator=g, requires_grad=True), torch.randn(32, 64, generator=g, requires_grad=True))
          for _ in range(3)]
    pol = OffloadPolicy(auto=True, min_tensor_bytes=0, d2h_gbps=0.01, h2d_gbps=0.01, layer_ms=(1.0, 2.0))
    sched = OffloadScheduler(pol, num_layers=3, offload_cpu_tensors=True)
    for _ in range(2):
        x = torch.randn(48, 32, generator=g, requires_grad=True)
        for i, (w1, w2) in enumerate(ws):
            with sched.layer(i):
                x = srelu_mlp(x, w1, w2, backend="torch")
        x.sum().backward()
        assert sched.end_step() == {}
    assert sched.step_plan is not None
    return sched


def test_bench_nemotron_report_and_plot_on_a_cpu_scheduler(tmp_path):
    from benchmarks import bench_nemotron

    sched = _planned_cpu_scheduler()
    summary = bench_nemotron.offload_summary(sched)
    assert summary["offloaded_gib"] > 0 and sorted(summary["plans"]) == [0, 1, 2]
    assert all(isinstance(r, str) for roles in summary["plans"].values() for r in roles)
    from offload import OffloadPolicy, OffloadScheduler

    assert bench_nemotron.offload_summary(OffloadScheduler(OffloadPolicy(auto=True, d2h_gbps=1.0, h2d_gbps=1.0),
                                                                    num_layers=2)) == \
        {"offloaded_gib": 0.0, "plans": {}}
    row = lambda name, ms, **extra: dict(variant=name, ms=ms, peak_gib=10.0, act_gib=2.0, first_step_s=3.0, **extra)
    rows = [row("hf eager", 10.0), row("hf, MLP/MoE passed through", 6.0), row("patched", 8.0),
            row("patched, offload auto", 8.5, **summary),
            row("patched, offload auto_measured", 9.0, offloaded_gib=1.0, predicted_peak_gib=(12.0, 9.5), plan="(plan)",
                exposed_ms=0.25),
            row("patched, chunked loss", 8.1),
            {**row("patched, chunked loss + offload auto_measured", 8.2, offloaded_gib=0.5,
                   predicted_peak_gib=(7.5, 7.25), plan="(plan 2)", exposed_ms=0.0), "peak_gib": 7.0, "act_gib": 1.5},
            {"variant": "hf torch.compile", "skipped": "time budget"}]
    routed = _fake_routed()
    text = bench_nemotron.report({"moe": rows, "dense": rows[:3]}, routed, "cpu", 8192)
    assert "chunked loss + offload auto_measured: 0.50 GiB offloaded" in text and "predicted 7.25 GiB" in text
    assert "1.025x the patched step" in text and "peak 0.70x Hugging Face eager's, above the weights 0.75x" in text
    assert "| patched, chunked loss + offload auto_measured | 8.20 | 1.22x | 7.00 | 0.70x |" in text
    assert "offload auto: " in text and "predicted 9.50 GiB" in text and "1.125x the patched step" in text and "waited 0.25 ms" in text and "| patched | 8.00 | 1.25x |" in text and "skipped: time budget" in text
    assert "| ours, fused gather | 1.60 | 1.88x | 0.50 | 400.0 | 0.50x |" in text
    pytest.importorskip("matplotlib")
    bench_nemotron.plot({"moe": rows}, str(tmp_path / "b.png"))
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _fake_routed(**rows):
    """A bench_routed result: the four rows (ms, saved MiB), `rows` replacing some."""
    out = {"tokens": 8, "rows": 48, "experts_hit": 5}
    for k, ms, saved in (("hf grouped_mm experts", 3.0, 800.0), ("ours", 2.0, 600.0), ("ours, fused gather", 1.6, 400.0),
                         ("our grouped op on pre-sorted tokens", 1.5, 590.0)):
        out[k] = {"ms": ms, "act_gib": 0.5, "saved_mib": saved, "saved_largest": [(saved * 2**20, [([48, 16], "bfloat16")])]}
    out.update(rows)
    return out


def test_bench_nemotron_routed_table():
    """Every row's ms, speed and saved bytes against HF's; the issue-28 target lines; a skipped
    row (the fused gather failing on the GPU) and a result without saved bytes (an older JSON)
    still make a table."""
    from benchmarks.bench_nemotron import ROUTED_ROWS, routed_table

    text = "\n".join(routed_table(_fake_routed()))
    assert "| saved activations MiB | saved vs hf |" in text
    assert "| hf grouped_mm experts | 3.00 | 1.00x | 0.50 | 800.0 | 1.00x |" in text
    assert "| ours | 2.00 | 1.50x | 0.50 | 600.0 | 0.75x |" in text
    assert "| our grouped op on pre-sorted tokens | 1.50 | 2.00x | 0.50 | 590.0 | 0.74x |" in text
    assert "sort + gather + combine (fwd+bwd): 0.50 ms = 25% of ours" in text
    assert "fused gather: 1.60 ms = 1.067x the grouped op on pre-sorted tokens (target <= 1x), 0.800x ours" in text
    assert "fused gather saves 0.50x HF's activations (target <= 0.5x)" in text
    assert [l.split(" | ")[0][2:] for l in text.splitlines() if l.startswith("| ") and "---" not in l][1:] == \
        list(ROUTED_ROWS)

    skipped = "\n".join(routed_table(_fake_routed(**{"ours, fused gather": {"skipped": "RuntimeError: boom"}})))
    assert "| ours, fused gather | skipped: RuntimeError: boom | | | | |" in skipped and "fused gather:" not in skipped
    old = {k: ({kk: vv for kk, vv in v.items() if kk != "saved_mib"} if isinstance(v, dict) else v)
           for k, v in _fake_routed().items() if k != "ours, fused gather"}
    text = "\n".join(routed_table(old))
    assert "| ours | 2.00 | 1.50x | 0.50 | - | - |" in text and "fused gather" not in text


def test_bench_nemotron_routed_runs_every_row_on_cpu(monkeypatch):
    """bench_routed on a small bf16 MoE model on CPU (torch path; the fused gather is the cute
    path's, so on CPU its row equals ours): each row's fwd+bwd runs (time_steps faked: one
    step, no CUDA) and its saved bytes are measured; the table renders the result."""
    pytest.importorskip("transformers.models.nemotron_h")
    from nemotron_h_models import small_config, small_model

    from benchmarks import bench_nemotron
    from benchmarks.nemotron_common import Budget

    ran = []

    def one_step(step_fn, batches, *, warmup, steps):
        step_fn(batches[0])
        ran.append(step_fn)
        return 1.0 + len(ran), 2**30, 0, 0.0

    monkeypatch.setattr(bench_nemotron, "time_steps", one_step)
    model = small_model(small_config(), dtype=torch.bfloat16)
    ids = torch.randint(0, 101, (2, 16), generator=torch.Generator().manual_seed(0))
    out = bench_nemotron.bench_routed(model, ids, Budget(60))
    assert len(ran) == 4 and out["rows"] == 32 * 2
    for k in bench_nemotron.ROUTED_ROWS:
        assert out[k]["saved_mib"] > 0 and out[k]["act_gib"] == 1.0, (k, out[k])
    assert out["ours, fused gather"]["saved_mib"] == out["ours"]["saved_mib"]  # CPU: the same torch path
    assert model.model.layers[1].mixer.experts.up_proj.grad is None  # no gradient left between steps
    text = "\n".join(bench_nemotron.routed_table(out))
    assert "| ours, fused gather | 4.00 | 0.50x | 1.00 |" in text and "skipped" not in text


def test_compare_sm100_metrics_on_fake_ptx(monkeypatch):
    import types

    import cute_kernels.inspect_ptx as inspect_ptx

    monkeypatch.setattr(inspect_ptx, "ptxas_info", lambda ptx, arch: types.SimpleNamespace(
        raw="ptxas info : Used 90 registers, used 1 barriers", registers=90, spill_store_bytes=0, spill_load_bytes=0))
    mod = load("scripts/compare_sm100_cutlass.py")
    ptx = "\n".join([".version 8.7", ".target sm_100a", ".address_size 64", ".visible .entry k()", "{",
                     "tcgen05.mma.cta_group::1.kind::f16 [a], b, c;", "tcgen05.mma.cta_group::1.kind::f16 [a], b, c;",
                     "tcgen05.commit.cta_group::1 [x];", "mbarrier.try_wait.parity.b64 p, [y], 0;", "ret;", "}"])
    m = mod.metrics(ptx)  # the counting; ptxas's report is faked above
    assert m["ptxas registers"] == 90 and m["ptxas barriers"] == 1 and m["spill bytes"] == 0
    assert m["tcgen05.mma (static)"] == 2 and m["tcgen05.mma per K block"] == "2" and m["tcgen05.commit"] == 1


def test_fp8_training_check_verdict():
    mod = load("scripts/fp8_training_check.py")
    bf16 = [4.0 - 0.05 * i for i in range(60)]
    v = mod.verdict(bf16, [x * 1.001 for x in bf16])
    assert v["pass"] and v["bf16_learned"]
    assert not mod.verdict(bf16, [x * 1.5 for x in bf16])["pass"]


@pytest.fixture
def one_thread():
    """Tiny CPU training runs in one intra-op thread: on a shared 2-core machine, torch's thread pool
    waiting on busy cores made them 10x slower (3 s -> 45 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_training_check(monkeypatch, tmp_path):
    mod = load("scripts/fp8_training_check.py")
    for name, value in dict(DIM=128, FFN=128, LAYERS=1, CLASSES=8, BATCH=256, EXPERTS=2).items():
        monkeypatch.setattr(mod, name, value)
    monkeypatch.setenv("OUT", str(tmp_path))
    return mod


def test_fp8_training_check_runs_both_optimizers_on_cpu(monkeypatch, tmp_path, one_thread):
    """The whole check at a tiny size on CPU (FP8 through the torch implementation), 60 steps:
    dense and MoE, AdamW and AdamW(fused=True), each FP8 curve within the stated tolerance of
    its bf16 curve; the table, the json and the plot written; exit status 0."""
    import json

    mod = _tiny_training_check(monkeypatch, tmp_path)
    assert mod.main(["--steps", "60", "--device", "cpu"]) == 0
    results = json.load(open(tmp_path / "fp8_training_check.json"))
    assert sorted(results) == sorted(f"{m}, {o}" for m in ("dense", "moe E=2") for o in mod.OPTIMIZERS.values())
    for r in results.values():
        assert len(r["bf16"]) == len(r["fp8"]) == 60 and r["verdict"]["pass"], r.get("verdict")
    table = (tmp_path / "fp8_training_check.md").read_text()
    assert table.count("| PASS |") == 4 and (tmp_path / "fp8_training_check.png").exists()


def test_fp8_training_check_catches_weight_copies_that_miss_fused_optimizer_steps(monkeypatch, tmp_path, one_thread):
    """The check can fail: FP8 weight copies cached on `w._version` (issue 26's stale cache) train
    on the initial weights under AdamW(fused=True), which writes the parameters without bumping
    it; the fused rows fail, the for-each AdamW rows (which bump it) still pass."""
    import cute_kernels.fp8.mlp as fp8_mlp

    mod = _tiny_training_check(monkeypatch, tmp_path)
    fresh, cache = fp8_mlp.weight_copies, {}

    def cached_on_version(w, recipe, both=None):
        if cache.get(id(w), (None,))[0] != w._version:
            cache[id(w)] = (w._version, fresh(w, recipe, both=both))
        return cache[id(w)][1]

    monkeypatch.setattr(fp8_mlp, "weight_copies", cached_on_version)
    assert mod.main(["--steps", "60", "--device", "cpu"]) == 1
    rows = [line for line in (tmp_path / "fp8_training_check.md").read_text().splitlines() if "AdamW" in line]
    assert len(rows) == 4
    assert all(row.endswith("| FAIL |") == ("fused=True" in row) for row in rows), rows


def test_gpu_sweep_scaling_reads_a_sweep_recorded_by_the_autotuner(tmp_path, monkeypatch):
    """results() reads the studies through the autotuner's API: run a sweep on the CPU (the cost
    model, under the real studies' names) into a journal and read it back as the script does."""
    from autotune.__main__ import main as autotune_main
    from autotune.simulate import SimulatedRunner, simulated_timer

    mod = load("scripts/gpu_sweep_scaling.py")
    monkeypatch.chdir(tmp_path)
    journal = str(tmp_path / "w1.journal")
    args = argparse.Namespace(trials=2, only="fc2")
    assert autotune_main(["sweep", "--benchmark-shapes", "--only", args.only, "--trials", "2", "--storage", journal,
                          "--no-write", "--quiet"], runner_factory=SimulatedRunner, timer=simulated_timer,
                         arch="sm90") == 0
    r1 = mod.results(journal, args, arch="sm90")
    assert r1 and all(r is not None and r.best_ms for r in r1.values())
    table = mod.scaling_table(r1, r1, 10.0, 5.0, 2, 2, "cpu")
    assert f"winners within 1%: {len(r1)}/{len(r1)}" in table and "speedup 2.00x" in table


def test_gpu_shell_scripts_name_files_and_modules_that_exist():
    """The GPU call scripts (scripts/*.sh) run on a machine where a stale path costs device time:
    every test file, script and benchmark module they name exists, and bash parses them."""
    import re
    import subprocess

    for path in glob.glob(f"{ROOT}/scripts/*.sh"):
        text = open(path).read()
        assert subprocess.run(["bash", "-n", path]).returncode == 0, path
        for name in re.findall(r"\b((?:tests|scripts)/[\w/]+\.py)\b", text):
            assert os.path.exists(os.path.join(ROOT, name)), f"{os.path.basename(path)} names {name}"
        for mod in re.findall(r"-m (benchmarks\.\w+)", text):
            assert os.path.exists(os.path.join(ROOT, *mod.split(".")) + ".py"), f"{os.path.basename(path)} runs {mod}"


def test_gpu_tune_fp8_script_runs_its_sweep_on_cpu(tmp_path):
    """scripts/gpu_tune_fp8.sh end to end without a GPU: nvidia-smi stubbed and the autotuner's
    sweep run with --simulate (cost-model times, nothing written), so its command line, knobs and
    outputs are those the GPU call gets: the six FP8 step launches, each the default plus
    FP8_TUNE_CANDIDATES fixed candidates, and the TFLOP/s table."""
    import stat
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shims = {"nvidia-smi": "#!/bin/sh\necho 'name, driver_version'\n",
             # the sweep on the cost model; every other python3 call as it is
             "python3": f"#!/bin/sh\nif [ \"$3\" = sweep ]; then exec {sys.executable} \"$@\" --simulate; fi\n"
                        f"exec {sys.executable} \"$@\"\n"}
    for name, text in shims.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    out = tmp_path / "out"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", OUT=str(out), FP8_TUNE_CANDIDATES="2",
               CUTE_KERNELS_TUNED_CONFIGS=str(tmp_path / "tuned"))
    run = subprocess.run(["bash", "scripts/gpu_tune_fp8.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    log = (out / "fp8_tune.log").read_text()
    assert "autotune sweep exit code 0" in log, log[-3000:]
    table = (out / "fp8_tune_table.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| fp8_")]
    assert len(rows) == 6 and all("| 3 (3/0) |" in r for r in rows), table
    assert "winner TFLOP/s" in table and "FC2 data gradient + activation derivative" in table
    assert len(os.listdir(out)) <= 8
