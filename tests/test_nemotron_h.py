"""patch_nemotron_h on CPU (torch path, float32): a small random Nemotron-H (attention, MLP
and MoE layers) gives the unpatched model's logits and every parameter's gradient to
1e-5 of each tensor's largest entry (measured: below 5e-7); state_dict, save_pretrained,
restore and the refused configs."""
import pytest
import torch

pytest.importorskip("transformers.models.nemotron_h")

from nemotron_h_models import small_config, small_model, step  # noqa: E402

from cute_kernels import InputError  # noqa: E402
from cute_kernels.integrations.transformers import (NemotronHRoutedExperts, NemotronHSReLUMLP,  # noqa: E402
                                                    patch_nemotron_h, unpatch)

TOL = 1e-5


def _close(a, b, what):
    err = ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
    assert err <= TOL, f"{what}: max error {err:.2e} of the largest entry"


def _ids(seed=1, shape=(2, 9)):
    return torch.randint(0, 101, shape, generator=torch.Generator().manual_seed(seed))


CASES = {
    "dense": dict(layers=("full_attention", "mlp", "mlp")),
    "moe": dict(layers=("moe", "full_attention", "moe")),
    "mixed-grouped-router": dict(layers=("full_attention", "moe", "mlp", "moe"), n_group=4, topk_group=2,
                                 num_experts_per_tok=3),
    "latent-moe": dict(layers=("full_attention", "moe"), moe_latent_size=32, norm_topk_prob=False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_and_every_gradient_match(case):
    model = small_model(small_config(**CASES[case]))
    ids = _ids()
    logits0, loss0, grads0 = step(model, ids)
    handle = patch_nemotron_h(model, backend="torch")
    layers = CASES[case]["layers"]
    n_moe = layers.count("moe")
    assert handle.num_dense == layers.count("mlp") + n_moe and handle.num_routed == n_moe
    logits1, loss1, grads1 = step(model, ids)
    _close(logits1, logits0, "logits")
    _close(loss1, loss0, "loss")
    assert set(grads1) == set(grads0) == {n for n, _ in model.named_parameters()}
    for name in grads0:
        _close(grads1[name], grads0[name], name)
    if n_moe:  # the router is trained through the routed weights: its gradient is not trivially zero
        assert any(g.abs().max() > 0 for n, g in grads1.items() if n.endswith("gate.weight"))


def test_modules_replaced_and_parameters_shared():
    model = small_model(small_config())
    before = {n: p for n, p in model.named_parameters()}
    sd_before = model.state_dict()
    handle = patch_nemotron_h(model, backend="torch")
    mixers = [blk.mixer for blk in model.model.layers]
    assert isinstance(mixers[2], NemotronHSReLUMLP)
    assert isinstance(mixers[1].experts, NemotronHRoutedExperts)
    assert isinstance(mixers[1].shared_experts, NemotronHSReLUMLP)
    after = {n: p for n, p in model.named_parameters()}
    assert list(after) == list(before) and all(after[n] is before[n] for n in before)  # same objects, same order
    sd_after = model.state_dict()
    assert list(sd_after) == list(sd_before)
    for k in sd_before:
        assert sd_after[k].data_ptr() == sd_before[k].data_ptr() and torch.equal(sd_after[k], sd_before[k])
    handle.restore()


def test_state_dict_round_trip_and_save_pretrained(tmp_path):
    from transformers import NemotronHForCausalLM

    model = small_model(small_config())
    patch_nemotron_h(model, backend="torch")
    # one optimizer step on the patched model: what is saved is what it trained
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ids = _ids()
    model(ids, labels=ids).loss.backward()
    opt.step()
    logits = model(ids).logits.detach()
    other = small_model(small_config(), seed=7)
    patch_nemotron_h(other, backend="torch")
    other.load_state_dict(model.state_dict())
    _close(other(ids).logits.detach(), logits, "logits after load_state_dict into a patched model")
    model.save_pretrained(tmp_path)
    loaded = NemotronHForCausalLM.from_pretrained(tmp_path)  # plain Hugging Face, unpatched
    assert not any(isinstance(m, (NemotronHSReLUMLP, NemotronHRoutedExperts)) for m in loaded.modules())
    _close(loaded(ids).logits.detach(), logits, "logits after save_pretrained/from_pretrained")


def test_restore_puts_hugging_face_modules_back():
    from transformers.models.nemotron_h.modeling_nemotron_h import NemotronHExperts, NemotronHMLP

    model = small_model(small_config())
    ids = _ids()
    ref = model(ids).logits.detach()
    handle = patch_nemotron_h(model, backend="torch")
    with pytest.raises(InputError, match="already patched"):
        patch_nemotron_h(model)
    # replace a parameter object on our side: restore hands the new one to the original module
    exp = model.model.layers[1].mixer.experts
    new_up = torch.nn.Parameter(exp.up_proj.detach().clone())
    model.load_state_dict({**model.state_dict(), "model.layers.1.mixer.experts.up_proj": new_up}, assign=True)
    replaced_up = model.model.layers[1].mixer.experts.up_proj
    model.eval()
    handle.restore()
    assert type(model.model.layers[1].mixer.experts) is NemotronHExperts
    assert model.model.layers[1].mixer.experts.up_proj is replaced_up
    assert type(model.model.layers[2].mixer) is NemotronHMLP
    assert type(model.model.layers[1].mixer.shared_experts) is NemotronHMLP
    assert not model.model.layers[2].mixer.training  # eval() while patched carries over
    _close(model(ids).logits.detach(), ref, "logits after restore")
    patch_nemotron_h(model, backend="torch")  # patchable again
    unpatch(model)
    unpatch(model)  # no-op when not patched
    assert type(model.model.layers[2].mixer) is NemotronHMLP


def test_offload_scheduler_numbers_each_call_as_a_layer():
    from offload import OffloadPolicy, OffloadScheduler

    model = small_model(small_config())
    ids = _ids()
    ref_logits, _, ref_grads = step(model, ids)
    sched = OffloadScheduler(OffloadPolicy(roles=("preact",)))
    handle = patch_nemotron_h(model, offload=sched, backend="torch")
    assert handle.scheduler is sched and sched.num_layers == 5  # 1 MLP + 2 x (shared expert, routed experts)
    for _ in range(2):  # the next forward ends the step (the pre-hook calls end_step)
        logits, _, grads = step(model, ids)
        assert sorted(sched.stats) == list(range(5)) and sched.current_layer is None
    _close(logits, ref_logits, "logits with offload")
    for name in ref_grads:
        _close(grads[name], ref_grads[name], name)
    handle.restore()
    assert not model.model._forward_pre_hooks
    if torch.cuda.is_available():  # "auto" measures the link on the GPU
        auto = patch_nemotron_h(model, offload="auto", backend="torch")
    else:  # without one an auto policy needs the link bandwidths given (offload's own check)
        auto = patch_nemotron_h(model, offload=OffloadPolicy(auto=True, d2h_gbps=50.0, h2d_gbps=50.0), backend="torch")
    assert auto.scheduler.policy.auto
    auto.restore()


@pytest.mark.parametrize("num_layers", [2, 4, 6])
def test_offload_scheduler_with_another_layer_count_is_refused_when_patching(num_layers):
    """A scheduler made for another number of layers is refused at patch time, naming both counts
    (before, the first forward blamed end_step()); the model is left unpatched."""
    from offload import OffloadPolicy, OffloadScheduler

    model = small_model(small_config())  # 5 layers: 1 MLP + 2 x (shared expert, routed experts)
    sched = OffloadScheduler(OffloadPolicy(), num_layers=num_layers)
    with pytest.raises(InputError, match=f"num_layers={num_layers} but the model has 5 layers"):
        patch_nemotron_h(model, offload=sched, backend="torch")
    assert not any(isinstance(m, (NemotronHSReLUMLP, NemotronHRoutedExperts)) for m in model.modules())
    assert sched.num_layers == num_layers
    right = OffloadScheduler(OffloadPolicy(), num_layers=5)
    patch_nemotron_h(model, offload=right, backend="torch").restore()


@pytest.mark.parametrize("field,value,match", [
    ("mlp_hidden_act", "silu", "mlp_hidden_act"),
    ("mlp_bias", True, "mlp_bias"),
])
def test_unsupported_config_names_the_field(field, value, match):
    model = small_model(small_config(**{field: value}))
    with pytest.raises(InputError, match=match):
        patch_nemotron_h(model)
    assert not any(isinstance(m, NemotronHSReLUMLP) for m in model.modules())  # nothing half-patched


def test_other_bad_arguments():
    model = small_model(small_config())
    with pytest.raises(InputError, match="backend"):
        patch_nemotron_h(model, backend="triton")
    with pytest.raises(InputError, match="offload"):
        patch_nemotron_h(model, offload="always")
    with pytest.raises(InputError, match="model_type"):
        patch_nemotron_h(torch.nn.Linear(2, 2))
    attn_only = small_model(small_config(layers=("full_attention",)))
    with pytest.raises(InputError, match="layers_block_type"):
        patch_nemotron_h(attn_only)
    model.model.layers[2].mixer.register_forward_hook(lambda *a: None)
    with pytest.raises(InputError, match="hooks"):
        patch_nemotron_h(model)


def test_fp8_patch_runs_every_mlp_and_expert_step_in_fp8():
    """patch_nemotron_h(fp8=Fp8Recipe()): the patched MLP and routed-expert steps run the FP8 recipe
    (torch implementation on CPU): the loss moves off the float32 one by e4m3 error, not more; every
    parameter still gets a finite gradient; a wrong fp8 argument is refused by name."""
    from cute_kernels.fp8 import Fp8Recipe

    model = small_model(small_config(**CASES["mixed-grouped-router"]))
    ids = _ids()
    logits0, loss0, _ = step(model, ids)
    handle = patch_nemotron_h(model, backend="torch", fp8=Fp8Recipe())
    logits1, loss1, grads1 = step(model, ids)
    rel = ((logits1 - logits0).norm() / logits0.norm()).item()
    assert 0 < rel < 0.1, rel
    assert all(torch.isfinite(g).all() for g in grads1.values())
    assert all(mod.fp8 == Fp8Recipe() for _, mod in model.named_modules()
               if isinstance(mod, (NemotronHSReLUMLP, NemotronHRoutedExperts)))
    handle.restore()
    with pytest.raises(InputError, match="fp8"):
        patch_nemotron_h(model, backend="torch", fp8="e4m3")
