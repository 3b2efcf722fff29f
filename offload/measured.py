"""Offload `auto` planned from the measured peak: `MeasuredOffloadScheduler`.

    sched = MeasuredOffloadScheduler()                  # OffloadPolicy(auto=True, peak="measured")
    with sched.step():                                  # the whole forward, loss included
        loss = model(x)                                 # our ops still mark their layers
    loss.backward()
    sched.end_step()                                    # profiles, then plans (sched.plan.describe())

Capture.  While `step()` is open, saved_tensors_hooks see every tensor autograd saves in
the forward: ours (tagged by role) and every other module's (attention, norms, the loss:
role "other").  A tensor is a candidate when it has at least `capture_min_elements`
elements (or is tagged by our ops and has `min_tensor_bytes`) and is not a parameter or
protected; one tensor saved by several ops is one candidate, and so is another view of a
captured tensor's whole storage (saved while that tensor lives: it is rebuilt from it).  It is named by where it was
saved ("layer i" inside our op's layer i, "after layer i" between them), its role and its
occurrence there, so the next steps find it again.  Without `step()`, each `layer()` opens
the capture itself and only our ops' tensors are seen.

Profile (the first max(`calibration_steps`, 2) steps: nothing moves).  Memory steps (all but
the last): at every capture and every first use in backward of a captured tensor, the highest
bytes allocated since the previous record (`torch.cuda.max_memory_allocated`, whose peak
statistics it resets at each record); whether each tensor's memory is also held elsewhere
(another tensor or the caller shares its storage) is checked when the backward starts.  The
last, a timing step, records only a CUDA event at the same points: the memory probes cost
host time (each builds the allocator's statistics dict in Python; ~70 a step), which
stretches the GPU timeline where the host is the bottleneck, so times taken in a memory step promise copy windows the
real step does not have (on the H200 the dense Nemotron-H profile ran 28.3 ms for a 20.3 ms
step, and its 577 MiB of copies, planned to overlap, added 10.9 ms).  The plan takes the
memory of the last memory step and the times of the timing step (the two must capture the
same tensors in the same order, else profiling starts again); offload/measured_planner.py
plans keep / offload / recompute (`sched.plan`, `.describe()`).

Planned steps.  A tensor planned for offload is copied to pinned memory as it is saved
(OffloadScheduler's streams and pool); backward counts the first uses of captured tensors
and the use numbered as planned issues each reload; a tensor used before its reload was
issued is reloaded at once.  Our ops ask `recompute_requested` as before; a step whose saved
tensors differ from the plan keeps what differs and profiles again.  Without CUDA (tests,
`offload_cpu_tensors=True`) the clock is the host's and the memory is the bytes of the
captured tensors alive, unless `memory_probe` is given.

Exposed copy time.  On a GPU, each planned step records an event on the compute stream
before and after it waits for a reload; `exposed_ms()` is the total wait of the latest step
(what the copies actually cost the compute stream, against the plan's prediction).  When a
planned step's waits (read one step later, once its events are done: no host sync) exceed
the step-time limit the recompute left, the scheduler replans from the same profile with the
link rates scaled down by planned copy time / (planned copy time + wait), at most
`MAX_LINK_REPLANS` times (`link_replans`; the plan's `why` says so).
"""
from __future__ import annotations

import contextlib
import math
import weakref
from dataclasses import dataclass

import torch
from torch.utils.weak import WeakIdKeyDictionary

from . import measured_planner as _mp
from .errors import OffloadArgumentError
from .policy import OffloadPolicy
from .roles import RECOMPUTABLE, is_protected, role_of
from .scheduler import LayerStats, OffloadScheduler, _active

_use_count = getattr(torch._C, "_storage_Use_Count", None)
MAX_LINK_REPLANS = 3


@dataclass(eq=False)
class _Held:
    """A captured tensor kept on the device (profiling, or planned to stay)."""

    index: int  # its record in this step
    tensor: torch.Tensor
    used: bool = False


@dataclass(eq=False)
class _Moved:
    """A captured tensor offloaded: OffloadScheduler's handle for the copy."""

    index: int
    off: object  # scheduler._Offloaded
    used: bool = False


@dataclass(eq=False)
class _View:
    """Another view of a captured tensor's storage (e.g. the reshaped operand of a batched
    matmul): rebuilt from that tensor's handle, so offloading it frees the memory."""

    base: object  # _Held or _Moved
    shape: torch.Size
    stride: tuple
    offset: int


class MeasuredOffloadScheduler(OffloadScheduler):
    _measured = True

    def __init__(self, policy: OffloadPolicy | None = None, *, memory_probe=None, **kwargs):
        policy = policy if policy is not None else OffloadPolicy(auto=True, peak="measured")
        if not isinstance(policy, OffloadPolicy) or not policy.auto or policy.peak != "measured":
            raise OffloadArgumentError("MeasuredOffloadScheduler: policy must be an OffloadPolicy with auto=True and "
                                       f"peak='measured', got {policy!r}")
        if memory_probe is not None and not callable(memory_probe):
            raise OffloadArgumentError(f"MeasuredOffloadScheduler: memory_probe must be callable, got {memory_probe!r}")
        super().__init__(policy, **kwargs)
        self.memory_probe = memory_probe
        self.plan: _mp.MeasuredPlan | None = None
        self.profile: _mp.MemoryProfile | None = None
        self._cuda_memory = memory_probe is None and self._use_events
        self._forward_open = False
        self._hooks = None
        self._reloads: dict = {}  # backward event -> keys whose reload it issues
        self._profiled = 0  # memory steps profiled since the last plan
        self._memory_step: dict | None = None  # the last memory step's samples and tensors
        self._waits_done: list = []  # (before, after) compute-stream events around reload waits, last step
        self._waits_unread: list = []  # the last planned step's waits, checked at the next end_step
        self.link_scale = 1.0  # the link rates the plan uses, against the measured ones
        self.link_replans = 0
        self._last_moved = 0
        self._new_measured_step()

    def _new_measured_step(self):
        # profiling: this step records times only (its memory came from the step before)
        self._timing_step = (self.plan is None and self._memory_step is not None
                             and self._profiled >= max(self.policy.calibration_steps - 1, 1))
        self._waits: list = []  # (before, after) events around the compute stream's reload waits
        self._origin = None  # the step's first mark
        self._where = "before the first layer"
        self._occ_at: dict = {}  # (where, role) -> tensors of it seen
        # all weak: what autograd saved must go when the graph lets it go
        self._seen = WeakIdKeyDictionary()  # tensor -> weakref to its handle, this step
        self._storages: dict = {}  # (device, storage address) -> (weakref to the storage, to the handle, dtype)
        self._captured: list = []  # per captured tensor: key, role, nbytes, ..., handle weakref
        self._samples: list = []  # (tag, mark, bytes or None in the timing step); tag ("start",), ("save", i), ("use", i)
        self._events: list = []  # marks of the backward events (profiling)
        self._event_count = 0
        self._moved = weakref.WeakValueDictionary()  # key -> _Moved, this step
        self._moved_used: dict = {}  # key -> [layer, used] of every tensor moved this step
        self._asked: set = set()
        self._live_bytes = 0  # the captured tensors alive (memory without CUDA)
        self._checked_held = False
        self.moved_bytes = 0

    # ------------------------------------------------------------------ marking the step
    def start_forward(self):
        """Open the capture for the step's forward (step() does this)."""
        if self._forward_open:
            raise RuntimeError("offload: start_forward() called twice without stop_forward()")
        self._forward_open = True
        self._open_hooks()

    def stop_forward(self):
        if self._forward_open:
            self._forward_open = False
            self._close_hooks()

    @contextlib.contextmanager
    def step(self):
        """The step's forward: every tensor autograd saves inside is a candidate."""
        self.start_forward()
        try:
            yield self
        finally:
            self.stop_forward()

    def _open_hooks(self):
        if self._origin is None:
            self._origin = self._mark()
            if self.profiling:
                self._sample(("start",))
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack_any, self._unpack_any)
        self._hooks.__enter__()

    def _close_hooks(self):
        hooks, self._hooks = self._hooks, None
        hooks.__exit__(None, None, None)

    @contextlib.contextmanager
    def layer(self, index: int | None = None):
        """Our op's layer: names where its tensors are saved and answers its recompute
        question; opens the capture itself when no step() is open."""
        if self._layer is not None:
            raise RuntimeError(f"offload: a layer marked inside layer {self._layer}; layers do not nest")
        if index is not None and (isinstance(index, bool) or not isinstance(index, int) or index < 0):
            raise OffloadArgumentError(f"OffloadScheduler.layer: index must be an int >= 0 or None, got {index!r}")
        idx = self._next_layer if index is None else index
        if self._num_layers is not None and idx >= self._num_layers:
            raise OffloadArgumentError(f"OffloadScheduler.layer: layer {idx} is beyond num_layers={self._num_layers}; "
                                       "call end_step() after each backward")
        self._next_layer, self._layer, self._where = idx + 1, idx, f"layer {idx}"
        st = self.stats.setdefault(idx, LayerStats(idx))
        st.saved_bytes, st.offloaded_bytes, st.reloaded_bytes, st.recomputed_bytes = {}, {}, 0, 0
        own = not self._forward_open
        if own:
            self._open_hooks()
        _active.append(self)
        try:
            yield self
        finally:
            _active.remove(self)
            if own:
                self._close_hooks()
            self._layer, self._where = None, f"after layer {idx}"

    @property
    def profiling(self) -> bool:
        return self.plan is None

    # ------------------------------------------------------------------ samples
    def _now_ms(self, mark) -> float:
        return self._ms(self._origin, mark)

    def _sample(self, tag: tuple):
        """Record the time at `tag` and, in a memory step, the highest bytes allocated since
        the previous sample (the timing step probes no memory: the probes cost host time)."""
        nbytes = None
        if self._timing_step:
            pass
        elif self.memory_probe is not None:
            nbytes = int(self.memory_probe())
        elif self._cuda_memory:
            nbytes = max(torch.cuda.max_memory_allocated(), torch.cuda.memory_allocated())
            torch.cuda.reset_peak_memory_stats()
        else:
            nbytes = self._live_bytes
        self._samples.append((tag, self._mark(), nbytes))

    def _key(self, role: str) -> tuple:
        occ = self._occ_at.get((self._where, role), 0)
        self._occ_at[(self._where, role)] = occ + 1
        return (self._where, role, occ)

    # ------------------------------------------------------------------ hooks
    def _recompute_requested(self, role: str) -> bool:
        if self._layer is None:
            return False
        occ = self._occ_at.get((self._where, role), 0)
        key = (self._where, role, occ)
        if self.plan is None:
            self._asked.add(key)
            return False
        d = self.plan.decision(key)
        if d is not None and d.action == _mp.RECOMPUTE:
            self._occ_at[(self._where, role)] = occ + 1  # the op will not save it
            self.stats[self._layer].recomputed_bytes += d.nbytes
            return True
        return False

    def _captures(self, t: torch.Tensor, role: str, nbytes: int) -> bool:
        if role != "other" and nbytes >= max(self.policy.min_tensor_bytes, 1):
            return True
        return t.numel() >= self.policy.capture_min_elements

    def _pack_any(self, t):
        if not isinstance(t, torch.Tensor) or not self._movable(t) or is_protected(t):
            return t
        ref = self._seen.get(t)
        h = ref() if ref is not None else None
        if h is not None:  # saved by another op already: one candidate, one handle
            return h
        view = self._view_of_captured(t)
        if view is not None:
            self._seen[t] = weakref.ref(view)
            return view
        role = role_of(t) or "other"
        nbytes = t.numel() * t.element_size()
        if not self._captures(t, role, nbytes):
            return t
        key = self._key(role)
        if self._layer is not None:
            st = self.stats[self._layer]
            st.saved_bytes[role] = st.saved_bytes.get(role, 0) + nbytes
        index = len(self._captured)
        if self.plan is None:
            h = _Held(index, t)
            self._captured.append({"key": key, "role": role, "nbytes": nbytes, "where": self._where,
                                  "held": t.is_leaf and t.requires_grad, "contiguous": t.is_contiguous(),
                                  "mark": None, "used": None, "ref": weakref.ref(h)})
            self._live_bytes += nbytes
            weakref.finalize(h, self._freed, nbytes)
            self._sample(("save", index))
            self._captured[-1]["mark"] = self._samples[-1][1]
        else:
            d = self.plan.decision(key)
            self._captured.append({"key": key})
            if d is None or d.nbytes != nbytes:
                self._stale = True  # new shapes or a new tensor: keep it, profile again
                h = _Held(index, t)
            elif d.action == _mp.OFFLOAD and t.is_contiguous():
                layer = self._layer if self._layer is not None else -1
                if self._layer is not None:
                    st = self.stats[self._layer]
                    st.offloaded_bytes[role] = st.offloaded_bytes.get(role, 0) + nbytes
                h = _Moved(index, self._copy_out(t, layer, role, nbytes, nbytes))
                self._moved[key] = h
                self._moved_used[key] = [layer, False]
                self.moved_bytes += nbytes
            else:
                h = _Held(index, t)
        self._seen[t] = weakref.ref(h)
        if t.storage_offset() == 0 and t.is_contiguous() and nbytes == t.untyped_storage().nbytes():
            self._storages[(t.device, t.untyped_storage().data_ptr())] = (weakref.ref(t.untyped_storage()),
                                                                         weakref.ref(h), t.dtype)
        return h

    def _view_of_captured(self, t):
        """A _View when t is a view of the storage of a whole-storage tensor captured this step,
        of the same dtype (the same storage object: torch keeps one Python object per live
        storage, so an address reused by a new storage does not match)."""
        storage = t.untyped_storage()
        entry = self._storages.get((t.device, storage.data_ptr()))
        if entry is None:
            return None
        h = entry[1]()
        if entry[0]() is not storage or h is None or entry[2] != t.dtype:
            return None
        return _View(h, t.shape, t.stride(), t.storage_offset())

    def _freed(self, nbytes: int):
        self._live_bytes -= nbytes

    def _unpack_any(self, h):
        if isinstance(h, _View):
            return self._unpack_any(h.base).as_strided(h.shape, h.stride, h.offset)
        if not isinstance(h, (_Held, _Moved)):
            return h
        if not h.used:
            h.used = True
            if isinstance(h, _Moved):
                self._moved_used[self._captured[h.index]["key"]][1] = True
            self._backward_event(h)
        if isinstance(h, _Held):
            return h.tensor
        if self._use_events and not h.off.assembled:  # the compute stream's wait for the reload, timed
            before = self._mark()
            out = self._materialize(h.off)
            self._waits.append((before, self._mark()))
            return out
        return self._materialize(h.off)

    def _backward_event(self, h):
        if self.plan is None:
            if not self._checked_held and not self._timing_step:
                self._check_held()
            rec = self._captured[h.index]
            self._sample(("use", h.index))
            rec["used"] = self._samples[-1][1]
            self._events.append(rec["used"])
            return
        k = self._event_count
        self._event_count += 1
        for key in self._reloads.get(k, ()):
            m = self._moved.get(key)
            if m is not None:
                self._reload(m.off)

    def _check_held(self):
        """At the backward start: a captured tensor whose storage another tensor (a view,
        the caller's output) also holds frees nothing when offloaded."""
        self._checked_held = True
        if _use_count is None:
            return
        for rec in self._captured:
            h = rec["ref"]()
            if h is not None and not rec["held"]:
                rec["held"] = _frees_nothing(h.tensor)

    # ------------------------------------------------------------------ steps
    def end_step(self):
        """Call after backward: profiles (the calibration steps) or checks the plan held;
        returns {layer: count} of offloaded tensors backward never used (normally {})."""
        self.stop_forward()
        leftover = {}
        for layer, used in self._moved_used.values():
            if not used:
                leftover[layer] = leftover.get(layer, 0) + 1
        if self._stale:
            self.plan, self._stale, self._profiled, self._memory_step = None, False, 0, None
            self._waits_unread, self.link_scale, self.link_replans = [], 1.0, 0
        elif self.plan is not None:
            self._check_waits()
        elif self.plan is None and self._captured and self._events:
            if not self._timing_step:
                self._memory_step = self._memory_record()
                self._profiled += 1
            else:
                self.profile = self._build_profile(self._memory_step)
                self._memory_step, self._profiled = None, 0
                if self.profile is not None:
                    self.plan = self._make_measured_plan(self.profile)
                    self.plans_made += 1
        self._next_layer = 0
        self._last_moved = self.moved_bytes
        self._waits_done = self._waits
        self._new_measured_step()
        return leftover

    def _memory_record(self) -> dict:
        """What a memory step keeps for the plan: its samples' tags and bytes, and its tensors."""
        keep = ("key", "role", "nbytes", "where", "held", "contiguous")
        return {"samples": [(tag, b) for tag, _, b in self._samples], "asked": set(self._asked),
                "tensors": [{k: rec[k] for k in keep} for rec in self._captured]}

    def _build_profile(self, memory: dict) -> _mp.MemoryProfile | None:
        """The memory step's bytes at the timing step's times (this step is the timing step);
        None when the two steps did not capture the same tensors in the same order."""
        tags = [tag for tag, _, _ in self._samples]
        same = [(r["key"], r["nbytes"]) for r in memory["tensors"]] == [(r["key"], r["nbytes"]) for r in self._captured]
        if not same or tags != [tag for tag, _ in memory["samples"]]:
            return None
        end = self._mark()
        if not isinstance(end, float):
            end.synchronize()
        at = {tag: self._now_ms(m) for tag, m, _ in self._samples}
        pol = self.policy
        tensors = []
        for i, rec in enumerate(memory["tensors"]):
            rc = None
            if rec["key"] in memory["asked"] and rec["role"] in RECOMPUTABLE:
                rc = RECOMPUTABLE[rec["role"]] * rec["nbytes"] / (pol.device_gbps * 1e6)
            tensors.append(_mp.SavedTensor(rec["key"], rec["role"], rec["nbytes"], at[("save", i)],
                                           at.get(("use", i), math.inf), rec["held"], rc, rec["contiguous"],
                                           rec["where"]))
        samples = tuple((at[tag], b) for tag, b in memory["samples"])
        return _mp.MemoryProfile(samples, tuple(tensors), self._now_ms(end),
                                 tuple(at[tag] for tag in tags if tag[0] == "use"))

    def exposed_ms(self) -> float:
        """How long the compute stream waited for reloads in the latest planned step with a
        backward (0.0 without a GPU or before a plan); waits for that step's work to finish."""
        total = 0.0
        for before, after in self._waits or self._waits_done:
            after.synchronize()
            total += before.elapsed_time(after)
        return total

    def _check_waits(self):
        """The previous planned step's reload waits (its events are done by now, else not
        checked: no host sync); past the limit the recompute left, replan on a slower link."""
        unread, self._waits_unread = self._waits_unread, self._waits
        if not unread or self.link_replans >= MAX_LINK_REPLANS or not all(a.query() for _, a in unread):
            return
        waited = sum(b.elapsed_time(a) for b, a in unread)
        plan = self.plan
        if waited <= max(plan.cost_limit_ms - plan.cost_ms, 0.0):
            return
        copy_ms = sum(d.d2h_end_ms - d.d2h_start_ms for d in plan.decisions.values() if d.action == _mp.OFFLOAD)
        self.link_scale *= max(copy_ms / (copy_ms + waited), 0.25)
        self.link_replans += 1
        self.plan = self._make_measured_plan(self.profile)
        self.plan.why += (f"; replanned with the link at {self.link_scale:.2f}x its measured rates: a planned step "
                          f"waited {waited:.2f} ms for reloads (limit {plan.cost_limit_ms - plan.cost_ms:.2f} ms)")
        self._waits_unread = []  # waits under the old plan

    def _make_measured_plan(self, profile: _mp.MemoryProfile) -> _mp.MeasuredPlan:
        pol = self.policy
        if pol.d2h_gbps is None or pol.h2d_gbps is None:
            from .bandwidth import measure_link

            d2h, h2d = measure_link()
            pol.d2h_gbps = pol.d2h_gbps or d2h
            pol.h2d_gbps = pol.h2d_gbps or h2d
        plan = _mp.plan_measured(profile, d2h_gbps=pol.d2h_gbps * self.link_scale,
                                 h2d_gbps=pol.h2d_gbps * self.link_scale,
                                 min_tensor_bytes=pol.min_tensor_bytes, max_step_cost=pol.max_step_cost,
                                 recompute=pol.recompute, overlap_fraction=pol.overlap_fraction, roles=pol.roles)
        plan = _mp.events_renumbered(plan, profile)
        self._reloads = plan.reloads_at()
        return plan

    @property
    def step_plan(self):
        """The plan (a MeasuredPlan), under OffloadScheduler's name for it."""
        return self.plan

    @step_plan.setter
    def step_plan(self, v):  # OffloadScheduler.__init__ sets it to None
        if v is not None:
            raise AttributeError("MeasuredOffloadScheduler.step_plan is its measured plan (read only)")

    def offloaded_bytes(self) -> int:
        """Bytes copied out in this step's forward so far, or the last step's before one starts."""
        return self.moved_bytes if self._captured else self._last_moved


def _frees_nothing(t: torch.Tensor) -> bool:
    """Whether dropping our reference to `t` would leave its storage alive: another tensor
    holds the storage, or t is a view of a leaf that requires grad.  (A view whose base the
    caller holds in Python is not seen: torch keeps a base's Python object alive itself.)"""
    base = t._base
    if base is not None and base.is_leaf and base.requires_grad:
        return True
    # references to the storage: t, its base (a view keeps it), the temporary storage object
    return _use_count(t.untyped_storage()._cdata) > 2 + (base is not None)
