"""The activation offload scheduler.

    sched = OffloadScheduler(OffloadPolicy(roles=("preact", "postact")))
    for i, layer in enumerate(layers):
        with sched.layer(i):
            x = layer(x)
    loss.backward()          # reloads run ahead of need
    sched.end_step()

or, for the SReLU MLP, `srelu_mlp(x, w1, w2, offload=sched)` / `SReLUMLP(..., offload=sched)`:
each call is the next layer of the step.

During a layer's forward, saved_tensors_hooks route every tensor autograd saves
through `_pack`: a CUDA tensor that is not protected and that the policy (or, with
`auto`, the step plan) chose is copied to a pinned host buffer on the D2H stream as
soon as its producer has run (the stream waits on an event recorded on the compute
stream), and the GPU tensor is released at once: `record_stream` keeps the caching
allocator from reusing its memory until the copy has finished, so compute never waits.
A partial offload copies a leading chunk of rows and keeps the rest in a fresh buffer;
the reload reassembles them.  In backward, the first use of layer j's saved tensors
starts the reloads planned at j (static policies: layers j .. j - prefetch_layers) on
the H2D stream; the compute stream waits only on the event of the tensor it is about
to use.  Reload buffers are allocated on the compute stream (the H2D stream waits for
that point), so memory goes back to the allocator in the compute stream's order.

`auto`: the first `calibration_steps` steps offload nothing and are profiled (layer
times with CUDA events, what each layer saves, when each tensor is ready); then
offload/planner.py plans the whole step (`sched.step_plan`, `.describe()`).  A step
whose saved tensors differ from the plan (new shapes, new layers) keeps what differs,
and the scheduler profiles again and replans.

CPU tensors pass through untouched, unless `offload_cpu_tensors=True` (for tests on
machines without a GPU): then they are 'offloaded' to another CPU buffer by plain
synchronous copies, through the same bookkeeping.
"""
from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass, field

import torch

from . import planner as _planner
from .errors import OffloadArgumentError
from .policy import OffloadPlan, OffloadPolicy
from .pool import PinnedPool
from .roles import RECOMPUTABLE, is_protected, role_of

_active: list = []  # schedulers with a layer() open, innermost last


def recompute_requested(role: str) -> bool:
    """Asked by an op before it saves a tensor of `role` it could recompute in backward
    instead (srelu_mlp: postact): True when the active scheduler's plan says recompute.
    An op that asks and gets False saves the tensor as usual."""
    if torch.compiler.is_compiling() or not _active:
        return False
    return _active[-1]._recompute_requested(role)


@dataclass(eq=False)  # compared by identity (it holds tensors)
class _Offloaded:
    layer: int
    role: str
    shape: torch.Size
    stride: tuple
    dtype: torch.dtype
    device: torch.device
    nbytes: int
    head_bytes: int  # the leading bytes copied out; the rest is `tail`
    host: torch.Tensor  # uint8 host buffer (pinned for CUDA tensors)
    d2h_done: torch.cuda.Event | None
    tail: torch.Tensor | None = None  # the kept part of a partial offload (uint8, on the device)
    gpu: torch.Tensor | None = None  # reloaded copy (uint8, nbytes)
    h2d_done: torch.cuda.Event | None = None
    assembled: bool = False
    t_d2h: tuple | None = None  # (start, end) events for the timeline
    t_h2d: tuple | None = None


@dataclass(eq=False)
class _Kept:
    """A saved tensor that stays on the GPU, remembered with its layer so its first use
    in backward can start the next layers' reloads."""

    layer: int
    tensor: torch.Tensor


@dataclass
class LayerStats:
    layer: int
    plan: object = None  # OffloadPlan (static) or planner.LayerPlan (auto)
    saved_bytes: dict = field(default_factory=dict)  # role -> bytes autograd saved (unprotected)
    offloaded_bytes: dict = field(default_factory=dict)  # role -> bytes copied out
    reloaded_bytes: int = 0  # bytes copied back
    recomputed_bytes: int = 0  # bytes the op recomputes instead of saving
    fwd_events: tuple | None = None


def _check_count(name, v, lo, none_ok=False):
    if v is None and none_ok:
        return v
    if isinstance(v, bool) or not isinstance(v, int):
        raise OffloadArgumentError(f"OffloadScheduler: {name} must be an int{' or None' if none_ok else ''}, got {v!r}")
    if v < lo:
        raise OffloadArgumentError(f"OffloadScheduler: {name} must be >= {lo}, got {v}")
    return v


class OffloadScheduler:
    def __init__(self, policy: OffloadPolicy | None = None, *, prefetch_layers: int = 1, num_layers: int | None = None,
                 debug_delay_cycles: int = 0, seed: int = 0, record_timeline: bool = False,
                 offload_cpu_tensors: bool = False):
        if policy is not None and not isinstance(policy, OffloadPolicy):
            hint = " (roles go in OffloadPolicy(roles=...))" if isinstance(policy, (str, tuple, list)) else ""
            raise OffloadArgumentError(f"OffloadScheduler: policy must be an OffloadPolicy or None, got "
                                       f"{type(policy).__name__} {policy!r}{hint}")
        _check_count("prefetch_layers", prefetch_layers, 0)
        _check_count("num_layers", num_layers, 1, none_ok=True)
        _check_count("debug_delay_cycles", debug_delay_cycles, 0)
        _check_count("seed", seed, -(1 << 63))
        for name, v in (("record_timeline", record_timeline), ("offload_cpu_tensors", offload_cpu_tensors)):
            if not isinstance(v, bool):
                raise OffloadArgumentError(f"OffloadScheduler: {name} must be True or False, got {v!r}")
        policy = policy or OffloadPolicy(roles=())
        if policy.peak == "measured" and not getattr(self, "_measured", False):
            raise OffloadArgumentError("OffloadScheduler: a policy with peak='measured' is planned by "
                                       "offload.MeasuredOffloadScheduler")
        if policy.auto and not torch.cuda.is_available() and (policy.d2h_gbps is None or policy.h2d_gbps is None):
            raise OffloadArgumentError("OffloadScheduler: an auto policy without a CUDA device to measure the link "
                                       "needs d2h_gbps and h2d_gbps")
        self.policy = policy
        self.prefetch_layers = prefetch_layers
        self._num_layers = num_layers
        self.debug_delay_cycles = debug_delay_cycles  # stress: random sleeps on the copy streams
        self._rng = random.Random(seed)
        self.record_timeline = record_timeline
        self.offload_cpu_tensors = offload_cpu_tensors
        self._use_events = torch.cuda.is_available() and not offload_cpu_tensors
        self.pool = PinnedPool()
        self._d2h: dict = {}
        self._h2d: dict = {}
        self._handles: dict[int, list[_Offloaded]] = {}
        self._prefetched: set[int] = set()
        self._bwd_started: set[int] = set()
        self._layer: int | None = None
        self._next_layer = 0  # the number layer() gives a layer without one, in forward order
        self._layer_plan = None
        self._layer_used = 0
        self._occ: dict = {}  # role -> tensors of that role seen in the current layer
        self.stats: dict[int, LayerStats] = {}
        self.timeline: list = []
        self.bwd_marks: list = []  # (layer, event) when backward first needed the layer (record_timeline)
        # auto
        self.step_plan: _planner.StepPlan | None = None
        self.plans_made = 0
        self._records: list = []  # profiles of the calibration steps
        self._stale = False  # this step's saved tensors differ from the plan
        self._step: dict = self._new_step()

    @staticmethod
    def _new_step() -> dict:
        return {"order": [], "start": {}, "end": {}, "tensors": {}, "asked": {}, "bwd": {}, "bwd_order": []}

    @property
    def num_layers(self) -> int | None:
        return self._num_layers

    @num_layers.setter
    def num_layers(self, v):
        self._num_layers = _check_count("num_layers", v, 1, none_ok=True)

    # ------------------------------------------------------------------ clocks and streams
    def _mark(self):
        if self._use_events:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    @staticmethod
    def _ms(a, b) -> float:
        if isinstance(a, float):
            return (b - a) * 1e3
        return a.elapsed_time(b)

    def _stream(self, table: dict, device) -> torch.cuda.Stream:
        s = table.get(device)
        if s is None:
            s = torch.cuda.Stream(device=device)
            table[device] = s
        return s

    def _maybe_delay(self, stream):
        if self.debug_delay_cycles:
            with torch.cuda.stream(stream):
                torch.cuda._sleep(self._rng.randint(0, self.debug_delay_cycles))

    # ------------------------------------------------------------------ layers
    @property
    def current_layer(self) -> int | None:
        """The layer whose forward is being marked, or None outside layer()."""
        return self._layer

    @property
    def profiling(self) -> bool:
        """auto: this step follows no plan (it is profiled, unless stale)."""
        return self.policy.auto and self.step_plan is None

    @contextlib.contextmanager
    def layer(self, index: int | None = None):
        """Mark one layer's forward; tensors it saves are offloaded per the policy.  Without
        `index` the layer takes the next number in this step's forward order (one past the
        last layer marked; end_step starts again at 0), as `srelu_mlp(..., offload=sched)` and
        the modules' `offload=` do.  Backward prefetches by these numbers, highest first."""
        if self._layer is not None:
            what = "a layer" if index is None else f"layer {index}"
            raise RuntimeError(f"offload: {what} marked inside layer {self._layer}; layers do not nest")
        if index is not None and (isinstance(index, bool) or not isinstance(index, int) or index < 0):
            raise OffloadArgumentError(f"OffloadScheduler.layer: index must be an int >= 0 or None, got {index!r}")
        idx = self._next_layer if index is None else index
        if self._num_layers is not None and idx >= self._num_layers:
            what = f"layer({index})" if index is not None else f"layer() (the next layer, {idx})"
            raise OffloadArgumentError(f"OffloadScheduler.layer: {what} is beyond num_layers={self._num_layers}; "
                                       "layers are numbered 0 .. num_layers-1 (call end_step() after each backward)")
        self._next_layer = idx + 1
        self._layer = idx
        self._layer_used = 0
        self._occ = {}
        # a new forward of this layer: its previous backward is over (also when the
        # caller skipped end_step), so its reload bookkeeping starts afresh
        self._bwd_started.discard(idx)
        self._prefetched.discard(idx)
        st = self.stats.setdefault(idx, LayerStats(idx))
        st.saved_bytes, st.offloaded_bytes, st.reloaded_bytes, st.recomputed_bytes = {}, {}, 0, 0
        self._layer_plan = self._plan_for(idx)
        st.plan = self._layer_plan
        self._handles.setdefault(idx, [])
        step = self._step if self.policy.auto else self._new_step()  # kept across the step only for auto
        step["order"].append(idx)
        step["tensors"][idx] = []
        step["asked"][idx] = set()
        start = self._mark() if (self.policy.auto or self._use_events) else None
        _active.append(self)
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
                yield self
        finally:
            _active.remove(self)
            if start is not None:
                end = self._mark()
                step["start"][idx], step["end"][idx] = start, end
                if not isinstance(start, float):
                    st.fwd_events = (start, end)
            self._layer = None

    def _plan_for(self, index: int):
        pol = self.policy
        if not pol.auto:
            if not pol.offload_last_layer and self._num_layers is not None and index == self._num_layers - 1:
                return OffloadPlan((), "last layer: its activations are needed first in backward")
            return OffloadPlan(pol.static_roles(), "roles")  # budget is applied per tensor in _pack
        if self.step_plan is None:
            return None
        lp = self.step_plan.layers.get(index)
        if lp is None:
            self._stale = True  # a layer the plan has not seen
        return lp

    def _recompute_requested(self, role: str) -> bool:
        if not self.policy.auto or self._layer is None:
            return False
        occ = self._occ.get(role, 0)
        lp = self._layer_plan
        if lp is not None:
            d = lp.decision(role, occ)
            if d is not None and d.action == _planner.RECOMPUTE:
                self._occ[role] = occ + 1  # the op will not save it: the next one is occurrence occ+1
                self.stats[self._layer].recomputed_bytes += d.nbytes
                return True
            return False
        self._step["asked"][self._layer].add((role, occ))
        return False

    def end_step(self):
        """Call after backward: with `auto`, profiles the step (calibration) or replans; returns
        {layer: count} of offloaded tensors that backward never reloaded (normally {})."""
        if self.policy.auto:
            self._finish_auto_step()
        leftover = {i: len(h) for i, h in self._handles.items() if h}
        self._next_layer = 0
        self._handles.clear()
        self._prefetched.clear()
        self._bwd_started.clear()
        self._step = self._new_step()
        return leftover

    def offloaded_bytes(self) -> int:
        """Bytes copied out in the layers' latest forward."""
        return sum(sum(st.offloaded_bytes.values()) for st in self.stats.values())

    def reloaded_bytes(self) -> int:
        return sum(st.reloaded_bytes for st in self.stats.values())

    # ------------------------------------------------------------------ auto: profile and plan
    def _finish_auto_step(self):
        if self._stale:
            self.step_plan, self._records, self._stale = None, [], False
            return
        if self.step_plan is not None:
            return
        rec = self._record_step()
        if rec is None:
            return
        if self._records and self._records[-1]["sig"] != rec["sig"]:
            self._records = []
        self._records.append(rec)
        need = 1 if self.policy.layer_ms is not None else self.policy.calibration_steps
        if len(self._records) >= need:
            self.step_plan = self._make_plan(self._records[-need:])
            self.plans_made += 1
            self._records = []

    def _record_step(self):
        """Durations of one profiled step (None when it cannot be used)."""
        step = self._step
        order = step["order"]
        if not order or len(set(order)) != len(order) or any(i not in step["bwd"] for i in order):
            return None
        end_mark = self._mark()
        if not isinstance(end_mark, float):
            end_mark.synchronize()
        bwd_order = [i for i in step["bwd_order"] if i in order]
        fwd, gap, bwd, ready = {}, {}, {}, {}
        for k, i in enumerate(order):
            s, e = step["start"][i], step["end"][i]
            fwd[i] = self._ms(s, e)
            nxt = step["start"][order[k + 1]] if k + 1 < len(order) else step["bwd"][bwd_order[0]]
            gap[i] = max(self._ms(e, nxt), 0.0)
            ready[i] = [max(self._ms(s, t["mark"]), 0.0) if t["mark"] is not None else fwd[i] for t in step["tensors"][i]]
        for k, i in enumerate(bwd_order):
            nxt = step["bwd"][bwd_order[k + 1]] if k + 1 < len(bwd_order) else end_mark
            bwd[i] = max(self._ms(step["bwd"][i], nxt), 0.0)
        sig = (tuple(order), tuple(bwd_order),
               tuple((i, tuple((t["role"], t["nbytes"]) for t in step["tensors"][i])) for i in order))
        return {"sig": sig, "order": order, "bwd_order": bwd_order, "fwd": fwd, "gap": gap, "bwd": bwd, "ready": ready,
                "tensors": {i: step["tensors"][i] for i in order}}

    def _make_plan(self, records) -> _planner.StepPlan:
        pol = self.policy
        last = records[-1]
        order, bwd_order = last["order"], last["bwd_order"]
        fastest = lambda name, i: min(r[name][i] for r in records)
        tens = {}
        for i in order:
            lst = []
            for k, t in enumerate(last["tensors"][i]):
                rc = None
                if t["asked"] and t["role"] in RECOMPUTABLE:
                    rc = RECOMPUTABLE[t["role"]] * t["nbytes"] / (pol.device_gbps * 1e6)
                lst.append(_planner.TensorProfile(t["role"], t["nbytes"], t["rows"], min(r["ready"][i][k] for r in records),
                                                  t["held"], rc, t["contiguous"]))
            tens[i] = lst
        if pol.layer_ms is not None:
            pairs = pol.layer_ms if len(pol.layer_ms) > 1 else pol.layer_ms * len(order)
            if len(pairs) != len(order):
                raise OffloadArgumentError(f"OffloadPolicy: layer_ms has {len(pairs)} pairs but the step has {len(order)} layers")
            profile = _planner.StepProfile.from_layer_times([p[0] for p in pairs], [p[1] for p in pairs],
                                                            [tens[i] for i in order], indices=order, ready="end")
        else:
            t, layers_t = 0.0, {}
            for i in order:
                f = fastest("fwd", i)
                layers_t[i] = [t, t + f]
                t += f + fastest("gap", i)
            bwd_start, b = t, t
            bstart = {}
            for i in bwd_order:
                bstart[i] = b
                b += fastest("bwd", i)
            layers = tuple(_planner.LayerProfile(
                i, layers_t[i][0], layers_t[i][1], bstart[i],
                tuple(_planner.TensorProfile(tp.role, tp.nbytes, tp.rows, layers_t[i][0] + tp.ready_ms, tp.held,
                                             tp.recompute_ms, tp.contiguous) for tp in tens[i])) for i in order)
            profile = _planner.StepProfile(layers, bwd_start, b)
        if pol.d2h_gbps is None or pol.h2d_gbps is None:
            from .bandwidth import measure_link

            d2h, h2d = measure_link()
            pol.d2h_gbps = pol.d2h_gbps or d2h
            pol.h2d_gbps = pol.h2d_gbps or h2d
        self.profile = profile
        return _planner.plan_for_policy(profile, pol)

    # ------------------------------------------------------------------ hooks
    def _movable(self, t) -> bool:
        return t.is_cuda or (self.offload_cpu_tensors and t.device.type == "cpu")

    def _pack(self, t: torch.Tensor):
        if self._layer is None or not isinstance(t, torch.Tensor) or not self._movable(t):
            return t
        if is_protected(t):
            return _Kept(self._layer, t)
        role = role_of(t) or "other"
        nbytes = t.numel() * t.element_size()
        occ = self._occ.get(role, 0)
        self._occ[role] = occ + 1
        st = self.stats[self._layer]
        st.saved_bytes[role] = st.saved_bytes.get(role, 0) + nbytes
        if self.policy.auto:
            return self._pack_auto(t, role, occ, nbytes)
        plan = self._layer_plan
        if role not in plan.roles or nbytes < self.policy.min_tensor_bytes:
            return _Kept(self._layer, t)
        budget = self.policy.layer_budget_bytes
        if budget is not None and self._layer_used + nbytes > budget:
            return _Kept(self._layer, t)
        if not t.is_contiguous():
            return _Kept(self._layer, t)
        self._layer_used += nbytes
        return self._offload(t, role, nbytes, nbytes)

    def _pack_auto(self, t, role, occ, nbytes):
        lp = self._layer_plan
        if lp is None:
            if not self._stale:  # profiling: what is saved, and when it is ready
                self._step["tensors"][self._layer].append({
                    "role": role, "nbytes": nbytes, "rows": t.shape[0] if t.dim() else 1,
                    "held": t.is_leaf and t.requires_grad, "contiguous": t.is_contiguous(),
                    "asked": (role, occ) in self._step["asked"][self._layer], "mark": self._mark()})
            return _Kept(self._layer, t)
        d = lp.decision(role, occ)
        if d is None or d.nbytes != nbytes:
            self._stale = True  # new shapes: keep it, profile again, replan
            return _Kept(self._layer, t)
        if d.offload_bytes and t.is_contiguous():
            return self._offload(t, role, nbytes, d.offload_bytes)
        return _Kept(self._layer, t)

    def _offload(self, t: torch.Tensor, role: str, nbytes: int, head: int) -> _Offloaded:
        st = self.stats[self._layer]
        st.offloaded_bytes[role] = st.offloaded_bytes.get(role, 0) + head
        h = self._copy_out(t, self._layer, role, nbytes, head)
        self._handles[self._layer].append(h)
        return h

    def _copy_out(self, t: torch.Tensor, layer: int, role: str, nbytes: int, head: int) -> _Offloaded:
        """Start copying t's first `head` bytes to a host buffer (the rest to a fresh device
        buffer) and release t's memory to the allocator once the copy is done."""
        flat = t.reshape(-1).view(torch.uint8)
        tail = flat[head:].clone() if head < nbytes else None  # a fresh buffer: t's block can go
        ev0 = done = None
        if t.is_cuda:
            compute = torch.cuda.current_stream(t.device)
            d2h = self._stream(self._d2h, t.device)
            ready = torch.cuda.Event()
            ready.record(compute)
            host = self.pool.acquire(head)
            d2h.wait_event(ready)
            self._maybe_delay(d2h)
            with torch.cuda.stream(d2h):
                if self.record_timeline:
                    ev0 = torch.cuda.Event(enable_timing=True)
                    ev0.record()
                host[:head].copy_(flat[:head], non_blocking=True)
                done = torch.cuda.Event(enable_timing=self.record_timeline)
                done.record()
            t.record_stream(d2h)  # the allocator keeps the block until the copy is done
        else:
            host = self.pool.acquire(head, pinned=False)
            host[:head].copy_(flat[:head])
        return _Offloaded(layer, role, t.shape, t.stride(), t.dtype, t.device, nbytes, head, host, done, tail,
                          t_d2h=(ev0, done) if self.record_timeline and t.is_cuda else None)

    def _reload(self, h: _Offloaded):
        if h.gpu is not None:
            return
        st = self.stats.get(h.layer)
        if st is not None:
            st.reloaded_bytes += h.head_bytes
        if h.device.type != "cuda":
            gpu = torch.empty(h.nbytes, dtype=torch.uint8, device=h.device)
            gpu[:h.head_bytes].copy_(h.host[:h.head_bytes])
            h.gpu = gpu
            self.pool.release(h.host, None)
            return
        compute = torch.cuda.current_stream(h.device)
        h2d = self._stream(self._h2d, h.device)
        gpu = torch.empty(h.nbytes, dtype=torch.uint8, device=h.device)  # on the compute stream
        alloc_point = torch.cuda.Event()
        alloc_point.record(compute)
        h2d.wait_event(alloc_point)
        h2d.wait_event(h.d2h_done)
        self._maybe_delay(h2d)
        ev0 = None
        with torch.cuda.stream(h2d):
            if self.record_timeline:
                ev0 = torch.cuda.Event(enable_timing=True)
                ev0.record()
            gpu[:h.head_bytes].copy_(h.host[:h.head_bytes], non_blocking=True)
            done = torch.cuda.Event(enable_timing=self.record_timeline)
            done.record()
        h.gpu, h.h2d_done = gpu, done
        if self.record_timeline:
            h.t_h2d = (ev0, done)
        self.pool.release(h.host, done)

    def _reload_trigger(self, idx: int) -> int:
        """The layer whose backward start issues layer idx's reloads."""
        if self.policy.auto and self.step_plan is not None:
            lp = self.step_plan.layers.get(idx)
            if lp is not None and lp.reload_at is not None:
                return lp.reload_at
        return idx + self.prefetch_layers

    def _start_layer_backward(self, layer: int, device):
        """First use of a layer's saved tensors in backward: reload it and the layers whose
        reloads are planned to start here, highest first."""
        if self.record_timeline and device.type == "cuda":
            ev = torch.cuda.Event(enable_timing=True)
            ev.record(torch.cuda.current_stream(device))
            self.bwd_marks.append((layer, ev))
        if self.profiling and not self._stale and layer not in self._step["bwd"]:
            self._step["bwd"][layer] = self._mark()
            self._step["bwd_order"].append(layer)
        self._bwd_started.add(layer)
        for idx in sorted(self._handles, reverse=True):
            if idx > layer or idx in self._prefetched or not self._handles[idx]:
                continue
            if idx == layer or self._reload_trigger(idx) >= layer:
                self._prefetched.add(idx)
                for other in self._handles[idx]:
                    self._reload(other)

    def _unpack(self, h):
        if isinstance(h, _Kept):
            if h.layer not in self._bwd_started:
                self._start_layer_backward(h.layer, h.tensor.device)
            return h.tensor
        if not isinstance(h, _Offloaded):
            return h
        if h.layer not in self._bwd_started:
            self._start_layer_backward(h.layer, h.device)
        out = self._materialize(h)
        if self.record_timeline and h.t_h2d is not None:
            self.timeline.append(h)
        lst = self._handles.get(h.layer)
        if lst is not None and h in lst:
            lst.remove(h)
        # h keeps the reloaded tensor: autograd may unpack a saved tensor more than once,
        # and the handle dies with the graph node like any saved tensor would
        return out

    def _materialize(self, h: _Offloaded) -> torch.Tensor:
        """The offloaded tensor back on its device (reloaded now if no trigger did it yet);
        the compute stream waits for its reload only."""
        self._reload(h)
        if not h.assembled:
            if h.h2d_done is not None:
                torch.cuda.current_stream(h.device).wait_event(h.h2d_done)
            if h.tail is not None:  # the kept rows go after the reloaded ones
                h.gpu[h.head_bytes:].copy_(h.tail)
                h.tail = None
            h.assembled = True
        return h.gpu.view(h.dtype).as_strided(h.shape, h.stride)
