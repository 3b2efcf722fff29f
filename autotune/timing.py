"""Timing helpers shared by the benchmarks and the autotuner: CUDA events, warm-up, L2 flushed, median of many.

`time_ms(fn)` measures GPU time per call: each sample flushes L2, then times a batch
of `batch` back-to-back calls between two events, so the GPU queue stays ahead of
the host and the figure is kernel time, not launch overhead.  `step_ms(fn)` times one
whole call from an idle GPU (a training step as it runs: host latency included).
`host_us(fn)` measures the host cost of one call (what a GPU-starved caller would see).
"""
from __future__ import annotations

import statistics
import time

import torch

_flush_buf = None


def flush_l2():
    global _flush_buf
    if _flush_buf is None:
        _flush_buf = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device="cuda")
    _flush_buf.zero_()


def time_ms(fn, *, warmup: int = 5, iters: int = 20, batch: int = 4, lead_ms: float = 1.0) -> float:
    """Median GPU milliseconds per call of `fn()`.

    `lead_ms` of GPU sleep is queued before each timed batch so the host can enqueue
    the batch before the GPU reaches it (raise it when other host threads compete
    for the GIL, as the autotuner's compile-ahead thread does)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        flush_l2()
        # queue work ahead so the timed calls are not waiting on the host
        torch.cuda._sleep(int(lead_ms * 2_000_000))
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(batch):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / batch)
    return statistics.median(times)


def sustained_ms(fn, *, seconds: float = 1.5, warm_s: float = 0.5) -> tuple[float, float, float]:
    """(GPU ms per call, mean board power W, mean SM clock MHz) of `fn()` run back to back for
    about `seconds` after `warm_s` of the same: the steady state of a training loop, where the
    GPU runs at its power limit and clocks settle (short timed bursts after an idle GPU run
    faster than that).  Power and clock are sampled through NVML every 20 ms."""
    import threading
    import time

    t0 = time.perf_counter()
    n_warm = 0
    while time.perf_counter() - t0 < warm_s or n_warm < 2:
        fn()
        n_warm += 1
    torch.cuda.synchronize()
    per_call_s = (time.perf_counter() - t0) / n_warm
    n = max(3, int(seconds / per_call_s))
    samples, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            try:
                samples.append((torch.cuda.power_draw() / 1000.0, torch.cuda.clock_rate()))
            except Exception:  # no NVML here
                return
            stop.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    sampler.start()
    for _ in range(n):
        fn()
    end.record()
    end.synchronize()
    stop.set()
    sampler.join()
    watts = statistics.mean(p for p, _ in samples) if samples else float("nan")
    mhz = statistics.mean(c for _, c in samples) if samples else float("nan")
    return start.elapsed_time(end) / n, watts, mhz


def step_ms(fn, *, iters: int = 10, before=None, after=None) -> float:
    """Median milliseconds of one call of `fn()` started on an idle GPU with L2 flushed
    (unlike time_ms, the host's enqueue latency counts).  `before()` runs after the GPU
    is idle and `after()` once the call has finished, around every sample (e.g. to
    track peak memory)."""
    times = []
    for _ in range(iters):
        flush_l2()
        torch.cuda.synchronize()
        if before is not None:
            before()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
        if after is not None:
            after()
    return statistics.median(times)


def host_us(fn, *, iters: int = 50) -> float:
    """Median host microseconds of one call (the GPU is kept busy so launches never block)."""
    fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(iters):
        torch.cuda._sleep(1_000_000)
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e6)
        torch.cuda.synchronize()
    return statistics.median(samples)


def tflops(flops: float, ms: float) -> float:
    return flops / (ms * 1e-3) / 1e12


TIMINGS = ("burst", "sustained")


def make_timer(mode: str = "burst"):
    """The autotuner's timer, fn -> ms, with the mode as its `.mode`.  "burst": median of
    short L2-flushed batches, which run at boost clocks after the GPU idles (the default,
    fast).  "sustained": `sustained_ms` over 0.4 s of back-to-back calls, at the power limit
    where a training loop runs and where config rankings can differ (about 10x the time
    per trial)."""
    if mode == "burst":
        def timer(fn):
            return time_ms(fn, warmup=3, iters=15, batch=3, lead_ms=10.0)
    elif mode == "sustained":
        def timer(fn):
            return sustained_ms(fn, seconds=0.4, warm_s=0.15)[0]
    else:
        raise ValueError(f"timing must be one of {TIMINGS}, got {mode!r}")
    timer.mode = mode
    return timer
