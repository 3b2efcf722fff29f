"""Every argument of OffloadPolicy, OffloadScheduler and scheduler.layer() is checked when
given (fuzz-style: many generated bad values): each raises offload.OffloadArgumentError (a
ValueError and a TypeError) naming the argument, and leaves no state behind."""
import math
import random

import pytest
import torch

import offload
from cute_kernels.mlp import srelu_mlp
from offload import OffloadArgumentError, OffloadPolicy, OffloadScheduler
from offload import scheduler as sched_mod

WRONG_TYPES = ["1", b"1", [1], (1,), {1: 1}, object(), 1j]
BAD_INT = WRONG_TYPES + [1.5, 2.0, True, False, float("nan")]
BAD_COUNT = BAD_INT + [-1, -7, -(1 << 40)]
BAD_RATE = WRONG_TYPES + [True, 0, 0.0, -1, -0.5, float("nan"), float("inf"), -float("inf")]
BAD_FRACTION = BAD_RATE + [1.01, 2, 1e9]
BAD_BOOL = WRONG_TYPES + [0, 1, 1.0, None, "True"]

BAD_POLICY = {
    "roles": [1, 3.5, object(), [1], ("preact", 2), ("preakt",), "preakt", ["fc1_input", "postact", "prop"], ("",),
              (None,), {"preact": 1}.values()],
    "layer_budget_bytes": [b for b in BAD_COUNT if b is not None],
    "min_tensor_bytes": BAD_COUNT + [None],
    "auto": BAD_BOOL,
    "overlap_fraction": BAD_FRACTION + [None],
    "d2h_gbps": BAD_RATE,
    "h2d_gbps": BAD_RATE,
    "offload_last_layer": BAD_BOOL,
    "max_step_cost": [v for v in BAD_FRACTION if v not in (0, 0.0)] + [None],
    "recompute": BAD_BOOL,
    "partial": BAD_BOOL,
    "device_gbps": BAD_RATE + [None],
    "layer_ms": ["1", 1.0, (1.0,), (1.0, 2.0, 3.0), (), [(1.0, 2.0), (1.0,)], ((1.0, -2.0),), ((0.0, 1.0),),
                 ((float("nan"), 1.0),), (("a", "b"),), [[1.0, 2.0], "ab"]],
    "calibration_steps": BAD_COUNT + [0, None],
}


def _cases():
    for name, values in BAD_POLICY.items():
        for v in values:
            yield name, v


@pytest.mark.parametrize("name,value", list(_cases()), ids=lambda v: repr(v)[:30])
def test_policy_rejects_each_bad_argument(name, value):
    before = offload.known_roles()
    with pytest.raises(OffloadArgumentError) as ei:
        OffloadPolicy(**{name: value})
    err = ei.value
    assert isinstance(err, ValueError) and isinstance(err, TypeError)
    assert name in str(err).replace(" forward", "").replace(" backward", ""), str(err)
    assert offload.known_roles() == before


def test_unknown_role_names_the_known_ones():
    with pytest.raises(OffloadArgumentError) as ei:
        OffloadPolicy(roles=("preakt",))
    msg = str(ei.value)
    assert "'preakt'" in msg and all(r in msg for r in offload.ROLES)


def test_a_bare_string_is_one_role():
    assert OffloadPolicy(roles="preact").roles == ("preact",)
    assert OffloadPolicy(roles="preact").static_roles() == ("preact",)
    assert OffloadPolicy(roles=["postact", "preact", "postact"]).roles == ("postact", "preact")


def test_register_role_makes_a_role_known():
    with pytest.raises(OffloadArgumentError):
        OffloadPolicy(roles=("attn_out_test",))
    offload.register_role("attn_out_test")
    try:
        assert OffloadPolicy(roles=("attn_out_test",)).roles == ("attn_out_test",)
    finally:
        offload.roles._extra_roles.remove("attn_out_test")
    for bad in ["", 3, None, ("a",)]:
        with pytest.raises(OffloadArgumentError):
            offload.register_role(bad)


def test_random_combinations_of_bad_and_good_arguments():
    """Good values mixed with one bad one, in random order: always the error, naming it."""
    rng = random.Random(0)
    good = {"roles": ("preact",), "layer_budget_bytes": 1 << 20, "min_tensor_bytes": 0, "overlap_fraction": 0.5,
            "d2h_gbps": 10.0, "h2d_gbps": 12, "offload_last_layer": True, "max_step_cost": 0.0, "recompute": False,
            "partial": True, "device_gbps": 100.0, "layer_ms": ((1.0, 2.0), (3, 4)), "calibration_steps": 3}
    OffloadPolicy(**good)
    for _ in range(300):
        kw = {k: v for k, v in good.items() if rng.random() < 0.6}
        name, value = rng.choice(list(_cases()))
        kw[name] = value
        with pytest.raises(OffloadArgumentError, match=name):
            OffloadPolicy(**kw)


def test_good_edge_values_are_accepted():
    OffloadPolicy(min_tensor_bytes=0, layer_budget_bytes=0, overlap_fraction=1.0, max_step_cost=0.0, d2h_gbps=1e-6)
    OffloadPolicy(auto=True, roles=("preact", "postact"), layer_ms=(1, 2), calibration_steps=1)
    assert OffloadPolicy(layer_ms=[(1, 2), (3.5, 4)]).layer_ms == ((1.0, 2.0), (3.5, 4.0))


BAD_SCHED = {
    "policy": ["preact", ("preact",), ["preact", "postact"], 3, {"roles": ("preact",)}, OffloadPolicy, object()],
    "prefetch_layers": BAD_COUNT + [None],
    "num_layers": [v for v in BAD_COUNT if v is not None] + [0],
    "debug_delay_cycles": BAD_COUNT + [None],
    "seed": BAD_INT + [None],
    "record_timeline": BAD_BOOL,
    "offload_cpu_tensors": BAD_BOOL,
}


@pytest.mark.parametrize("name,value", [(k, v) for k, vs in BAD_SCHED.items() for v in vs], ids=lambda v: repr(v)[:30])
def test_scheduler_rejects_each_bad_argument(name, value):
    kw = {name: value}
    with pytest.raises(OffloadArgumentError) as ei:
        OffloadScheduler(kw.pop("policy")) if name == "policy" else OffloadScheduler(**kw)
    assert name in str(ei.value) and isinstance(ei.value, ValueError)
    assert sched_mod._active == []


def test_scheduler_policy_string_hint():
    with pytest.raises(OffloadArgumentError, match=r"OffloadPolicy\(roles=\.\.\.\)"):
        OffloadScheduler("preact")


def test_auto_without_cuda_needs_bandwidths(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(OffloadArgumentError, match="d2h_gbps"):
        OffloadScheduler(OffloadPolicy(auto=True))
    OffloadScheduler(OffloadPolicy(auto=True, d2h_gbps=1.0, h2d_gbps=1.0))


def test_num_layers_set_later_is_checked():
    s = OffloadScheduler()
    for bad in [0, -1, 1.5, "3", True]:
        with pytest.raises(OffloadArgumentError, match="num_layers"):
            s.num_layers = bad
    assert s.num_layers is None
    s.num_layers = 3


def _state(s):
    return (s._next_layer, s._layer, sorted(s.stats), sorted(s._handles), list(s._step["order"]), s._stale,
            list(sched_mod._active), s.offloaded_bytes())


def _one_step(s, n=3, grouped=False):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 8, generator=g, requires_grad=True)
    w1 = torch.nn.Parameter(torch.randn(16, 8, generator=g) / 3)
    w2 = torch.nn.Parameter(torch.randn(8, 16, generator=g) / 4)
    y = x
    for i in range(n):
        with s.layer(i):
            y = srelu_mlp(y, w1, w2, backend="torch")
    y.sum().backward()
    return s.end_step()


def test_layer_rejects_bad_indices_and_leaves_no_state():
    rng = random.Random(1)
    s = OffloadScheduler(OffloadPolicy(min_tensor_bytes=0, offload_last_layer=True), num_layers=3,
                         offload_cpu_tensors=True)
    assert _one_step(s) == {}
    bad = [3, 4, 100, -1, -5, 1.0, 0.5, "0", True, False, [0], (1,), float("nan")] + \
          [rng.randint(3, 1 << 30) for _ in range(40)] + [-rng.randint(1, 1 << 30) for _ in range(40)]
    for b in bad:
        before = _state(s)
        with pytest.raises(OffloadArgumentError, match="index|num_layers"):
            with s.layer(b):
                pass
        assert _state(s) == before
    # the auto-numbered layer past num_layers
    for i in range(3):
        with s.layer():
            pass
    before = _state(s)
    with pytest.raises(OffloadArgumentError, match="beyond num_layers=3"):
        with s.layer():
            pass
    assert _state(s) == before
    s.end_step()
    # nothing was left behind: a good step still offloads and reloads everything
    assert _one_step(s) == {} and s.offloaded_bytes() > 0 and s.reloaded_bytes() == s.offloaded_bytes()


def test_offload_layers_checks_its_scheduler():
    with pytest.raises(OffloadArgumentError, match="scheduler"):
        offload.offload_layers([lambda x: x], torch.ones(1), "preact")
    s = OffloadScheduler(num_layers=1)
    with pytest.raises(OffloadArgumentError, match="beyond num_layers"):
        offload.offload_layers([lambda x: x, lambda x: x], torch.ones(1), s)


def test_nan_and_inf_named():
    for v in (math.nan, math.inf):
        with pytest.raises(OffloadArgumentError, match="finite"):
            OffloadPolicy(d2h_gbps=v)
