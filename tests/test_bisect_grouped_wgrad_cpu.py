"""The grouped FP8 weight gradient's GPU bisect (scripts/gpu_bisect_grouped_wgrad.sh and its per-process
worker scripts/bisect_grouped_wgrad_case.py) on CPU: the variants the bisect needs exist and only
those that may fault run alone; the worker's check passes an emulated correct kernel and fails a
wrong one (each expert's scales read from block 0, or main_grad overwritten instead of added to);
without CUDA it prints one ERROR line; and the shell script, with the worker and nvidia-smi
stubbed, writes one line per variant into $OUT/bisect.log, a hang, a hang after its result line and a
death without one included, and leaves nothing else behind but the device line; the `old-start`
variants' patch reaches the compiled kernel."""
import importlib.util
import os
import stat
import subprocess
import sys

import pytest
import torch

from test_compile_fp8_grouped_wgrad import _emulated_launch  # the kernel's torch stand-in

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _worker():
    path = os.path.join(ROOT, "scripts/bisect_grouped_wgrad_case.py")
    spec = importlib.util.spec_from_file_location("bisect_case", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_variants_the_bisect_needs():
    w = _worker()
    v = w.VARIANTS
    assert v["selfcheck"][0] == "selfcheck" and v["selfcheck-acc"][3], "the failing keys themselves"
    assert v["one-expert"][1] == (300,) and 0 not in v["all-nonempty"][1]
    assert v["first-empty"][1][0] == 0 and 0 in v["middle-empty"][1][1:]
    assert v["e5m2"][2] == "e5m2" and v["acc-first-empty"][3] and v["acc-first-empty"][1][0] == 0
    assert v["dense"][0] == "dense" and v["bf16-first-empty"][0] == "bf16"
    alone = [n for n, x in v.items() if x[4]]
    assert alone == ["old-start-all-nonempty", "old-start-first-empty"], "only the old K start may fault"


def test_list_prints_batch_and_alone():
    run = lambda which: subprocess.run([sys.executable, "scripts/bisect_grouped_wgrad_case.py", "--list", which],
                                       cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    batch, alone = run("batch"), run("alone")
    assert set(batch) | set(alone) == set(_worker().VARIANTS) and not set(batch) & set(alone)


@pytest.mark.parametrize("name", ["first-empty", "middle-empty", "e5m2", "acc-first-empty"])
def test_the_check_passes_a_correct_kernel_and_fails_wrong_ones(monkeypatch, name):
    import cute_kernels.gemm_ops as gemm_ops
    from cute_kernels.fp8 import wgrad_ops

    w = _worker()
    monkeypatch.setattr(wgrad_ops, "check_fp8_launch", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(gemm_ops, "_run", _emulated_launch())
    torch.manual_seed(0)
    assert w.run_case(name, device="cpu") < 1e-6
    monkeypatch.setattr(gemm_ops, "_run", _emulated_launch(scale_block_of_expert=0))
    assert w.run_case(name, device="cpu") > w.TOLERANCE
    if w.VARIANTS[name][3]:
        monkeypatch.setattr(gemm_ops, "_run", _emulated_launch(overwrite=True))
        assert w.run_case(name, device="cpu") > w.TOLERANCE


def test_without_cuda_the_worker_prints_one_error_line(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUTE_KERNELS_SELFCHECK", "1")  # main() turns the gate off: restored after the test
    assert _worker().main(["first-empty"]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("first-empty: ERROR RuntimeError: no CUDA device"), out


def test_the_shell_script_writes_one_line_per_variant(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shims = {
        "nvidia-smi": "#!/bin/sh\necho 'name, driver_version'\n",
        # the worker's --list as it is; each variant a line, except one that hangs and one that dies
        "python3": "#!/bin/sh\n"
                   f"case \"$2\" in --list) exec {sys.executable} \"$@\";;\n"
                   "  old-start-first-empty) sleep 5;;\n"
                   "  old-start-all-nonempty) echo \"$2: ERROR faulted\"; sleep 5;;\n"
                   "  dense) echo 'Traceback: boom' >&2; exit 1;;\n"
                   "  *) echo \"$2: ok (stub)\";;\nesac\n",
    }
    for name, text in shims.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    out = tmp_path / "out"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", OUT=str(out), BISECT_ALONE_TIMEOUT="1")
    run = subprocess.run(["bash", "scripts/gpu_bisect_grouped_wgrad.sh"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = (out / "bisect.log").read_text().splitlines()
    variants = list(_worker().VARIANTS)
    assert [ln.split(":")[0] for ln in lines] == variants, lines
    by = dict(zip(variants, lines))
    assert by["selfcheck"] == "selfcheck: ok (stub)"
    assert by["old-start-first-empty"] == "old-start-first-empty: ERROR timed out after 1 s (a hang)"
    assert by["old-start-all-nonempty"] == "old-start-all-nonempty: ERROR faulted", "its own line, not the timeout's"
    assert by["dense"] == "dense: ERROR no result line; last output: Traceback: boom"
    assert sorted(os.listdir(out)) == ["bisect.log", "device.txt"]


def test_old_start_variants_compile_the_kernel_with_the_old_k_start(monkeypatch):
    """put_back_old_k_start reaches the traced kernel: the grouped key's PTX changes (the bisect's
    `old-start` variants would otherwise pass without testing anything; on 2026-12-03 the PTX with the
    old start was byte-identical to that of the kernel that faulted)."""
    import importlib

    from cute_kernels.fp8.wgrad_ops import grouped_wgrad_key
    from cute_kernels.inspect_ptx import kernel_ptx

    key = grouped_wgrad_key("e4m3", "e4m3", torch.float32)
    fixed = kernel_ptx(key)
    for name in ("cute_kernels.gemm_base.grouping", "cute_kernels.gemm_base.descriptors", "cute_kernels.sm90.gemm"):
        mod = importlib.import_module(name)
        monkeypatch.setattr(mod, "k_range", mod.k_range)  # restored after the test
    w = _worker()
    w.put_back_old_k_start()
    assert w.old_k_range([0, 0, 256], 0, 128)[0] == 1
    assert kernel_ptx(key) != fixed
