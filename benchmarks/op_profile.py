"""Where a step's host time goes, op by op: a few steps under torch.profiler, summarised per step.

`profile_step_ops(step, steps=5)` runs `step` (a zero-argument callable: one forward+backward)
a few times inside torch.profiler (CPU activities, CUDA too on a GPU, with Python stacks), each
step in a `host_step` range, and `summarize_events` reduces what was recorded to per-step
figures: the torch ops the step dispatches (top-level aten ops: those not issued by another
aten op; and all of them), the CUDA launch calls the host makes (runtime and driver
`*LaunchKernel*` calls, memcpy/memset calls), the GPU kernels and copies that ran and the sum of
their durations (the step's GPU time: they run back to back behind a sleep kernel), Python's
garbage collections during the steps, the functions and ops with the most own (self) host time,
and for each kind of torch op the Python function of ours (not torch's) that issued it most
often.  `format_op_summary` prints it.  Python tracing makes every function slower (about 2x),
so the times are relative; the counts are exact.  benchmarks.bench_host_overhead --profile-ops
runs it on the GPU, benchmarks.bench_host_path --profile-ops on CPU with stubbed kernels.
"""
from __future__ import annotations

import collections
import gc
import re
import time

import torch

STEP_RANGE = "host_step"
STACK_ATTEMPTS = 3  # recordings with Python frames before one without (see profile_step_ops)
_PY_FRAME = re.compile(r"^(?P<file>.+\.py)\((?P<line>\d+)\): (?P<func>.+)$")
_LAUNCH_WORDS = ("LaunchKernel", "LaunchCooperativeKernel", "cuGraphLaunch", "cudaGraphLaunch")
_COPY_WORDS = ("Memcpy", "Memset")


def _is_python_frame(name: str) -> bool:
    return _PY_FRAME.match(name) is not None


def _is_own_frame(name: str) -> bool:
    """A Python frame outside torch (and the profiler): the project's code, or a benchmark's."""
    m = _PY_FRAME.match(name)
    return m is not None and not m.group("file").startswith(("torch/", "<", "contextlib", "functools", "typing"))


def summarize_events(events, steps: int, step_range: str = STEP_RANGE) -> dict:
    """Per-step figures of the events recorded inside `steps` ranges named `step_range`.
    `events`: torch.profiler's FunctionEvents (or objects with their name, device_type,
    self_cpu_time_total (us), cpu_parent); kernels on the device count by their own
    device_type, wherever their launch happened."""
    cuda = torch.autograd.DeviceType.CUDA
    own_us = collections.Counter()
    own_n = collections.Counter()
    op_n = collections.Counter()
    op_us = collections.Counter()
    op_callers: dict = collections.defaultdict(collections.Counter)
    totals = collections.Counter()
    step_us = gpu_us = 0.0
    for ev in events:
        name = ev.name
        if getattr(ev, "device_type", None) == cuda:
            totals["gpu_copies" if any(w.lower() in name.lower() for w in _COPY_WORDS) else "gpu_kernels"] += 1
            gpu_us += ev.time_range.elapsed_us()
            continue
        if name == step_range:
            step_us += getattr(ev, "cpu_time_total", 0.0)
            continue
        in_step, aten_ancestor, caller = False, False, None
        parent = ev.cpu_parent
        while parent is not None:
            pname = parent.name
            if pname == step_range:
                in_step = True
                break
            if pname.startswith("aten::"):
                aten_ancestor = True
            elif caller is None and _is_own_frame(pname):
                caller = pname
            parent = parent.cpu_parent
        if not in_step:
            continue
        own_us[name] += ev.self_cpu_time_total
        own_n[name] += 1
        if name.startswith("aten::"):
            totals["aten_ops"] += 1
            if not aten_ancestor:
                totals["torch_ops"] += 1
                op_n[name] += 1
                op_us[name] += ev.cpu_time_total
                op_callers[name][caller or "?"] += 1
        elif any(w in name for w in _LAUNCH_WORDS):
            totals["launch_calls"] += 1
        elif any(w in name for w in _COPY_WORDS) and not _is_python_frame(name):
            totals["copy_calls"] += 1
    per = max(1, steps)
    return {
        "steps": steps,
        "step_us": step_us / per,
        "gpu_us": gpu_us / per,
        "counts": {k: v / per for k, v in totals.items()},
        "self_host": [(name, own_n[name] / per, us / per) for name, us in own_us.most_common()],
        "torch_ops": [(name, op_n[name] / per, op_us[name] / per, op_callers[name].most_common(1)[0][0])
                      for name, _ in op_n.most_common()],
    }


def profile_step_ops(step, *, steps: int = 5, warmup: int = 3, cuda: bool | None = None, before=None) -> dict:
    """`summarize_events` of `steps` calls of `step` under torch.profiler (after `warmup` calls and,
    once those have finished, `before()`: e.g. a long sleep kernel, so that the host never waits for
    the GPU), with the host wall time per step ("wall_us") and the generations of the Python garbage
    collections during the steps ("gc_collections")."""
    from torch.profiler import ProfilerActivity, profile, record_function

    if cuda is None:
        cuda = torch.cuda.is_available()
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    if before is not None:
        before()
    collections_seen = []

    def on_gc(phase, info):
        if phase == "start":
            collections_seen.append(info.get("generation"))

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])

    def record(with_stack: bool):
        collections_seen.clear()
        gc.callbacks.append(on_gc)
        try:
            with profile(activities=activities, with_stack=with_stack) as prof:
                t0 = time.perf_counter()
                for _ in range(steps):
                    with record_function(STEP_RANGE):
                        step()
                wall = time.perf_counter() - t0
                if cuda:
                    torch.cuda.synchronize()
            return prof.events(), wall
        finally:
            gc.callbacks.remove(on_gc)

    # torch's Python tracer now and then records a frame name that is not UTF-8, and reading
    # the events then raises: record again, and at the last attempt without Python frames
    for attempt in range(STACK_ATTEMPTS + 1):
        with_stack = attempt < STACK_ATTEMPTS
        try:
            events, wall = record(with_stack)
            break
        except UnicodeDecodeError:
            if not with_stack:
                raise
            if before is not None:
                if cuda:
                    torch.cuda.synchronize()
                before()
    summary = summarize_events(events, steps)
    summary["wall_us"] = wall / max(1, steps) * 1e6
    summary["gc_collections"] = list(collections_seen)
    summary["python_frames"] = with_stack
    return summary


def format_op_summary(summary: dict, top: int = 25) -> str:
    """The summary as text: per-step counts, then the `top` host-time entries and torch ops."""
    c = summary["counts"]
    lines = [
        f"per step, over {summary['steps']} profiled steps ("
        + ("Python tracing on: times ~2x, " if summary.get("python_frames", True) else "") + "counts exact):",
        f"  host wall time {summary.get('wall_us', summary['step_us']):.0f} us "
        f"(inside the step ranges {summary['step_us']:.0f} us)",
        f"  torch ops dispatched: {c.get('torch_ops', 0):.1f} top-level ({c.get('aten_ops', 0):.1f} aten ops in all)",
        f"  CUDA launch calls: {c.get('launch_calls', 0):.1f}; memcpy/memset calls: {c.get('copy_calls', 0):.1f}",
        f"  on the GPU: {c.get('gpu_kernels', 0):.1f} kernels, {c.get('gpu_copies', 0):.1f} copies/memsets, "
        f"busy {summary.get('gpu_us', 0.0):.0f} us (the sum of their durations)",
    ]
    if summary.get("python_frames") is False:
        lines.append("  (recorded without Python frames: torch's Python tracer failed; no functions, no callers)")
    if "gc_collections" in summary:
        gens = summary["gc_collections"]
        by_gen = collections.Counter(gens)
        lines.append(f"  Python garbage collections during the steps (the tracer's own objects count): {len(gens)}"
                     + (" (" + ", ".join(f"generation {g}: {n}" for g, n in sorted(by_gen.items())) + ")"
                        if gens else ""))
    lines += ["", f"top {top} by own host time per step:", "| us per step | calls per step | function or op |",
              "|---|---|---|"]
    lines += [f"| {us:.1f} | {n:.1f} | {name} |" for name, n, us in summary["self_host"][:top]]
    lines += ["", "torch ops per step (top-level), with the Python function of ours that issues them most:",
              "| op | per step | us per step (incl. children) | most from |", "|---|---|---|---|"]
    lines += [f"| {name} | {n:.1f} | {us:.1f} | {caller} |" for name, n, us, caller in summary["torch_ops"][:top]]
    return "\n".join(lines)
