"""The row softmax cross-entropy kernel (cute_kernels/sm90/softmax_xent.py) compiles for sm_90a
without a GPU and its PTX holds what the design says: per sweep UNROLL 16-byte loads in each of
the two passes and UNROLL 16-byte stores of g (one more for the zeros of an ignored row), the
logits converted to fp32 and g rounded once to the logits' dtype, ex2.approx for the
exponentials, one accurate division (scale / S), two CTA barriers, no local memory, no spills.
The switch is off by default and the chunked loss keeps its torch form on CPU with it on;
input errors are named."""
import re

import pytest
import torch

from cute_kernels import InputError
from cute_kernels.archs import softmax_xent_class
from cute_kernels.inspect_ptx import find_ptxas, ptxas_info
from cute_kernels.integrations import softmax_xent_ops
from cute_kernels.integrations.chunked_ce import chunked_linear_cross_entropy
from cute_kernels.sm90.softmax_xent import UNROLL, VEC


def _ops(ptx: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^\s*(?:@!?%p\d+\s+)?([a-z][\w.]*)", ptx, re.M)]


@pytest.mark.parametrize("dtype,short", [("bfloat16", "bf16"), ("float16", "f16")])
def test_kernel_ptx_is_as_designed(dtype, short):
    ptx = softmax_xent_ops.softmax_xent_ptx(dtype)
    ops = _ops(ptx)
    values = UNROLL * VEC  # logits per thread per sweep
    assert ops.count("ld.global.v4.b32") == 2 * UNROLL, "16-byte loads: UNROLL per sweep in each pass"
    assert ops.count("st.global.v4.b32") == UNROLL + 1, "16-byte stores of g, and of an ignored row's zeros"
    assert ops.count(f"cvt.f32.{short}") == 2 * values + 1, "each pass's logits in fp32, and the target's"
    assert ops.count(f"cvt.rn.{short}x2.f32") == values // 2 and ops.count(f"cvt.rn.{short}.f32") == 1
    # exponentials: both passes' values, the running sum's rescale, the 5 + 7 merges (two each), the target
    assert ops.count("ex2.approx.ftz.f32") == 2 * values + 1 + 2 * (5 + 7) + 1
    assert ops.count("shfl.sync.bfly.b32") == 10 and ops.count("bar.sync") == 2
    assert ops.count("div.rn.f32") == 1 and "div.approx" not in ptx
    assert ops.count("ld.global.b64") == 1, "the row's int64 target, read once"
    assert ".local" not in ptx
    if find_ptxas() is not None:
        info = ptxas_info(ptx)
        assert info.spill_store_bytes == 0 and info.spill_load_bytes == 0 and info.stack_bytes == 0
        assert info.registers <= 128


def test_arch_table_names_the_kernel():
    assert softmax_xent_class("sm90").__name__ == "Sm90SoftmaxXent"
    assert softmax_xent_class("sm100") is None


def test_switched_on_by_default(monkeypatch):
    monkeypatch.delenv("CUTE_KERNELS_CE_KERNEL", raising=False)
    assert softmax_xent_ops.ce_kernel_enabled()
    monkeypatch.setenv("CUTE_KERNELS_CE_KERNEL", "0")
    assert not softmax_xent_ops.ce_kernel_enabled()
    monkeypatch.setenv("CUTE_KERNELS_CE_KERNEL", "1")
    assert softmax_xent_ops.ce_kernel_enabled()


def test_kernel_takes_only_what_it_can():
    assert not softmax_xent_ops.kernel_takes_logits(torch.bfloat16, 16384, "cpu")
    assert not softmax_xent_ops.kernel_takes_logits(torch.float32, 16384, "cpu")
    assert not softmax_xent_ops.kernel_takes_logits(torch.bfloat16, 1001, "cpu")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_chunked_loss_on_cpu_is_the_torch_form_with_the_switch_on(dtype, monkeypatch):
    g = torch.Generator().manual_seed(3)
    h = torch.randn(37, 16, generator=g).to(dtype)
    w = (torch.randn(64, 16, generator=g) / 4).to(dtype)
    t = torch.randint(0, 64, (37,), generator=g)
    t[::5] = -100
    results = []
    for flag in ("0", "1"):
        monkeypatch.setenv("CUTE_KERNELS_CE_KERNEL", flag)
        hh, ww = (x.clone().requires_grad_() for x in (h, w))
        loss = chunked_linear_cross_entropy(hh, ww, t, chunk_tokens=8)
        loss.backward()
        results.append((loss, hh.grad, ww.grad))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def _args(rows=4, vocab=64, dtype=torch.bfloat16):
    return dict(logits=torch.zeros(rows, vocab, dtype=dtype), targets=torch.zeros(rows, dtype=torch.long),
                scale=torch.ones(1), loss_rows=torch.zeros(rows))


@pytest.mark.parametrize("change,match", [
    (dict(logits=torch.zeros(4, 60, dtype=torch.bfloat16)), "multiple of 8"),
    (dict(logits=torch.zeros(4, 64)), "bfloat16 or float16"),
    (dict(logits=torch.zeros(0, 64, dtype=torch.bfloat16)), "empty"),
    (dict(logits=torch.zeros(4, 72, dtype=torch.bfloat16)[:, 4:68]), "16-byte aligned rows"),
    (dict(logits=torch.zeros(64, 4, dtype=torch.bfloat16).t()), "row-major"),
    (dict(targets=torch.zeros(4, dtype=torch.int32)), "targets must be a contiguous torch.int64"),
    (dict(targets=torch.zeros(5, dtype=torch.long)), r"targets must be .* shape \(4,\)"),
    (dict(scale=torch.ones(())), r"scale must be .* shape \(1,\)"),
    (dict(loss_rows=torch.zeros(4, dtype=torch.float64)), "loss_rows must be a contiguous torch.float32"),
    ({}, "CUDA"),
])
def test_input_errors(change, match):
    args = _args()
    args.update(change)
    with pytest.raises(InputError, match=match):
        softmax_xent_ops.softmax_xent_(args["logits"], args["targets"], args["scale"], args["loss_rows"])
