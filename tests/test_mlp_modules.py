"""srelu_mlp and its modules on CPU: gradients against float64, nn.Linear compatibility."""
import pytest
import torch

from cute_kernels import GroupedSReLUMLP, SReLUMLP, srelu_mlp


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("with_prob", [False, True])
def test_gradcheck_float64(grouped, recompute, with_prob):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(23, 8, dtype=torch.float64, generator=g, requires_grad=True)
    shape1, shape2 = ((3, 12, 8), (3, 8, 12)) if grouped else ((12, 8), (8, 12))
    w1 = torch.randn(*shape1, dtype=torch.float64, generator=g, requires_grad=True)
    w2 = torch.randn(*shape2, dtype=torch.float64, generator=g, requires_grad=True)
    p = torch.rand(23, dtype=torch.float64, generator=g, requires_grad=True) if with_prob else None
    splits = [7, 0, 16] if grouped else None
    args = (x, w1, w2) + ((p,) if with_prob else ())

    def f(x, w1, w2, p=None):
        return srelu_mlp(x, w1, w2, m_splits=splits, prob=p, recompute_postact=recompute, backend="torch")

    assert torch.autograd.gradcheck(f, args)


def test_matches_reference_composition():
    torch.manual_seed(1)
    x = torch.randn(16, 8, dtype=torch.float64, requires_grad=True)
    w1 = torch.randn(12, 8, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(8, 12, dtype=torch.float64, requires_grad=True)
    y = srelu_mlp(x, w1, w2, backend="torch")
    ref = torch.relu(x @ w1.t()).square() @ w2.t()
    assert torch.allclose(y, ref)


def test_dense_module_is_nn_linear_compatible():
    torch.manual_seed(0)
    m = SReLUMLP(16, 64)
    sd = m.state_dict()
    assert set(sd) == {"fc1.weight", "fc2.weight"}
    assert sd["fc1.weight"].shape == (64, 16) and sd["fc2.weight"].shape == (16, 64)
    lin1, lin2 = torch.nn.Linear(16, 64, bias=False), torch.nn.Linear(64, 16, bias=False)
    lin1.load_state_dict({"weight": sd["fc1.weight"]})
    lin2.load_state_dict({"weight": sd["fc2.weight"]})
    x = torch.randn(2, 5, 16)
    assert torch.allclose(m(x), lin2(torch.relu(lin1(x)).square()), atol=1e-6)
    bound = 1 / 16 ** 0.5  # nn.Linear's kaiming-uniform bound for fan_in 16
    assert m.fc1.weight.abs().max() <= bound


def test_grouped_module_init_state_dict_and_forward():
    torch.manual_seed(0)
    m = GroupedSReLUMLP(4, 16, 32)
    assert m.fc1_weight.shape == (4, 32, 16) and m.fc2_weight.shape == (4, 16, 32)
    assert m.fc1_weight.abs().max() <= 1 / 16 ** 0.5 and m.fc2_weight.abs().max() <= 1 / 32 ** 0.5
    m2 = GroupedSReLUMLP(4, 16, 32)
    m2.load_state_dict(m.state_dict())
    x = torch.randn(10, 16)
    splits = [3, 0, 5, 2]
    y = m(x, splits)
    parts, s = [], 0
    for e, n in enumerate(splits):
        parts.append(torch.relu(x[s:s + n] @ m.fc1_weight[e].t()).square() @ m.fc2_weight[e].t())
        s += n
    assert torch.allclose(y, torch.cat(parts), atol=1e-5)
    assert torch.equal(m2(x, splits), y)


def test_bad_backend_rejected():
    with pytest.raises(ValueError, match="backend must be"):
        srelu_mlp(torch.randn(2, 8), torch.randn(8, 8), torch.randn(8, 8), backend="triton")
    with pytest.raises(ValueError, match="backend='cute' needs"):
        srelu_mlp(torch.randn(2, 8), torch.randn(8, 8), torch.randn(8, 8), backend="cute")


@pytest.mark.parametrize("grouped", [False, True])
def test_fuse_wgrad_accumulation_adds_into_main_grad(grouped):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(19, 8, dtype=torch.float64, generator=g)
    shape1, shape2 = ((3, 12, 8), (3, 8, 12)) if grouped else ((12, 8), (8, 12))
    w1 = torch.randn(*shape1, dtype=torch.float64, generator=g)
    w2 = torch.randn(*shape2, dtype=torch.float64, generator=g)
    splits = [6, 0, 13] if grouped else None
    dy = torch.randn(19, 8, dtype=torch.float64, generator=g)
    ref = [w1.clone().requires_grad_(), w2.clone().requires_grad_()]
    srelu_mlp(x, *ref, m_splits=splits, backend="torch").backward(dy)
    w1p, w2p = w1.clone().requires_grad_(), w2.clone().requires_grad_()
    start = [torch.randn(w.shape, dtype=torch.float64, generator=g) for w in (w1, w2)]
    w1p.main_grad, w2p.main_grad = start[0].clone(), start[1].clone()
    for _ in range(2):
        srelu_mlp(x, w1p, w2p, m_splits=splits, fuse_wgrad_accumulation=True, backend="torch").backward(dy)
    assert w1p.grad is None and w2p.grad is None
    assert torch.allclose(w1p.main_grad, start[0] + 2 * ref[0].grad)
    assert torch.allclose(w2p.main_grad, start[1] + 2 * ref[1].grad)


def test_fuse_wgrad_accumulation_needs_main_grad():
    w1 = torch.randn(12, 8, requires_grad=True)
    w2 = torch.randn(8, 12, requires_grad=True)
    with pytest.raises(ValueError, match="w1.main_grad"):
        srelu_mlp(torch.randn(4, 8), w1, w2, fuse_wgrad_accumulation=True, backend="torch")
    w1.main_grad = torch.zeros(12, 8)
    with pytest.raises(ValueError, match="w2.main_grad"):
        srelu_mlp(torch.randn(4, 8), w1, w2, fuse_wgrad_accumulation=True, backend="torch")


def test_module_fuse_wgrad_accumulation():
    mlp = SReLUMLP(8, 12, fuse_wgrad_accumulation=True, dtype=torch.float64)
    for p in mlp.parameters():
        p.main_grad = torch.zeros_like(p)
    mlp(torch.randn(5, 8, dtype=torch.float64)).sum().backward()
    assert all(p.grad is None and p.main_grad.abs().sum() > 0 for p in mlp.parameters())


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("recompute", [False, True])
def test_fc2_activations_are_freed_before_fc1_gradients(grouped, recompute, monkeypatch):
    """preact, postact and prob are released once FC2's backward has run, so they do not
    add to the memory peak of FC1's gradients (the op is two autograd nodes)."""
    import weakref

    from cute_kernels import mlp
    from offload import role_of

    g = torch.Generator().manual_seed(6)
    x = torch.randn(20, 8, generator=g, requires_grad=True)
    w1 = torch.randn(*((3, 16, 8) if grouped else (16, 8)), generator=g, requires_grad=True)
    w2 = torch.randn(*((3, 8, 16) if grouped else (8, 16)), generator=g, requires_grad=True)
    prob = torch.rand(20, generator=g, requires_grad=True)
    refs = {}

    def pack(t):
        role = role_of(t)
        if role in ("preact", "postact"):
            refs[role] = weakref.ref(t)
        return t

    alive_at_fc1 = {}
    fc1_backward = mlp.FC1SReLUFunction.backward

    def spy(ctx, *grads):
        alive_at_fc1.update({role: r() is not None for role, r in refs.items()})
        return fc1_backward(ctx, *grads)

    monkeypatch.setattr(mlp.FC1SReLUFunction, "backward", staticmethod(spy))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = srelu_mlp(x, w1, w2, m_splits=[5, 0, 15] if grouped else None, prob=prob,
                      recompute_postact=recompute, backend="torch")
    y.square().sum().backward()
    assert set(alive_at_fc1) == ({"preact"} if recompute else {"preact", "postact"})
    assert not any(alive_at_fc1.values()), alive_at_fc1
    assert x.grad is not None and w1.grad is not None and prob.grad is not None


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("frozen", ["w1", "w2", "both"])
def test_frozen_weights_get_no_gradient_and_inputs_still_do(grouped, frozen):
    g = torch.Generator().manual_seed(9)
    x0 = torch.randn(20, 8, dtype=torch.float64, generator=g)
    w10 = torch.randn(*((3, 16, 8) if grouped else (16, 8)), dtype=torch.float64, generator=g)
    w20 = torch.randn(*((3, 8, 16) if grouped else (8, 16)), dtype=torch.float64, generator=g)
    p0 = torch.rand(20, dtype=torch.float64, generator=g)
    splits = [5, 0, 15] if grouped else None

    def run(freeze):
        x, w1, w2, p = (t.clone().requires_grad_() for t in (x0, w10, w20, p0))
        if freeze in ("w1", "both"):
            w1.requires_grad_(False)
        if freeze in ("w2", "both"):
            w2.requires_grad_(False)
        srelu_mlp(x, w1, w2, m_splits=splits, prob=p, backend="torch").square().sum().backward()
        return x.grad, w1.grad, w2.grad, p.grad

    full, part = run(None), run(frozen)
    for name, a, b in zip(("x", "w1", "w2", "prob"), full, part):
        if (name == "w1" and frozen in ("w1", "both")) or (name == "w2" and frozen in ("w2", "both")):
            assert b is None
        else:
            assert torch.allclose(a, b), name
