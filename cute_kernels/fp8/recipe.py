"""The FP8 block-scaling recipe and its torch reference implementation.

Recipe (DeepSeek-V3's; TransformerEngine's Float8BlockScaling):
- activations and gradients: one fp32 scale per 1 x `block` run of a row along the
  GEMM's reduction dimension K (`quantize_1x128`);
- weights: one fp32 scale per `block` x `block` square (`quantize_128x128`);
- a block's scale is s = amax * (1 / fmax) (fmax = 448 for e4m3, 57344 for e5m2), optionally
  rounded up to a power of two (then scaling is exact in binary); the stored value is
  q = cast(x * (1 / s)) (saturating) and x ~ q * s.  An all-zero block gets s = 1.
  (Multiplications by fp32 reciprocals, as the kernels' epilogue computes them, so the
  kernels and this reference agree bit for bit on the same fp32 values.)
- Shapes need not be multiples of the block: a partial last block is scaled by its own
  amax (scales have ceil(n / block) entries along a blocked dimension).

Scale tensors are fp32 and laid out as the kernels read them: a (R, C) activation gets
(R, ceil(C / block)) scales, a (R, C) weight (ceil(R / block), ceil(C / block)).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..checks import InputError
from .epilogue import FMAX

FORMATS = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
WGRAD_PRECISIONS = ("fp8", "bf16")


@dataclass(frozen=True)
class Fp8Recipe:
    """How an FP8 step quantizes: formats of the forward tensors and of the gradients,
    the block size, and whether scales are powers of two.

    `fwd_format` is used for activations and weights; `grad_format` for the output
    gradients (e4m3 as DeepSeek-V3, or e5m2 for more range).

    `wgrad`: the weight gradients' operands.  "bf16" (default): the bf16 operands the step already
    has (dy, the recomputed postact, x dequantized from its saved FP8 copy) through the family's
    bf16 weight-gradient kernel, one launch for every expert, fp32 accumulation: more accurate than
    "fp8", and the fast path (H200, 2026-12-03, at the power limit: the dense FP8 step 1.12x our
    bf16 step with it, 0.48x with "fp8").  "fp8": dy^T and the activation^T quantized 1x128 along
    the tokens, as DeepSeek-V3 and TransformerEngine's Float8BlockScaling train: the recipe's
    numerics through a torch implementation (slow) until the FP8 weight-gradient kernel exists."""

    block: int = 128
    fwd_format: str = "e4m3"
    grad_format: str = "e4m3"
    pow2_scales: bool = False
    wgrad: str = "bf16"

    def __post_init__(self):
        """Every field type-checked (an InputError naming it and showing the repr of what was
        given): a truthy string as pow2_scales or 128.0 as block would otherwise be used silently."""
        for name in ("fwd_format", "grad_format"):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in FORMATS:
                raise InputError(f"{name} must be one of {tuple(FORMATS)}, got {value!r}")
        if type(self.block) is not int or self.block != 128:
            # the kernels promote once per 128-K tile and quantize 128-column epilogue spans
            raise InputError(f"block must be the int 128 (the kernels' K tile), got {self.block!r}")
        if not isinstance(self.pow2_scales, bool):
            raise InputError(f"pow2_scales must be True or False, got {self.pow2_scales!r}")
        if not isinstance(self.wgrad, str) or self.wgrad not in WGRAD_PRECISIONS:
            raise InputError(f"wgrad must be one of {WGRAD_PRECISIONS}, got {self.wgrad!r}")

    @property
    def fwd_dtype(self) -> torch.dtype:
        return FORMATS[self.fwd_format]

    @property
    def grad_dtype(self) -> torch.dtype:
        return FORMATS[self.grad_format]

    def key(self) -> str:
        return (f"fp8-{self.fwd_format}-{self.grad_format}-b{self.block}" + ("-pow2" if self.pow2_scales else "")
                + f"-wgrad-{self.wgrad}")


def _scale_from_amax(amax: torch.Tensor, fmt: str, pow2: bool) -> torch.Tensor:
    """fp32 dequantization scale of a block from its fp32 amax (see the module docstring)."""
    s = amax * torch.tensor(1.0 / FMAX[fmt], dtype=torch.float32)
    if pow2:
        # round up to a power of two exactly: bump the exponent when the mantissa is nonzero
        bits = s.view(torch.int32)
        exp = bits & 0x7F800000
        up = torch.where((bits & 0x007FFFFF) != 0, exp + 0x00800000, exp)
        s = up.view(torch.float32)
    return torch.where(amax > 0, s, torch.ones_like(s))


def _cast(x: torch.Tensor, s: torch.Tensor, fmt: str) -> torch.Tensor:
    fmax = FMAX[fmt]
    return (x * (1.0 / s)).clamp_(-fmax, fmax).to(FORMATS[fmt])


def _pad_to(x: torch.Tensor, dim: int, block: int) -> torch.Tensor:
    extra = (-x.shape[dim]) % block
    if extra == 0:
        return x
    pad = [0, 0] * (x.dim() - 1 - dim) + [0, extra]
    return torch.nn.functional.pad(x, pad)


def quantize_1x128(x: torch.Tensor, fmt: str = "e4m3", *, block: int = 128, pow2: bool = False):
    """(R, C) -> (q (R, C) fp8, scales (R, ceil(C / block)) fp32): one scale per row
    and run of `block` columns.  Computed in fp32."""
    if x.dim() != 2:
        raise ValueError(f"quantize_1x128 takes a 2-D tensor, got shape {tuple(x.shape)}")
    r, c = x.shape
    xf = _pad_to(x.float(), 1, block).reshape(r, -1, block)  # reshape: x may be a transposed view
    amax = xf.abs().amax(dim=2)
    s = _scale_from_amax(amax, fmt, pow2)
    q = _cast(xf, s.unsqueeze(2), fmt).view(r, -1)[:, :c]
    return q.contiguous(), s.contiguous()


def quantize_128x128(w: torch.Tensor, fmt: str = "e4m3", *, block: int = 128, pow2: bool = False):
    """(R, C) -> (q (R, C) fp8, scales (ceil(R / block), ceil(C / block)) fp32): one scale
    per block x block square.  Computed in fp32.  A stack (E, R, C) (experts' weights) gives
    (E, R, C) and (E, RB, CB) in the same passes (blocks never span two experts)."""
    if w.dim() not in (2, 3):
        raise ValueError(f"quantize_128x128 takes a 2-D tensor or a stack of them, got shape {tuple(w.shape)}")
    lead = w.shape[:-2]
    r, c = w.shape[-2:]
    wf = _pad_to(_pad_to(w.float(), w.dim() - 2, block), w.dim() - 1, block)
    rb, cb = wf.shape[-2] // block, wf.shape[-1] // block
    blocks = wf.reshape(*lead, rb, block, cb, block)
    amax = blocks.abs().amax(dim=(-3, -1))
    s = _scale_from_amax(amax, fmt, pow2)
    q = _cast(blocks, s[..., :, None, :, None], fmt).view(*lead, rb * block, cb * block)[..., :r, :c]
    return q.contiguous(), s.contiguous()


def expand_scales(scales: torch.Tensor, shape, *, rows_per_scale: int, cols_per_scale: int) -> torch.Tensor:
    """Per-element fp32 scale of a tensor of `shape` from its block scales."""
    r, c = shape
    return scales.repeat_interleave(rows_per_scale, 0)[:r].repeat_interleave(cols_per_scale, 1)[:, :c]


def dequantize(q: torch.Tensor, scales: torch.Tensor, *, block: int = 128,
               out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Value of a quantized (R, C) tensor, computed in fp32 and rounded once into `out_dtype`; the
    block shape is read from the scales' shape: (R, ceil(C / block)) for 1 x block,
    (ceil(R / block), ceil(C / block)) for squares."""
    r, c = q.shape
    cb = -(-c // block)
    if scales.shape == (r, cb):
        rows = 1
    elif scales.shape == (-(-r // block), cb):
        rows = block
    else:
        raise ValueError(f"scales of shape {tuple(scales.shape)} fit neither 1x{block} nor {block}x{block} "
                         f"blocks of a {tuple(q.shape)} tensor")
    if rows == 1 and c == cb * block:  # whole 1 x block runs: the same products, broadcast (no expanded copy)
        out = torch.empty((r, cb, block), dtype=out_dtype, device=q.device)
        # fp32 products rounded once into out_dtype on the store: bitwise the fp32 result .to(out_dtype)
        s32 = scales if scales.dtype == torch.float32 else scales.float()  # (no torch op when already fp32)
        return torch.mul(q.float().view(r, cb, block), s32.unsqueeze(-1), out=out).view(r, c)
    return (q.float() * expand_scales(scales.float(), (r, c), rows_per_scale=rows, cols_per_scale=block)).to(out_dtype)
