"""The FP8 custom ops (fp8_fc1_srelu_fwd, fp8_fc2_fwd) on CPU: opcheck (schema, fake impl,
strides of the column-major postact scales), values against the registry's references of the
dequantized operands and the recipe's quantization of the postact, and torch.compile tracing an
FP8 FC1 -> FC2 step with fullgraph=True."""
import pytest
import torch

from cute_kernels import registry, torch_ops  # noqa: F401  (registers the ops)
from cute_kernels.fp8.recipe import dequantize, quantize_1x128, quantize_128x128
from cute_kernels.reference import rel_err

SPLITS = [70, 0, 130]
# opcheck's test_schema compares inputs before and after with float math torch has no FP8 kernels
# for; `_opcheck` runs the other three and checks no input is written and no output aliases one.
OPCHECK_UTILS = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def _opcheck(op, args, kwargs=None):
    tensors = [a for a in list(args) + list((kwargs or {}).values()) if isinstance(a, torch.Tensor)]
    before = [t.view(torch.uint8).clone() if t.element_size() == 1 else t.clone() for t in tensors]
    torch.library.opcheck(op, args, kwargs, test_utils=OPCHECK_UTILS)
    outs = op(*args, **(kwargs or {}))
    outs = outs if isinstance(outs, tuple) else (outs,)
    for t, b in zip(tensors, before):
        assert torch.equal(t.view(torch.uint8) if t.element_size() == 1 else t, b), "an input was written"
        assert all(o.untyped_storage().data_ptr() != t.untyped_storage().data_ptr() for o in outs if o.numel())


def _weights(e, n, k, g, fmt="e4m3"):
    w = torch.randn(e, n, k, generator=g) * 0.1
    parts = [quantize_128x128(w[i], fmt) for i in range(e)]
    return torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts])


def _args(grouped, m=200, n=272, k=144, seed=0):
    g = torch.Generator().manual_seed(seed)
    xq, sx = quantize_1x128(torch.randn(m, k, generator=g))
    wq, ws = _weights(3 if grouped else 1, n, k, g)
    if not grouped:
        wq, ws = wq[0], ws[0]
    return xq, sx.t().contiguous().t(), wq, ws, (SPLITS if grouped else None)


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("store_preact", [False, True])
@pytest.mark.parametrize("q_format,pow2", [("e4m3", False), ("e5m2", True)])
def test_opcheck_fp8_fc1(grouped, store_preact, q_format, pow2):
    xq, sx, wq, ws, splits = _args(grouped)
    args = (xq, sx, wq, ws, splits, store_preact, q_format, pow2)
    _opcheck(torch.ops.cute_kernels.fp8_fc1_srelu_fwd.default, args)
    pre, q, qs = torch.ops.cute_kernels.fp8_fc1_srelu_fwd(*args)
    ref_pre = registry.get_kernel("fp8_fc2").reference(xq, sx, wq, ws, splits)
    want_pre = ref_pre.to(torch.bfloat16)
    if store_preact:
        assert torch.equal(pre, want_pre)
    else:
        assert pre.numel() == 0
    rq, rs = quantize_1x128(torch.relu(want_pre.float()) ** 2, q_format, pow2=pow2)
    assert torch.equal(qs, rs) and torch.equal(q.view(torch.uint8), rq.view(torch.uint8))
    assert qs.stride() == (1, qs.shape[0]), "scales column-major, as the kernel writes them"
    post = registry.get_kernel("fp8_fc1_srelu").reference(xq, sx, wq, ws, splits)
    assert rel_err(dequantize(q, qs), post) < (0.05 if q_format == "e4m3" else 0.1)


@pytest.mark.parametrize("grouped", [False, True])
def test_opcheck_fp8_fc2(grouped):
    xq, sx, wq, ws, splits = _args(grouped, n=144, k=272, seed=1)
    _opcheck(torch.ops.cute_kernels.fp8_fc2_fwd.default, (xq, sx, wq, ws, splits))
    y = torch.ops.cute_kernels.fp8_fc2_fwd(xq, sx, wq, ws, splits)
    assert y.dtype == torch.bfloat16
    assert rel_err(y, registry.get_kernel("fp8_fc2").reference(xq, sx, wq, ws, splits)) < 4e-3


def test_fp8_ops_take_a_splits_tensor_and_empty_inputs():
    xq, sx, wq, ws, splits = _args(True, seed=2)
    st = torch.tensor(splits)
    _opcheck(torch.ops.cute_kernels.fp8_fc2_fwd.default, (xq, sx, wq, ws, None), {"splits_t": st})
    assert torch.equal(torch.ops.cute_kernels.fp8_fc2_fwd(xq, sx, wq, ws, None, splits_t=st),
                       torch.ops.cute_kernels.fp8_fc2_fwd(xq, sx, wq, ws, splits))
    pre, q, qs = torch.ops.cute_kernels.fp8_fc1_srelu_fwd(xq[:0], sx[:0], wq, ws, [0, 0, 0], True)
    assert pre.shape == (0, 272) and q.shape == (0, 272) and qs.shape == (0, 3)


def test_fp8_step_compiles_fullgraph():
    """FC1 (FP8 postact + scales) feeding FC2 as its A operand, traced without graph breaks; the
    graph holds the custom ops."""
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(3)
    xq, sx = quantize_1x128(torch.randn(200, 144, generator=g))
    w1q, w1s = _weights(3, 256, 144, g)
    w2q, w2s = _weights(3, 144, 256, g)
    seen = []

    def backend(gm, example_inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm

    def step(x, s, a, sa, b, sb):
        _, q, qs = torch_ops.ops().fp8_fc1_srelu_fwd(x, s, a, sa, SPLITS, False)
        return torch_ops.ops().fp8_fc2_fwd(q, qs, b, sb, SPLITS)

    compiled = torch.compile(step, fullgraph=True, backend=backend)
    args = (xq, sx, w1q, w1s, w2q, w2s)
    assert torch.equal(compiled(*args), step(*args))
    assert any("fp8_fc1_srelu_fwd" in t for t in seen) and any("fp8_fc2_fwd" in t for t in seen), seen
