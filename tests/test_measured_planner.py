"""The measured-peak offload planner (pure Python) on synthetic step profiles: it moves the
tensors live at the measured peak, lowers the predicted peak, keeps its copy and reload
timing, recomputes only what the op offered within the limit, and says why."""
import math
import random

import pytest

from offload.measured_planner import (KEEP, OFFLOAD, RECOMPUTE, MemoryProfile, SavedTensor, events_renumbered,
                                      plan_measured)

MB = 1 << 20
BW = 50.0  # GB/s: 50e6 bytes per ms


def synthetic_step(layers=4, per_layer=3, nbytes=64 * MB, fwd=2.0, bwd=4.0, weights=1 << 30, spike=(1, 1 << 30),
                   roles=None, held=(), recompute=None):
    """A step of `layers` layers: layer i saves `per_layer` tensors during its forward, its
    backward uses them in reverse order; a workspace of spike[1] bytes lives for a tenth of
    layer spike[0]'s backward, in its middle.  Returns the profile and the memory function."""
    tens = []
    for i in range(layers):
        b = layers * fwd + (layers - 1 - i) * bwd
        for m in range(per_layer):
            role = (roles or {}).get((i, m), "other")
            tens.append(SavedTensor((i, m), role, nbytes, i * fwd + (m + 1) * fwd / (per_layer + 1),
                                    b + (per_layer - 1 - m) * bwd / per_layer + 0.01, held=(i, m) in held,
                                    recompute_ms=(recompute or {}).get((i, m)), where=f"layer {i}"))
    s_layer, s_bytes = spike
    s0 = layers * fwd + (layers - 1 - s_layer) * bwd + 0.45 * bwd
    s1 = s0 + 0.1 * bwd
    step_ms = layers * (fwd + bwd)

    def mem(t, open_=False):
        live = sum(x.nbytes for x in tens if x.saved_ms <= t and (t < x.used_ms if open_ else t <= x.used_ms))
        return weights + live + (s_bytes if (s0 <= t < s1 if open_ else s0 <= t <= s1) else 0)

    times = sorted({0.0, step_ms, s0, s1} | {x.saved_ms for x in tens} | {x.used_ms for x in tens})
    samples = [(times[0], mem(times[0]))] + [(t, max(mem(p, True), mem(t))) for p, t in zip(times, times[1:])]
    events = tuple(sorted(x.used_ms for x in tens))
    return MemoryProfile(tuple(samples), tuple(tens), step_ms, events), (s0, s1)


def _recount(profile, plan):
    """The predicted samples, recomputed from the decisions: a tensor's bytes leave every
    sample whose interval lies inside the time it is off the GPU."""
    off = []
    for t in profile.tensors:
        d = plan.decision(t.key)
        if d.action == OFFLOAD:
            off.append((d.d2h_end_ms, profile.bwd_events[d.reload_event], t.nbytes))
        elif d.action == RECOMPUTE:
            off.append((t.saved_ms, t.used_ms, t.nbytes))
    out, prev = [], -math.inf
    for t, b in profile.samples:
        out.append(b - sum(n for f0, f1, n in off if f0 <= prev + 1e-9 and t <= f1 + 1e-9))
        prev = t
    return out


def _check(profile, plan):
    pj, _ = profile.peak
    t_prev, t_peak = profile.samples[pj - 1][0], profile.samples[pj][0]
    moved = sorted((d for d in plan.decisions.values() if d.action == OFFLOAD), key=lambda d: d.d2h_start_ms)
    by_key = {t.key: t for t in profile.tensors}
    prev_end = -math.inf
    for d in moved:
        t = by_key[d.key]
        assert t.saved_ms <= t_prev and t.used_ms >= t_peak, "only tensors live at the measured peak move"
        assert not t.held and t.contiguous
        assert d.d2h_start_ms >= t.saved_ms - 1e-9 and d.d2h_start_ms >= prev_end - 1e-9, "one copy stream, in order"
        assert d.d2h_end_ms - d.d2h_start_ms == pytest.approx(t.nbytes / (plan.d2h_gbps * 1e6 * 0.97))
        assert d.d2h_end_ms <= t_prev + 1e-9, "its copy ends before the peak"
        assert profile.bwd_events[d.reload_event] >= t_peak - 1e-9, "its reload is issued after the peak"
        assert d.h2d_start_ms >= profile.bwd_events[d.reload_event] - 1e-9
        assert d.h2d_end_ms <= t.used_ms + 1e-6, "back before its first use"
        prev_end = d.d2h_end_ms
    h_prev = -math.inf
    for d in sorted(moved, key=lambda d: d.h2d_start_ms):
        assert d.h2d_start_ms >= h_prev - 1e-9, "one reload stream"
        h_prev = d.h2d_end_ms
    pred = _recount(profile, plan)
    assert plan.peak_after == max(pred)
    assert plan.peak_after <= plan.peak_before
    assert plan.cost_ms <= plan.cost_limit_ms + 1e-9
    for d in plan.decisions.values():
        assert d.why, f"{d.key} has no reason"


def test_moves_the_tensors_live_at_the_peak_and_lowers_it():
    prof, (s0, s1) = synthetic_step()
    plan = plan_measured(prof, d2h_gbps=BW, h2d_gbps=BW)
    _check(prof, plan)
    assert s0 <= prof.samples[prof.peak[0]][0] <= s1  # the measured peak: layer 1's workspace
    off = {d.key for d in plan.decisions.values() if d.action == OFFLOAD}
    # live at the peak: layer 0's tensors and layer 1's not yet used; layers 2 and 3 are done by then
    # layer 0's three tensors are live there, but the backward events after the peak leave
    # room for two reloads only (a third would have to be issued before the peak)
    assert off == {(0, 0), (0, 1)}
    assert plan.decision((0, 2)).why == plan.decision((1, 0)).why == \
        "its reload must be issued before the peak to be back in time"
    for k in [(2, 0), (3, 1)]:
        assert plan.decision(k).action == KEEP and plan.decision(k).why == "not live at the peak"
    assert plan.peak_after == plan.peak_before - 2 * 64 * MB
    assert plan.recompute_bytes == 0
    text = plan.describe()
    assert "measured-peak offload plan" in text and "live at the peak" in text and "| (0, 0) | layer 0 | other |" in text


def test_the_last_layers_tensors_move_when_the_peak_is_at_the_backward_start():
    prof, _ = synthetic_step(spike=(3, 0))  # no workspace: memory peaks when the backward starts
    plan = plan_measured(prof, d2h_gbps=BW, h2d_gbps=BW)
    _check(prof, plan)
    assert plan.peak_after < plan.peak_before
    assert plan.offload_bytes >= 64 * MB


def test_held_small_and_excluded_roles_stay():
    roles = {(0, 0): "preact", (0, 1): "fc1_input"}
    prof, _ = synthetic_step(held={(0, 2)}, roles=roles)
    plan = plan_measured(prof, d2h_gbps=BW, h2d_gbps=BW, roles=("fc1_input",))
    _check(prof, plan)
    assert plan.decision((0, 2)).action == KEEP and "held elsewhere" in plan.decision((0, 2)).why
    assert plan.decision((0, 0)).action == KEEP and plan.decision((0, 0)).why == "role not in the policy's roles"
    assert plan.decision((0, 1)).action == OFFLOAD  # a tagged role in the policy
    small = plan_measured(prof, d2h_gbps=BW, h2d_gbps=BW, min_tensor_bytes=128 * MB)
    assert small.offload_bytes == 0 and small.peak_after == small.peak_before
    assert "below min_tensor_bytes" in small.decision((1, 0)).why


def test_a_slow_link_keeps_everything_and_says_why():
    prof, _ = synthetic_step()
    plan = plan_measured(prof, d2h_gbps=0.5, h2d_gbps=0.5)  # 64 MiB takes 134 ms: no copy fits
    _check(prof, plan)
    assert plan.offload_bytes == 0 and plan.peak_after == plan.peak_before
    assert plan.decision((0, 0)).why == "its copy cannot end before the peak"


def test_recompute_only_offered_tensors_within_the_limit():
    rc = {(0, 0): 0.05, (1, 0): 0.05, (2, 0): 0.01}  # (2, 0) is used before the peak
    prof, _ = synthetic_step(recompute=rc)
    plan = plan_measured(prof, d2h_gbps=0.5, h2d_gbps=0.5, max_step_cost=0.01)  # limit 0.24 ms
    _check(prof, plan)
    rec = {d.key for d in plan.decisions.values() if d.action == RECOMPUTE}
    assert rec == {(0, 0), (1, 0)}
    assert plan.cost_ms == pytest.approx(0.1) and plan.peak_after == plan.peak_before - 2 * 64 * MB
    assert "recomputed in backward" in plan.decision((0, 0)).why
    none = plan_measured(prof, d2h_gbps=0.5, h2d_gbps=0.5, max_step_cost=0.0)
    assert none.recompute_bytes == 0 and "past the step-time limit" in none.decision((0, 0)).why
    off = plan_measured(prof, d2h_gbps=0.5, h2d_gbps=0.5, recompute=False)
    assert off.recompute_bytes == 0


def test_renumbered_events_skip_recomputed_tensors():
    rc = {(2, 2): 0.01}
    prof, _ = synthetic_step(recompute=rc, spike=(0, 512 * MB))
    plan = plan_measured(prof, d2h_gbps=0.5, h2d_gbps=0.5)  # recompute only
    assert plan.decision((2, 2)).action == RECOMPUTE
    fast = plan_measured(prof, d2h_gbps=BW, h2d_gbps=BW)
    before = {k: d.reload_event for k, d in ((d.key, d) for d in fast.decisions.values()) if d.reload_event is not None}
    fast.decisions[(2, 2)].action = RECOMPUTE  # as if the plan recomputed it
    events_renumbered(fast, prof)
    used = prof.tensors[[t.key for t in prof.tensors].index((2, 2))].used_ms
    for k, e in before.items():
        shift = 1 if prof.bwd_events[e] >= used else 0
        assert fast.decisions[k].reload_event == e - shift


@pytest.mark.parametrize("seed", range(25))
def test_random_profiles_keep_the_invariants(seed):
    rng = random.Random(seed)
    layers = rng.randint(1, 6)
    prof, _ = synthetic_step(layers=layers, per_layer=rng.randint(1, 4), nbytes=rng.randint(1, 200) * MB,
                             fwd=rng.uniform(0.5, 5), bwd=rng.uniform(1, 10),
                             spike=(rng.randrange(layers), rng.choice([0, 64 * MB, 1 << 30])),
                             held={(rng.randrange(layers), 0)},
                             recompute={(rng.randrange(layers), 0): rng.uniform(0.01, 1)})
    plan = plan_measured(prof, d2h_gbps=rng.uniform(1, 60), h2d_gbps=rng.uniform(1, 60),
                         max_step_cost=rng.choice([0.0, 0.03, 0.2]))
    _check(prof, plan)


def test_bad_profile():
    with pytest.raises(ValueError, match="no memory samples"):
        plan_measured(MemoryProfile((), (), 1.0), d2h_gbps=1, h2d_gbps=1)
