"""patch_nemotron_h(chunked_loss=...) on CPU: a small random Nemotron-H (float32, torch path)
gives Hugging Face's loss and every parameter's gradient (to 1e-5 of each tensor's largest
entry) with the LM head and cross-entropy in token chunks, also with padding labels,
shift_labels, num_items_in_batch and return_dict=False; logits are None with labels and
Hugging Face's without; restore() takes the forward back; wrong uses are refused."""
import pytest
import torch

pytest.importorskip("transformers.models.nemotron_h")

from nemotron_h_models import small_config, small_model  # noqa: E402

from cute_kernels import InputError  # noqa: E402
from cute_kernels.integrations.transformers import patch_nemotron_h  # noqa: E402

TOL = 1e-5
CASES = {
    "dense": dict(layers=("full_attention", "mlp", "mlp")),
    "moe": dict(layers=("moe", "full_attention", "moe")),
}


def _close(a, b, what, tol=TOL):
    err = ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
    assert err <= tol, f"{what}: max error {err:.2e} of the largest entry"


def _ids(seed=1, shape=(2, 9)):
    return torch.randint(0, 101, shape, generator=torch.Generator().manual_seed(seed))


def _loss_and_grads(model, **call):
    model.zero_grad(set_to_none=True)
    out = model(**call)
    out.loss.backward()
    return out, {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _same(model, handle_kw, call, n_calls=1):
    out0, grads0 = _loss_and_grads(model, **call)
    handle = patch_nemotron_h(model, backend="torch", **handle_kw)
    for _ in range(n_calls):
        out1, grads1 = _loss_and_grads(model, **call)
    assert out1.logits is None
    _close(out1.loss, out0.loss, "loss")
    assert set(grads1) == set(grads0) == {n for n, _ in model.named_parameters()}
    for name in grads0:
        _close(grads1[name], grads0[name], name)
    return handle


@pytest.mark.parametrize("chunk", [True, 5, 1000])
@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_and_every_gradient_match_hugging_face(case, chunk):
    model = small_model(small_config(**CASES[case]))
    ids = _ids()
    handle = _same(model, dict(chunked_loss=chunk), dict(input_ids=ids, labels=ids), n_calls=2)
    assert "lm_head.weight" in {n for n, _ in model.named_parameters()}
    logits = model(input_ids=ids).logits  # without labels: Hugging Face's forward, logits and all
    handle.restore()
    assert "forward" not in vars(model)
    _close(logits.detach(), model(input_ids=ids).logits.detach(), "logits without labels")


def test_padding_labels_shift_labels_and_num_items_in_batch():
    model = small_model(small_config(**CASES["dense"]))
    ids = _ids(seed=2, shape=(3, 7))
    labels = ids.clone()
    labels[0, :4] = -100  # a prompt masked out
    labels[2] = -100  # a whole sequence masked out
    handle = _same(model, dict(chunked_loss=4), dict(input_ids=ids, labels=labels))
    handle.restore()
    shifted = torch.roll(ids, -1, dims=1)
    shifted[:, -1] = -100
    shifted[1, 2] = -100
    handle = _same(model, dict(chunked_loss=3),
                   dict(input_ids=ids, labels=ids, shift_labels=shifted, num_items_in_batch=torch.tensor(11)))
    handle.restore()


def test_return_dict_false_gives_the_loss_first():
    model = small_model(small_config(**CASES["dense"]))
    ids = _ids()
    ref = model(input_ids=ids, labels=ids, return_dict=False)
    patch_nemotron_h(model, backend="torch", chunked_loss=True)
    out = model(input_ids=ids, labels=ids, return_dict=False)
    assert isinstance(out, tuple) and len(out) == len(ref) - 1  # no logits
    _close(out[0].detach(), ref[0].detach(), "loss")


def test_with_an_offload_scheduler():
    from offload import OffloadPolicy, OffloadScheduler

    model = small_model(small_config())
    ids = _ids()
    sched = OffloadScheduler(OffloadPolicy(roles=("preact",)))
    _same(model, dict(chunked_loss=4, offload=sched), dict(input_ids=ids, labels=ids), n_calls=2)
    assert sorted(sched.stats) == list(range(5))


def test_refused_uses():
    from transformers.loss.loss_utils import ForMaskedLMLoss

    model = small_model(small_config(**CASES["dense"]))
    ids = _ids()
    for bad in (0, -3, "yes", 2.5):
        with pytest.raises(InputError, match="chunked_loss must be"):
            patch_nemotron_h(model, backend="torch", chunked_loss=bad)
    with pytest.raises(InputError, match="NemotronHForCausalLM"):
        patch_nemotron_h(model.model, backend="torch", chunked_loss=True)
    model.loss_function = ForMaskedLMLoss
    with pytest.raises(InputError, match="ForCausalLMLoss"):
        patch_nemotron_h(model, backend="torch", chunked_loss=True)
    assert "forward" not in vars(model) and not hasattr(model, "_cute_kernels_patch")  # nothing half-patched
    model = small_model(small_config(**CASES["dense"]))
    patch_nemotron_h(model, backend="torch", chunked_loss=True)
    with pytest.raises(InputError, match="logits_to_keep"):
        model(input_ids=ids, labels=ids, logits_to_keep=1)
    with pytest.raises(InputError, match="outside"):
        model(input_ids=ids, labels=ids + 200)


def test_with_the_measured_offload_planner():
    """chunked_loss with offload planned from the measured peak (CPU 'copies'): the capture sees the
    chunked loss's saved gradients and no logits-sized tensor, a plan is made, and the planned
    steps give the chunked patched model's gradients bitwise."""
    from offload import MeasuredOffloadScheduler, OffloadPolicy

    model = small_model(small_config())
    ids = _ids(shape=(2, 16))
    plain = patch_nemotron_h(model, backend="torch", chunked_loss=8)
    _, ref_grads = _loss_and_grads(model, input_ids=ids, labels=ids)
    plain.restore()
    policy = OffloadPolicy(auto=True, peak="measured", d2h_gbps=1e6, h2d_gbps=1e6, min_tensor_bytes=0,
                           capture_min_elements=64, calibration_steps=1)

    def planned(chunked_loss):
        sched = MeasuredOffloadScheduler(policy, offload_cpu_tensors=True)
        handle = patch_nemotron_h(model, offload=sched, backend="torch", chunked_loss=chunked_loss)
        for _ in range(3):  # memory step, timing step, then planned
            _loss_and_grads(model, input_ids=ids, labels=ids)
        assert sched.plan is not None
        return handle, {t.nbytes for t in sched.profile.tensors}

    vocab, hidden, tokens = 101, 64, ids.numel()
    handle, sizes = planned(False)
    assert tokens * vocab * 4 in sizes  # Hugging Face's loss saves its fp32 log-softmax output
    handle.restore()
    handle, sizes = planned(8)
    assert tokens * hidden * 4 in sizes and vocab * hidden * 4 in sizes  # d_hidden and d_weight, saved by the loss
    assert tokens * vocab * 4 not in sizes  # nothing logits-sized
    for _ in range(2):
        _, grads = _loss_and_grads(model, input_ids=ids, labels=ids)
        for name in ref_grads:
            assert torch.equal(grads[name], ref_grads[name]), name
    handle.restore()
    assert "forward" not in vars(model)
