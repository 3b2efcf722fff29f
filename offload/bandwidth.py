"""Measured host-device link bandwidth (pinned memory), cached per process."""
from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=None)
def measure_link(nbytes: int = 256 << 20, reps: int = 5) -> tuple[float, float]:
    """(GB/s to the CPU, GB/s back) with pinned buffers and the copy engines idle."""
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    rates = []
    for direction in ("d2h", "h2d"):
        best = 0.0
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            if direction == "d2h":
                host.copy_(dev, non_blocking=True)
            else:
                dev.copy_(host, non_blocking=True)
            b.record()
            b.synchronize()
            best = max(best, nbytes / (a.elapsed_time(b) * 1e6))
        rates.append(best)
    return rates[0], rates[1]
