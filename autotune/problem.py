"""A tuning problem (kernel and shape) and the GPU runner that checks and times a config on it.

Shapes: fc1_srelu / fc2 are (M tokens, N out, K in[, E]); fc2_dgrad_dsrelu is FC2's
data gradient (M tokens, N = ffn, K = hidden), timed in its plain form (no router
probability, no postact recompute); weight_grad is the gradient (M, N) summed over K
tokens (per expert with E: M, N = one expert's gradient).

The tuner only needs three things of a runner: `prepare(cfg)` (compile; raises on
failure), `check(cfg)` (rel. error vs a float32 torch reference on small random data)
and `timed(cfg)` (a zero-argument callable launching the kernel on full-size inputs).
Tests inject their own runner and timer; `GpuRunner` is the real one.
"""
from __future__ import annotations

from dataclasses import dataclass

from cute_kernels.tuned_store import ShapeKey

from .shapes import even_splits

KERNELS = ("fc1_srelu", "fc2", "fc2_dgrad_dsrelu", "weight_grad")


@dataclass(frozen=True)
class Problem:
    kernel: str
    shape: ShapeKey

    def __post_init__(self):
        if self.kernel not in KERNELS:
            raise ValueError(f"unknown kernel {self.kernel!r} (tunable: {KERNELS})")

    @property
    def constraints(self) -> dict:
        """validation_errors keywords: outputs and how experts are grouped (M or K)."""
        from cute_kernels.config import kernel_constraints

        return kernel_constraints(self.kernel, self.shape.experts)

    @property
    def num_outputs(self) -> int:
        return self.constraints["num_outputs"]

    def default_config(self):
        from cute_kernels.config import kernel_default_config

        s = self.shape
        return kernel_default_config(self.kernel, s.m, s.n, s.k, s.experts)

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
        self.splits_small = _random_splits(t_small, s.experts, g) if s.experts else None

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
        self.splits_small = _random_splits(m_small, s.experts, g) if s.experts else None

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
        import cute_kernels.compile as cc
        from cute_kernels.epilogue import EpilogueSpec

        epi = {"fc1_srelu": EpilogueSpec("srelu", store_preact=True),
               "fc2_dgrad_dsrelu": EpilogueSpec("dsrelu")}.get(self.problem.kernel, EpilogueSpec("identity"))
        from cute_kernels.gemm_ops import device_arch

        c = self.problem.constraints
        # operand majorness as the ops pass them: weight_grad reads dy^T, x^T (M-, N-major);
        # the dgrad reads w2 transposed (N-major)
        majors = {"weight_grad": ("m", "n"), "fc2_dgrad_dsrelu": ("k", "n")}.get(self.problem.kernel, ("k", "k"))
        key = cc.KernelKey(device_arch(self.x.device), cfg, epi, c["grouped"], self.problem.shape.dtype, *majors,
                           grouped_k=c["grouped_k"])
        cc.get_compiled(key)

    def check(self, cfg) -> float:
        import torch

        out = self._call(self.xs, self.ws, self.splits_small, cfg)
        if self.problem.kernel in ("weight_grad", "fc2_dgrad_dsrelu"):
            if self.problem.kernel == "weight_grad":
                ref = _wgrad_reference(self.xs, self.ws, self.splits_small)
            else:  # d = dy @ w2 per expert, dpreact = 2 d relu(preact)
                ref = 2 * _rows_reference(self.xs, self.ws, self.splits_small) * torch.relu(self.pre_small.float())
            if not torch.isfinite(out).all():
                return float("inf")
            return ((out.float() - ref).norm() / ref.norm().clamp_min(1e-30)).item()
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


def _random_splits(total: int, experts: int, g) -> list[int]:
    """Uneven per-expert counts summing to `total` (empty experts likely)."""
    import torch

    cuts = torch.randint(0, total + 1, (experts - 1,), generator=g, device="cuda").sort().values.tolist()
    bounds = [0] + cuts + [total]
    return [bounds[i + 1] - bounds[i] for i in range(experts)]


def _wgrad_reference(dy, x, splits):
    """fp32 dy^T x, or per expert (zeros for an empty one)."""
    import torch

    if splits is None:
        return dy.float().t() @ x.float()
    out, start = [], 0
    for n in splits:
        out.append(dy[start:start + n].float().t() @ x[start:start + n].float())
        start += n
    return torch.stack(out)


def _rows_reference(x, w, splits):
    """fp32 x @ w, or per expert (rows of expert e times w[e])."""
    import torch

    if splits is None:
        return x.float() @ w.float()
    out, start = [], 0
    for e, n in enumerate(splits):
        out.append(x[start:start + n].float() @ w[e].float())
        start += n
    return torch.cat(out)
