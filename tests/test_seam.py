"""The seam between the arch-neutral GEMM base and the arch kernels (issue 14): one launch
record, the arch passed per compile, one registry the op and the tuner share, one module
of torch reference math, no import circle."""
import ast
import dataclasses
import inspect
import os
import re

import pytest
import torch

from cute_kernels import registry
from cute_kernels.compile import KernelKey, arch_options, fake_arguments
from cute_kernels.config import GemmConfig
from cute_kernels.config_lookup import tuned_root
from cute_kernels.epilogue import EpilogueSpec
from cute_kernels.gemm_base.launch_args import GemmArgs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _kernel_params(cls):
    names = list(inspect.signature(cls.__call__).parameters)[1:]  # without self
    return [n for n in names if n not in ("max_clusters", "stream")]


def test_kernel_call_takes_the_launch_record_in_its_order():
    from cute_kernels.sm100.gemm import Sm100Gemm
    from cute_kernels.sm90.gemm import Sm90Gemm

    for cls in (Sm90Gemm, Sm100Gemm):
        params = _kernel_params(cls)
        assert [p.lower() for p in params] == ["m" + f.replace("_", "") for f in GemmArgs._fields], cls.__name__


@pytest.mark.parametrize("epi,grouped_k", [(EpilogueSpec("act", store_preact=True, row_scale=True), False),
                                           (EpilogueSpec("dact", store_postact=True, row_sum=True), False),
                                           (EpilogueSpec("identity", accumulate=True), True)])
def test_fake_arguments_fill_exactly_what_the_epilogue_declares(epi, grouped_k):
    key = KernelKey("sm90", GemmConfig(), epi, False, "bfloat16", *(("m", "n") if grouped_k else ("k", "k")),
                    grouped_k=grouped_k)
    args = fake_arguments(key)
    assert isinstance(args, GemmArgs)
    assert (args.d1 is not None) == (epi.num_outputs == 2)
    assert (args.scale is not None) == epi.row_scale
    assert (args.aux is not None) == epi.aux_input
    assert (args.rowsum is not None) == epi.row_sum
    assert (args.desc_ws is not None) == grouped_k and (args.cu_rows is not None) == grouped_k


def test_one_process_compiles_for_two_arches(tmp_path):
    """Each compile names its own target; the env default (conftest: sm_90a) does not leak."""
    import cutlass
    import cutlass.cute as cute
    from cutlass.cute.runtime import make_fake_tensor

    from cute_kernels.inspect_ptx import kernel_ptx
    from tests import _tiny_kernel

    ptx90 = kernel_ptx(KernelKey("sm90", GemmConfig(tile_n=128, cluster_n=1), EpilogueSpec("identity"), False,
                                 "bfloat16", "k", "k"))
    t = make_fake_tensor(cutlass.Float32, (32,), (1,), assumed_align=16)
    fn = cute.compile(_tiny_kernel.launch, t, options=f"--gpu-arch sm_100a --keep-ptx --dump-dir={tmp_path}")
    assert re.search(r"^\.target sm_90a", ptx90, re.M) and "wgmma.mma_async" in ptx90
    assert re.search(r"^\.target sm_100a", fn.__ptx__, re.M)
    assert arch_options("sm90") == "--gpu-arch sm_90a"
    assert arch_options("sm90", "--gpu-arch sm_100a") == "--gpu-arch sm_100a"


@pytest.mark.parametrize("kernel,epi,majors,experts", [
    ("fc1_srelu", EpilogueSpec("act", store_preact=True), ("k", "k"), 0),
    ("fc1_srelu", EpilogueSpec("act", store_preact=True), ("k", "k"), 8),
    ("fc2", EpilogueSpec("identity"), ("k", "k"), 128),
    ("fc2_dgrad_dsrelu", EpilogueSpec("dact"), ("k", "n"), 0),
])
def test_tuner_compiles_the_kernel_the_op_launches(kernel, epi, majors, experts):
    """The op's key (tuned lookup included) equals the registry's key for the looked-up config:
    what autotune's GpuRunner.prepare compiles and times."""
    from cute_kernels.gemm_ops import _kernel_key

    m, n, k = 16384, 1856, 2688
    op_key = _kernel_key(kernel, "sm90", torch.bfloat16, m, n, k, max(experts, 1), epi, bool(experts), majors, None,
                         tuned_root())
    assert op_key == registry.kernel_key(kernel, "sm90", op_key.cfg, "bfloat16", experts)


def test_weight_grad_key_matches_the_registry():
    from cute_kernels.gemm_ops import _wgrad_key

    for experts in (0, 8):
        op_key = _wgrad_key("sm90", torch.bfloat16, 1856, 2688, 16384, max(experts, 1), bool(experts),
                            torch.bfloat16, False, ("m", "n"), None, tuned_root())
        assert op_key == registry.kernel_key("weight_grad", "sm90", op_key.cfg, "bfloat16", experts)


@pytest.mark.parametrize("kernel,experts,formats", [("fp8_fc1_srelu", 0, ("e4m3", "e4m3")),
                                                     ("fp8_fc1_srelu", 8, ("e4m3", "e4m3")),
                                                     ("fp8_fc2", 0, ("e4m3", "e4m3")),
                                                     ("fp8_fc2", 128, ("e5m2", "e4m3")),
                                                     ("fp8_dgrad_dact", 0, ("e4m3", "e4m3")),
                                                     ("fp8_dgrad_dact", 8, ("e4m3", "e4m3"))])
def test_tuner_compiles_the_fp8_kernel_the_op_launches(kernel, experts, formats):
    """The FP8 op's key (fp8/ops.py: tuned lookup keyed by the formats, the registered epilogue)
    equals the registry's key for the looked-up config (with the scales staged in shared memory where
    the switch takes them: `with_staged_scales`, which the tuner's prepare applies too); one key per kernel (B's format folded
    into A's when equal, so the compile cache holds one entry)."""
    from cute_kernels.fp8.epilogue import Fp8Epilogue
    from cute_kernels.fp8.ops import _family_launch_key, family_kernel, with_staged_scales

    m, n, k = 16384, 1856, 2688
    spec = registry.get_kernel(kernel).epilogue
    epi = Fp8Epilogue(dataclasses.replace(spec, quantized="", q_format="e4m3"), quantized=spec.quantized,
                      q_format=spec.q_format, pow2_scales=spec.pow2_scales)
    assert family_kernel(epi) == kernel
    op_key = _family_launch_key(epi, m, n, k, max(experts, 1), bool(experts), *formats, None, tuned_root())
    dtype = registry.dtype_key(*(f"float8_{f}fn" if f == "e4m3" else f"float8_{f}" for f in formats))
    assert op_key == with_staged_scales(registry.kernel_key(kernel, "sm90", op_key.cfg, dtype, experts))
    assert op_key.block_scaled and op_key.operand_formats == formats and op_key.d_dtype == "bfloat16"
    assert op_key.b_dtype == ("" if formats[0] == formats[1] else "float8_e4m3fn")
    assert registry.get_kernel(kernel).config_errors(op_key.cfg, experts) == []


def test_registry_covers_every_tunable_kernel():
    from autotune.problem import KERNELS

    assert set(KERNELS) == set(registry.KERNELS)
    for spec in registry.KERNELS.values():
        assert spec.grouping in ("m", "k") and callable(spec.reference)
        assert spec.num_outputs == spec.epilogue.num_outputs


def _imports(path):
    tree = ast.parse(open(path).read())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            out.add(("." * node.level) + (node.module or ""))
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_no_import_circle_between_the_op_and_the_custom_ops():
    mlp = _imports(os.path.join(ROOT, "cute_kernels", "mlp.py"))
    ops = _imports(os.path.join(ROOT, "cute_kernels", "torch_ops.py"))
    assert ".mlp" not in ops and "cute_kernels.mlp" not in ops
    ref = _imports(os.path.join(ROOT, "cute_kernels", "reference.py"))
    assert all(m in (".activations", "torch", "__future__") for m in ref), ref


def test_torch_reference_math_has_one_home():
    """No module outside cute_kernels/reference.py defines the per-expert loops again."""
    names = ("def per_expert_mm", "def _per_expert_mm", "def per_expert_wgrad", "def _per_expert_wgrad",
             "def _wgrad_reference", "def _rows_reference", "def random_splits", "def _random_splits")
    for d in ("cute_kernels", "autotune", "tests", "benchmarks"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, d)):
            for f in files:
                if f.endswith(".py") and not (d == "cute_kernels" and f == "reference.py"):
                    src = open(os.path.join(dirpath, f)).read()
                    assert not any(n + "(" in src for n in names), os.path.join(dirpath, f)


def test_hopper_content_lives_in_the_arch_folder():
    neutral = open(os.path.join(ROOT, "cute_kernels", "config.py")).read()
    for word in ("warpgroup", "setmaxnreg", "SMEM_CAPACITY", "232448", "MAX_ACC_REGS"):
        assert word not in neutral, word
    from autotune import space
    from cute_kernels.sm90 import space as sm90_space

    assert space.grid_values("sm90") is sm90_space.GRID
