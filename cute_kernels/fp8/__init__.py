"""FP8 (e4m3 / e5m2) training with fine-grained block scaling on Hopper.

- `recipe`: the `Fp8Recipe` object and the torch implementation of its quantization
  (the reference the kernels are checked against, and the fallback on CPU).
- `ops`: torch entry points of the FP8 GEMMs (kernel on sm_90a).
"""
from .recipe import Fp8Recipe, dequantize, quantize_1x128, quantize_128x128

__all__ = ["Fp8Recipe", "quantize_1x128", "quantize_128x128", "dequantize"]
