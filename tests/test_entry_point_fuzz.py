"""Edge-class fuzz over every public entry point with autograd (issue 25): `srelu_mlp` (dense,
grouped, with prob, tanh activation, FP8 recipe), `SReLUMLP`, `GroupedSReLUMLP` and
`routed_srelu_experts`, on the CPU (torch path).  Each class of input is generated for each
entry point from one table (ENTRY_POINTS), so a new entry point gets every class:

- second-order autograd: double backward raises a RuntimeError naming "double backward"
  (gradgradcheck, a gradient penalty by .backward() or by autograd.grad with respect to any
  input): never a wrong number;
(bad-input classes of srelu_mlp's own arguments: tests/test_mlp_input_fuzz.py.)
"""
import pytest
import torch

import cute_kernels as ck
from cute_kernels.fp8 import Fp8Recipe

T, H, F, E, TOPK = 6, 16, 32, 3, 2
SPLITS = [2, 0, 4]


def _leaf(*shape, dtype=torch.float64, gen):
    return torch.randn(*shape, generator=gen, dtype=dtype).mul_(0.5).requires_grad_()


def _dense(dtype, gen):
    return _leaf(T, H, dtype=dtype, gen=gen), _leaf(F, H, dtype=dtype, gen=gen), _leaf(H, F, dtype=dtype, gen=gen)


def _grouped(dtype, gen):
    return _leaf(T, H, dtype=dtype, gen=gen), _leaf(E, F, H, dtype=dtype, gen=gen), _leaf(E, H, F, dtype=dtype, gen=gen)


def _routing(gen, tokens=T):
    idx = torch.stack([torch.randperm(E, generator=gen)[:TOPK] for _ in range(tokens)]) if tokens else \
        torch.empty(0, TOPK, dtype=torch.int64)
    return idx


class Entry:
    """One public entry point: `inputs(dtype)` gives (args, differentiable leaves) and
    `call(*args)` runs it; `names` names each argument as the entry point's errors do;
    `dtype` is the float dtype its torch path is exact in."""

    def __init__(self, name, make, call, names, dtype=torch.float64):
        self.name, self.make, self.call, self.names, self.dtype = name, make, call, names, dtype

    def inputs(self, seed=0):
        return self.make(self.dtype, torch.Generator().manual_seed(seed))


def _mlp_args(grouped, with_prob=False):
    def make(dtype, gen):
        x, w1, w2 = (_grouped if grouped else _dense)(dtype, gen)
        args = [x, w1, w2]
        if with_prob:
            args.append(torch.rand(T, generator=gen, dtype=dtype).requires_grad_())
        return args, args
    return make


def _module(cls):
    def make(dtype, gen):
        torch.manual_seed(int(torch.randint(1 << 30, (1,), generator=gen)))
        mod = (ck.SReLUMLP(H, F, backend="torch", dtype=dtype) if cls is ck.SReLUMLP
               else ck.GroupedSReLUMLP(E, H, F, backend="torch", dtype=dtype))
        x = _leaf(T, H, dtype=dtype, gen=gen)
        return [mod, x], [x, *mod.parameters()]
    return make


def _routed(dtype, gen):
    hidden, w1, w2 = _grouped(dtype, gen)
    idx = _routing(gen)
    weight = torch.rand(T, TOPK, generator=gen, dtype=dtype).requires_grad_()
    return [hidden, idx, weight, w1, w2], [hidden, weight, w1, w2]


MLP = ("x", "w1", "w2")
MLP_PROB = ("x", "w1", "w2", "prob")
ENTRY_POINTS = [
    Entry("srelu_mlp dense", _mlp_args(False), lambda x, w1, w2: ck.srelu_mlp(x, w1, w2, backend="torch"), MLP),
    Entry("srelu_mlp dense prob", _mlp_args(False, True),
          lambda x, w1, w2, p: ck.srelu_mlp(x, w1, w2, prob=p, backend="torch"), MLP_PROB),
    Entry("srelu_mlp grouped", _mlp_args(True),
          lambda x, w1, w2: ck.srelu_mlp(x, w1, w2, m_splits=SPLITS, backend="torch"), MLP),
    Entry("srelu_mlp grouped prob recompute", _mlp_args(True, True),
          lambda x, w1, w2, p: ck.srelu_mlp(x, w1, w2, m_splits=SPLITS, prob=p, recompute_postact=True,
                                            backend="torch"), MLP_PROB),
    Entry("srelu_mlp tanh_srelu", _mlp_args(False),
          lambda x, w1, w2: ck.srelu_mlp(x, w1, w2, activation="tanh_srelu:2.0", backend="torch"), MLP),
    Entry("srelu_mlp fp8", _mlp_args(False, True),
          lambda x, w1, w2, p: ck.srelu_mlp(x, w1, w2, prob=p, fp8=Fp8Recipe(), backend="torch"), MLP_PROB,
          torch.float32),
    Entry("srelu_mlp fp8 grouped", _mlp_args(True),
          lambda x, w1, w2: ck.srelu_mlp(x, w1, w2, m_splits=SPLITS, fp8=Fp8Recipe(), backend="torch"), MLP,
          torch.float32),
    Entry("SReLUMLP", _module(ck.SReLUMLP), lambda mod, x: mod(x), ("module", "x")),
    Entry("GroupedSReLUMLP", _module(ck.GroupedSReLUMLP), lambda mod, x: mod(x, SPLITS), ("module", "x")),
    Entry("routed_srelu_experts", _routed,
          lambda h, i, w, w1, w2: ck.routed_srelu_experts(h, i, w, w1, w2, backend="torch"),
          ("hidden", "topk_idx", "topk_weight", "w1", "w2")),
]
IDS = [e.name for e in ENTRY_POINTS]


# ----- second-order autograd ------------------------------------------------------------------

DOUBLE = "double backward"


@pytest.mark.filterwarnings("ignore:Input #")  # the FP8 entries run in float32
@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=IDS)
def test_gradgradcheck_raises_clearly(entry):
    args, leaves = entry.inputs()
    tensor_pos = [i for i, a in enumerate(args) if a is leaves[0]][0]

    def fn(x):  # the first differentiable input varied, the rest (weights) closed over
        return entry.call(*args[:tensor_pos], x, *args[tensor_pos + 1:])

    with pytest.raises(RuntimeError, match=DOUBLE):
        torch.autograd.gradgradcheck(fn, (leaves[0],), fast_mode=True)


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=IDS)
def test_gradient_penalty_raises_for_every_input(entry):
    """A penalty on the input gradient, differentiated with respect to each differentiable
    input in turn (autograd.grad runs only the nodes on the way to that input) and by
    .backward() in a combined loss: each raises, none returns a number or None."""
    args, leaves = entry.inputs()
    for wrt in leaves:
        y = entry.call(*args)
        (g,) = torch.autograd.grad(y.square().sum(), leaves[0], create_graph=True)
        with pytest.raises(RuntimeError, match=DOUBLE):
            torch.autograd.grad(g.square().sum(), wrt, allow_unused=True)
    y = entry.call(*args)
    (g,) = torch.autograd.grad(y.sum(), leaves[-1], create_graph=True)  # incoming grad needs no grad here
    with pytest.raises(RuntimeError, match=DOUBLE):
        (y.sum() + g.square().sum()).backward()


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=IDS)
def test_create_graph_keeps_first_order_gradients(entry):
    """create_graph=True without a second differentiation: the same gradients as without."""
    args, leaves = entry.inputs(seed=3)
    plain = torch.autograd.grad(entry.call(*args).square().sum(), leaves)
    graphed = torch.autograd.grad(entry.call(*args).square().sum(), leaves, create_graph=True)
    for a, b in zip(plain, graphed):
        assert torch.equal(a, b.detach())


def test_first_order_gradients_still_match_float64_reference():
    """The wrapper leaves first-order gradients exact (dense, prob, torch path, float64)."""
    args, leaves = ENTRY_POINTS[1].inputs(seed=5)
    torch.autograd.gradcheck(ENTRY_POINTS[1].call, tuple(args))


def test_routing_gather_and_scatter_have_exact_second_order():
    """The MoE dispatch and combine nodes are linear gathers whose backward is recorded by
    autograd: their double backward is exact, and gradgradcheck passes in float64."""
    from cute_kernels.moe import _Combine, _Dispatch, route

    gen = torch.Generator().manual_seed(1)
    r = route(_routing(gen), E)
    hidden = _leaf(T, H, gen=gen)
    rows = _leaf(T * TOPK, H, gen=gen)

    def dispatch(h):
        return _Dispatch.apply(h, r.token, r.inverse, r.top_k).square()

    def combine(y):
        return _Combine.apply(y, r.token, r.inverse, r.top_k).square()

    assert torch.autograd.gradgradcheck(dispatch, (hidden,))
    assert torch.autograd.gradgradcheck(combine, (rows,))


@pytest.mark.gpu
@pytest.mark.parametrize("fp8", [None, Fp8Recipe()], ids=["bf16", "fp8"])
def test_cute_path_double_backward_raises(fp8):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    gen = torch.Generator().manual_seed(0)
    x, w1, w2 = (t.detach().to("cuda", torch.bfloat16).requires_grad_() for t in _dense(torch.float32, gen))
    y = ck.srelu_mlp(x, w1, w2, backend="cute", fp8=fp8)
    (g,) = torch.autograd.grad(y.float().square().sum(), x, create_graph=True)
    for wrt in (x, w1, w2):
        with pytest.raises(RuntimeError, match=DOUBLE):
            torch.autograd.grad(g.float().square().sum(), wrt, retain_graph=True)


# ----- quantized (FP8 and narrower) dtypes --------------------------------------------------------

QUANTIZED = [torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz,
             torch.float8_e8m0fnu, torch.float4_e2m1fn_x2]
QIDS = [str(d).removeprefix("torch.") for d in QUANTIZED]


def _as(t, dtype):
    return torch.empty(t.shape, dtype=dtype)  # (values do not matter: refused before they are read)


def _float_args(entry):
    args, _ = entry.inputs()
    return args, [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.is_floating_point()]


@pytest.mark.parametrize("dtype", QUANTIZED, ids=QIDS)
@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=IDS)
def test_quantized_dtype_inputs_are_named(entry, dtype):
    """Each floating argument of each entry point in each FP8/FP4 dtype: an InputError naming
    the argument and its quantized dtype (before: a promotion error deep in reference.py)."""
    args, pos = _float_args(entry)
    for i in pos:
        bad = list(args)
        bad[i] = _as(args[i], dtype)
        with pytest.raises(ck.InputError, match=f"^{entry.names[i]} has the quantized dtype"):
            entry.call(*bad)


@pytest.mark.parametrize("dtype", QUANTIZED + [torch.int8, "bfloat16", torch.complex64], ids=str)
@pytest.mark.parametrize("cls", [ck.SReLUMLP, ck.GroupedSReLUMLP], ids=lambda c: c.__name__)
def test_module_dtype_argument_is_checked(cls, dtype):
    args = (H, F) if cls is ck.SReLUMLP else (E, H, F)
    with pytest.raises(ck.InputError, match="^dtype"):
        cls(*args, dtype=dtype)


def _gemm_calls():
    """(name, call, {argument name: tensor}) of the GEMM entry points with valid bf16 CPU inputs
    (they stop at "needs CUDA", after every other check)."""
    gen = torch.Generator().manual_seed(2)
    bf = dict(dtype=torch.bfloat16)
    m, k, n = 6, 32, 48

    def r(*shape):
        return torch.randn(*shape, generator=gen).to(**bf)

    x, w1, h, w2, dy, pre, prob = r(m, k), r(n, k), r(m, n), r(k, n), r(m, k), r(m, n), torch.rand(m, generator=gen)
    yield "fc1_srelu", lambda x, w1, prob: ck.fc1_srelu(x, w1, prob=prob), dict(x=x, w1=w1, prob=prob)
    yield "fc2", lambda h, w2: ck.fc2(h, w2), dict(h=h, w2=w2)
    yield ("fc2_dgrad_dsrelu", lambda dy, w2, preact, prob: ck.fc2_dgrad_dsrelu(dy, w2, preact, prob=prob),
           dict(dy=dy, w2=w2, preact=pre, prob=prob))
    yield "weight_grad", lambda dy, x: ck.weight_grad(dy, x), dict(dy=dy, x=h)


GEMM_CALLS = list(_gemm_calls())


@pytest.mark.parametrize("call", GEMM_CALLS, ids=[c[0] for c in GEMM_CALLS])
def test_gemm_entry_points_on_cpu_reach_the_cuda_check(call):
    _, fn, kw = call
    with pytest.raises(ck.InputError, match="CPU tensor"):
        fn(**kw)


@pytest.mark.parametrize("dtype", QUANTIZED, ids=QIDS)
@pytest.mark.parametrize("call", GEMM_CALLS, ids=[c[0] for c in GEMM_CALLS])
def test_gemm_entry_points_name_quantized_inputs(call, dtype):
    _, fn, kw = call
    for name, t in kw.items():
        with pytest.raises(ck.InputError) as exc:
            fn(**{**kw, name: _as(t, dtype)})
        assert str(exc.value).startswith(name) and "quantized dtype" in str(exc.value), str(exc.value)
