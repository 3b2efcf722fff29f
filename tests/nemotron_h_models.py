"""Small random Nemotron-H models for the tests (no download; attention, MLP and MoE
layers only, so no Mamba kernel is needed)."""
import torch


def small_config(layers=("full_attention", "moe", "mlp", "moe"), **over):
    from transformers import NemotronHConfig

    kw = dict(vocab_size=101, hidden_size=64, layers_block_type=list(layers), num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, intermediate_size=96, n_routed_experts=8, num_experts_per_tok=2,
              moe_intermediate_size=48, moe_shared_expert_intermediate_size=80, n_group=2, topk_group=1,
              routed_scaling_factor=2.5, max_position_embeddings=64)
    kw.update(over)
    return NemotronHConfig(**kw)


def small_model(config, *, seed=0, dtype=torch.float32, device="cpu"):
    from transformers import NemotronHForCausalLM

    torch.manual_seed(seed)
    model = NemotronHForCausalLM(config)
    with torch.no_grad():  # a non-zero score correction bias, so the router's full path is exercised
        for mod in model.modules():
            if hasattr(mod, "e_score_correction_bias"):
                mod.e_score_correction_bias.copy_(torch.rand_like(mod.e_score_correction_bias) * 0.1)
    return to_dtype(model.to(device), dtype)


def to_dtype(model, dtype):
    """Cast to `dtype` but keep the routers in fp32, as from_pretrained does
    (NemotronH's _keep_in_fp32_modules_strict: gate.weight, e_score_correction_bias)."""
    model.to(dtype)
    for name, mod in model.named_modules():
        if name.endswith("mixer.gate"):
            mod.float()
    return model


def step(model, ids):
    """Logits and every parameter's gradient of one forward/backward (next-token loss)."""
    model.zero_grad(set_to_none=True)
    out = model(ids, labels=ids)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach().clone(), out.loss.detach().clone(), grads


def _gates(model):
    return [blk.mixer.gate for blk in model.model.layers if hasattr(blk.mixer, "gate")]


def record_routing(model):
    """Forward hooks that append each router call's top-k expert ids to the returned list."""
    seen = []
    handles = [g.register_forward_hook(lambda _m, _i, out: seen.append(out[2].detach().clone())) for g in _gates(model)]
    return seen, handles


def force_routing(model, recorded):
    """Forward hooks that make each router pick the recorded experts (in call order) and
    recompute their weights from its own scores as the router does (gather, normalise,
    scale): two models compared this way differ in arithmetic only, not in which expert a
    near-tie token goes to."""
    calls = iter(recorded)

    def hook(gate, _inputs, out):
        logits, _, _ = out
        idx = next(calls)
        w = logits.sigmoid().gather(1, idx)
        if gate.norm_topk_prob:
            w = w / (w.sum(-1, keepdim=True) + 1e-20)
        return logits, w * gate.routed_scaling_factor, idx

    return [g.register_forward_hook(hook) for g in _gates(model)]
