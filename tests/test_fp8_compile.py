"""The FP8 step under torch.compile (CPU, torch path): a compiled function or module that calls
srelu_mlp(..., fp8=...) runs and gives bitwise the eager output and gradients, dense and grouped
with a router probability (through the step's custom ops by default, tests/test_fp8_compile_ops.py);
with CUTE_KERNELS_FP8_COMPILE_OPS=0 (the FP8 step eagerly, a graph break around it) fullgraph=True
is refused with torch's graph-break error, not a wrong answer.  Before, compiling it crashed inside
Dynamo ("an intermediate tensor ... aliases an input or output")."""
import pytest
import torch

from cute_kernels.fp8 import Fp8Recipe
from cute_kernels.mlp import srelu_mlp
from cute_kernels.modules import SReLUMLP


def _leaves(seed, e=0):
    torch.manual_seed(seed)
    m, h, f = 96, 128, 256
    x = torch.randn(m, h)
    w1 = torch.randn(*((e, f, h) if e else (f, h))) / h ** 0.5
    w2 = torch.randn(*((e, h, f) if e else (h, f))) / f ** 0.5
    return [t.requires_grad_() for t in (x, w1, w2)]


@pytest.mark.parametrize("grouped", [False, True])
def test_compiled_function_matches_eager_bitwise(grouped):
    splits = [40, 0, 56] if grouped else None
    prob = torch.rand(96) if grouped else None

    def step(x, w1, w2):
        # compiled around the FP8 step: an exact op before it (its backward exact too)
        return srelu_mlp(x * 2.0, w1, w2, m_splits=splits, prob=prob, fp8=Fp8Recipe(), backend="torch")

    dy = torch.randn(96, 128)
    results = []
    for fn in (step, torch.compile(step)):
        leaves = _leaves(3, 3 if grouped else 0)
        y = fn(*leaves)
        y.backward(dy)
        results.append([y.detach()] + [t.grad for t in leaves])
    for name, a, b in zip(("y", "dx", "dw1", "dw2"), *results):
        assert torch.equal(a, b), name


def test_compiled_module_trains():
    torch.manual_seed(0)
    model = SReLUMLP(128, 256, fp8=Fp8Recipe(), backend="torch")
    compiled = torch.compile(model)
    x = torch.randn(64, 128)
    eager = model(x)
    out = compiled(x)
    assert torch.equal(eager, out)
    out.float().pow(2).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_fullgraph_is_refused_not_wrong(monkeypatch):
    """With CUTE_KERNELS_FP8_COMPILE_OPS=0 (the step's custom ops, tests/test_fp8_compile_ops.py, off)."""
    monkeypatch.setenv("CUTE_KERNELS_FP8_COMPILE_OPS", "0")
    leaves = _leaves(1)
    f = torch.compile(lambda x, w1, w2: srelu_mlp(x, w1, w2, fp8=Fp8Recipe(), backend="torch"), fullgraph=True)
    with pytest.raises(Exception, match="(?i)skip|disable|graph break"):
        f(*leaves)
