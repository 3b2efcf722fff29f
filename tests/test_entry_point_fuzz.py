"""Edge-class fuzz over every public entry point with autograd (issue 25): `srelu_mlp` (dense,
grouped, with prob, tanh activation, FP8 recipe), `SReLUMLP`, `GroupedSReLUMLP` and
`routed_srelu_experts`, on the CPU (torch path); the GEMM entry points (`fc1_srelu`, `fc2`,
`fc2_dgrad_dsrelu`, `weight_grad`) where their checks run on the CPU.  Each class of input is
generated for each entry point from one table (ENTRY_POINTS, GEMM_CALLS), so a new entry point
gets every class:

- second-order autograd: double backward raises a RuntimeError naming "double backward"
  (gradgradcheck, a gradient penalty by .backward() or by autograd.grad with respect to any
  input): never a wrong number;
- quantized dtypes (FP8, FP4) of every floating argument: an InputError naming it;
- zero-size: no tokens (every entry point), ffn = 0 (those taking weights): a result of the right
  shape whose gradients are zeros, not None (or, for the FP8 step's ffn = 0, an InputError);
- extreme floats: scaling the tokens by 2^a (a up to +-250 in float64, +-40 in float32) scales the
  output and every gradient by exact powers of two (nothing clamps, overflows or flushes); a NaN or
  inf in one token (or its router weight) reaches that token's output row and no other row;
- wrong container types (list, tuple, numpy array, None, a number) for every tensor argument: an
  InputError naming the argument;
- out-of-range indices: m_splits entries (negative, beyond M) of the grouped entry points and expert
  ids of routed_srelu_experts: an InputError naming the argument.
(srelu_mlp's own argument classes in depth: tests/test_mlp_input_fuzz.py; routed experts: tests/test_moe.py.)
"""
import numpy as np
import pytest
import torch

import cute_kernels as ck
from cute_kernels.fp8 import Fp8Recipe

T, H, F, E, TOPK = 6, 16, 32, 3, 2


def _splits(x):
    """Per-expert counts for x's rows (one expert left empty)."""
    m = x.size(0) if isinstance(x, torch.Tensor) else T
    return [m // 3, 0, m - m // 3]


def _leaf(*shape, dtype=torch.float64, gen):
    return torch.randn(*shape, generator=gen, dtype=dtype).mul_(0.5).requires_grad_()


def _weights(grouped, dtype, gen, ffn):
    lead = (E,) if grouped else ()
    return _leaf(*lead, ffn, H, dtype=dtype, gen=gen), _leaf(*lead, H, ffn, dtype=dtype, gen=gen)


def _routing(gen, tokens):
    if not tokens:
        return torch.empty(0, TOPK, dtype=torch.int64)
    return torch.stack([torch.randperm(E, generator=gen)[:TOPK] for _ in range(tokens)])


class Entry:
    """One public entry point.  `make(dtype, gen, tokens, ffn)` gives (args, differentiable
    leaves); `call(*args, splits=None)` runs it (grouped ones take m_splits from `splits`, else
    `_splits(tokens)`); `names` names each argument as its errors do; `x_pos` / `prob_pos` say where
    the token input / per-token router weights are; `dtype` is the float dtype its torch path is
    exact in; `homogeneous`: f(2^a x) = 2^2a f(x) (relu^2, not the tanh clamp); `fp8`: the FP8 step."""

    def __init__(self, name, make, call, names, *, dtype=torch.float64, x_pos=0, prob_pos=None, grouped=False,
                 homogeneous=True, fp8=False, takes_ffn=True):
        self.name, self.make, self.call, self.names, self.dtype = name, make, call, names, dtype
        self.x_pos, self.prob_pos, self.grouped = x_pos, prob_pos, grouped
        self.homogeneous, self.fp8, self.takes_ffn = homogeneous, fp8, takes_ffn

    def inputs(self, seed=0, tokens=T, ffn=F):
        return self.make(self.dtype, torch.Generator().manual_seed(seed), tokens, ffn)


def _mlp_args(grouped, with_prob=False):
    def make(dtype, gen, tokens, ffn):
        x = _leaf(tokens, H, dtype=dtype, gen=gen)
        args = [x, *_weights(grouped, dtype, gen, ffn)]
        if with_prob:
            args.append(torch.rand(tokens, generator=gen, dtype=dtype).requires_grad_())
        return args, list(args)
    return make


def _module(cls):
    def make(dtype, gen, tokens, ffn):
        torch.manual_seed(int(torch.randint(1 << 30, (1,), generator=gen)))
        mod = (ck.SReLUMLP(H, ffn, backend="torch", dtype=dtype) if cls is ck.SReLUMLP
               else ck.GroupedSReLUMLP(E, H, ffn, backend="torch", dtype=dtype))
        x = _leaf(tokens, H, dtype=dtype, gen=gen)
        return [mod, x], [x, *mod.parameters()]
    return make


def _routed(dtype, gen, tokens, ffn):
    hidden = _leaf(tokens, H, dtype=dtype, gen=gen)
    w1, w2 = _weights(True, dtype, gen, ffn)
    idx = _routing(gen, tokens)
    weight = torch.rand(tokens, TOPK, generator=gen, dtype=dtype).requires_grad_()
    return [hidden, idx, weight, w1, w2], [hidden, weight, w1, w2]


def _grouped_call(fn):
    return lambda *args, splits=None: fn(*args, m_splits=_splits(args[0]) if splits is None else splits)


MLP = ("x", "w1", "w2")
MLP_PROB = ("x", "w1", "w2", "prob")
ENTRY_POINTS = [
    Entry("srelu_mlp dense", _mlp_args(False), lambda x, w1, w2: ck.srelu_mlp(x, w1, w2, backend="torch"), MLP),
    Entry("srelu_mlp dense prob", _mlp_args(False, True),
          lambda x, w1, w2, p: ck.srelu_mlp(x, w1, w2, prob=p, backend="torch"), MLP_PROB, prob_pos=3),
    Entry("srelu_mlp grouped", _mlp_args(True),
          _grouped_call(lambda x, w1, w2, m_splits: ck.srelu_mlp(x, w1, w2, m_splits=m_splits, backend="torch")),
          MLP, grouped=True),
    Entry("srelu_mlp grouped prob recompute", _mlp_args(True, True),
          _grouped_call(lambda x, w1, w2, p, m_splits: ck.srelu_mlp(x, w1, w2, m_splits=m_splits, prob=p,
                                                                    recompute_postact=True, backend="torch")),
          MLP_PROB, prob_pos=3, grouped=True),
    Entry("srelu_mlp tanh_srelu", _mlp_args(False),
          lambda x, w1, w2: ck.srelu_mlp(x, w1, w2, activation="tanh_srelu:2.0", backend="torch"), MLP,
          homogeneous=False),
    Entry("srelu_mlp fp8", _mlp_args(False, True),
          lambda x, w1, w2, p: ck.srelu_mlp(x, w1, w2, prob=p, fp8=Fp8Recipe(), backend="torch"), MLP_PROB,
          dtype=torch.float32, prob_pos=3, fp8=True),
    Entry("srelu_mlp fp8 grouped", _mlp_args(True),
          _grouped_call(lambda x, w1, w2, m_splits: ck.srelu_mlp(x, w1, w2, m_splits=m_splits, fp8=Fp8Recipe(),
                                                                 backend="torch")),
          MLP, dtype=torch.float32, grouped=True, fp8=True),
    Entry("SReLUMLP", _module(ck.SReLUMLP), lambda mod, x: mod(x), ("module", "x"), x_pos=1),
    Entry("GroupedSReLUMLP", _module(ck.GroupedSReLUMLP),
          lambda mod, x, splits=None: mod(x, _splits(x) if splits is None else splits), ("module", "x"), x_pos=1,
          grouped=True),
    Entry("routed_srelu_experts", _routed,
          lambda h, i, w, w1, w2: ck.routed_srelu_experts(h, i, w, w1, w2, backend="torch"),
          ("hidden", "topk_idx", "topk_weight", "w1", "w2"), prob_pos=2),
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
    assert torch.autograd.gradcheck(ENTRY_POINTS[1].call, tuple(args))


def test_routing_gather_and_scatter_have_exact_second_order():
    """The MoE dispatch and combine nodes are linear gathers whose backward is recorded by
    autograd: their double backward is exact, and gradgradcheck passes in float64."""
    from cute_kernels.moe import _Combine, _Dispatch, route

    gen = torch.Generator().manual_seed(1)
    r = route(_routing(gen, T), E)
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
    x = _leaf(T, H, dtype=torch.float32, gen=gen)
    x, w1, w2 = (t.detach().to("cuda", torch.bfloat16).requires_grad_()
                 for t in (x, *_weights(False, torch.float32, gen, F)))
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


# ----- zero-size --------------------------------------------------------------------------------

def _grads_are_zeros(y, leaves):
    grads = torch.autograd.grad(y.sum(), leaves)
    for leaf, g in zip(leaves, grads):
        assert g is not None and g.shape == leaf.shape and not g.any()


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=IDS)
def test_no_tokens(entry):
    args, leaves = entry.inputs(tokens=0)
    y = entry.call(*args)
    assert y.shape == (0, H) and y.dtype == entry.dtype and y.requires_grad
    _grads_are_zeros(y, leaves)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # the modules' nn.Linear init
@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=IDS)
def test_zero_ffn(entry):
    """ffn = 0: y = 0 and zero gradients; the FP8 step refuses it by name."""
    args, leaves = entry.inputs(ffn=0)
    if entry.fp8:
        with pytest.raises(ck.InputError, match="ffn = 0"):
            entry.call(*args)
        return
    y = entry.call(*args)
    assert y.shape == (T, H) and not y.any()
    _grads_are_zeros(y, leaves)


# ----- extreme floats ---------------------------------------------------------------------------

def _run(entry, args, leaves, dy):
    y = entry.call(*args)
    return [y.detach()] + list(torch.autograd.grad(y, leaves, dy))


@pytest.mark.parametrize("entry", [e for e in ENTRY_POINTS if e.homogeneous], ids=lambda e: e.name)
def test_power_of_two_scaling_is_exact(entry):
    """y(2^a x) = 2^2a y(x) bitwise for relu^2, and every gradient scales by its exact power of two
    (dx by 2^a, the rest by 2^2a): near the ends of the dtype's range nothing clamps, overflows or is
    flushed (an FP8 block scale is amax / fmax, so it scales exactly too)."""
    args, leaves = entry.inputs(seed=9)
    gen = torch.Generator().manual_seed(10)
    dy = torch.randn(T, H, generator=gen, dtype=entry.dtype)
    base = _run(entry, args, leaves, dy)
    exps = (-250, -100, 100, 250) if entry.dtype == torch.float64 else (-40, 40)
    x = args[entry.x_pos]
    for a in exps:
        scaled = list(args)
        scaled[entry.x_pos] = (x.detach() * 2.0 ** a).requires_grad_()
        sleaves = [scaled[entry.x_pos] if t is x else t for t in leaves]
        got = _run(entry, scaled, sleaves, dy)
        powers = [2 * a] + [a if t is x else 2 * a for t in leaves]
        for i, (g, b, p) in enumerate(zip(got, base, powers)):
            assert torch.isfinite(g).all() and torch.equal(g, b * 2.0 ** p), (a, i)


def _token_rows(entry, args, r, value):
    """args with token r's input (or router weight) set to `value` in one place."""
    bad = list(args)
    if value == "prob":
        p = args[entry.prob_pos].detach().clone()
        p[r] = float("inf")
        bad[entry.prob_pos] = p.requires_grad_()
    else:
        x = args[entry.x_pos].detach().clone()
        x[r, 3] = value
        bad[entry.x_pos] = x.requires_grad_()
    return bad


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), "prob"], ids=str)
@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=IDS)
def test_a_non_finite_token_stays_in_its_row(entry, value):
    """A NaN or inf in one token's input (or an inf router weight) makes that token's output row
    non-finite and leaves every other row (and their input gradients) bitwise as without it."""
    if value == "prob" and entry.prob_pos is None:
        pytest.skip("no per-token router weight")
    args, leaves = entry.inputs(seed=4)
    dy = torch.randn(T, H, generator=torch.Generator().manual_seed(4), dtype=entry.dtype)
    clean = entry.call(*args)
    (dclean,) = torch.autograd.grad(clean, args[entry.x_pos], dy)
    for r in (0, T // 2, T - 1):
        bad = _token_rows(entry, args, r, value)
        y = entry.call(*bad)
        (dx,) = torch.autograd.grad(y, bad[entry.x_pos], dy)
        keep = torch.arange(T) != r
        if entry.homogeneous or value != value:  # (the tanh clamp maps an inf preact to s^2: finite)
            assert not torch.isfinite(y[r]).all(), r
        assert torch.equal(y[keep], clean[keep]) and torch.equal(dx[keep], dclean[keep]), r


@pytest.mark.parametrize("x", [1e-300, 1e150, 5e-324], ids=repr)
def test_tanh_srelu_at_extreme_inputs_matches_float64_reference(x):
    """The clamp is not homogeneous: compare with its plain-torch formula instead."""
    entry = next(e for e in ENTRY_POINTS if e.name == "srelu_mlp tanh_srelu")
    args, leaves = entry.inputs(seed=6)
    xs = (args[0].detach() / args[0].detach().abs().max() * x).requires_grad_()
    y = entry.call(xs, *args[1:])
    pre = xs @ args[1].t()
    ref = (2.0 * torch.tanh(torch.relu(pre) / 2.0)).square() @ args[2].t()
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=0)
    for a, b in zip(torch.autograd.grad(y.sum(), [xs, *args[1:]]), torch.autograd.grad(ref.sum(), [xs, *args[1:]])):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-10, atol=0)


# ----- wrong container types --------------------------------------------------------------------

OPTIONAL = {"prob"}  # None is their default


def _containers(t, name):
    yield "list", t.detach().tolist()
    yield "tuple", tuple(t.detach().tolist())
    yield "numpy", t.detach().numpy()
    if name not in OPTIONAL:
        yield "None", None
    yield "float", 1.0
    yield "int", 3


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=IDS)
def test_wrong_container_types_are_named(entry):
    """Every tensor argument as a list, tuple, numpy array, None or a number: an InputError whose
    message starts with the argument's name (before: AttributeError: 'list' object has no 'dim')."""
    args, _ = entry.inputs()
    checked = 0
    for i, a in enumerate(args):
        if not isinstance(a, torch.Tensor):
            continue
        for kind, value in _containers(a, entry.names[i]):
            bad = list(args)
            bad[i] = value
            with pytest.raises(ck.InputError) as exc:
                entry.call(*bad)
            assert str(exc.value).startswith(entry.names[i]), (kind, str(exc.value))
            checked += 1
    assert checked >= 6


@pytest.mark.parametrize("call", GEMM_CALLS, ids=[c[0] for c in GEMM_CALLS])
def test_gemm_entry_points_name_wrong_containers(call):
    _, fn, kw = call
    for name, t in kw.items():
        for kind, value in _containers(t.float(), name):
            with pytest.raises(ck.InputError) as exc:
                fn(**{**kw, name: value})
            assert str(exc.value).startswith(name), (kind, str(exc.value))


# ----- out-of-range indices -----------------------------------------------------------------------

def _bad_splits(m):
    yield [-1, 0, m + 1]
    yield [m + 1, 0, -1]
    yield [0, m + 5, 0]
    yield [-(2 ** 40), 2 ** 40, m]


@pytest.mark.parametrize("entry", [e for e in ENTRY_POINTS if e.grouped], ids=lambda e: e.name)
def test_out_of_range_m_splits_are_named(entry):
    args, leaves = entry.inputs()
    for splits in [*_bad_splits(T), torch.tensor([-1, 0, T + 1])]:  # (a CPU tensor is read: no sync)
        with pytest.raises(ck.InputError, match="m_splits"):
            entry.call(*args, splits=splits)
    assert all(t.grad is None for t in leaves)


def test_gemm_entry_points_name_out_of_range_m_splits():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(T, 32, generator=gen).bfloat16()
    w = torch.randn(E, 48, 32, generator=gen).bfloat16()
    for splits in _bad_splits(T):
        for fn in (lambda s: ck.fc1_srelu(x, w, m_splits=s), lambda s: ck.fc2(x, w, m_splits=s),
                   lambda s: ck.weight_grad(x, x, m_splits=s)):
            with pytest.raises(ck.InputError, match="m_splits"):
                fn(splits)


@pytest.mark.parametrize("seed", range(4))
def test_out_of_range_expert_ids_are_named(seed):
    entry = ENTRY_POINTS[IDS.index("routed_srelu_experts")]
    args, leaves = entry.inputs(seed=seed)
    gen = torch.Generator().manual_seed(seed)
    for bad_id in (-1, E, E + int(torch.randint(1, 1000, (1,), generator=gen)), -int(torch.randint(2, 1 << 40, (1,),
                                                                                                    generator=gen))):
        idx = args[1].clone()
        r, c = int(torch.randint(T, (1,), generator=gen)), int(torch.randint(TOPK, (1,), generator=gen))
        idx[r, c] = bad_id
        with pytest.raises(ck.InputError, match=rf"^topk_idx holds expert id {bad_id} at \[{r}, {c}\]"):
            entry.call(args[0], idx, *args[2:])
    assert all(t.grad is None for t in leaves)


@pytest.mark.gpu
@pytest.mark.parametrize("grouped", [False, True], ids=["dense", "grouped"])
@pytest.mark.parametrize("m,n", [(0, 48), (8, 0), (0, 0)], ids=["M=0", "N=0", "M=N=0"])
def test_gemm_entry_points_zero_size_on_gpu(m, n, grouped):
    """No rows or no FC1 output columns: outputs of the right shapes, weight gradients zeros; FC2
    with N = 0 is its K = 0, refused by name."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    k = 32
    cuda = dict(device="cuda", dtype=torch.bfloat16)
    splits = [m // 2, 0, m - m // 2] if grouped else None
    lead = (E,) if grouped else ()
    x, h, dy = torch.randn(m, k, **cuda), torch.randn(m, n, **cuda), torch.randn(m, k, **cuda)
    w1, w2 = torch.randn(*lead, n, k, **cuda), torch.randn(*lead, k, n, **cuda)
    pre, post = ck.fc1_srelu(x, w1, m_splits=splits)
    assert pre.shape == post.shape == (m, n)
    if n:
        assert ck.fc2(h, w2, m_splits=splits).shape == (m, k)
    else:
        with pytest.raises(ck.InputError, match="K=0"):
            ck.fc2(h, w2, m_splits=splits)
    dpre, _, dprob = ck.fc2_dgrad_dsrelu(dy, w2, h, m_splits=splits, prob=torch.rand(m, device="cuda"))
    assert dpre.shape == (m, n) and dprob.shape == (m,) and not dprob.any()
    dw = ck.weight_grad(h, x, m_splits=splits)
    assert dw.shape == (*lead, n, k) and not dw.any()


@pytest.mark.gpu
@pytest.mark.parametrize("tokens,ffn", [(0, 64), (8, 0)], ids=["no tokens", "ffn=0"])
@pytest.mark.parametrize("grouped", [False, True], ids=["dense", "grouped"])
def test_cute_path_zero_size(tokens, ffn, grouped):
    """srelu_mlp on the cute path (bf16, with prob): the torch path's shapes and zero gradients."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    gen = torch.Generator().manual_seed(0)
    h = 64
    lead = (E,) if grouped else ()
    leaves = [(torch.randn(*shape, generator=gen) * 0.1).to("cuda", torch.bfloat16).requires_grad_()
              for shape in ((tokens, h), (*lead, ffn, h), (*lead, h, ffn))]
    prob = torch.rand(tokens, generator=gen).cuda().requires_grad_()
    splits = [tokens // 2, 0, tokens - tokens // 2] if grouped else None
    y = ck.srelu_mlp(*leaves, m_splits=splits, prob=prob, backend="cute")
    assert y.shape == (tokens, h) and not y.any()
    _grads_are_zeros(y.float(), [*leaves, prob])
