"""The measured-peak offload planner: pure Python, from a memory profile of one step.

Input (`MemoryProfile`): the bytes allocated over the step, sampled at every saved-tensor
event (`samples`: (ms, highest bytes allocated since the previous sample)), and every
large tensor autograd saved in the step (`SavedTensor`: when it was saved, when backward
first used it, its bytes, whether offloading it would free anything, what recomputing it
would cost), with the backward events at which reloads can be issued (`bwd_events`: the
times of the saved tensors' first uses, in order).

Output (`MeasuredPlan`): per saved tensor keep / offload / recompute and why, the copy
times, the backward event that issues each reload, and the peak before and after.

Model.  An offloaded tensor's memory is free from the end of its copy to the CPU (copies
run one after another on one stream, in the order the tensors were saved) until its
reload is issued (the reload's buffer is allocated then).  Reloads run one after another
in backward order; each gets the latest start that keeps it and the ones after it back
before their first use, and is issued at the last backward event at or before that start
(as late as possible: least memory).  A recomputed tensor is never saved: its memory is
free from when it was saved to when it is used.  A sample's bytes drop by a tensor's bytes
when the tensor is free over the whole interval that sample covers.

Greedy on the measured peak.  While some tensor live at the current peak can lower it:
take the largest one whose copy can end before the peak and whose reload can be issued
after it and still be back in time, if the predicted peak of the whole step does not rise
(a new copy delays the ones after it, a new reload makes the earlier ones start earlier);
else the cheapest recompute (only tensors the op offered to recompute) within the step-time
limit.  Stop when nothing lowers the peak.  No copy adds step time (copies that cannot be
on time are not planned), so the limit binds recompute only.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

KEEP, OFFLOAD, RECOMPUTE = "keep", "offload", "recompute"


def _b(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


@dataclass(frozen=True)
class SavedTensor:
    key: tuple  # how the scheduler finds it again in the next steps
    role: str  # the op's role tag, or "other"
    nbytes: int
    saved_ms: float  # saved (its copy may start), ms since the step started
    used_ms: float  # first used in backward (math.inf: never)
    held: bool = False  # its memory is held elsewhere too: offloading it frees nothing
    recompute_ms: float | None = None  # added step time if recomputed; None: cannot be
    contiguous: bool = True
    where: str = ""  # where in the step it was saved ("layer 3", "after layer 0")


@dataclass(frozen=True)
class MemoryProfile:
    samples: tuple  # (ms, highest bytes allocated since the previous sample), increasing ms
    tensors: tuple  # SavedTensor
    step_ms: float
    bwd_events: tuple = ()  # ms of the backward events reloads can be issued at, increasing

    @property
    def peak(self) -> tuple:
        """(sample index, bytes) of the highest sample."""
        j = max(range(len(self.samples)), key=lambda k: (self.samples[k][1], -k))
        return j, self.samples[j][1]


@dataclass
class TensorDecision:
    key: tuple
    role: str
    nbytes: int
    action: str
    why: str
    where: str = ""
    d2h_start_ms: float | None = None
    d2h_end_ms: float | None = None
    reload_event: int | None = None  # index into the step's backward events that issues its reload
    h2d_start_ms: float | None = None
    h2d_end_ms: float | None = None
    cost_ms: float = 0.0

    @property
    def offload_bytes(self) -> int:
        return self.nbytes if self.action == OFFLOAD else 0


@dataclass
class MeasuredPlan:
    decisions: dict  # key -> TensorDecision
    peak_before: int
    peak_after: int
    peak_ms: float  # where the measured peak is
    peak_after_ms: float
    d2h_gbps: float
    h2d_gbps: float
    step_ms: float
    cost_ms: float
    cost_limit_ms: float
    why: str = ""

    def decision(self, key):
        return self.decisions.get(key)

    @property
    def offload_bytes(self) -> int:
        return sum(d.offload_bytes for d in self.decisions.values())

    @property
    def recompute_bytes(self) -> int:
        return sum(d.nbytes for d in self.decisions.values() if d.action == RECOMPUTE)

    def reloads_at(self) -> dict:
        """{backward event index: [keys whose reload it issues]}"""
        out: dict = {}
        for d in self.decisions.values():
            if d.reload_event is not None:
                out.setdefault(d.reload_event, []).append(d.key)
        return out

    def describe(self) -> str:
        head = [f"measured-peak offload plan: peak {_b(self.peak_before)} at {self.peak_ms:.2f} ms of a "
                f"{self.step_ms:.2f} ms step -> predicted {_b(self.peak_after)} (at {self.peak_after_ms:.2f} ms); "
                f"offload {_b(self.offload_bytes)}, recompute {_b(self.recompute_bytes)}, added time "
                f"{self.cost_ms:.2f} ms (limit {self.cost_limit_ms:.2f}); link {self.d2h_gbps:.1f} GB/s to CPU / "
                f"{self.h2d_gbps:.1f} GB/s back" + (f"; {self.why}" if self.why else ""), "",
                "| saved tensor | where | role | bytes | action | D2H ms (from-to) | reload at event | H2D ms (from-to) | why |",
                "|---|---|---|---|---|---|---|---|---|"]
        rows = []
        order = {OFFLOAD: 0, RECOMPUTE: 1, KEEP: 2}
        for d in sorted(self.decisions.values(), key=lambda d: (order[d.action], -d.nbytes, str(d.key))):
            d2h = f"{d.d2h_start_ms:.2f}-{d.d2h_end_ms:.2f}" if d.d2h_start_ms is not None else "-"
            h2d = f"{d.h2d_start_ms:.2f}-{d.h2d_end_ms:.2f}" if d.h2d_start_ms is not None else "-"
            rows.append(f"| {d.key} | {d.where or '-'} | {d.role} | {_b(d.nbytes)} | {d.action} | {d2h} | "
                        f"{d.reload_event if d.reload_event is not None else '-'} | {h2d} | {d.why} |")
        return "\n".join(head + rows)


# ---------------------------------------------------------------------- planning
@dataclass
class _Sched:
    free_from: dict = field(default_factory=dict)  # tensor pos -> ms its memory is free from
    free_to: dict = field(default_factory=dict)  # tensor pos -> ms it is allocated again
    d2h: dict = field(default_factory=dict)  # pos -> (start, end)
    h2d: dict = field(default_factory=dict)  # pos -> (event index, start, end)
    late: set = field(default_factory=set)  # offloads whose reload cannot be back in time


def plan_measured(profile: MemoryProfile, *, d2h_gbps: float, h2d_gbps: float, min_tensor_bytes: int = 0,
                  max_step_cost: float = 0.03, recompute: bool = True, overlap_fraction: float = 0.97,
                  roles=None) -> MeasuredPlan:
    """Plan one step from its measured memory (see the module docstring).  `roles`: the
    tagged roles that may move (None: all); untagged tensors ("other") always may."""
    tens = list(profile.tensors)
    samples = list(profile.samples)
    if not samples:
        raise ValueError("plan_measured: the profile has no memory samples")
    times = [t for t, _ in samples]
    base = [b for _, b in samples]
    d2h_bpms = d2h_gbps * 1e6 * overlap_fraction
    h2d_bpms = h2d_gbps * 1e6 * overlap_fraction
    events = list(profile.bwd_events)
    cost_limit = max_step_cost * profile.step_ms
    peak_j, peak_b = profile.peak

    fixed, movable = {}, []
    for k, t in enumerate(tens):
        if roles is not None and t.role != "other" and t.role not in roles:
            fixed[k] = "role not in the policy's roles"
        elif t.held:
            fixed[k] = "its memory is held elsewhere too: offloading it frees nothing"
        elif t.nbytes < max(min_tensor_bytes, 1):
            fixed[k] = f"below min_tensor_bytes ({min_tensor_bytes})"
        elif not math.isfinite(t.used_ms):
            fixed[k] = "backward never used it"
        else:
            movable.append(k)

    def schedule(off: set, rec: set) -> _Sched:
        s = _Sched()
        t_free = -math.inf
        for k in sorted(off, key=lambda k: (tens[k].saved_ms, k)):
            start = max(tens[k].saved_ms, t_free)
            end = start + tens[k].nbytes / d2h_bpms
            s.d2h[k] = (start, end)
            t_free = end
        nxt = math.inf
        for k in sorted(off, key=lambda k: (-tens[k].used_ms, -k)):  # latest need first: ALAP
            finish = min(tens[k].used_ms, nxt)
            start = finish - tens[k].nbytes / h2d_bpms
            e = bisect.bisect_right(events, start + 1e-9) - 1
            if e < 0 or events[e] < s.d2h[k][1]:
                s.late.add(k)  # no backward event early enough (or its copy is still running)
                issue = events[0] if events else tens[k].used_ms
                e = max(e, 0)
            else:
                issue = events[e]
            s.h2d[k] = (e, issue, start)
            nxt = start
        for k in off:
            s.free_from[k], s.free_to[k] = s.d2h[k][1], s.h2d[k][1]
        for k in rec:
            s.free_from[k], s.free_to[k] = tens[k].saved_ms, tens[k].used_ms
        return s

    def curve(s: _Sched) -> list:
        """Predicted bytes per sample: a tensor frees its bytes in the samples whose whole
        interval (previous sample's time, this sample's time] lies in [free_from, free_to]."""
        diff = [0] * (len(samples) + 1)
        for k, f0 in s.free_from.items():
            f1 = s.free_to[k]
            # first sample whose interval starts at or after f0: previous time >= f0
            lo = bisect.bisect_left(times, f0 - 1e-9) + 1
            hi = bisect.bisect_right(times, f1 + 1e-9) - 1  # last sample ending by f1
            if lo <= hi:
                diff[lo] += tens[k].nbytes
                diff[hi + 1] -= tens[k].nbytes
        out, acc = [], 0
        for j in range(len(samples)):
            acc += diff[j]
            out.append(base[j] - acc)
        return out

    def live_at(k: int, j: int) -> bool:
        lo = times[j - 1] if j > 0 else -math.inf
        return tens[k].saved_ms <= lo and tens[k].used_ms >= times[j]

    off, rec, spent = set(), set(), 0.0
    sched = schedule(off, rec)
    cur = curve(sched)
    why_not: dict = {}
    while True:
        j = max(range(len(cur)), key=lambda i: (cur[i], -i))
        peak = cur[j]
        live = [k for k in movable if k not in off and k not in rec and live_at(k, j)]
        if not live:
            break
        accepted = False
        for k in sorted(live, key=lambda k: (-tens[k].nbytes, k)):  # offload: largest first
            if not tens[k].contiguous:
                why_not[k] = "not contiguous (and recompute not offered)"
                continue
            trial = schedule(off | {k}, rec)
            if trial.d2h[k][1] > (times[j - 1] if j else -math.inf):
                why_not[k] = "its copy cannot end before the peak"
                continue
            if k in trial.late or trial.late - sched.late:
                why_not[k] = "no backward event lets its reload (or another's) be back before its use"
                continue
            c = curve(trial)
            if c[j] < peak and max(c) <= peak:
                off.add(k)
                sched, cur, accepted = trial, c, True
                break
            if trial.h2d[k][1] < times[j]:
                why_not[k] = "its reload must be issued before the peak to be back in time"
            else:
                why_not[k] = "would not lower the peak (it would delay the others' copies or reloads)"
        if not accepted and recompute:
            recs = [k for k in live if tens[k].recompute_ms is not None]
            for k in sorted(recs, key=lambda k: (tens[k].recompute_ms / max(tens[k].nbytes, 1), k)):
                if spent + tens[k].recompute_ms > cost_limit:
                    why_not[k] = f"recompute ({tens[k].recompute_ms:.2f} ms) is past the step-time limit"
                    continue
                trial = schedule(off, rec | {k})
                c = curve(trial)
                if c[j] < peak and max(c) <= peak:
                    rec.add(k)
                    spent += tens[k].recompute_ms
                    sched, cur, accepted = trial, c, True
                    break
        if not accepted:
            break

    j_after = max(range(len(cur)), key=lambda i: (cur[i], -i))
    h2d_times, h_free = {}, -math.inf  # reloads run in the order they are issued
    for k in sorted(off, key=lambda k: (sched.h2d[k][1], tens[k].used_ms, k)):
        start = max(sched.h2d[k][1], h_free)
        h2d_times[k] = (start, start + tens[k].nbytes / h2d_bpms)
        h_free = h2d_times[k][1]
    decisions = {}
    for k, t in enumerate(tens):
        d = TensorDecision(t.key, t.role, t.nbytes, KEEP, "", t.where)
        if k in off:
            d.action = OFFLOAD
            d.d2h_start_ms, d.d2h_end_ms = sched.d2h[k]
            d.reload_event = sched.h2d[k][0]
            d.h2d_start_ms, d.h2d_end_ms = h2d_times[k]
            d.why = (f"live at the peak; its memory is free {d.d2h_end_ms:.2f}-{sched.h2d[k][1]:.2f} ms, reload "
                     f"issued at backward event {d.reload_event}, back {t.used_ms - d.h2d_end_ms:.2f} ms before its use")
        elif k in rec:
            d.action, d.cost_ms = RECOMPUTE, t.recompute_ms
            d.why = (f"live at the peak, no copy window; recomputed in backward (~{t.recompute_ms:.2f} ms) "
                     "within the step-time limit")
        else:
            d.why = fixed.get(k) or why_not.get(k) or (
                "not live at the peak" if not live_at(k, peak_j) else "the peak did not need it")
        decisions[t.key] = d
    return MeasuredPlan(decisions, peak_b, cur[j_after], times[peak_j], times[j_after], d2h_gbps, h2d_gbps,
                        profile.step_ms, spent, cost_limit, why="planned" if tens else "no saved tensors")


def events_renumbered(plan: MeasuredPlan, profile: MemoryProfile) -> MeasuredPlan:
    """The plan's reload events counted as the next steps will see them: backward events
    are the first uses of the saved tensors the scheduler holds, and a recomputed tensor is
    not saved, so each event index drops by the recomputed tensors first used before it."""
    rec_uses = sorted(t.used_ms for t in profile.tensors
                      if (d := plan.decisions.get(t.key)) is not None and d.action == RECOMPUTE)
    if not rec_uses:
        return plan
    events = list(profile.bwd_events)
    for d in plan.decisions.values():
        if d.reload_event is not None:
            d.reload_event -= bisect.bisect_right(rec_uses, events[d.reload_event] + 1e-9)
            d.reload_event = max(d.reload_event, 0)
    return plan
