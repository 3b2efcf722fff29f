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
through `_pack`: a CUDA tensor that is not protected, whose role the policy chose and
that is large enough, is copied to a pinned host buffer on the D2H stream as soon as
its producer has run (the stream waits on an event recorded on the compute stream),
and the GPU tensor is released at once: `record_stream` keeps the caching allocator
from reusing its memory until the copy has finished, so compute never waits.
In backward, the first reload of layer L also starts the reloads of the next
`prefetch_layers` layers (L-1, L-2, ...) on the H2D stream; the compute stream waits
only on the event of the tensor it is about to use.  Reload buffers are allocated on
the compute stream (the H2D stream waits for that point), so memory goes back to the
allocator in the compute stream's order.  CPU tensors pass through untouched.
"""
from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass, field

import torch

from .policy import OffloadPlan, OffloadPolicy
from .pool import PinnedPool
from .roles import is_protected, role_of


@dataclass
class _Offloaded:
    layer: int
    role: str
    shape: torch.Size
    stride: tuple
    dtype: torch.dtype
    device: torch.device
    nbytes: int
    host: torch.Tensor  # pinned uint8 buffer
    d2h_done: torch.cuda.Event
    gpu: torch.Tensor | None = None  # reloaded copy
    h2d_done: torch.cuda.Event | None = None
    t_d2h: tuple | None = None  # (start, end) events for the timeline
    t_h2d: tuple | None = None


@dataclass
class _Kept:
    """A saved tensor that stays on the GPU, remembered with its layer so its first use
    in backward can start the next layers' reloads."""

    layer: int
    tensor: torch.Tensor


@dataclass
class LayerStats:
    layer: int
    plan: OffloadPlan | None = None
    saved_bytes: dict = field(default_factory=dict)  # role -> bytes autograd saved (CUDA, unprotected)
    offloaded_bytes: dict = field(default_factory=dict)  # role -> bytes copied out
    fwd_events: tuple | None = None


class OffloadScheduler:
    def __init__(self, policy: OffloadPolicy | None = None, *, prefetch_layers: int = 1, num_layers: int | None = None,
                 debug_delay_cycles: int = 0, seed: int = 0, record_timeline: bool = False):
        self.policy = policy or OffloadPolicy(roles=())
        self.prefetch_layers = prefetch_layers
        self.num_layers = num_layers
        self.debug_delay_cycles = debug_delay_cycles  # stress: random sleeps on the copy streams
        self._rng = random.Random(seed)
        self.record_timeline = record_timeline
        self.pool = PinnedPool()
        self._d2h: dict = {}
        self._h2d: dict = {}
        self._handles: dict[int, list[_Offloaded]] = {}
        self._prefetched: set[int] = set()
        self._bwd_started: set[int] = set()
        self._layer: int | None = None
        self._next_layer = 0  # the number layer() gives a layer without one, in forward order
        self._layer_plan: OffloadPlan | None = None
        self._layer_used = 0
        self.stats: dict[int, LayerStats] = {}
        self.plans: dict[int, OffloadPlan] = {}
        self._calib: dict[int, dict] = {}
        self.timeline: list = []
        self.bwd_marks: list = []  # (layer, event) when backward first needed the layer

    # ------------------------------------------------------------------ streams
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

    @contextlib.contextmanager
    def layer(self, index: int | None = None):
        """Mark one layer's forward; tensors it saves are offloaded per the policy.  Without
        `index` the layer takes the next number in this step's forward order (one past the
        last layer marked; end_step starts again at 0), as `srelu_mlp(..., offload=sched)` and
        the modules' `offload=` do.  Backward prefetches by these numbers, highest first."""
        if self._layer is not None:
            what = "a layer" if index is None else f"layer {index}"
            raise RuntimeError(f"offload: {what} marked inside layer {self._layer}; layers do not nest")
        if index is None:
            index = self._next_layer
        self._next_layer = index + 1
        self._layer = index
        self._layer_used = 0
        # a new forward of this layer: its previous backward is over (also when the
        # caller skipped end_step), so its reload bookkeeping starts afresh
        self._bwd_started.discard(index)
        self._prefetched.discard(index)
        st = self.stats.setdefault(index, LayerStats(index))
        st.saved_bytes, st.offloaded_bytes = {}, {}
        self._layer_plan = self._plan_for(index)
        st.plan = self._layer_plan
        self._handles.setdefault(index, [])
        start = end = None
        if torch.cuda.is_available():
            start = torch.cuda.Event(enable_timing=True)
            start.record()
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
                yield self
        finally:
            if start is not None:
                end = torch.cuda.Event(enable_timing=True)
                end.record()
                st.fwd_events = (start, end)
            self._layer = None

    def _plan_for(self, index: int) -> OffloadPlan:
        pol = self.policy
        if not pol.offload_last_layer and self.num_layers is not None and index == self.num_layers - 1:
            return OffloadPlan((), "last layer: its activations are needed first in backward")
        if not pol.auto:
            return OffloadPlan(pol.static_roles(), "roles")  # budget is applied per tensor in _pack
        calib = self._calib.get(index)
        if calib is None:
            return OffloadPlan((), "auto: calibration step (measuring compute time and saved bytes)")
        if index not in self.plans:
            if pol.d2h_gbps is None or pol.h2d_gbps is None:
                from .bandwidth import measure_link

                d2h, h2d = measure_link()
                pol.d2h_gbps = pol.d2h_gbps or d2h
                pol.h2d_gbps = pol.h2d_gbps or h2d
            self.plans[index] = pol.plan(calib["bytes"], fwd_ms=calib["fwd_ms"], bwd_ms=calib.get("bwd_ms"))
        return self.plans[index]

    def end_step(self):
        """Call after backward: records the calibration `auto` plans from, and returns
        {layer: count} of offloaded tensors that backward never reloaded (normally {})."""
        for idx, st in self.stats.items():
            if idx not in self._calib and st.fwd_events is not None:
                st.fwd_events[1].synchronize()
                self._calib[idx] = {"bytes": dict(st.saved_bytes), "fwd_ms": st.fwd_events[0].elapsed_time(st.fwd_events[1])}
        leftover = {i: len(h) for i, h in self._handles.items() if h}
        self._next_layer = 0
        self._handles.clear()
        self._prefetched.clear()
        self._bwd_started.clear()
        return leftover

    def offloaded_bytes(self) -> int:
        return sum(sum(st.offloaded_bytes.values()) for st in self.stats.values())

    # ------------------------------------------------------------------ hooks
    def _pack(self, t: torch.Tensor):
        if self._layer is None or not isinstance(t, torch.Tensor) or not t.is_cuda:
            return t
        if is_protected(t):
            return _Kept(self._layer, t)
        role = role_of(t) or "other"
        nbytes = t.numel() * t.element_size()
        st = self.stats[self._layer]
        st.saved_bytes[role] = st.saved_bytes.get(role, 0) + nbytes
        plan = self._layer_plan
        if role not in plan.roles or nbytes < self.policy.min_tensor_bytes:
            return _Kept(self._layer, t)
        budget = self.policy.layer_budget_bytes
        if budget is not None and self._layer_used + nbytes > budget:
            return _Kept(self._layer, t)
        if not t.is_contiguous():
            return _Kept(self._layer, t)
        self._layer_used += nbytes
        st.offloaded_bytes[role] = st.offloaded_bytes.get(role, 0) + nbytes
        return self._offload(t, role, nbytes)

    def _offload(self, t: torch.Tensor, role: str, nbytes: int) -> _Offloaded:
        compute = torch.cuda.current_stream(t.device)
        d2h = self._stream(self._d2h, t.device)
        ready = torch.cuda.Event()
        ready.record(compute)
        host = self.pool.acquire(nbytes)
        d2h.wait_event(ready)
        self._maybe_delay(d2h)
        ev0 = ev1 = None
        with torch.cuda.stream(d2h):
            if self.record_timeline:
                ev0 = torch.cuda.Event(enable_timing=True)
                ev0.record()
            host[:nbytes].copy_(t.view(-1).view(torch.uint8), non_blocking=True)
            done = torch.cuda.Event(enable_timing=self.record_timeline)
            done.record()
        t.record_stream(d2h)  # the allocator keeps the block until the copy is done
        h = _Offloaded(self._layer, role, t.shape, t.stride(), t.dtype, t.device, nbytes, host, done,
                       t_d2h=(ev0, done) if self.record_timeline else None)
        self._handles[self._layer].append(h)
        return h

    def _reload(self, h: _Offloaded):
        if h.gpu is not None:
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
            gpu.copy_(h.host[:h.nbytes], non_blocking=True)
            done = torch.cuda.Event(enable_timing=self.record_timeline)
            done.record()
        h.gpu, h.h2d_done = gpu, done
        if self.record_timeline:
            h.t_h2d = (ev0, done)
        self.pool.release(h.host, done)

    def _start_layer_backward(self, layer: int, device):
        """First use of a layer's saved tensors in backward: reload it and the next
        `prefetch_layers` layers (the ones backward reaches after it)."""
        if self.record_timeline:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record(torch.cuda.current_stream(device))
            self.bwd_marks.append((layer, ev))
        self._bwd_started.add(layer)
        for idx in range(layer, layer - self.prefetch_layers - 1, -1):
            if idx in self._prefetched or idx not in self._handles:
                continue
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
        self._reload(h)
        compute = torch.cuda.current_stream(h.device)
        compute.wait_event(h.h2d_done)
        out = h.gpu.view(h.dtype).as_strided(h.shape, h.stride)
        if self.record_timeline:
            self.timeline.append(h)
        lst = self._handles.get(h.layer)
        if lst is not None and h in lst:
            lst.remove(h)
        # h keeps the reloaded tensor: autograd may unpack a saved tensor more than once,
        # and the handle dies with the graph node like any saved tensor would
        return out
