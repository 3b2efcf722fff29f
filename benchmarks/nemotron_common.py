"""Shared by bench_nemotron and train_nemotron: building a random Nemotron-H on the GPU,
timing training steps, a time budget, and the transformers version line."""
from __future__ import annotations

import signal
import statistics
import time
from contextlib import contextmanager

import torch

DEVICE = "cuda"  # the scripts' device (a CPU smoke run of the scripts sets "cpu")


def transformers_version() -> str:
    import transformers

    return transformers.__version__


def build_model(seed: int = 0, dtype=torch.bfloat16, **config):
    """A random NemotronHForCausalLM on the GPU in `dtype`, routers kept in fp32 (as
    from_pretrained keeps them: _keep_in_fp32_modules_strict)."""
    from transformers import NemotronHConfig, NemotronHForCausalLM

    cfg = NemotronHConfig(**config)
    torch.manual_seed(seed)
    try:
        with torch.device(DEVICE):
            model = NemotronHForCausalLM(cfg)
    except Exception:  # a transformers version whose init does not follow the device context
        model = NemotronHForCausalLM(cfg).to(DEVICE)
    model.to(dtype)
    for name, mod in model.named_modules():
        if name.endswith("mixer.gate"):
            mod.float()
    return model


class Budget:
    """Seconds left of a run's time budget."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


class OutOfTime(Exception):
    pass


@contextmanager
def deadline(seconds: float):
    """Raise OutOfTime in the main thread after `seconds` (SIGALRM)."""
    def _fire(_sig, _frame):
        raise OutOfTime(f"over its {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, _fire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def time_steps(step_fn, batches, *, warmup: int, steps: int):
    """(median ms per step, peak allocated bytes during the timed steps, resident bytes
    before them, first warm-up step's wall seconds).  `step_fn(batch)` runs one step;
    batches rotate so no step reuses the last one's inputs from L2."""
    t0 = time.perf_counter()
    first = None
    for i in range(warmup):
        step_fn(batches[i % len(batches)])
        if i == 0:
            torch.cuda.synchronize()
            first = time.perf_counter() - t0
    torch.cuda.synchronize()
    resident = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(steps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        step_fn(batches[i % len(batches)])
        b.record()
        times.append((a, b))
    torch.cuda.synchronize()
    ms = statistics.median(x.elapsed_time(y) for x, y in times)
    return ms, torch.cuda.max_memory_allocated(), resident, first
