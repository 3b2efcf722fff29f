"""The `auto` offload planner: pure Python, from a profile of one training step.

Input (`StepProfile`): per layer in forward order, when its forward starts and ends,
when its backward starts, and the tensors it saves (role, bytes, rows, when each is
ready to copy, whether it is held elsewhere, what recomputing it would cost); the link
bandwidths; the policy.  Output (`StepPlan`): per saved tensor keep / offload /
partial (a leading chunk of rows) / recompute, with the expected copy times and the
reason, and per layer the layer whose backward start issues its reloads.

The window.  A copy to the CPU frees memory only once it has finished, and memory
peaks when the backward starts, so every copy must end before the forward does
(`overlap_fraction` of it).  Copies run one after another on one stream, in the order
the tensors are saved; a tensor saved in layer i may copy during the forward of the
layers after i (the window is pooled over the whole forward).  Taking every candidate
as soon as it is ready keeps the link busy whenever there is work, which moves the
most bytes by the deadline; the tensor that crosses the deadline is offloaded in part
(a leading chunk of at least 1/16 of it and `min_tensor_bytes`) so the window is filled.

Reloads.  Reloads run in backward order on the other stream; layer i's must be back
before its backward starts (planned at `overlap_fraction` of the link bandwidth).
Going from layer 0 up, each reload gets the latest start that keeps it and the ones
after it on time; it is issued at the backward start of the last layer to begin at or
before that time (as late as possible: least memory).
A reload that could not be on time even if issued when the backward starts is cut
back (its layer offloads less) and the window is filled again.

Keep, offload or recompute.  Offload costs no step time when it fits the windows.
If candidates are left on the GPU once the window is full, recomputable tensors
(postact) are recomputed, cheapest per byte first, while the added time stays within
`max_step_cost` of the step; the window is then filled with the others, and a
recompute that the window could have absorbed is dropped again.  The kept tail of a
partial tensor is copied into a fresh buffer on offload and back on reload; that time
counts against the same limit.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

KEEP, OFFLOAD, PARTIAL, RECOMPUTE = "keep", "offload", "partial", "recompute"
MIB = 1 << 20


def _b(n: float) -> str:
    """Bytes in a readable unit."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


@dataclass(frozen=True)
class TensorProfile:
    role: str
    nbytes: int
    rows: int = 1  # the leading dimension: a partial offload moves a leading chunk of rows
    ready_ms: float = 0.0  # when the tensor exists (its copy may start), ms since the step started
    held: bool = False  # also held outside the saved set (a leaf input): offloading frees nothing
    recompute_ms: float | None = None  # added step time if recomputed in backward; None: cannot be
    contiguous: bool = True  # only a contiguous tensor is copied


@dataclass(frozen=True)
class LayerProfile:
    index: int
    fwd_start_ms: float
    fwd_end_ms: float
    bwd_start_ms: float
    tensors: tuple = ()

    @property
    def fwd_ms(self) -> float:
        return self.fwd_end_ms - self.fwd_start_ms


@dataclass(frozen=True)
class StepProfile:
    layers: tuple  # LayerProfile, forward order
    bwd_start_ms: float  # when the backward starts (the forward's end)
    step_ms: float

    @property
    def fwd_start_ms(self) -> float:
        return self.layers[0].fwd_start_ms if self.layers else 0.0

    @property
    def fwd_ms(self) -> float:
        return self.bwd_start_ms - self.fwd_start_ms

    @classmethod
    def from_layer_times(cls, fwd_ms, bwd_ms, tensors, *, gap_ms=0.0, loss_ms=0.0, indices=None, ready="end"):
        """A profile laid out from per-layer times (a number for every layer or one per
        layer): forwards one after another with `gap_ms` between them (other layers'
        work), `loss_ms` before the backward, backwards in reverse order with the same
        gaps.  `tensors[i]` lists layer i's TensorProfiles, whose ready_ms counts from
        the layer's start; with ready="end" they count as ready when the layer ends."""
        n = len(tensors)
        per = lambda v: list(v) if isinstance(v, (list, tuple)) else [v] * n
        fwd, bwd, gap = per(fwd_ms), per(bwd_ms), per(gap_ms)
        if not (len(fwd) == len(bwd) == len(gap) == n):
            raise ValueError("from_layer_times: one time per layer")
        indices = list(indices) if indices is not None else list(range(n))
        t, starts = 0.0, []
        for i in range(n):
            starts.append(t)
            t += fwd[i] + (gap[i] if i < n - 1 else 0.0)
        bwd_start = t + loss_ms
        b, bstarts = bwd_start, [0.0] * n
        for i in reversed(range(n)):
            bstarts[i] = b
            b += bwd[i] + (gap[i - 1] if i > 0 else 0.0)
        layers = []
        for i in range(n):
            ts = tuple(dataclasses.replace(tp, ready_ms=starts[i] + (fwd[i] if ready == "end" else tp.ready_ms))
                       for tp in tensors[i])
            layers.append(LayerProfile(indices[i], starts[i], starts[i] + fwd[i], bstarts[i], ts))
        return cls(tuple(layers), bwd_start, b)


@dataclass
class TensorPlan:
    layer: int
    role: str
    occurrence: int  # the k-th tensor of this role the layer saves
    nbytes: int
    rows: int
    action: str
    why: str
    offload_bytes: int = 0
    offload_rows: int = 0
    d2h_start_ms: float | None = None
    d2h_end_ms: float | None = None
    cost_ms: float = 0.0


@dataclass
class LayerPlan:
    index: int
    fwd_ms: float
    tensors: list = field(default_factory=list)
    reload_at: int | None = None  # the layer whose backward start issues this layer's reloads
    h2d_start_ms: float | None = None
    h2d_end_ms: float | None = None
    bwd_start_ms: float = 0.0
    why: str = ""

    @property
    def offload_bytes(self) -> int:
        return sum(t.offload_bytes for t in self.tensors)

    @property
    def recompute_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors if t.action == RECOMPUTE)

    @property
    def roles(self) -> tuple:
        """Roles offloaded (whole or in part) in this layer."""
        return tuple(dict.fromkeys(t.role for t in self.tensors if t.offload_bytes))

    def decision(self, role: str, occurrence: int):
        for t in self.tensors:
            if t.role == role and t.occurrence == occurrence:
                return t
        return None


@dataclass
class StepPlan:
    layers: dict  # index -> LayerPlan
    d2h_gbps: float
    h2d_gbps: float
    fwd_ms: float
    step_ms: float
    deadline_ms: float
    cost_ms: float
    cost_limit_ms: float
    saved_bytes: int  # what the layers save (resident when the backward starts without offload)
    why: str = ""

    @property
    def offload_bytes(self) -> int:
        return sum(lp.offload_bytes for lp in self.layers.values())

    @property
    def recompute_bytes(self) -> int:
        return sum(lp.recompute_bytes for lp in self.layers.values())

    @property
    def resident_bytes(self) -> int:
        """Saved bytes still on the GPU when the backward starts."""
        return self.saved_bytes - self.offload_bytes - self.recompute_bytes

    @property
    def link_bound_bytes(self) -> int:
        """What the link could carry during the forward."""
        return int(self.d2h_gbps * 1e6 * self.fwd_ms)

    def describe(self) -> str:
        """The plan as a table: per layer the roles and what happens to them, bytes,
        expected copy times, where its reloads are issued, and why."""
        lb = self.link_bound_bytes
        head = [f"offload plan: forward {self.fwd_ms:.2f} ms, step {self.step_ms:.2f} ms, link {self.d2h_gbps:.1f} GB/s "
                f"to CPU / {self.h2d_gbps:.1f} GB/s back; link-bound {_b(lb)}, planned offload "
                f"{_b(self.offload_bytes)} ({self.offload_bytes / lb:.0%} of it) + recompute "
                f"{_b(self.recompute_bytes)}; saved {_b(self.saved_bytes)} -> resident at backward "
                f"start {_b(self.resident_bytes)}; added time {self.cost_ms:.2f} ms (limit {self.cost_limit_ms:.2f})"
                if lb else f"offload plan: {self.why}",
                "",
                "| layer | fwd ms | tensors (role: action) | offload | recompute | D2H ms (from-to) | reload at | H2D ms (from-to, needed at) | why |",
                "|---|---|---|---|---|---|---|---|---|"]
        rows = []
        for i, lp in sorted(self.layers.items()):
            acts = ", ".join(f"{t.role}: {t.action}" + (f" {t.offload_rows}/{t.rows} rows" if t.action == PARTIAL else "")
                             for t in lp.tensors) or "-"
            d2h = [t for t in lp.tensors if t.d2h_start_ms is not None]
            d2h_s = (f"{sum(t.d2h_end_ms - t.d2h_start_ms for t in d2h):.2f} ({min(t.d2h_start_ms for t in d2h):.1f}-"
                     f"{max(t.d2h_end_ms for t in d2h):.1f})") if d2h else "-"
            h2d_s = (f"{lp.h2d_end_ms - lp.h2d_start_ms:.2f} ({lp.h2d_start_ms:.1f}-{lp.h2d_end_ms:.1f}, "
                     f"{lp.bwd_start_ms:.1f})") if lp.h2d_start_ms is not None else "-"
            whys = "; ".join(dict.fromkeys([lp.why] + [f"{t.role}: {t.why}" for t in lp.tensors if t.why] if lp.why else
                                           [f"{t.role}: {t.why}" for t in lp.tensors if t.why]))
            rows.append(f"| {i} | {lp.fwd_ms:.2f} | {acts} | {_b(lp.offload_bytes)} | {_b(lp.recompute_bytes)} | "
                        f"{d2h_s} | {lp.reload_at if lp.reload_at is not None else '-'} | {h2d_s} | {whys} |")
        return "\n".join(head + rows)


# ---------------------------------------------------------------------- planning
@dataclass
class _Cand:
    layer_pos: int
    t_pos: int
    tp: TensorProfile
    cap: int  # most bytes this tensor may offload (cut back when its reload would be late)


def plan_step(profile: StepProfile, *, d2h_gbps: float, h2d_gbps: float, roles=None, min_tensor_bytes: int = 0,
              layer_budget_bytes: int | None = None, offload_last_layer: bool = False, overlap_fraction: float = 0.97,
              max_step_cost: float = 0.03, recompute: bool = True, partial: bool = True,
              device_gbps: float = 1000.0) -> StepPlan:
    """Plan one step (see the module docstring).  `roles`: the roles auto may act on
    (None: all)."""
    layers = list(profile.layers)
    n = len(layers)
    d2h_bpms, dev_bpms = d2h_gbps * 1e6, device_gbps * 1e6
    h2d_bpms = h2d_gbps * 1e6 * overlap_fraction  # reloads planned with the same margin
    deadline = profile.fwd_start_ms + overlap_fraction * profile.fwd_ms
    cost_limit = max_step_cost * profile.step_ms
    saved = sum(tp.nbytes for lp in layers for tp in lp.tensors)

    # who may move at all, and the reason for those that may not
    fixed: dict = {}  # (layer_pos, t_pos) -> why kept
    offloadable, recomputable = [], []
    for li, lp in enumerate(layers):
        for ti, tp in enumerate(lp.tensors):
            key = (li, ti)
            if roles is not None and tp.role not in roles:
                fixed[key] = "role not in the policy's roles"
                continue
            if recompute and tp.recompute_ms is not None:
                recomputable.append(key)
            if tp.held:
                fixed[key] = "held outside the saved tensors (a leaf input): offloading frees nothing"
            elif not tp.contiguous:
                fixed[key] = "not contiguous"
            elif tp.nbytes < max(min_tensor_bytes, 1):
                fixed[key] = f"below min_tensor_bytes ({min_tensor_bytes})"
            elif li == n - 1 and not offload_last_layer:
                fixed[key] = "last layer: its backward comes first"
            else:
                offloadable.append(key)
    order = sorted(offloadable, key=lambda k: (layers[k[0]].tensors[k[1]].ready_ms, k))

    def fill(recomputed: set, caps: dict, allow_partial: bool):
        """Greedy D2H fill: {key: (bytes, rows, start, end, why)} and the keys left."""
        out, t_free, used = {}, -math.inf, {}
        for key in order:
            if key in recomputed:
                continue
            tp = layers[key[0]].tensors[key[1]]
            row_bytes = tp.nbytes // max(tp.rows, 1)
            cap = min(tp.nbytes, caps.get(key, tp.nbytes))
            if layer_budget_bytes is not None:
                cap = min(cap, layer_budget_bytes - used.get(key[0], 0))
            start = max(tp.ready_ms, t_free)
            room = (deadline - start) * d2h_bpms
            take = min(cap, room)
            if take >= tp.nbytes:
                nb, rows, why = tp.nbytes, tp.rows, ""
            elif allow_partial and row_bytes > 0 and take >= max(min_tensor_bytes, tp.nbytes / 16, 1):
                rows = int(take // row_bytes)
                nb = rows * row_bytes
                why = ("the leading rows fill the window" if room <= cap else
                       "layer budget" if layer_budget_bytes is not None and cap == layer_budget_bytes - used.get(key[0], 0)
                       else "cut back so its reload is back in time")
                if rows <= 0 or nb < max(min_tensor_bytes, tp.nbytes / 16, 1):
                    continue
            else:
                continue
            end = start + nb / d2h_bpms
            out[key] = (nb, rows, start, end, why)
            t_free = end
            used[key[0]] = used.get(key[0], 0) + nb
        return out

    def reloads(chosen: dict):
        """(per layer pos: (trigger pos, start, end)), per layer pos: bytes it is over."""
        per_layer = {}
        for (li, _), v in chosen.items():
            per_layer[li] = per_layer.get(li, 0) + v[0]
        first_bwd = min((lp.bwd_start_ms for lp in layers), default=0.0)
        latest, nxt, over = {}, math.inf, {}
        for li in range(n):  # backward order ends at layer 0: go from there up
            if li not in per_layer:
                continue
            dur = per_layer[li] / h2d_bpms
            finish = min(layers[li].bwd_start_ms, nxt)
            s = finish - dur
            if s < first_bwd - 1e-9:
                over[li] = int(math.ceil((first_bwd - s) * h2d_bpms))
                s = first_bwd
            latest[li] = s
            nxt = s
        sched, h_free = {}, -math.inf
        for li in sorted(latest, reverse=True):
            trig = [lj for lj in range(li + 1, n) if layers[lj].bwd_start_ms <= latest[li] + 1e-9]
            tj = min(trig) if trig else n - 1
            start = max(layers[tj].bwd_start_ms, h_free)
            end = start + per_layer[li] / h2d_bpms
            sched[li] = (tj, start, end)
            h_free = end
        return sched, over

    def cut(chosen: dict, over: dict, caps: dict) -> dict:
        """Cut back the lowest layer whose reload is late (the layers above it are late
        partly because of it), from its last-saved tensor."""
        caps = dict(caps)
        li = min(over)
        extra = over[li]
        for key in sorted((k for k in chosen if k[0] == li), key=lambda k: -k[1]):
            if extra <= 0:
                break
            nb = chosen[key][0]
            caps[key] = max(0, nb - extra)
            extra -= nb - caps[key]
        return caps

    def solve(recomputed: set, allow_partial: bool):
        caps = {}
        for _ in range(8 * n + 8):
            chosen = fill(recomputed, caps, allow_partial)
            sched, over = reloads(chosen)
            if not over:
                return chosen, sched
            caps = cut(chosen, over, caps)
        while over:  # not settled: drop the late layers' offload
            chosen = {k: v for k, v in chosen.items() if k[0] not in over}
            sched, over = reloads(chosen)
        return chosen, sched

    def tail_cost(chosen):
        return sum(4 * (layers[k[0]].tensors[k[1]].nbytes - v[0]) / dev_bpms for k, v in chosen.items()
                   if v[0] < layers[k[0]].tensors[k[1]].nbytes)

    def moved(chosen, recomputed):
        return sum(v[0] for v in chosen.values()) + sum(layers[k[0]].tensors[k[1]].nbytes for k in recomputed)

    allow_partial = partial
    chosen, sched = solve(set(), allow_partial)
    if allow_partial and tail_cost(chosen) > cost_limit:
        allow_partial = False
        chosen, sched = solve(set(), False)
    recomputed: set = set()
    left = [k for k in offloadable if chosen.get(k, (0,))[0] < layers[k[0]].tensors[k[1]].nbytes]
    if recomputable and (left or any(k in fixed for k in recomputable)):
        # kept ones first (each adds its bytes), then offloaded ones (frees link for others)
        byte_cost = lambda k: layers[k[0]].tensors[k[1]].recompute_ms / max(layers[k[0]].tensors[k[1]].nbytes, 1)
        ranked = sorted(recomputable, key=lambda k: (k in chosen, byte_cost(k), -k[0]))
        spent = tail_cost(chosen)
        for k in ranked:
            c = layers[k[0]].tensors[k[1]].recompute_ms
            if spent + c <= cost_limit:
                recomputed.add(k)
                spent += c
        if recomputed:
            chosen, sched = solve(recomputed, allow_partial)
            best = moved(chosen, recomputed)
            for k in sorted(recomputed, key=lambda k: -byte_cost(k)):  # drop what the window absorbs
                trial = recomputed - {k}
                c2, s2 = solve(trial, allow_partial)
                if moved(c2, trial) >= best:
                    recomputed, chosen, sched = trial, c2, s2
            if tail_cost(chosen) + sum(layers[k[0]].tensors[k[1]].recompute_ms for k in recomputed) > cost_limit:
                chosen, sched = solve(recomputed, False)

    # the plan
    out_layers, total_cost = {}, 0.0
    for li, lp in enumerate(layers):
        occ: dict = {}
        lplan = LayerPlan(lp.index, lp.fwd_ms, bwd_start_ms=lp.bwd_start_ms)
        for ti, tp in enumerate(lp.tensors):
            k = occ.get(tp.role, 0)
            occ[tp.role] = k + 1
            key = (li, ti)
            if key in recomputed:
                why = f"recomputed in backward (~{tp.recompute_ms:.2f} ms), within the step-time limit"
                t = TensorPlan(lp.index, tp.role, k, tp.nbytes, tp.rows, RECOMPUTE, why, cost_ms=tp.recompute_ms)
            elif key in chosen:
                nb, rows, s, e, why = chosen[key]
                action = OFFLOAD if nb == tp.nbytes else PARTIAL
                cost = 4 * (tp.nbytes - nb) / dev_bpms if action == PARTIAL else 0.0
                t = TensorPlan(lp.index, tp.role, k, tp.nbytes, tp.rows, action, why, nb, rows, s, e, cost)
            else:
                why = fixed.get(key)
                if why is None:
                    why = "window full" if key in offloadable else "kept"
                t = TensorPlan(lp.index, tp.role, k, tp.nbytes, tp.rows, KEEP, why)
            total_cost += t.cost_ms
            lplan.tensors.append(t)
        if li in sched:
            tj, s, e = sched[li]
            lplan.reload_at, lplan.h2d_start_ms, lplan.h2d_end_ms = layers[tj].index, s, e
            lplan.why = (f"reload issued at layer {layers[tj].index}'s backward, back "
                         f"{lp.bwd_start_ms - e:.2f} ms before it is needed")
        out_layers[lp.index] = lplan
    return StepPlan(out_layers, d2h_gbps, h2d_gbps, profile.fwd_ms, profile.step_ms, deadline, total_cost, cost_limit,
                    saved, why="planned" if layers else "no layers")


def plan_for_policy(profile: StepProfile, policy) -> StepPlan:
    """plan_step with an OffloadPolicy's settings (its bandwidths must be known)."""
    return plan_step(profile, d2h_gbps=policy.d2h_gbps, h2d_gbps=policy.h2d_gbps, roles=policy.roles,
                     min_tensor_bytes=policy.min_tensor_bytes, layer_budget_bytes=policy.layer_budget_bytes,
                     offload_last_layer=policy.offload_last_layer, overlap_fraction=policy.overlap_fraction,
                     max_step_cost=policy.max_step_cost, recompute=policy.recompute, partial=policy.partial,
                     device_gbps=policy.device_gbps)
