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
def test_opcheck_fc2_dgrad_dsrelu(grouped, store_postact):
    g = torch.Generator().manual_seed(3)
    dy = torch.randn(12, 16, generator=g)
    w2 = torch.randn(*((3, 16, 24) if grouped else (16, 24)), generator=g)
    pre = torch.randn(12, 24, generator=g)
    args = (dy, w2, pre, [5, 0, 7] if grouped else None, store_postact)
    torch.library.opcheck(torch.ops.cute_kernels.fc2_dgrad_dsrelu.default, args)
    dpre, post = torch.ops.cute_kernels.fc2_dgrad_dsrelu(*args)
    if not grouped:
        assert torch.allclose(dpre, 2 * (dy @ w2) * torch.relu(pre), atol=1e-5)
    assert post.numel() == (12 * 24 if store_postact else 0)
