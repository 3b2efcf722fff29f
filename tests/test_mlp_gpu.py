"""srelu_mlp and modules on the GPU: the cute path (CuTe forward kernels) against the
torch path, and a short training run on each path from the same seed."""
import pytest
import torch

from graph_replay import check_step_replays_bitwise

from cute_kernels import GroupedSReLUMLP, SReLUMLP, srelu_mlp

pytestmark = pytest.mark.gpu


def _mlp_weights(m, h, f, e, grouped, g):
    """Random bf16 x (m, h), w1, w2 (per expert when grouped), scaled for O(1) activations."""
    x = torch.randn(m, h, device="cuda", generator=g).bfloat16()
    w1 = (torch.randn(*((e, f, h) if grouped else (f, h)), device="cuda", generator=g) / h ** 0.5).bfloat16()
    w2 = (torch.randn(*((e, h, f) if grouped else (h, f)), device="cuda", generator=g) / f ** 0.5).bfloat16()
    return x, w1, w2


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("recompute", [False, True])
def test_cute_path_matches_torch_path(grouped, recompute):
    g = torch.Generator(device="cuda").manual_seed(0)
    m, h, f, e = 1000, 512, 1536, 6
    x, w1, w2 = _mlp_weights(m, h, f, e, grouped, g)
    prob = torch.rand(m, device="cuda", generator=g) if grouped else None
    splits = [400, 0, 123, 250, 27, 200] if grouped else None
    dy = torch.randn(m, h, device="cuda", generator=g).bfloat16()
    outs = {}
    for backend in ("torch", "cute"):
        leaves = [t.clone().requires_grad_() for t in (x, w1, w2)] + ([prob.clone().requires_grad_()] if grouped else [])
        y = srelu_mlp(leaves[0], leaves[1], leaves[2], m_splits=splits, prob=leaves[3] if grouped else None,
                      recompute_postact=recompute, backend=backend)
        y.backward(dy)
        outs[backend] = [y] + [t.grad for t in leaves]
    for name, a, b in zip(["y", "dx", "dw1", "dw2", "dprob"], outs["cute"], outs["torch"]):
        assert torch.isfinite(a).all(), name
        assert _rel(a, b) < 2e-2, (name, _rel(a, b))


def _train(backend, grouped, steps=200):
    torch.manual_seed(0)
    h, f, m = 256, 1024, 512
    if grouped:
        layers = torch.nn.ModuleList([GroupedSReLUMLP(4, h, f, backend=backend, device="cuda", dtype=torch.bfloat16) for _ in range(2)])
    else:
        layers = torch.nn.ModuleList([SReLUMLP(h, f, backend=backend, device="cuda", dtype=torch.bfloat16) for _ in range(2)])
    opt = torch.optim.AdamW(layers.parameters(), lr=3e-4)
    g = torch.Generator(device="cuda").manual_seed(1)
    target_w = torch.randn(h, h, device="cuda", generator=g) / h ** 0.5
    splits = [200, 56, 0, 256]
    losses = []
    for _ in range(steps):
        x = torch.randn(m, h, device="cuda", generator=g)
        y = x.bfloat16()
        for layer in layers:
            y = y + (layer(y, splits) if grouped else layer(y))
        loss = (y.float() - x @ target_w).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("grouped", [False, True])
def test_training_curves_match(grouped):
    a = _train("cute", grouped)
    b = _train("torch", grouped)
    assert b[-1] < 0.8 * b[0], "the model learns"
    rel = [abs(x - y) / y for x, y in zip(a, b)]
    assert max(rel) < 0.05 and sum(rel) / len(rel) < 0.02, (max(rel), sum(rel) / len(rel))


@pytest.mark.parametrize("grouped", [False, True])
def test_cute_path_compiles_fullgraph(grouped):
    torch._dynamo.reset()
    g = torch.Generator(device="cuda").manual_seed(3)
    m, h, f = 512, 256, 768
    x = torch.randn(m, h, device="cuda", generator=g).bfloat16()
    w1 = (torch.randn(*((4, f, h) if grouped else (f, h)), device="cuda", generator=g) / h ** 0.5).bfloat16()
    w2 = (torch.randn(*((4, h, f) if grouped else (h, f)), device="cuda", generator=g) / f ** 0.5).bfloat16()
    splits = [100, 0, 312, 100] if grouped else None
    eager = lambda a, b, c: srelu_mlp(a, b, c, m_splits=splits, backend="cute")
    compiled = torch.compile(eager, fullgraph=True)
    outs = []
    for fn in (compiled, eager):
        leaves = [t.clone().requires_grad_() for t in (x, w1, w2)]
        y = fn(*leaves)
        y.float().square().mean().backward()
        outs.append([y] + [t.grad for t in leaves])
    for a, b in zip(*outs):
        assert _rel(a, b) < 1e-2


@pytest.mark.parametrize("backend", ["torch", "cute"])
@pytest.mark.parametrize("grouped", [False, True])
def test_gradients_against_float32_reference(backend, grouped):
    """Every gradient (x, w1, w2, prob) against autograd of plain float32 ops."""
    g = torch.Generator(device="cuda").manual_seed(4)
    m, h, f, e = 777, 384, 640, 5
    x, w1, w2 = _mlp_weights(m, h, f, e, grouped, g)
    prob = torch.rand(m, device="cuda", generator=g)
    splits = [300, 0, 177, 200, 100] if grouped else None
    dy = torch.randn(m, h, device="cuda", generator=g).bfloat16()

    leaves = [t.clone().requires_grad_() for t in (x, w1, w2, prob)]
    srelu_mlp(*leaves[:3], m_splits=splits, prob=leaves[3], backend=backend).backward(dy)
    ref = [t.float().clone().requires_grad_() for t in (x, w1, w2, prob)]
    if grouped:
        outs, s = [], 0
        for i, n in enumerate(splits):
            hid = torch.relu(ref[0][s:s + n] @ ref[1][i].t()).square() * ref[3][s:s + n, None]
            outs.append(hid @ ref[2][i].t())
            s += n
        y = torch.cat(outs)
    else:
        y = (torch.relu(ref[0] @ ref[1].t()).square() * ref[3][:, None]) @ ref[2].t()
    y.backward(dy.float())
    for name, a, b in zip(["dx", "dw1", "dw2", "dprob"], leaves, ref):
        assert torch.isfinite(a.grad).all(), name
        assert _rel(a.grad, b.grad) < 2e-2, (name, _rel(a.grad, b.grad))


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("recompute", [False, True])
def test_cute_forward_with_torch_backward_matches(grouped, recompute, monkeypatch):
    """CUTE_KERNELS_BACKWARD=torch (CuTe forward, torch-math backward) against the torch path."""
    monkeypatch.setenv("CUTE_KERNELS_BACKWARD", "torch")
    test_cute_path_matches_torch_path(grouped, recompute)


@pytest.mark.parametrize("backend", ["torch", "cute"])
@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("recompute", [False, True])
def test_main_grad_accumulation(backend, grouped, recompute):
    """fuse_wgrad_accumulation: two backward passes add dw1/dw2 into fp32 main_grad
    (starting from random values), .grad stays None, and the sums match float32."""
    g = torch.Generator(device="cuda").manual_seed(7)
    m, h, f, e = 700, 256, 768, 4
    x, w1, w2 = _mlp_weights(m, h, f, e, grouped, g)
    prob = torch.rand(m, device="cuda", generator=g) if grouped else None
    splits = [300, 0, 250, 150] if grouped else None
    dys = [torch.randn(m, h, device="cuda", generator=g).bfloat16() for _ in range(2)]
    w1p, w2p = w1.clone().requires_grad_(), w2.clone().requires_grad_()
    start = [torch.randn(w.shape, device="cuda", generator=g) for w in (w1, w2)]
    w1p.main_grad, w2p.main_grad = start[0].clone(), start[1].clone()
    for dy in dys:
        srelu_mlp(x, w1p, w2p, m_splits=splits, prob=prob, recompute_postact=recompute,
                  fuse_wgrad_accumulation=True, backend=backend).backward(dy)
    assert w1p.grad is None and w2p.grad is None
    ref = [w1.float().requires_grad_(), w2.float().requires_grad_()]
    for dy in dys:
        srelu_mlp(x.float(), ref[0], ref[1], m_splits=splits, prob=prob, backend="torch").backward(dy.float())
    for name, mg, s0, r in (("w1", w1p.main_grad, start[0], ref[0]), ("w2", w2p.main_grad, start[1], ref[1])):
        assert mg.dtype == torch.float32
        assert _rel(mg - s0, r.grad) < 2e-2, (name, _rel(mg - s0, r.grad))


@pytest.mark.parametrize("recompute", [False, True])
def test_tensor_splits_match_list_and_do_not_sync(recompute):
    """m_splits as a CUDA tensor: the same results as the list (the same kernels and
    configs: bitwise equal), and the whole step is enqueued without waiting for the GPU."""
    from reference import random_splits

    g = torch.Generator(device="cuda").manual_seed(3)
    m, h, f, e = 1000, 256, 384, 6
    x, w1, w2 = _mlp_weights(m, h, f, e, True, g)
    prob = torch.rand(m, device="cuda", generator=g)
    dy = torch.randn(m, h, device="cuda", generator=g).bfloat16()
    splits = random_splits(m, e, torch.Generator().manual_seed(3), empty=1)
    results = []
    for ms in (splits, torch.tensor(splits, device="cuda")):
        # a first step of each form first: CUDA loads a kernel on its first use (lazy
        # module loading), which may wait for the GPU; the steady state must not
        warm = [t.clone().requires_grad_() for t in (x, w1, w2, prob)]
        srelu_mlp(*warm[:3], m_splits=ms, prob=warm[3], recompute_postact=recompute, backend="cute").backward(dy)
        leaves = [t.clone().requires_grad_() for t in (x, w1, w2, prob)]
        torch.cuda.synchronize()
        torch.cuda._sleep(100_000_000)  # the GPU is busy while the step is enqueued
        y = srelu_mlp(*leaves[:3], m_splits=ms, prob=leaves[3], recompute_postact=recompute, backend="cute")
        y.backward(dy)
        still_busy = not torch.cuda.current_stream().query()
        if isinstance(ms, torch.Tensor):
            assert still_busy, "a step with GPU m_splits waited for the GPU (host sync)"
        torch.cuda.synchronize()
        results.append([y] + [t.grad for t in leaves])
    for name, a, b in zip(("y", "dx", "dw1", "dw2", "dprob"), *results):
        assert torch.equal(a, b), f"{name} differs between list and tensor m_splits"


@pytest.mark.parametrize("grouped", [False, True])
def test_step_peak_memory_is_what_each_node_needs(grouped):
    """The step's peak is the larger of FC2's backward (y, preact, postact, dpreact, dw2)
    and FC1's (y, dpreact, dx, dw1, dw2): FC2's activations are freed in between."""
    g = torch.Generator(device="cuda").manual_seed(7)
    m, h, f, e = 4096, 512, 1024, 4
    x, w1, w2 = _mlp_weights(m, h, f, e, grouped, g)
    x.requires_grad_()
    w1.requires_grad_()
    w2.requires_grad_()
    dy = torch.randn(m, h, device="cuda", generator=g).bfloat16()
    splits = [1000, 0, 2000, 1096] if grouped else None

    def step():
        y = srelu_mlp(x, w1, w2, m_splits=splits, backend="cute")
        y.backward(dy)
        x.grad = w1.grad = w2.grad = None

    step()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    mf, mh, wbytes = m * f * 2, m * h * 2, w1.numel() * 2
    fc2_phase = mh + 3 * mf + wbytes
    fc1_phase = mh + mf + mh + 2 * wbytes
    assert peak <= max(fc2_phase, fc1_phase) + (1 << 20), (peak, fc2_phase, fc1_phase)


@pytest.mark.parametrize("splits_kind", ["dense", "list", "tensor"])
def test_step_replays_in_a_cuda_graph(splits_kind):
    """Forward and backward captured in a CUDA graph (how host-bound MoE layers are run)
    replay to the eager results bit for bit, for new input values; with a GPU m_splits
    tensor also after the splits change in place between replays."""
    g = torch.Generator(device="cuda").manual_seed(8)
    m, h, f, e = 1024, 256, 512, 4
    grouped = splits_kind != "dense"
    x, w1, w2 = _mlp_weights(m, h, f, e, grouped, g)
    w1.requires_grad_()
    w2.requires_grad_()
    prob = torch.rand(m, device="cuda", generator=g).requires_grad_() if grouped else None
    splits = [300, 0, 524, 200] if grouped else None
    ms = torch.tensor(splits, device="cuda") if splits_kind == "tensor" else splits
    sx = x.clone().requires_grad_()
    sdy = torch.randn(m, h, device="cuda", generator=g).bfloat16()
    check_step_replays_bitwise(sx, w1, w2, sdy, prob, ms, [[300, 0, 524, 200], [0, 700, 24, 300]], g, splits_kind)


@pytest.mark.parametrize("grouped", [False, True])
def test_frozen_weights_skip_their_gradients(grouped):
    """Weights that do not require grad get no gradient (their GEMMs are skipped); the
    input and router gradients are the same as with trainable weights."""
    g = torch.Generator(device="cuda").manual_seed(10)
    m, h, f, e = 512, 256, 384, 4
    x, w1, w2 = _mlp_weights(m, h, f, e, grouped, g)
    prob = torch.rand(m, device="cuda", generator=g)
    dy = torch.randn(m, h, device="cuda", generator=g).bfloat16()
    splits = [100, 0, 312, 100] if grouped else None

    def run(train_weights):
        xs, ps = x.clone().requires_grad_(), prob.clone().requires_grad_()
        a, b = w1.clone().requires_grad_(train_weights), w2.clone().requires_grad_(train_weights)
        srelu_mlp(xs, a, b, m_splits=splits, prob=ps, backend="cute").backward(dy)
        return xs.grad, ps.grad, a.grad, b.grad

    full, frozen = run(True), run(False)
    assert frozen[2] is None and frozen[3] is None and full[2] is not None
    assert torch.equal(full[0], frozen[0]) and torch.equal(full[1], frozen[1])
