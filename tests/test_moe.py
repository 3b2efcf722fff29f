"""routed_srelu_experts on CPU (torch path): against a per-token float64 loop, gradients
(hidden, router weights, both expert weights), determinism, routing, bad inputs."""
import pytest
import torch

from cute_kernels import InputError
from cute_kernels.moe import route, routed_srelu_experts


def _loop_reference(hidden, idx, weight, w1, w2):
    """y[t] = sum_i weight[t, i] * w2[e] relu(w1[e] hidden[t])^2, one token at a time."""
    rows = []
    for t in range(hidden.size(0)):
        acc = hidden.new_zeros(hidden.size(1))
        for i in range(idx.size(1)):
            e = int(idx[t, i])
            acc = acc + weight[t, i] * (w2[e] @ torch.relu(w1[e] @ hidden[t]).square())
        rows.append(acc)
    return torch.stack(rows)


def _inputs(t, e, k, h, f, *, seed, dtype=torch.float64, unused=()):
    g = torch.Generator().manual_seed(seed)
    allowed = torch.tensor([x for x in range(e) if x not in unused])
    idx = torch.stack([allowed[torch.randperm(len(allowed), generator=g)[:k]] for _ in range(t)]) if t else \
        torch.zeros(0, k, dtype=torch.long)
    hidden = torch.randn(t, h, generator=g, dtype=dtype, requires_grad=True)
    weight = torch.rand(t, k, generator=g, dtype=dtype, requires_grad=True)
    w1 = (torch.randn(e, f, h, generator=g, dtype=dtype) / h ** 0.5).requires_grad_()
    w2 = (torch.randn(e, h, f, generator=g, dtype=dtype) / f ** 0.5).requires_grad_()
    return hidden, idx, weight, w1, w2


@pytest.mark.parametrize("t,e,k,unused", [(13, 6, 2, (3,)), (1, 4, 1, ()), (9, 5, 5, ()), (20, 8, 3, (0, 7))])
def test_matches_loop_reference_with_gradients(t, e, k, unused):
    hidden, idx, weight, w1, w2 = _inputs(t, e, k, 8, 12, seed=t + e, unused=unused)
    leaves = (hidden, weight, w1, w2)
    y = routed_srelu_experts(hidden, idx, weight, w1, w2, backend="torch")
    ref = _loop_reference(hidden, idx, weight, w1, w2)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    dy = torch.randn_like(y)
    got = torch.autograd.grad(y, leaves, dy)
    want = torch.autograd.grad(ref, leaves, dy)
    for name, a, b in zip(("hidden", "weight", "w1", "w2"), got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda m: f"d{name}: {m}")
    for e_unused in unused:  # an expert no token picked gets a zero gradient, not garbage
        assert got[2][e_unused].abs().max() == 0 and got[3][e_unused].abs().max() == 0


def test_gradcheck_float64():
    hidden, idx, weight, w1, w2 = _inputs(7, 4, 2, 5, 6, seed=3)

    def f(hidden, weight, w1, w2):
        return routed_srelu_experts(hidden, idx, weight, w1, w2, backend="torch")

    assert torch.autograd.gradcheck(f, (hidden, weight, w1, w2))


@pytest.mark.parametrize("recompute", [False, True])
def test_float32_bitwise_deterministic(recompute):
    hidden, idx, weight, w1, w2 = _inputs(64, 8, 2, 16, 24, seed=5, dtype=torch.float32)
    outs = []
    for _ in range(2):
        y = routed_srelu_experts(hidden, idx, weight, w1, w2, backend="torch", recompute_postact=recompute)
        outs.append((y,) + torch.autograd.grad(y.square().sum(), (hidden, weight, w1, w2)))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_route_is_stable_and_counts_on_device():
    idx = torch.tensor([[2, 0], [0, 2], [1, 0], [2, 1]])
    r = route(idx, 4)
    assert r.counts.tolist() == [3, 2, 3, 0] and r.counts.device == idx.device
    # ties keep (token, slot) order: expert 0 gets pairs 1, 2, 5 in that order
    assert r.order.tolist() == [1, 2, 5, 4, 7, 0, 3, 6]
    assert r.token.tolist() == [0, 1, 2, 2, 3, 0, 1, 3]
    assert torch.equal(r.order[r.inverse], torch.arange(8))


def test_empty_input():
    hidden, idx, weight, w1, w2 = _inputs(0, 4, 2, 8, 12, seed=0)
    y = routed_srelu_experts(hidden, idx, weight, w1, w2, backend="torch")
    assert y.shape == (0, 8)


def test_bad_inputs_name_the_argument():
    hidden, idx, weight, w1, w2 = _inputs(5, 4, 2, 8, 12, seed=0)
    with pytest.raises(InputError, match="topk_idx"):
        routed_srelu_experts(hidden, idx[:3], weight, w1, w2)
    with pytest.raises(InputError, match="topk_idx"):
        routed_srelu_experts(hidden, idx.float(), weight, w1, w2)
    with pytest.raises(InputError, match="topk_weight"):
        routed_srelu_experts(hidden, idx, weight[:, :1], w1, w2)
    with pytest.raises(InputError, match="w1"):
        routed_srelu_experts(hidden, idx, weight, w1[:, :, :4], w2)
    with pytest.raises(InputError, match="hidden"):
        routed_srelu_experts(hidden[None], idx, weight, w1, w2)
