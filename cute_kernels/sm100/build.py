"""Building an sm100 kernel object from a `compile.KernelKey` (validated against the sm100
config space first) and the sizes its launch needs (the descriptor workspace: compile.desc_workspace_words)."""
from __future__ import annotations

from ..config import ConfigError
from .config import Sm100Config, resolved_ab_stages, validate


def _check_key(key) -> None:
    if key.grouped and key.grouped_k:
        raise ValueError("a kernel is grouped along M or along K, not both")
    if key.grouped_k and (key.a_major, key.b_major) != ("m", "n"):
        raise ValueError("the K-grouped GEMM takes tokens (K) as the strided dimension: A must be M-major and B N-major")
    if not isinstance(key.cfg, Sm100Config):
        raise ConfigError(f"sm100 kernels take an Sm100Config, got {type(key.cfg).__name__}")
    validate(key.cfg, num_outputs=key.epi.num_outputs, out_bytes=key.out_bytes, grouped=key.grouped,
             grouped_k=key.grouped_k)


def ab_stages_of(key) -> int:
    return resolved_ab_stages(key.cfg, num_outputs=key.epi.num_outputs, out_bytes=key.out_bytes)


def build_sm100_kernel(key):
    """The Sm100Gemm for `key` (raises ConfigError with every reason for a bad config)."""
    _check_key(key)
    from .gemm import Sm100Gemm

    return Sm100Gemm(key.cfg, key.epi, grouped=key.grouped, grouped_k=key.grouped_k, ab_stages=ab_stages_of(key))
