"""Which Sm100Config a launch on a Blackwell GPU uses: the caller's (checked against the sm100
space, bad ones get InputError with every reason), else the sm100 default for the shape.
tuned_configs/sm100/ holds no entries (none were measured on hardware), so no lookup runs."""
from __future__ import annotations

import dataclasses

from ..checks import InputError
from .config import Sm100Config, default_config, validation_errors


def launch_config(*, m: int, n: int, k: int, num_experts: int, epi, grouped: bool = False, grouped_k: bool = False,
                  out_bytes: int = 2, config=None) -> Sm100Config:
    limits = dict(num_outputs=epi.num_outputs, out_bytes=out_bytes, grouped=grouped, grouped_k=grouped_k)
    if config is not None:
        if not isinstance(config, Sm100Config):
            raise InputError(f"config: this GPU runs the sm100 kernels, which take a cute_kernels.sm100.config."
                             f"Sm100Config, got {type(config).__name__}")
        errs = validation_errors(config, **limits)
        if errs:
            raise InputError(f"config: invalid Sm100Config {config}: " + "; ".join(errs))
        return config
    cfg = default_config(m, n, k, num_experts=num_experts, grouped_k=grouped_k)
    # two outputs or fp32 outputs take more epilogue smem: fewer operand stages, never none
    for cand in (cfg, dataclasses.replace(cfg, epi_stages=2), Sm100Config(tile_n=128)):
        if not validation_errors(cand, **limits):
            return cand
    raise AssertionError(f"no valid sm100 default for {limits}")  # unreachable: 128x128 fits every epilogue
