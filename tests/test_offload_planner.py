"""The auto offload planner (pure Python): the pooled copy window, partial tensors, reload
timing, keep/offload/recompute, the reasons, and invariants over many random profiles."""
import random

import pytest

from offload.planner import KEEP, OFFLOAD, PARTIAL, RECOMPUTE, StepProfile, TensorProfile, plan_step

MB = 1 << 20
BW = 50.0  # GB/s: 50e6 bytes per ms


def _layer(rows=1024, row_bytes=65536, recompute_ms=None):
    n = rows * row_bytes
    return [TensorProfile("fc1_input", n // 4, rows), TensorProfile("preact", n, rows),
            TensorProfile("postact", n, rows, recompute_ms=recompute_ms)]


def _offloaded(plan):
    return [t for lp in plan.layers.values() for t in lp.tensors if t.offload_bytes]


def _check_invariants(profile, plan, overlap=0.97):
    """What every plan must satisfy, whatever the profile."""
    layers = {lp.index: lp for lp in profile.layers}
    ready = {(lp.index, k): tp.ready_ms for lp in profile.layers for k, tp in enumerate(lp.tensors)}
    moved = sorted(_offloaded(plan), key=lambda t: t.d2h_start_ms)
    prev_end = -1e300
    for t in moved:
        lp = layers[t.layer]
        tp = [x for x in lp.tensors if x.role == t.role][t.occurrence]
        assert 0 < t.offload_bytes <= t.nbytes
        assert t.offload_bytes == t.offload_rows * (t.nbytes // t.rows), "a partial offload is whole rows"
        assert (t.action == OFFLOAD) == (t.offload_bytes == t.nbytes)
        assert t.d2h_start_ms >= tp.ready_ms - 1e-9, "a copy starts once its tensor exists"
        assert t.d2h_start_ms >= prev_end - 1e-9, "copies run one after another on one stream"
        assert t.d2h_end_ms <= plan.deadline_ms + 1e-6, "every copy ends before the forward does"
        assert t.d2h_end_ms - t.d2h_start_ms == pytest.approx(t.offload_bytes / (plan.d2h_gbps * 1e6))
        prev_end = t.d2h_end_ms
        assert not tp.held and tp.contiguous
    assert plan.offload_bytes <= plan.d2h_gbps * 1e6 * (plan.deadline_ms - profile.fwd_start_ms) + 1
    h_prev = -1e300
    for i in sorted(plan.layers, reverse=True):  # reloads: backward order, one stream
        lp = plan.layers[i]
        if not lp.offload_bytes:
            continue
        assert lp.reload_at is not None and lp.reload_at > i
        assert lp.h2d_start_ms >= layers[lp.reload_at].bwd_start_ms - 1e-9, "issued at its trigger layer's backward"
        assert lp.h2d_start_ms >= h_prev - 1e-9
        assert lp.h2d_end_ms <= layers[i].bwd_start_ms + 1e-6, "back before the layer's backward starts"
        h_prev = lp.h2d_end_ms
    assert plan.cost_ms <= plan.cost_limit_ms + 1e-9
    assert plan.resident_bytes == sum(tp.nbytes for lp in profile.layers for tp in lp.tensors) \
        - plan.offload_bytes - plan.recompute_bytes


def test_pooled_window_lets_a_layer_copy_through_the_layers_after_it():
    # layer 0 saves far more than its own forward could copy; the later layers save nothing
    big = [TensorProfile("preact", 200 * MB, 1024), TensorProfile("postact", 200 * MB, 1024)]
    prof = StepProfile.from_layer_times(2.0, 4.0, [big] + [[] for _ in range(7)])
    plan = plan_step(prof, d2h_gbps=BW, h2d_gbps=BW, overlap_fraction=1.0)
    lp0 = plan.layers[0]
    assert all(t.action == OFFLOAD for t in lp0.tensors)  # 400 MiB = 8.4 ms of copies, 16 ms of forward
    assert max(t.d2h_end_ms for t in lp0.tensors) > prof.layers[0].fwd_end_ms
    _check_invariants(prof, plan, 1.0)


def test_window_filled_exactly_with_one_partial_tensor():
    prof = StepProfile.from_layer_times(1.0, 3.0, [_layer() for _ in range(6)])
    plan = plan_step(prof, d2h_gbps=BW, h2d_gbps=BW, recompute=False)
    partial = [t for t in _offloaded(plan) if t.action == PARTIAL]
    assert len(partial) == 1
    first_ready = min(t.d2h_start_ms for t in _offloaded(plan))
    capacity = (plan.deadline_ms - first_ready) * BW * 1e6
    row = partial[0].nbytes // partial[0].rows
    assert capacity - row < plan.offload_bytes <= capacity, "full but for less than one row"
    # everything after the partial tensor stays: the window is full
    after = [t for lp in plan.layers.values() for t in lp.tensors if t.action == KEEP and t.why == "window full"]
    assert after
    _check_invariants(prof, plan)


def test_without_partial_whole_tensors_only():
    prof = StepProfile.from_layer_times(1.0, 3.0, [_layer() for _ in range(6)])
    plan = plan_step(prof, d2h_gbps=BW, h2d_gbps=BW, recompute=False, partial=False)
    assert all(t.action == OFFLOAD for t in _offloaded(plan))
    assert plan.offload_bytes > 0
    _check_invariants(prof, plan)


def test_everything_fits_no_partial_no_recompute():
    prof = StepProfile.from_layer_times(100.0, 200.0, [_layer(recompute_ms=0.01) for _ in range(4)])
    plan = plan_step(prof, d2h_gbps=BW, h2d_gbps=BW)
    for i, lp in plan.layers.items():
        assert [t.action for t in lp.tensors] == ([OFFLOAD] * 3 if i < 3 else [KEEP, KEEP, RECOMPUTE])
    assert plan.layers[3].tensors[0].why.startswith("last layer")
    _check_invariants(prof, plan)


def test_reloads_are_issued_as_late_as_they_can_be():
    prof = StepProfile.from_layer_times(1.0, 3.0, [_layer() for _ in range(6)])
    plan = plan_step(prof, d2h_gbps=BW, h2d_gbps=BW, recompute=False)
    bwd = {lp.index: lp.bwd_start_ms for lp in prof.layers}
    for i, lp in plan.layers.items():
        if lp.offload_bytes:
            # one layer closer would issue it after it had to start
            closer = lp.reload_at - 1
            if closer > i:
                latest = lp.bwd_start_ms - lp.offload_bytes / (BW * 0.97 * 1e6)
                assert bwd[closer] > min(latest, lp.h2d_start_ms) - 1e-9
    _check_invariants(prof, plan)


def test_a_short_backward_cuts_the_offload_back():
    layers = [_layer() for _ in range(6)]
    roomy = plan_step(StepProfile.from_layer_times(1.0, 3.0, layers), d2h_gbps=BW, h2d_gbps=BW, recompute=False)
    prof = StepProfile.from_layer_times(1.0, 0.2, layers)
    plan = plan_step(prof, d2h_gbps=BW, h2d_gbps=BW, recompute=False)
    assert 0 < plan.offload_bytes < roomy.offload_bytes
    _check_invariants(prof, plan)


def test_recompute_when_the_window_is_full_within_the_cost_limit():
    layers = [_layer(recompute_ms=0.05) for _ in range(6)]
    prof = StepProfile.from_layer_times(1.0, 3.0, layers)  # step 24 ms: 3% = 0.72 ms, 14 recomputes would fit
    plan = plan_step(prof, d2h_gbps=BW, h2d_gbps=BW)
    rec = [t for lp in plan.layers.values() for t in lp.tensors if t.action == RECOMPUTE]
    assert 0 < len(rec) <= 6 and plan.cost_ms <= 0.03 * prof.step_ms
    no_rec = plan_step(prof, d2h_gbps=BW, h2d_gbps=BW, recompute=False)
    assert plan.resident_bytes < no_rec.resident_bytes
    assert plan.offload_bytes == pytest.approx(no_rec.offload_bytes, rel=0.02), "the window stays full"
    assert not [t for t in _offloaded(plan) if t.action == RECOMPUTE]
    # too dear: nothing recomputed
    dear = StepProfile.from_layer_times(1.0, 3.0, [_layer(recompute_ms=5.0) for _ in range(6)])
    assert plan_step(dear, d2h_gbps=BW, h2d_gbps=BW).recompute_bytes == 0
    # no cost allowed: nothing recomputed, no partial tensor either
    strict = plan_step(prof, d2h_gbps=BW, h2d_gbps=BW, max_step_cost=0.0)
    assert strict.recompute_bytes == 0 and all(t.action == OFFLOAD for t in _offloaded(strict))
    _check_invariants(prof, plan)


def test_reasons_for_keeping():
    held = TensorProfile("fc1_input", 4 * MB, 4, held=True)
    small = TensorProfile("prob", 1000, 1000)
    strided = TensorProfile("preact", 4 * MB, 4, contiguous=False)
    other = TensorProfile("postact", 4 * MB, 4)
    prof = StepProfile.from_layer_times(100.0, 100.0, [[held, small, strided, other], [TensorProfile("preact", MB, 1)]])
    plan = plan_step(prof, d2h_gbps=BW, h2d_gbps=BW, min_tensor_bytes=4096, roles=("fc1_input", "preact", "prob"))
    why = {t.role: t.why for t in plan.layers[0].tensors}
    assert "leaf" in why["fc1_input"] and "min_tensor_bytes" in why["prob"] and "contiguous" in why["preact"]
    assert "roles" in why["postact"] and "last layer" in plan.layers[1].tensors[0].why
    assert plan.offload_bytes == 0
    table = plan.describe()
    assert table.count("\n| ") == 3 and "leaf input" in table and "last layer" in table


def test_layer_budget_caps_each_layer():
    prof = StepProfile.from_layer_times(100.0, 200.0, [_layer() for _ in range(4)])
    plan = plan_step(prof, d2h_gbps=BW, h2d_gbps=BW, layer_budget_bytes=96 * MB, recompute=False)
    assert all(0 < lp.offload_bytes <= 96 * MB for i, lp in plan.layers.items() if i < 3)
    _check_invariants(prof, plan)


def test_offload_last_layer_and_gaps_widen_the_window():
    layers = [_layer() for _ in range(4)]
    plain = plan_step(StepProfile.from_layer_times(1.0, 3.0, layers), d2h_gbps=BW, h2d_gbps=BW, recompute=False)
    gaps = StepProfile.from_layer_times(1.0, 3.0, layers, gap_ms=1.0)  # other layers' work between ours
    wide = plan_step(gaps, d2h_gbps=BW, h2d_gbps=BW, recompute=False)
    assert wide.offload_bytes > plain.offload_bytes
    _check_invariants(gaps, wide)


def test_describe_lists_every_layer():
    prof = StepProfile.from_layer_times(1.0, 3.0, [_layer(recompute_ms=0.05) for _ in range(5)])
    plan = plan_step(prof, d2h_gbps=BW, h2d_gbps=BW)
    text = plan.describe()
    assert "link-bound" in text and f"{plan.offload_bytes / plan.link_bound_bytes:.0%}" in text
    for i in range(5):
        assert f"\n| {i} |" in text
    assert "partial" in text and "recompute" in text and "reload issued at layer" in text


@pytest.mark.parametrize("seed", range(150))
def test_random_profiles_keep_every_invariant(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 9)
    tensors = []
    for _ in range(n):
        lst = []
        for role in rng.sample(["fc1_input", "preact", "postact", "prob"], rng.randint(0, 4)):
            rows = rng.randint(1, 64)
            lst.append(TensorProfile(role, rows * rng.choice([2, 4, 1024]) * rng.randint(1, 64), rows,
                                     ready_ms=rng.random() * 2, held=rng.random() < 0.1,
                                     recompute_ms=rng.random() * 0.5 if role == "postact" else None,
                                     contiguous=rng.random() > 0.05))
        tensors.append(lst)
    prof = StepProfile.from_layer_times([rng.uniform(0.1, 3) for _ in range(n)], [rng.uniform(0.05, 6) for _ in range(n)],
                                        tensors, gap_ms=rng.choice([0.0, 0.5]), loss_ms=rng.random(),
                                        ready=rng.choice(["end", "given"]))
    overlap = rng.choice([0.5, 0.97, 1.0])
    plan = plan_step(prof, d2h_gbps=rng.uniform(0.001, 0.2), h2d_gbps=rng.uniform(0.001, 0.2),
                     min_tensor_bytes=rng.choice([0, 1024]), overlap_fraction=overlap,
                     layer_budget_bytes=rng.choice([None, 50_000]), offload_last_layer=rng.random() < 0.3,
                     max_step_cost=rng.choice([0.0, 0.03, 0.2]), partial=rng.random() < 0.8,
                     recompute=rng.random() < 0.8, device_gbps=rng.choice([0.01, 1.0]))
    _check_invariants(prof, plan, overlap)
    plan.describe()
