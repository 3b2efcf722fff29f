"""patch_nemotron_h with the measured-peak offload (CPU, torch path, float32, the 'copies' to
other CPU buffers): the capture covers the whole forward (attention, the LM head and the loss,
not only our layers), a plan is made from the profiled step, the planned steps give the
patched model's gradients bitwise, and restore() removes the capture hooks."""
import pytest
import torch

pytest.importorskip("transformers.models.nemotron_h")

from nemotron_h_models import small_config, small_model, step  # noqa: E402

from cute_kernels import InputError  # noqa: E402
from cute_kernels.integrations.transformers import patch_nemotron_h  # noqa: E402
from offload import MeasuredOffloadScheduler, OffloadPolicy  # noqa: E402
from offload.measured_planner import OFFLOAD  # noqa: E402


def _ids(seed=1, shape=(2, 9)):
    return torch.randint(0, 101, shape, generator=torch.Generator().manual_seed(seed))


def test_measured_offload_on_the_patched_model():
    model = small_model(small_config())
    ids = _ids()
    plain = patch_nemotron_h(model, backend="torch")
    _, _, ref_grads = step(model, ids)
    plain.restore()
    policy = OffloadPolicy(auto=True, peak="measured", d2h_gbps=1e6, h2d_gbps=1e6, min_tensor_bytes=0,
                           capture_min_elements=64, calibration_steps=1)
    sched = MeasuredOffloadScheduler(policy, offload_cpu_tensors=True)
    handle = patch_nemotron_h(model, offload=sched, backend="torch")
    step(model, ids)  # memory step
    wheres = {r["where"] for r in sched._captured}
    step(model, ids)  # timing step (its forward pre-hook ended the memory step)
    assert sched.plan is None
    step(model, ids)  # its forward pre-hook ended the timing step: planned from here
    assert sched.plan is not None and sched.plans_made == 1
    assert "before the first layer" in wheres and any(w.startswith("after layer") for w in wheres)
    assert any(w.startswith("layer ") for w in wheres)
    roles = {t.role for t in sched.profile.tensors}
    assert "other" in roles and "preact" in roles
    for _ in range(2):
        _, _, grads = step(model, ids)
        for name in ref_grads:
            assert torch.equal(grads[name], ref_grads[name]), name
    assert sched.plans_made == 1
    moved = [d for d in sched.plan.decisions.values() if d.action == OFFLOAD]
    assert moved and sched.plan.peak_after < sched.plan.peak_before, sched.plan.describe()
    handle.restore()
    assert not model._forward_pre_hooks and not model._forward_hooks


def test_auto_measured_string_and_errors():
    model = small_model(small_config(layers=("full_attention", "mlp")))
    if torch.cuda.is_available():
        h = patch_nemotron_h(model, offload="auto_measured", backend="torch")
        assert isinstance(h.scheduler, MeasuredOffloadScheduler)
        h.restore()
    else:  # without a GPU an auto policy needs the link bandwidths (offload's own check)
        with pytest.raises(ValueError, match="d2h_gbps"):
            patch_nemotron_h(model, offload="auto_measured", backend="torch")
    with pytest.raises(InputError, match="auto_measured"):
        patch_nemotron_h(model, offload="measured", backend="torch")
