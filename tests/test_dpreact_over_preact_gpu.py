"""srelu_mlp(dpreact_over_preact=True) on the GPU: the fused dgrad writes dpreact over preact
(each tile reads its preact elements before storing their gradient).  Gradients bitwise those of
the default, and the step's peak memory one (M, ffn) buffer lower (dense, as bench_mlp's step)."""
import pytest
import torch

from cute_kernels import srelu_mlp

pytestmark = pytest.mark.gpu


def _inputs(m, h, f, e, g):
    grouped = e > 0
    x = torch.randn(m, h, device="cuda", generator=g).bfloat16()
    w1 = (torch.randn(*((e, f, h) if grouped else (f, h)), device="cuda", generator=g) / h ** 0.5).bfloat16()
    w2 = (torch.randn(*((e, h, f) if grouped else (h, f)), device="cuda", generator=g) / f ** 0.5).bfloat16()
    dy = torch.randn(m, h, device="cuda", generator=g).bfloat16()
    return x, w1, w2, dy


def _step(x, w1, w2, dy, **kw):
    leaves = [t.clone().requires_grad_() for t in (x, w1, w2)]
    prob = kw.pop("prob", None)
    p = prob.clone().requires_grad_() if prob is not None else None
    y = srelu_mlp(*leaves, prob=p, backend="cute", **kw)
    y.backward(dy)
    return [y] + [t.grad for t in leaves] + ([p.grad] if p is not None else [])


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("recompute", [False, True])
def test_gradients_bitwise_unchanged(grouped, recompute):
    g = torch.Generator(device="cuda").manual_seed(0)
    m, h, f, e = 1000, 520, 1544, (6 if grouped else 0)  # M, N not tile multiples
    x, w1, w2, dy = _inputs(m, h, f, e, g)
    kw = dict(recompute_postact=recompute)
    if grouped:
        kw.update(m_splits=[400, 0, 123, 250, 27, 200], prob=torch.rand(m, device="cuda", generator=g))
    base = _step(x, w1, w2, dy, **kw)
    over = _step(x, w1, w2, dy, dpreact_over_preact=True, **kw)
    for i, (a, b) in enumerate(zip(over, base)):
        assert torch.equal(a, b), f"output {i} differs"


@pytest.mark.parametrize("recompute", [False, True])
def test_dense_step_peak_is_one_buffer_lower(recompute):
    g = torch.Generator(device="cuda").manual_seed(0)
    m, h, f = 2048, 1024, 4096
    x, w1, w2, dy = _inputs(m, h, f, 0, g)
    leaves = [t.clone().requires_grad_() for t in (x, w1, w2)]

    def peak(**kw):
        for _ in range(2):  # the second step is measured (compiles and caches are warm)
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            srelu_mlp(*leaves, backend="cute", recompute_postact=recompute, **kw).backward(dy)
            torch.cuda.synchronize()
            out = torch.cuda.max_memory_allocated() - base
            for t in leaves:
                t.grad = None
        return out

    default, over = peak(), peak(dpreact_over_preact=True)
    assert default - over >= m * f * 2 * 0.99, (default, over)
