"""The FP8 step under torch.compile(fullgraph=True) on the kernel path (sm_90a), through its custom ops
(fp8/step_ops.py, CUTE_KERNELS_FP8_COMPILE_OPS=1: the kernel path takes the ops only with it until
this test has passed on an H200): output and gradients bitwise the eager step's (each op body runs the
eager step's code and the FP8 kernels are deterministic), dense and grouped with list and GPU-tensor
splits (an empty expert, M not a multiple of 128), both weight-gradient recipes; and in a CUDA graph
(mode="reduce-overhead"), replayed for new input values.  Run by the lead:
    python -m pytest -q tests/test_fp8_compile_ops_gpu.py
"""
import pytest
import torch

from cute_kernels.fp8 import Fp8Recipe
from cute_kernels.mlp import srelu_mlp

pytestmark = pytest.mark.gpu

M, H, F, E = 1000, 256, 512, 4
SPLITS = [384, 0, 488, 128]


@pytest.fixture(autouse=True)
def _ops_on(monkeypatch):
    monkeypatch.setenv("CUTE_KERNELS_FP8_COMPILE_OPS", "1")
    torch._dynamo.reset()


def _leaves(seed, grouped):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(M, H, device="cuda", generator=g).bfloat16()
    w1 = (torch.randn(*((E, F, H) if grouped else (F, H)), device="cuda", generator=g) / H ** 0.5).bfloat16()
    w2 = (torch.randn(*((E, H, F) if grouped else (H, F)), device="cuda", generator=g) / F ** 0.5).bfloat16()
    prob = torch.rand(M, device="cuda", generator=g) if grouped else None
    return [t.requires_grad_() for t in (x, w1, w2)] + ([prob.requires_grad_()] if grouped else [])


def _run(fn, leaves, dy):
    y = fn(*leaves)
    y.backward(dy)
    return [y.detach().clone()] + [t.grad.clone() for t in leaves]


def _step_of(splits_kind, recipe):
    splits = None if splits_kind == "dense" else (
        torch.tensor(SPLITS, device="cuda") if splits_kind == "tensor" else SPLITS)

    def step(x, w1, w2, prob=None):
        return srelu_mlp(x, w1, w2, m_splits=splits, prob=prob, fp8=recipe, backend="cute")
    return step


@pytest.mark.parametrize("splits_kind,wgrad", [("dense", "bf16"), ("list", "bf16"), ("tensor", "bf16"),
                                               ("dense", "fp8"), ("list", "fp8")])
def test_fullgraph_matches_eager_bitwise(splits_kind, wgrad):
    step = _step_of(splits_kind, Fp8Recipe(wgrad=wgrad))
    compiled = torch.compile(step, fullgraph=True)
    for seed in (1, 2):  # the second call runs the compiled graph again on new values
        dy = torch.randn(M, H, device="cuda", generator=torch.Generator(device="cuda").manual_seed(seed + 9))
        dy = dy.bfloat16()
        grouped = splits_kind != "dense"
        eager, traced = _run(step, _leaves(seed, grouped), dy), _run(compiled, _leaves(seed, grouped), dy)
        for name, a, b in zip(("y", "dx", "dw1", "dw2", "dprob"), eager, traced):
            assert torch.equal(a, b), f"{name} ({splits_kind}, wgrad={wgrad}, seed {seed})"


@pytest.mark.parametrize("splits_kind", ["dense", "list"])
def test_cuda_graph_replays_bitwise(splits_kind):
    """mode="reduce-overhead": the compiled step (forward and backward) captured in CUDA graphs and
    replayed; every replay's results bitwise the eager step's on the same values."""
    step = _step_of(splits_kind, Fp8Recipe())
    compiled = torch.compile(step, fullgraph=True, mode="reduce-overhead")
    grouped = splits_kind != "dense"
    for seed in range(1, 5):  # warm-up, capture, replays
        dy = torch.randn(M, H, device="cuda", generator=torch.Generator(device="cuda").manual_seed(seed + 9))
        dy = dy.bfloat16()
        torch.compiler.cudagraph_mark_step_begin()
        traced = _run(compiled, _leaves(seed, grouped), dy)
        eager = _run(step, _leaves(seed, grouped), dy)
        for name, a, b in zip(("y", "dx", "dw1", "dw2", "dprob"), eager, traced):
            assert torch.equal(a, b), f"{name} ({splits_kind}, call {seed})"


OPCHECK_UTILS = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def _detached(args):
    return tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)


@pytest.mark.parametrize("splits_kind", ["dense", "list", "tensor"])
def test_opcheck_on_the_kernels(splits_kind):
    """The fake implementations against the kernels' real outputs (shapes, dtypes, strides: the
    column-major scales, the one-pass kernel's W^T copies), every op (the forward ops' AOT check without
    requires_grad: it would sum their FP8 outputs)."""
    import cute_kernels.fp8.step_ops  # noqa: F401  (registers the ops)

    grouped = splits_kind != "dense"
    x, w1, w2, *p = _leaves(3, grouped)
    prob = p[0] if grouped else None
    sl = SPLITS if splits_kind == "list" else None
    st = torch.tensor(SPLITS, device="cuda") if splits_kind == "tensor" else None
    recipe = ("e4m3", "e4m3", False, "bf16")
    ops = torch.ops.cute_kernels
    fc1 = (x, w1, sl, st, *recipe, "srelu", "kernel")
    pre, pq, ps, xq, xs, w1tq, w1ts = ops.fp8_mlp_fc1(*_detached(fc1))
    fc2 = (pre.requires_grad_(), pq, ps, prob, w2, sl, st, *recipe, "srelu", "kernel")
    _, w2tq, w2ts = ops.fp8_mlp_fc2(*_detached(fc2))
    dy = torch.randn(M, H, device="cuda").bfloat16()
    fc2_bwd = (dy, pre.detach(), prob.detach() if prob is not None else None, w2.detach(), w2tq, w2ts, sl, st,
               *recipe, "srelu", "kernel", True)
    fc1_bwd = (pre.detach(), xq, xs, w1.detach(), w1tq, w1ts, sl, st, *recipe, "srelu", "kernel", torch.bfloat16,
               True, True)
    for op, args in ((ops.fp8_mlp_fc1, fc1), (ops.fp8_mlp_fc2, fc2)):
        torch.library.opcheck(op.default, args, test_utils=OPCHECK_UTILS[:2])
        torch.library.opcheck(op.default, _detached(args), test_utils=OPCHECK_UTILS[2:])
    for op, args in ((ops.fp8_mlp_fc2_bwd, fc2_bwd), (ops.fp8_mlp_fc1_bwd, fc1_bwd)):
        torch.library.opcheck(op.default, args, test_utils=OPCHECK_UTILS)
