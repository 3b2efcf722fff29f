"""The FP8 step traced by torch.compile(fullgraph=True) through its custom ops (fp8/step_ops.py), on
CPU (the torch implementation): no graph break, the graph holds the four ops, and the output and every
gradient (x, w1, w2, the router probability) are bitwise the eager step's, dense and grouped (an empty
expert, M = 200 not a multiple of 128), list or tensor splits, other recipes and activations; the
compiled step quantizes the weights' current values on every call (no copy baked into the graph);
torch.library.opcheck on the four ops; CUTE_KERNELS_FP8_COMPILE_OPS=0 and fuse_wgrad_accumulation
keep the eager step with its graph break."""
from types import SimpleNamespace

import pytest
import torch

from cute_kernels.fp8 import Fp8Recipe
from cute_kernels.fp8 import step_ops
from cute_kernels.fp8.weight_cache import reuse_weight_copies
from cute_kernels.mlp import srelu_mlp
from cute_kernels.modules import SReLUMLP

M, H, F, E = 200, 128, 272, 3
SPLITS = [90, 0, 110]
OPS = ("fp8_mlp_fc1", "fp8_mlp_fc2", "fp8_mlp_fc1_bwd", "fp8_mlp_fc2_bwd")


def _leaves(seed, grouped, with_prob):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, H, generator=g)
    w1 = torch.randn(*((E, F, H) if grouped else (F, H)), generator=g) / H ** 0.5
    w2 = torch.randn(*((E, H, F) if grouped else (H, F)), generator=g) / F ** 0.5
    prob = torch.rand(M, generator=g) if with_prob else None
    return [t.requires_grad_() for t in (x, w1, w2)] + ([prob.requires_grad_()] if with_prob else [])


def _run(fn, leaves, dy):
    y = fn(*leaves)
    y.backward(dy)
    return [y.detach()] + [t.grad for t in leaves]


def _assert_bitwise(step, compiled, grouped, with_prob, seed=3):
    dy = torch.randn(M, H, generator=torch.Generator().manual_seed(seed + 100))
    eager = _run(step, _leaves(seed, grouped, with_prob), dy)
    traced = _run(compiled, _leaves(seed, grouped, with_prob), dy)
    for name, a, b in zip(("y", "dx", "dw1", "dw2", "dprob"), eager, traced):
        assert b is not None and a.dtype == b.dtype and torch.equal(a, b), name
    assert all(t.abs().sum() > 0 for t in eager), "a gradient is all zero: the comparison would prove little"


def _graph_ops(fn, *args):
    """The cute_kernels ops in the graphs torch.compile makes of fn (aot_eager: forward and backward)."""
    seen = []

    def backend(gm, example_inputs):
        from functorch.compile import make_boxed_func
        from torch._dynamo.backends.common import aot_autograd

        def record(g, _):
            seen.extend(str(n.target) for n in g.graph.nodes if n.op == "call_function")
            return make_boxed_func(g.forward)
        return aot_autograd(fw_compiler=record, bw_compiler=record)(gm, example_inputs)

    out = torch.compile(fn, fullgraph=True, backend=backend)(*args)
    out.float().sum().backward()
    return {op for op in OPS if any(f"cute_kernels.{op}" in s for s in seen)}


@pytest.mark.parametrize("grouped,with_prob", [(False, False), (True, True)])
def test_fullgraph_matches_eager_bitwise(grouped, with_prob):
    """Inductor (the default backend) around the ops: an exact op before and after them."""
    splits = SPLITS if grouped else None

    def step(x, w1, w2, prob=None):
        return srelu_mlp(x * 2.0, w1, w2, m_splits=splits, prob=prob, fp8=Fp8Recipe(), backend="torch") * 0.5

    _assert_bitwise(step, torch.compile(step, fullgraph=True), grouped, with_prob)


@pytest.mark.parametrize("recipe,activation,with_prob", [
    (Fp8Recipe(grad_format="e5m2", pow2_scales=True), None, False),
    (Fp8Recipe(wgrad="fp8"), None, True),
    (Fp8Recipe(), "tanh_srelu:4", True),
])
def test_fullgraph_other_recipes_and_activations(recipe, activation, with_prob):
    def step(x, w1, w2, prob=None):
        return srelu_mlp(x, w1, w2, m_splits=SPLITS, prob=prob, fp8=recipe, backend="torch", activation=activation)

    _assert_bitwise(step, torch.compile(step, fullgraph=True, backend="aot_eager"), True, with_prob, seed=5)


def test_the_graph_holds_the_four_ops():
    x, w1, w2, prob = _leaves(1, True, True)
    found = _graph_ops(lambda x, w1, w2, p: srelu_mlp(x, w1, w2, m_splits=SPLITS, prob=p, fp8=Fp8Recipe()),
                       x, w1, w2, prob)
    assert found == set(OPS)


def test_tensor_splits_are_an_op_input():
    """m_splits as an integer tensor reaches the ops as splits_t (srelu_mlp reads a CPU tensor on the host
    before the step; the step itself takes it as it is)."""
    st = torch.tensor(SPLITS)

    def step(x, w1, w2, prob):
        return step_ops.fp8_step(x, w1, w2, recipe=Fp8Recipe(), m_splits=st, prob=prob)

    def step_list(x, w1, w2, prob):
        return step_ops.fp8_step(x, w1, w2, recipe=Fp8Recipe(), m_splits=SPLITS, prob=prob)

    _assert_bitwise(step_list, torch.compile(step, fullgraph=True, backend="aot_eager"), True, True, seed=7)


def test_compiled_step_reads_the_current_weights():
    """A weight changed between calls (an optimizer step, a write through .data, inside a
    reuse_weight_copies scope after an optimizer step) is quantized anew by the compiled step: its output
    equals the eager step's on the new weights, not the old ones."""
    model = SReLUMLP(H, F, fp8=Fp8Recipe(), backend="torch")
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x = torch.randn(64, H, generator=torch.Generator().manual_seed(2))
    before = compiled(x)
    assert torch.equal(before, model(x))
    before.float().square().mean().backward()
    opt.step()
    after = compiled(x)
    assert not torch.equal(after, before) and torch.equal(after, model(x))
    with torch.no_grad():
        next(model.parameters()).data.mul_(0.5)  # no version bump: outside any reuse scope, still fresh
    assert torch.equal(compiled(x), model(x))
    with reuse_weight_copies():
        first = compiled(x)
        opt.zero_grad()
        first.float().square().mean().backward()
        opt.step()  # refreshes the scope's copies
        assert torch.equal(compiled(x), model(x)) and not torch.equal(compiled(x), first)


def test_compiled_module_trains_like_eager():
    torch.manual_seed(0)
    eager_model = SReLUMLP(H, F, fp8=Fp8Recipe(), backend="torch")
    traced_model = SReLUMLP(H, F, fp8=Fp8Recipe(), backend="torch")
    traced_model.load_state_dict(eager_model.state_dict())
    compiled = torch.compile(traced_model, fullgraph=True, backend="aot_eager")
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (eager_model, traced_model)]
    x = torch.randn(96, H, generator=torch.Generator().manual_seed(4))
    for _ in range(3):
        for fn, opt in zip((eager_model, compiled), opts):
            opt.zero_grad()
            fn(x).float().square().mean().backward()
            opt.step()
    for a, b in zip(eager_model.parameters(), traced_model.parameters()):
        assert torch.equal(a, b)


def test_switch_off_and_fuse_wgrad_keep_the_eager_step(monkeypatch):
    leaves = _leaves(1, False, False)
    f = torch.compile(lambda x, w1, w2: srelu_mlp(x, w1, w2, fp8=Fp8Recipe(), backend="torch"), fullgraph=True,
                      backend="aot_eager")
    monkeypatch.setenv("CUTE_KERNELS_FP8_COMPILE_OPS", "0")
    with pytest.raises(Exception, match="(?i)skip|disable|graph break"):
        f(*leaves)
    monkeypatch.delenv("CUTE_KERNELS_FP8_COMPILE_OPS")
    x, w1, w2 = leaves
    for w in (w1, w2):
        w.main_grad = torch.zeros(w.shape)
    g = torch.compile(lambda x, w1, w2: srelu_mlp(x, w1, w2, fp8=Fp8Recipe(), fuse_wgrad_accumulation=True),
                      fullgraph=True, backend="aot_eager")
    with pytest.raises(Exception, match="(?i)skip|disable|graph break"):
        g(x, w1, w2)
    # without fullgraph: the eager step between compiled regions, main_grad as eager's
    dy = torch.randn(M, H)
    got = []
    for fn in (lambda *a: srelu_mlp(*a, fp8=Fp8Recipe(), fuse_wgrad_accumulation=True),
               torch.compile(lambda *a: srelu_mlp(*a, fp8=Fp8Recipe(), fuse_wgrad_accumulation=True),
                             backend="aot_eager")):
        for w in (w1, w2):
            w.main_grad = torch.zeros(w.shape)
        fn(x, w1, w2).backward(dy)
        got.append([w1.main_grad, w2.main_grad])
    assert all(torch.equal(a, b) and a.abs().sum() > 0 for a, b in zip(*got))


def test_kernel_path_needs_the_switch(monkeypatch):
    """Which steps take the ops (no tensor is on CUDA here: the decision only)."""
    x = torch.empty(4, H)
    assert step_ops._takes_route(x, "auto", False) and step_ops._takes_route(x, "torch", False)
    assert not step_ops._takes_route(x, "torch", True)
    on_gpu = SimpleNamespace(is_cuda=True, device="cuda:0")  # what the decision reads of x
    assert not step_ops._takes_route(on_gpu, "auto", False) and step_ops._takes_route(on_gpu, "torch", False)
    monkeypatch.setenv("CUTE_KERNELS_FP8_COMPILE_OPS", "1")
    assert step_ops._takes_route(on_gpu, "auto", False) and not step_ops._takes_route(on_gpu, "auto", True)
    monkeypatch.setenv("CUTE_KERNELS_FP8_COMPILE_OPS", "0")
    assert not step_ops._takes_route(x, "torch", False) and not step_ops._takes_route(on_gpu, "auto", False)


# ---------------------------------------------------------------- opcheck
OPCHECK_UTILS = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")  # as test_torch_ops_fp8


def _op_args(grouped, with_prob, m=M):
    x, w1, w2, *p = _leaves(9, grouped, with_prob)
    x = x.detach()[:m].bfloat16().requires_grad_()
    splits = ([m - 40, 0, 40] if m else [0, 0, 0]) if grouped else None
    prob = p[0].detach()[:m].requires_grad_() if with_prob else None
    recipe = ("e4m3", "e4m3", False, "bf16")
    fc1 = (x, w1, splits, None, *recipe, "srelu", "torch")
    pre, pq, ps, xq, xs, w1tq, w1ts = torch.ops.cute_kernels.fp8_mlp_fc1(*fc1)
    pre = pre.detach().requires_grad_()
    fc2 = (pre, pq, ps, prob, w2, splits, None, *recipe, "srelu", "torch")
    _, w2tq, w2ts = torch.ops.cute_kernels.fp8_mlp_fc2(*fc2)
    dy = torch.randn(m, H).bfloat16()
    fc2_bwd = (dy, pre.detach(), prob.detach() if prob is not None else None, w2.detach(), w2tq, w2ts, splits, None,
               *recipe, "srelu", "torch", True)
    fc1_bwd = (pre.detach(), xq, xs, w1.detach(), w1tq, w1ts, splits, None, *recipe, "srelu", "torch", torch.float32,
               True, True)
    return fc1, fc2, fc2_bwd, fc1_bwd


def _detached(args):
    return tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)


@pytest.mark.parametrize("grouped,with_prob,m", [(False, False, M), (True, True, M), (True, True, 0)])
def test_opcheck(grouped, with_prob, m):
    """Every op; the forward ops' test_aot_dispatch_dynamic without requires_grad (it would sum their FP8
    outputs for a backward, which torch has no CPU kernel for; their autograd is what the compiled steps
    above run through AOT autograd)."""
    fc1, fc2, fc2_bwd, fc1_bwd = _op_args(grouped, with_prob, m)
    for name, args in (("fp8_mlp_fc1", fc1), ("fp8_mlp_fc2", fc2)):
        op = getattr(torch.ops.cute_kernels, name).default
        torch.library.opcheck(op, args, test_utils=OPCHECK_UTILS[:2])
        torch.library.opcheck(op, _detached(args), test_utils=OPCHECK_UTILS[2:])
    for name, args in (("fp8_mlp_fc2_bwd", fc2_bwd), ("fp8_mlp_fc1_bwd", fc1_bwd)):
        torch.library.opcheck(getattr(torch.ops.cute_kernels, name).default, args, test_utils=OPCHECK_UTILS)


def test_dynamic_shapes_and_zero_tokens():
    """One graph with symbolic M (dynamic=True) serves M = 200, 77 and 0 (grouped, new splits each call),
    each bitwise the eager step."""
    def step(x, w1, w2, prob, splits):
        return srelu_mlp(x, w1, w2, m_splits=splits, prob=prob, fp8=Fp8Recipe(), backend="torch")

    compiled = torch.compile(step, fullgraph=True, dynamic=True, backend="aot_eager")
    for m, splits in ((M, SPLITS), (77, [0, 50, 27]), (0, [0, 0, 0])):
        results = []
        for fn in (step, compiled):
            x, w1, w2, prob = _leaves(6, True, True)
            leaves = [x.detach()[:m].requires_grad_(), w1, w2, prob.detach()[:m].requires_grad_()]
            y = fn(*leaves, list(splits))
            y.backward(torch.ones_like(y))
            results.append([y.detach()] + [t.grad for t in leaves])
        for name, a, b in zip(("y", "dx", "dw1", "dw2", "dprob"), *results):
            assert torch.equal(a, b), f"{name} (M = {m})"
