"""Reusable host buffers (pinned for CUDA tensors), so offload does not pin fresh
memory every step.

A buffer handed back with `release(buf, event)` is reused only once `event` (the
copy that last read or wrote it) has completed."""
from __future__ import annotations

import torch


class PinnedPool:
    def __init__(self):
        self._free: dict[tuple, list[torch.Tensor]] = {}  # (bytes, pinned) -> buffers
        self._pending: list[tuple[torch.Tensor, torch.cuda.Event | None]] = []
        self.allocated_bytes = 0
        self.allocations = 0

    @staticmethod
    def _bucket(nbytes: int) -> int:
        # round up to 1 MiB steps (small tensors to 4 KiB) so similar sizes share buffers
        step = 1 << 20 if nbytes >= 1 << 20 else 4096
        return -(-nbytes // step) * step

    def _reap(self):
        keep = []
        for buf, ev in self._pending:
            if ev is None or ev.query():
                self._free.setdefault((buf.numel(), buf.is_pinned()), []).append(buf)
            else:
                keep.append((buf, ev))
        self._pending = keep

    def acquire(self, nbytes: int, pinned: bool = True) -> torch.Tensor:
        self._reap()
        size = self._bucket(nbytes)
        bucket = self._free.get((size, pinned))
        if bucket:
            return bucket.pop()
        self.allocations += 1
        self.allocated_bytes += size
        return torch.empty(size, dtype=torch.uint8, pin_memory=pinned)

    def release(self, buf: torch.Tensor, event: torch.cuda.Event | None = None):
        self._pending.append((buf, event))
