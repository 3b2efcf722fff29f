"""The activation hook interface: what an epilogue needs of an activation f.

Device hooks are traced inside a kernel's epilogue on fp32 values (TensorSSA fragments,
or Float32 scalars for `row_term`); torch hooks compute the same function on tensors.
The forward epilogue stores p * f(acc); the data-gradient epilogue, with d the gradient
of postact and x the saved pre-activation, stores p * d * f'(x), optionally the
recomputed p * f(x), and reduces rowsum(d * f(x)) (the router probability's gradient).
"""
from __future__ import annotations


class Activation:
    """Base class; subclasses are frozen dataclasses (hashable: part of a kernel's key)."""

    name = "activation"
    # Most accumulator registers per thread next to which this activation's epilogue math
    # compiles spill-free (None: no limit beyond the kernel's own); configs above it are
    # narrowed (looked-up ones) or rejected (explicit ones).
    max_acc_regs = None

    def key(self) -> str:
        """A short stable name of the activation and its parameters (kernel keys, logs)."""
        return self.name

    def spec(self) -> str:
        """The name `resolve_activation` turns back into this activation (custom ops take it)."""
        return self.name

    # ---- device side (traced inside an epilogue, fp32)
    def forward(self, x):
        """f(x) of an fp32 fragment."""
        raise NotImplementedError

    def backward(self, d, x):
        """(d * f'(x), f(x)) of fp32 fragments d (gradient of f(x)) and x."""
        raise NotImplementedError

    def row_term(self, d, x):
        """d * f(x) of two Float32 scalars (one element's term of the router gradient)."""
        raise NotImplementedError

    # ---- torch side (reference and torch path; x in fp32 or fp64)
    def torch_forward(self, x):
        raise NotImplementedError

    def torch_grad(self, x):
        """f'(x)."""
        raise NotImplementedError


def map_elements(fn, *frags):
    """fn applied element by element (Float32 scalars) to fp32 TensorSSA fragments of one
    shape, as a TensorSSA (traced: unrolled).  For math the vector ops cannot express, e.g.
    the approximate ex2 and reciprocal, which only exist on scalars."""
    import cutlass.cute as cute
    from cutlass import Float32

    regs = []
    for f in frags:
        r = cute.make_rmem_tensor(f.shape, Float32)
        r.store(f)
        regs.append(r)
    out = cute.make_rmem_tensor(frags[0].shape, Float32)
    for i in range(cute.size(out)):
        out[i] = fn(*(r[i] for r in regs))
    return out.load()
