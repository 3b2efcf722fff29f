"""torch.compile baselines of the benchmarks: the plain torch function compiled in each mode.

`COMPILE_MODES` are the modes the benchmarks time by default: "default" and
"max-autotune-no-cudagraphs" (Inductor tries its Triton GEMM templates and cuBLAS and keeps the
fastest; no CUDA graphs, so host time counts as it does for our eager calls).  Each compile
starts from a reset Dynamo (`torch._dynamo.reset()`): the baselines of many shapes come from one
function's code, and without the reset its recompiles would reach Dynamo's cache limit and fall
back to eager silently.  Shapes are static (`dynamic=False`), as each benchmark shape is fixed.
"""
from __future__ import annotations

COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")


def parse_modes(text: str) -> tuple[str, ...]:
    """--compile-modes: comma-separated modes, "none" for no compiled baseline."""
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    if modes in ((), ("none",)):
        return ()
    import torch

    known = set(torch._inductor.list_mode_options()) | {"default"}
    bad = [m for m in modes if m not in known]
    if bad:
        raise ValueError(f"unknown torch.compile mode(s) {bad}; known: {sorted(known)}")
    return modes


def compiled(fn, mode: str):
    """`fn` compiled by torch.compile in `mode` (static shapes), from a reset Dynamo."""
    import torch

    torch._dynamo.reset()
    return torch.compile(fn, mode=mode, dynamic=False)


def short(mode: str) -> str:
    """A column label for `mode`."""
    return {"default": "compile", "max-autotune-no-cudagraphs": "compile max-autotune"}.get(mode, f"compile {mode}")
