"""Where a training step's memory peaks, from a CUDA allocator snapshot (pure Python).

Input: the dict `torch.cuda.memory._snapshot()` returns after
`torch.cuda.memory._record_memory_history()` ("segments" with their blocks, "device_traces"
with one list of trace entries per device: action alloc / free_requested / free_completed /
segment_* with addr, size, frames).  Phases are marked in the trace itself by `mark(k)`
allocations (an allocation of MARK_MAGIC bytes followed by one of `mark_size(k)` bytes), so
no clock has to agree with the allocator's.

`analyze(snapshot, labels)` gives a `Timeline`: the allocated bytes after every trace event
(alloc counts until its free_requested, as torch.cuda.memory_allocated does), the phase of
every event, the peak (event, bytes, phase) and the blocks live at the peak, largest first,
each with the phase that allocated it and its allocation stack summarized to one frame.
`markdown(timeline)` writes the summary, `plot(timeline, path)` the PNG (matplotlib).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

MARK_MAGIC = 512 * 1999  # bytes of a mark's first allocation (small pool, rounded size)
MARK_UNIT = 512  # a mark's second allocation is (k + 1) * MARK_UNIT bytes
BEFORE = "before the first mark"
# files whose frames say where an allocation comes from: the model and our code, then torch's layers
_OWN = ("cute_kernels/", "offload/", "transformers/models/", "benchmarks/", "scripts/")
_LIB = ("torch/nn/", "torch/optim/", "torch/autograd/")
_NODE = re.compile(r"(\w+Backward\w*)")


def mark_size(k: int) -> int:
    """The size of mark k's second allocation."""
    if k < 0 or (k + 1) * MARK_UNIT >= MARK_MAGIC:
        raise ValueError(f"mark index must be in [0, {MARK_MAGIC // MARK_UNIT - 1}), got {k}")
    return (k + 1) * MARK_UNIT


@dataclass
class LiveBlock:
    """A block allocated at the peak."""

    size: int
    address: int
    phase: str  # phase of its allocation ("before recording" when the trace does not have it)
    where: str  # its allocation stack in one frame


@dataclass
class Timeline:
    allocated: list  # bytes allocated after each kept event
    phases: list  # phase label of each kept event
    baseline: int  # bytes allocated when the trace begins
    peak_index: int
    peak_bytes: int
    peak_phase: str
    live_at_peak: list = field(default_factory=list)  # LiveBlock, largest first
    phase_starts: list = field(default_factory=list)  # (event index, label)
    phase_peaks: dict = field(default_factory=dict)  # label -> highest bytes in it
    title: str = ""

    def top(self, n: int = 10) -> list:
        return self.live_at_peak[:n]


def _frame(fr) -> str:
    fn = fr.get("filename", "?").replace("\\", "/")
    return f"{'/'.join(fn.split('/')[-2:])}:{fr.get('line', 0)} {fr.get('name', '?')}"


def summarize_frames(frames) -> str:
    """One line for an allocation stack (frames innermost first): the innermost frame of
    the model or our code, with the innermost torch.nn / torch.optim frame below it; else
    the autograd node that ran (C++ frames of a backward); else the innermost frame."""
    frames = [fr for fr in (frames or ()) if isinstance(fr, dict)]
    def first(keys):
        return next((j for j, fr in enumerate(frames) if fr.get("filename", "").endswith(".py")
                     and any(k in fr["filename"].replace("\\", "/") for k in keys)), None)
    own, lib = first(_OWN), first(_LIB)
    node = next(((j, m.group(1)) for j, fr in enumerate(frames) for m in [_NODE.search(fr.get("name", ""))] if m),
                None)
    if own is not None and (node is None or own < node[0]):
        return _frame(frames[own]) + (f" via {_frame(frames[lib])}" if lib is not None and lib < own else "")
    if node is not None:  # a backward: the autograd node that ran, and who ran the backward
        return f"autograd {node[1]}" + (f" (from {_frame(frames[own])})" if own is not None else "")
    if lib is not None:
        return _frame(frames[lib])
    return _frame(frames[0]) if frames else "no stack recorded"


def _trace(snapshot: dict, device: int) -> list:
    traces = snapshot.get("device_traces") or []
    if device >= len(traces):
        raise ValueError(f"snapshot has no trace for device {device} ({len(traces)} device traces)")
    return list(traces[device])


def _marks(trace: list) -> dict:
    """{event index of a mark's first allocation: (mark k, index of its second allocation)}."""
    out = {}
    allocs = [i for i, e in enumerate(trace) if e.get("action") == "alloc"]
    for a, b in zip(allocs, allocs[1:]):
        if trace[a].get("size") == MARK_MAGIC:
            size = trace[b].get("size", 0)
            if size % MARK_UNIT == 0 and 0 < size < MARK_MAGIC:
                out[a] = (size // MARK_UNIT - 1, b)
    return out


def _replay(trace: list, labels: list):
    """The trace's alloc and free_requested events without the marks' own, each as
    (trace index, entry, phase it falls in), and the (kept event index, label) where each
    phase starts."""
    marks = _marks(trace)
    mark_alloc = {b for _, b in marks.values()} | set(marks)
    mark_live, kept, phase, starts = set(), [], BEFORE, []
    for i, e in enumerate(trace):
        act, addr = e.get("action"), e.get("addr")
        if i in marks:
            k = marks[i][0]
            phase = labels[k] if k < len(labels) else f"mark {k}"
            starts.append((len(kept), phase))
        if i in mark_alloc:
            mark_live.add(addr)
            continue
        if act == "free_requested" and addr in mark_live:
            mark_live.discard(addr)
            continue
        if act in ("alloc", "free_requested"):
            kept.append((i, e, phase))
    return kept, starts


def analyze(snapshot: dict, labels=None, *, device: int = 0, title: str = "") -> Timeline:
    """The allocated-bytes timeline of `snapshot`'s trace for `device`, its peak and the
    blocks live there.  `labels[k]` names the phase that mark k starts (default "mark k")."""
    trace = _trace(snapshot, device)
    events, starts = _replay(trace, list(labels or []))
    if not events:
        raise ValueError("snapshot trace has no alloc or free_requested events: record with "
                         "torch.cuda.memory._record_memory_history()")
    delta, deltas = 0, []
    for _, e, _ in events:
        delta += e.get("size", 0) if e["action"] == "alloc" else -e.get("size", 0)
        deltas.append(delta)
    # the segments' active blocks are what is allocated at the end (the marks are freed by then)
    end_alloc = sum(b["size"] for s in snapshot.get("segments", ()) for b in s.get("blocks", ())
                    if b.get("state") == "active_allocated")
    baseline = end_alloc - deltas[-1]
    allocated = [baseline + d for d in deltas]
    phases = [p for _, _, p in events]
    peak = max(range(len(allocated)), key=lambda j: (allocated[j], -j))
    phase_peaks: dict = {}  # a phase's highest includes what was allocated when it began
    for j, p in starts:
        phase_peaks[p] = max(phase_peaks.get(p, 0), allocated[j - 1] if j > 0 else baseline)
    for a, p in zip(allocated, phases):
        phase_peaks[p] = max(phase_peaks.get(p, 0), a)
    return Timeline(allocated, phases, baseline, peak, allocated[peak], phases[peak],
                    _live_at(events, peak, snapshot), starts, phase_peaks, title)


def _live_at(events: list, peak: int, snapshot: dict) -> list:
    """Blocks live after kept event `peak`: those allocated up to it and not freed, those
    the trace frees after it without having allocated them (allocated before recording),
    and the segments' active blocks the trace never touches."""
    live, touched = {}, set()
    for _, e, phase in events[:peak + 1]:
        addr = e.get("addr")
        touched.add(addr)
        if e["action"] == "alloc":
            live[addr] = LiveBlock(e.get("size", 0), addr, phase, summarize_frames(e.get("frames")))
        else:
            live.pop(addr, None)
    for _, e, _ in events[peak + 1:]:
        addr = e.get("addr")
        if e["action"] == "free_requested" and addr not in touched:
            live[addr] = LiveBlock(e.get("size", 0), addr, "before recording", "allocated before recording began")
        touched.add(addr)
    for s in snapshot.get("segments", ()):
        for b in s.get("blocks", ()):
            addr = b.get("address")
            if b.get("state") == "active_allocated" and addr not in touched:
                live[addr] = LiveBlock(b["size"], addr, "before recording", summarize_frames(b.get("frames")))
    return sorted(live.values(), key=lambda b: (-b.size, b.address))


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def markdown(tl: Timeline, top: int = 12) -> str:
    """The peak's location and the largest blocks live there, with the phase peaks."""
    lines = [f"### {tl.title}" if tl.title else "### memory timeline", "",
             f"peak {_gib(tl.peak_bytes)} allocated at event {tl.peak_index} of {len(tl.allocated)}, in phase "
             f"**{tl.peak_phase}**; {_gib(tl.baseline)} allocated when recording began", "",
             "| phase | highest allocated |", "|---|---|"]
    for p, b in tl.phase_peaks.items():
        lines.append(f"| {p}{' (peak)' if p == tl.peak_phase else ''} | {_gib(b)} |")
    live = tl.live_at_peak
    lines += ["", f"largest of the {len(live)} blocks live at the peak ({_gib(sum(b.size for b in live))}):", "",
              "| MiB | allocated in | allocated by |", "|---|---|---|"]
    for b in live[:top]:
        lines.append(f"| {b.size / 2**20:.1f} | {b.phase} | {b.where.replace('|', '/')} |")
    rest = live[top:]
    if rest:
        lines.append(f"| {sum(b.size for b in rest) / 2**20:.1f} | ({len(rest)} smaller blocks) | |")
    by_phase: dict = {}
    for b in live:
        by_phase[b.phase] = by_phase.get(b.phase, 0) + b.size
    lines += ["", "live at the peak by the phase that allocated it: " +
              ", ".join(f"{p} {_gib(n)}" for p, n in sorted(by_phase.items(), key=lambda kv: -kv[1]))]
    return "\n".join(lines)


def plot(timelines, path: str) -> bool:
    """One panel per Timeline: allocated GiB over the trace's events, phases shaded, the
    peak marked.  False when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    timelines = list(timelines)
    fig, axes = plt.subplots(len(timelines), 1, figsize=(11, 2.8 * len(timelines)), squeeze=False)
    for ax, tl in zip(axes[:, 0], timelines):
        ax.plot(range(len(tl.allocated)), [a / 2**30 for a in tl.allocated], lw=0.8)
        starts = tl.phase_starts + [(len(tl.allocated), "")]
        for j, ((s, label), (e, _)) in enumerate(zip(starts, starts[1:])):
            if j % 2:
                ax.axvspan(s, e, color="0.92", lw=0)
            if e - s > len(tl.allocated) / 40:
                ax.text((s + e) / 2, 0.02, label, transform=ax.get_xaxis_transform(), ha="center", fontsize=6,
                        rotation=90, va="bottom")
        ax.plot([tl.peak_index], [tl.peak_bytes / 2**30], "rv")
        ax.annotate(f"peak {tl.peak_bytes / 2**30:.2f} GiB\n{tl.peak_phase}", (tl.peak_index, tl.peak_bytes / 2**30),
                    textcoords="offset points", xytext=(6, -22), fontsize=7, color="r")
        ax.set_ylabel("allocated GiB")
        ax.set_title(tl.title, fontsize=9)
    axes[-1, 0].set_xlabel("allocator event (alloc / free) in the step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
