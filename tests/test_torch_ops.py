"""The custom ops: opcheck (schema, fake impl, autograd registration) and torch.compile
tracing them with fullgraph=True, on CPU."""
import pytest
import torch

from cute_kernels import torch_ops  # noqa: F401  (registers the ops)


def _args(grouped, store_preact=True, with_prob=True):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 16, generator=g)
    w1 = torch.randn(*((3, 24, 16) if grouped else (24, 16)), generator=g)
    prob = torch.rand(12, generator=g) if with_prob else None
    splits = [5, 0, 7] if grouped else None
    return x, w1, splits, prob, store_preact


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("store_preact", [False, True])
def test_opcheck_fc1(grouped, store_preact):
    torch.library.opcheck(torch.ops.cute_kernels.fc1_srelu_fwd.default, _args(grouped, store_preact))


@pytest.mark.parametrize("grouped", [False, True])
def test_opcheck_fc2(grouped):
    g = torch.Generator().manual_seed(1)
    h = torch.randn(12, 24, generator=g)
    w2 = torch.randn(*((3, 16, 24) if grouped else (16, 24)), generator=g)
    torch.library.opcheck(torch.ops.cute_kernels.fc2_fwd.default, (h, w2, [5, 0, 7] if grouped else None))


def test_values_match_reference():
    x, w1, splits, prob, _ = _args(True)
    pre, post = torch.ops.cute_kernels.fc1_srelu_fwd(x, w1, splits, prob, True)
    ref = torch.cat([x[:5] @ w1[0].t(), x[5:5].new_empty(0, 24), x[5:] @ w1[2].t()])
    assert torch.allclose(pre, ref) and torch.allclose(post, torch.relu(ref).square() * prob[:, None])


def test_compile_traces_without_graph_breaks():
    torch._dynamo.reset()

    def mlp(x, w1, w2, prob):
        _, post = torch.ops.cute_kernels.fc1_srelu_fwd(x, w1, [5, 0, 7], prob, False)
        return torch.ops.cute_kernels.fc2_fwd(post, w2, [5, 0, 7])

    x, w1, _, prob, _ = _args(True)
    w2 = torch.randn(3, 16, 24)
    compiled = torch.compile(mlp, fullgraph=True, backend="eager")
    assert torch.allclose(compiled(x, w1, w2, prob), mlp(x, w1, w2, prob))


@pytest.mark.parametrize("grouped", [False, True])
def test_srelu_mlp_compiles_fullgraph_with_gradients(grouped):
    from cute_kernels import srelu_mlp

    torch._dynamo.reset()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(12, 16, generator=g, dtype=torch.float64)
    w1 = torch.randn(*((3, 24, 16) if grouped else (24, 16)), generator=g, dtype=torch.float64)
    w2 = torch.randn(*((3, 16, 24) if grouped else (16, 24)), generator=g, dtype=torch.float64)
    splits = [5, 0, 7] if grouped else None

    def run(fn):
        leaves = [t.clone().requires_grad_() for t in (x, w1, w2)]
        y = fn(*leaves)
        y.square().sum().backward()
        return [y] + [t.grad for t in leaves]

    eager = lambda a, b, c: srelu_mlp(a, b, c, m_splits=splits, backend="torch")
    compiled = torch.compile(eager, fullgraph=True, backend="eager")
    for a, b in zip(run(compiled), run(eager)):
        assert torch.allclose(a, b)


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("store_postact", [False, True])
@pytest.mark.parametrize("with_prob", [False, True])
def test_opcheck_fc2_dgrad_dsrelu(grouped, store_postact, with_prob):
    g = torch.Generator().manual_seed(3)
    dy = torch.randn(12, 16, generator=g)
    w2 = torch.randn(*((3, 16, 24) if grouped else (16, 24)), generator=g)
    pre = torch.randn(12, 24, generator=g)
    prob = torch.rand(12, generator=g) if with_prob else None
    args = (dy, w2, pre, [5, 0, 7] if grouped else None, prob, store_postact)
    torch.library.opcheck(torch.ops.cute_kernels.fc2_dgrad_dsrelu.default, args)
    dpre, post, dprob = torch.ops.cute_kernels.fc2_dgrad_dsrelu(*args)
    if grouped:
        d = torch.cat([dy[:5] @ w2[0], dy[5:5] @ w2[1], dy[5:] @ w2[2]])
    else:
        d = dy @ w2
    act = torch.relu(pre)
    p = prob.reshape(-1, 1) if with_prob else torch.ones(12, 1)
    assert torch.allclose(dpre, 2 * d * act * p, atol=1e-4)
    if store_postact:
        assert torch.allclose(post, act * act * p, atol=1e-5)
    else:
        assert post.numel() == 0
    if with_prob:
        assert torch.allclose(dprob, (d * act * act).sum(1), atol=1e-3)
    else:
        assert dprob.numel() == 0


@pytest.mark.parametrize("grouped", [False, True])
def test_opcheck_weight_grad(grouped):
    g = torch.Generator().manual_seed(4)
    dy = torch.randn(12, 16, generator=g)
    x = torch.randn(12, 24, generator=g)
    splits = [5, 0, 7] if grouped else None
    torch.library.opcheck(torch.ops.cute_kernels.weight_grad.default, (dy, x, splits))
    dw = torch.ops.cute_kernels.weight_grad(dy, x, splits)
    if grouped:
        ref = torch.stack([dy[:5].t() @ x[:5], torch.zeros(16, 24), dy[5:].t() @ x[5:]])
    else:
        ref = dy.t() @ x
    assert torch.allclose(dw, ref, atol=1e-4)
    main_grad = torch.randn(ref.shape, generator=g)
    before = main_grad.clone()
    torch.library.opcheck(torch.ops.cute_kernels.weight_grad_accumulate.default, (dy, x, splits, main_grad.clone()))
    torch.ops.cute_kernels.weight_grad_accumulate(dy, x, splits, main_grad)
    assert torch.allclose(main_grad, before + ref, atol=1e-4)


def test_opcheck_with_splits_tensor():
    """The splits as a tensor (splits_t): fake shapes from its length, same results as the list."""
    g = torch.Generator().manual_seed(5)
    dy = torch.randn(12, 16, generator=g)
    x = torch.randn(12, 24, generator=g)
    w = torch.randn(3, 16, 24, generator=g)
    st = torch.tensor([5, 0, 7])
    torch.library.opcheck(torch.ops.cute_kernels.weight_grad.default, (dy, x, None), {"splits_t": st})
    torch.library.opcheck(torch.ops.cute_kernels.fc2_fwd.default, (x, w, None), {"splits_t": st})
    assert torch.equal(torch.ops.cute_kernels.weight_grad(dy, x, None, splits_t=st),
                       torch.ops.cute_kernels.weight_grad(dy, x, [5, 0, 7]))
    assert torch.equal(torch.ops.cute_kernels.fc2_fwd(x, w, None, splits_t=st),
                       torch.ops.cute_kernels.fc2_fwd(x, w, [5, 0, 7]))


def test_ops_are_plain_calls_in_eager_and_custom_ops_under_compile():
    """Eager mode skips the custom-op dispatch (host time); a traced graph still holds the
    custom ops (no graph break, fake implementations used)."""
    from cute_kernels import torch_ops

    assert torch_ops.ops() is torch_ops.eager
    torch._dynamo.reset()
    seen = []

    def backend(gm, example_inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm

    g = torch.Generator().manual_seed(4)
    h, w = torch.randn(12, 16, generator=g), torch.randn(3, 8, 16, generator=g)
    fn = torch.compile(lambda a, b: torch_ops.ops().fc2_fwd(a, b, [5, 0, 7]), fullgraph=True, backend=backend)
    y = fn(h, w)
    assert any("cute_kernels.fc2_fwd" in t for t in seen), seen
    ref = torch.cat([h[:5] @ w[0].t(), h[5:12] @ w[2].t()])
    assert torch.allclose(y, ref, atol=1e-5)
