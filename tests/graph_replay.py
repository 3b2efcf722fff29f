"""Shared by the GPU tests that capture an MLP step in a CUDA graph (tests/test_mlp_gpu.py,
tests/test_fp8_graph_gpu.py): warm up off the default stream, capture forward + backward once,
replay for new input values (and, with a GPU m_splits tensor, new splits written in place) and
compare every output and gradient bitwise with an eager step on the same values."""
import torch

from cute_kernels.mlp import srelu_mlp


def check_step_replays_bitwise(sx, w1, w2, sdy, prob, m_splits, new_splits, generator, what: str, **kw):
    """sx, w1, w2 (and prob) leaves requiring grad, sdy the output gradient; m_splits None, a list or a
    GPU tensor (rewritten with new_splits[trial] before each replay); kw: srelu_mlp's other arguments
    (e.g. fp8=)."""
    def step():
        y = srelu_mlp(sx, w1, w2, m_splits=m_splits, prob=prob, backend="cute", **kw)
        y.backward(sdy)
        return y

    def clear_grads():
        sx.grad = w1.grad = w2.grad = None
        if prob is not None:
            prob.grad = None

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (compiles, launch plans) off the default stream, as torch.cuda.graphs asks
        for _ in range(2):
            step()
            clear_grads()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        sy = step()
    tensor_splits = isinstance(m_splits, torch.Tensor)
    m, h = sx.shape
    for trial, splits in enumerate(new_splits):
        with torch.no_grad():
            sx.copy_(torch.randn(m, h, device="cuda", generator=generator).to(sx.dtype))
            sdy.copy_(torch.randn(m, h, device="cuda", generator=generator).to(sdy.dtype))
            if tensor_splits:
                m_splits.copy_(torch.tensor(splits, device="cuda"))
        graph.replay()
        torch.cuda.synchronize()
        leaves = [t.detach().clone().requires_grad_() for t in (sx, w1, w2)]
        p_ref = prob.detach().clone().requires_grad_() if prob is not None else None
        ref_splits = splits if tensor_splits else m_splits
        y_ref = srelu_mlp(*leaves, m_splits=ref_splits, prob=p_ref, backend="cute", **kw)
        y_ref.backward(sdy)
        got = [sy, sx.grad, w1.grad, w2.grad] + ([prob.grad] if prob is not None else [])
        want = [y_ref] + [t.grad for t in leaves] + ([p_ref.grad] if p_ref is not None else [])
        for name, a, b in zip(("y", "dx", "dw1", "dw2", "dprob"), got, want):
            assert torch.isfinite(b).all(), f"{name}: eager result not finite ({what})"
            assert torch.equal(a, b), f"{name} differs after replay {trial} ({what})"
