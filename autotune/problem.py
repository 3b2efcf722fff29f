"""A tuning problem (kernel and shape) and the GPU runner that checks and times a config on it.

The tuner only needs three things of a runner: `prepare(cfg)` (compile; raises on
failure), `check(cfg)` (rel. error vs a float32 torch reference on small random data)
and `timed(cfg)` (a zero-argument callable launching the kernel on full-size inputs).
Tests inject their own runner and timer; `GpuRunner` is the real one.
"""
from __future__ import annotations

from dataclasses import dataclass

from cute_kernels.tuned_store import ShapeKey

from .shapes import even_splits

KERNELS = ("fc1_srelu", "fc2")


@dataclass(frozen=True)
class Problem:
    kernel: str
    shape: ShapeKey

    def __post_init__(self):
        if self.kernel not in KERNELS:
            raise ValueError(f"unknown kernel {self.kernel!r} (tunable: {KERNELS})")

    @property
    def num_outputs(self) -> int:
        return 2 if self.kernel == "fc1_srelu" else 1

    def study_name(self, arch: str) -> str:
        return f"{self.kernel}/{arch}/{self.shape.key()}"

    def label(self) -> str:
        s = self.shape
        return f"{self.kernel} {s.dtype} M={s.m} N={s.n} K={s.k}" + (f" E={s.experts}" if s.experts else "")


class GpuRunner:
    """Runs configs of one problem on the current CUDA device."""

    CHECK_TOL = 1e-2

    def __init__(self, problem: Problem, seed: int = 0):
        import torch

        self.problem = problem
        s = problem.shape
        self.dtype = getattr(torch, s.dtype)
        g = torch.Generator(device="cuda")
        g.manual_seed(seed)
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

    def _call(self, x, w, splits, cfg):
        import cute_kernels as ck

        if self.problem.kernel == "fc1_srelu":
            return ck.fc1_srelu(x, w, m_splits=splits, config=cfg)[1]
        return ck.fc2(x, w, m_splits=splits, config=cfg)

    def prepare(self, cfg):
        import cute_kernels.compile as cc
        from cute_kernels.epilogue import EpilogueSpec

        epi = EpilogueSpec("srelu", store_preact=True) if self.problem.kernel == "fc1_srelu" else EpilogueSpec("identity")
        from cute_kernels.gemm_ops import device_arch

        key = cc.KernelKey(device_arch(self.x.device), cfg, epi, bool(self.problem.shape.experts), self.problem.shape.dtype, "k", "k")
        cc.get_compiled(key)

    def check(self, cfg) -> float:
        import torch

        out = self._call(self.xs, self.ws, self.splits_small, cfg)
        if self.splits_small is None:
            ref = self.xs.float() @ self.ws.float().t()
        else:
            parts, start = [], 0
            for e, n in enumerate(self.splits_small):
                parts.append(self.xs[start:start + n].float() @ self.ws[e].float().t())
                start += n
            ref = torch.cat(parts)
        if self.problem.kernel == "fc1_srelu":
            ref = torch.relu(ref).square()
        if not torch.isfinite(out).all():
            return float("inf")
        return ((out.float() - ref).norm() / ref.norm().clamp_min(1e-30)).item()

    def timed(self, cfg):
        return lambda: self._call(self.x, self.w, self.splits, cfg)
