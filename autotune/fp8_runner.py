"""The GPU runner of the block-scaled FP8 kernels (fp8_fc1_srelu, fp8_fc2, fp8_dgrad_dact): operands
drawn in bf16 and quantized by the recipe (x 1x128 along K with column-major scales, as the FP8 step
passes them; weights 128x128 per expert), launched through the FP8 entry points
(cute_kernels/fp8/ops.py; grouped: `fp8_grouped`; the FC2 data gradient with the activation
derivative: `fp8_dgrad_dact` with the postact recompute, as the training step calls it, on a
random bf16 preact).

The check, on small random data (odd M, uneven experts with an empty one): the bf16 output
(fp8_fc2's y, fp8_fc1_srelu's preact) against the float32 GEMM of the dequantized operands
(the registry's reference); fp8_fc1_srelu's FP8 postact against the recipe's quantization of
f(preact as stored), which the epilogue reproduces to within one FP8 step on a few elements
(tests/test_fp8_family_gpu.py); fp8_dgrad_dact's dpreact against the float32 reference of the
dequantized operands (registry), its postact against f(preact).  The larger of the relative
errors is returned.
"""
from __future__ import annotations

from cute_kernels.reference import random_splits

from .shapes import even_splits


class Fp8GpuRunner:
    """Runs configs of one FP8 problem on the current CUDA device (prepare / check / timed)."""

    def __init__(self, problem, seed: int = 0):
        import torch

        from cute_kernels.fp8.recipe import FORMATS
        from cute_kernels.registry import operand_dtypes

        self.problem = problem
        s = problem.shape
        inv = {str(v).removeprefix("torch."): k for k, v in FORMATS.items()}
        self.a_format, self.b_format = (inv[d] for d in operand_dtypes(s.dtype))
        g = torch.Generator(device="cuda")
        g.manual_seed(seed)
        self.x, self.sx, self.w, self.sw = self._operands(s.m, s, g)
        self.splits = torch.tensor(even_splits(s.m, s.experts), device="cuda") if s.experts else None
        m_small = 389 if not s.experts else max(389, 3 * s.experts)
        self.xs, self.sxs, self.ws, self.sws = self._operands(m_small, s, g)
        self.splits_small = random_splits(m_small, s.experts, g, empty=1 if s.experts > 1 else 0) if s.experts \
            else None
        if problem.kernel == "fp8_dgrad_dact":  # FC1's preact as stored (bf16), full size and small
            self.pre = torch.randn(s.m, s.n, device="cuda", generator=g).to(torch.bfloat16)
            self.pre_small = torch.randn(m_small, s.n, device="cuda", generator=g).to(torch.bfloat16)

    def _operands(self, m, s, g):
        import torch

        from cute_kernels.fp8.mlp import quantize_rows
        from cute_kernels.fp8.ops import quantize_weight
        from cute_kernels.fp8.recipe import Fp8Recipe

        x = torch.randn(m, s.k, device="cuda", generator=g).to(torch.bfloat16)
        w = (torch.randn(*((s.experts,) if s.experts else ()), s.n, s.k, device="cuda", generator=g)
             / s.k ** 0.5).to(torch.bfloat16)
        xq, sx = quantize_rows(x, self.a_format, Fp8Recipe())
        wq, sw = quantize_weight(w, Fp8Recipe(fwd_format=self.b_format))
        return xq, sx, wq, sw

    def _call(self, x, sx, w, sw, splits, cfg):
        from cute_kernels.fp8.ops import fp8_dgrad_dact, fp8_fc1_srelu, fp8_gemm, fp8_grouped

        if self.problem.kernel == "fp8_dgrad_dact":
            pre = self.pre_small if x is self.xs else self.pre
            return fp8_dgrad_dact(x, sx, w, sw, pre, m_splits=splits, store_postact=True, config=cfg)
        if self.problem.kernel == "fp8_fc1_srelu":
            if splits is None:
                return fp8_fc1_srelu(x, sx, w, sw, store_preact=True, config=cfg)
            return fp8_grouped(x, sx, w, sw, splits, epilogue="act", store_preact=True, config=cfg)
        if splits is None:
            return fp8_gemm(x, sx, w, sw, config=cfg)
        return fp8_grouped(x, sx, w, sw, splits, config=cfg)

    def prepare(self, cfg):
        """Compile the kernel the op launches for this problem with `cfg` (the registry's key, with the
        scales staged in shared memory where the FP8 ops take them)."""
        import cute_kernels.compile as cc
        from cute_kernels.fp8.ops import with_staged_scales
        from cute_kernels.gemm_ops import device_arch
        from cute_kernels.registry import kernel_key

        s = self.problem.shape
        cc.get_compiled(with_staged_scales(kernel_key(self.problem.kernel, device_arch(self.x.device), cfg, s.dtype,
                                                      s.experts)))

    def check(self, cfg) -> float:
        import torch

        from cute_kernels.fp8.recipe import dequantize, quantize_1x128
        from cute_kernels.fp8.reference import fp8_fc2_ref
        from cute_kernels.reference import rel_err

        out = self._call(self.xs, self.sxs, self.ws, self.sws, self.splits_small, cfg)
        if self.problem.kernel == "fp8_dgrad_dact":
            return self._check_dgrad_dact(out)
        gemm_ref = fp8_fc2_ref(self.xs, self.sxs, self.ws, self.sws, self.splits_small)
        if self.problem.kernel != "fp8_fc1_srelu":
            return rel_err(out, gemm_ref) if torch.isfinite(out).all() else float("inf")
        pre, q, qs = out
        post = dequantize(q, qs)
        if not (torch.isfinite(pre).all() and torch.isfinite(post).all()):
            return float("inf")
        act = self.problem.spec.epilogue.activation
        rq, rs = quantize_1x128(act.torch_forward(pre.float()), self.problem.spec.epilogue.q_format)
        return max(rel_err(pre, gemm_ref), rel_err(post, dequantize(rq, rs)))

    def _check_dgrad_dact(self, out) -> float:
        import torch

        from cute_kernels.reference import rel_err

        (dpre, post, _) = out
        if not (torch.isfinite(dpre).all() and torch.isfinite(post).all()):
            return float("inf")
        act = self.problem.spec.epilogue.activation
        ref = self.problem.spec.reference(self.xs, self.sxs, self.ws, self.sws, self.pre_small, self.splits_small)
        return max(rel_err(dpre, ref), rel_err(post, act.torch_forward(self.pre_small.float())))

    def timed(self, cfg):
        return lambda: self._call(self.x, self.sx, self.w, self.sw, self.splits, cfg)
