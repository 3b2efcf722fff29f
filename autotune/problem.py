"""A tuning problem (kernel and shape) and the GPU runner that checks and times a config on it.

Shapes: fc1_srelu / fc2 are (M tokens, N out, K in[, E]); fc2_dgrad_dsrelu is FC2's
data gradient (M tokens, N = ffn, K = hidden), timed in its plain form (no router
probability, no postact recompute); weight_grad is the gradient (M, N) summed over K
tokens (per expert with E: M, N = one expert's gradient).  fp8_fc1_srelu / fp8_fc2 /
fp8_dgrad_dact are the block-scaled FP8 kernels on (M, N, K[, E]) with FP8 operands
(`ShapeKey.dtype` a `registry.dtype_key`), quantized by the recipe (autotune/fp8_runner.py);
fp8_dgrad_dact is FC2's data gradient (N = ffn, K = hidden) with dSReLU and the postact
recompute, as the FP8 step runs it (no router probability).

The tuner only needs three things of a runner: `prepare(cfg)` (compile; raises on
failure), `check(cfg)` (rel. error vs a float32 torch reference on small random data)
and `timed(cfg)` (a zero-argument callable launching the kernel on full-size inputs).
Tests inject their own runner and timer; `make_runner` gives the real one.
"""
from __future__ import annotations

from dataclasses import dataclass

from cute_kernels.tuned_store import ShapeKey

from cute_kernels.reference import random_splits

from .shapes import even_splits

from cute_kernels.registry import KERNELS as _REGISTRY

KERNELS = tuple(_REGISTRY)


@dataclass(frozen=True)
class Problem:
    kernel: str
    shape: ShapeKey

    def __post_init__(self):
        if self.kernel not in KERNELS:
            raise ValueError(f"unknown kernel {self.kernel!r} (tunable: {KERNELS})")
        self.spec.check_dtype(self.shape.dtype)

    @property
    def spec(self):
        """The kernel's registry entry."""
        from cute_kernels.registry import get_kernel

        return get_kernel(self.kernel)

    @property
    def space_kw(self) -> dict:
        """autotune.space keywords of this problem's search space (the FP8 kernels have their own)."""
        return {"block_scaled": True} if self.spec.block_scaled else {}

    def config_errors(self, cfg, arch: str = "sm90") -> list[str]:
        """Every reason `cfg` cannot run this problem's kernel on `arch` (the registry's rules)."""
        return self.spec.config_errors(cfg, self.shape.experts, arch=arch)

    @property
    def constraints(self) -> dict:
        """validation_errors keywords: outputs and how experts are grouped (M or K)."""
        from cute_kernels.registry import kernel_constraints

        return kernel_constraints(self.kernel, self.shape.experts)

    @property
    def num_outputs(self) -> int:
        return self.constraints["num_outputs"]

    def default_config(self):
        from cute_kernels.registry import kernel_default_config

        s = self.shape
        return kernel_default_config(self.kernel, s.m, s.n, s.k, s.experts)

    def study_name(self, arch: str) -> str:
        return f"{self.kernel}/{arch}/{self.shape.key()}"

    def label(self) -> str:
        s = self.shape
        return f"{self.kernel} {s.dtype} M={s.m} N={s.n} K={s.k}" + (f" E={s.experts}" if s.experts else "")


def make_runner(problem: Problem, seed: int = 0):
    """The GPU runner of `problem`: GpuRunner, or for the FP8 kernels Fp8GpuRunner (autotune/fp8_runner.py)."""
    if problem.spec.block_scaled:
        from .fp8_runner import Fp8GpuRunner

        return Fp8GpuRunner(problem, seed)
    return GpuRunner(problem, seed)


class GpuRunner:
    """Runs configs of one bf16 / fp16 problem on the current CUDA device."""

    CHECK_TOL = 1e-2

    def __init__(self, problem: Problem, seed: int = 0):
        import torch

        self.problem = problem
        s = problem.shape
        self.dtype = getattr(torch, s.dtype)
        g = torch.Generator(device="cuda")
        g.manual_seed(seed)
        if problem.kernel == "weight_grad":
            self._init_wgrad(s, g)
            return
        if problem.kernel == "fc2_dgrad_dsrelu":
            self._init_dgrad(s, g)
            return
        wshape = (s.experts, s.n, s.k) if s.experts else (s.n, s.k)
        self.x = (torch.randn(s.m, s.k, device="cuda", generator=g) / s.k ** 0.25).to(self.dtype)
        self.w = (torch.randn(*wshape, device="cuda", generator=g) / s.k ** 0.25).to(self.dtype)
        # a GPU tensor: no host-to-device copy inside the timed calls
        self.splits = torch.tensor(even_splits(s.m, s.experts), device="cuda") if s.experts else None
        # small random data for the correctness check: odd M, uneven experts (one empty)
        m_small = 389 if not s.experts else max(389, 3 * s.experts)
        self.xs = (torch.randn(m_small, s.k, device="cuda", generator=g) / s.k ** 0.25).to(self.dtype)
        self.ws = (torch.randn(*wshape, device="cuda", generator=g) / s.k ** 0.25).to(self.dtype)
        if s.experts:
            cuts = torch.randint(0, m_small + 1, (s.experts - 1,), generator=g, device="cuda").sort().values.tolist()
            bounds = [0] + cuts + [m_small]
            self.splits_small = [bounds[i + 1] - bounds[i] for i in range(s.experts)]
        else:
            self.splits_small = None

    def _init_wgrad(self, s, g):
        """dy (K tokens, M) and x (K tokens, N); small data: 389 (or 3E) tokens, uneven experts."""
        import torch

        self.x = (torch.randn(s.k, s.m, device="cuda", generator=g) / s.k ** 0.25).to(self.dtype)
        self.w = (torch.randn(s.k, s.n, device="cuda", generator=g) / s.k ** 0.25).to(self.dtype)
        self.splits = torch.tensor(even_splits(s.k, s.experts), device="cuda") if s.experts else None
        t_small = 389 if not s.experts else max(389, 3 * s.experts)
        self.xs = torch.randn(t_small, s.m, device="cuda", generator=g).to(self.dtype)
        self.ws = torch.randn(t_small, s.n, device="cuda", generator=g).to(self.dtype)
        self.splits_small = random_splits(t_small, s.experts, g) if s.experts else None

    def _init_dgrad(self, s, g):
        """dy (M, K=hidden), w2 ([E,] K, N=ffn) in nn.Linear layout, preact (M, N)."""
        import torch

        wshape = (s.experts, s.k, s.n) if s.experts else (s.k, s.n)
        self.x = (torch.randn(s.m, s.k, device="cuda", generator=g) / s.k ** 0.25).to(self.dtype)
        self.w = (torch.randn(*wshape, device="cuda", generator=g) / s.k ** 0.25).to(self.dtype)
        self.pre = torch.randn(s.m, s.n, device="cuda", generator=g).to(self.dtype)
        self.splits = torch.tensor(even_splits(s.m, s.experts), device="cuda") if s.experts else None
        m_small = 389 if not s.experts else max(389, 3 * s.experts)
        self.xs = (torch.randn(m_small, s.k, device="cuda", generator=g) / s.k ** 0.25).to(self.dtype)
        self.ws = (torch.randn(*wshape, device="cuda", generator=g) / s.k ** 0.25).to(self.dtype)
        self.pre_small = torch.randn(m_small, s.n, device="cuda", generator=g).to(self.dtype)
        self.splits_small = random_splits(m_small, s.experts, g) if s.experts else None

    def _call(self, x, w, splits, cfg):
        import cute_kernels as ck

        if self.problem.kernel == "weight_grad":  # x: dy, w: the layer input
            return ck.weight_grad(x, w, m_splits=splits, config=cfg)
        if self.problem.kernel == "fc2_dgrad_dsrelu":
            pre = self.pre_small if x is self.xs else self.pre
            return ck.fc2_dgrad_dsrelu(x, w, pre, m_splits=splits, config=cfg)[0]
        if self.problem.kernel == "fc1_srelu":
            return ck.fc1_srelu(x, w, m_splits=splits, config=cfg)[1]
        return ck.fc2(x, w, m_splits=splits, config=cfg)

    def prepare(self, cfg):
        """Compile the kernel the op launches for this problem with `cfg` (the registry's
        epilogue and operand majorness: what `timed` runs)."""
        import cute_kernels.compile as cc
        from cute_kernels.gemm_ops import device_arch
        from cute_kernels.registry import kernel_key

        s = self.problem.shape
        cc.get_compiled(kernel_key(self.problem.kernel, device_arch(self.x.device), cfg, s.dtype, s.experts))

    def check(self, cfg) -> float:
        import torch

        from cute_kernels.reference import rel_err
        from cute_kernels.registry import get_kernel

        out = self._call(self.xs, self.ws, self.splits_small, cfg)
        ref_fn = get_kernel(self.problem.kernel).reference
        if self.problem.kernel == "fc2_dgrad_dsrelu":
            ref = ref_fn(self.xs, self.ws, self.pre_small, self.splits_small)
        else:
            ref = ref_fn(self.xs, self.ws, self.splits_small)
        if not torch.isfinite(out).all():
            return float("inf")
        return rel_err(out, ref)

    def timed(self, cfg):
        return lambda: self._call(self.x, self.w, self.splits, cfg)
