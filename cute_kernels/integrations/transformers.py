"""Hugging Face transformers' Nemotron-H on cute_kernels: one call, and a way back.

    from cute_kernels.integrations.transformers import patch_nemotron_h
    handle = patch_nemotron_h(model, offload="auto")     # model: NemotronHForCausalLM / NemotronHModel
    ...train...
    handle.restore()                                     # or unpatch(model)

What is replaced (in place, in the model's module tree):
- every `NemotronHMLP` (the dense "mlp" layers and each MoE layer's shared expert) by
  `NemotronHSReLUMLP`, which holds the original's own `up_proj` / `down_proj` nn.Linear
  modules and runs `srelu_mlp` on their weights;
- every MoE layer's routed `NemotronHExperts` by `NemotronHRoutedExperts`, which holds
  the original's own fused (E, F, H) `up_proj` and (E, H, F) `down_proj` Parameters and
  runs `routed_srelu_experts`.
The router (sigmoid scores, e_score_correction_bias, group-limited top-k, normalisation,
routed_scaling_factor), the latent projections of a latent MoE and everything else stay
Hugging Face's.  Parameters are shared, not copied: state_dict keys and values,
`save_pretrained` and optimizers built before or after the patch see the same tensors.

offload: None, "auto" (an OffloadScheduler with `OffloadPolicy(auto=True)`),
"auto_measured" (a MeasuredOffloadScheduler: planned from the measured peak, any large
saved tensor of the whole forward may move; the model's forward hooks open and close
its capture), an `OffloadPolicy`, or an `OffloadScheduler`.  Each of our op calls in a forward is the
step's next offload layer (an MoE layer is two: shared expert, routed experts); the
scheduler's step ends when the next forward of the Nemotron-H model starts (a forward
pre-hook calls `end_step`), so a training loop needs no extra call.

chunked_loss=True (or tokens per chunk): a forward with `labels` computes the same loss with
the LM head and cross-entropy in token chunks (hf_chunked_loss.py, chunked_ce.py) and returns
`logits=None`; without labels the forward is Hugging Face's.

transformers is imported by this module and hf_chunked_loss.py only (the `transformers` extra).  Tested with
transformers 5.17 and 5.24 (the experts are fused 3-D parameters there).  Models loaded
with trust_remote_code (per-expert nn.Linear modules) are refused.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..checks import InputError
from ..mlp import srelu_mlp
from ..moe import routed_srelu_experts
from .hf_chunked_loss import ChunkedLossForward, check_causal_lm, check_chunk_argument

_MARK = "_cute_kernels_patch"


class NemotronHSReLUMLP(nn.Module):
    """NemotronHMLP on `srelu_mlp`: y = down_proj(relu(up_proj(x))^2)."""

    def __init__(self, original: nn.Module, *, backend: str, offload, recompute_postact: bool, fp8=None):
        super().__init__()
        self.fp8 = fp8
        self.up_proj = original.up_proj  # the same nn.Linear modules: same parameters, same keys
        self.down_proj = original.down_proj
        self.hidden_size = original.up_proj.in_features
        self.intermediate_size = original.up_proj.out_features
        self.backend = backend
        self.offload = offload
        self.recompute_postact = recompute_postact

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = srelu_mlp(x.reshape(-1, x.size(-1)), self.up_proj.weight, self.down_proj.weight, backend=self.backend,
                      offload=self.offload, recompute_postact=self.recompute_postact, fp8=self.fp8)
        return y.reshape(*lead, y.size(-1))

    def extra_repr(self) -> str:
        return f"hidden={self.hidden_size}, ffn={self.intermediate_size}, backend={self.backend!r}"


class NemotronHRoutedExperts(nn.Module):
    """NemotronHExperts on `routed_srelu_experts`: same call, same (E, F, H) / (E, H, F) parameters."""

    def __init__(self, original: nn.Module, *, backend: str, offload, recompute_postact: bool, fp8=None):
        super().__init__()
        self.fp8 = fp8
        self.up_proj = original.up_proj  # the same nn.Parameter objects
        self.down_proj = original.down_proj
        self.num_experts = original.up_proj.size(0)
        self.backend = backend
        self.offload = offload
        self.recompute_postact = recompute_postact

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor):
        return routed_srelu_experts(hidden_states, top_k_index, top_k_weights, self.up_proj, self.down_proj,
                                    backend=self.backend, offload=self.offload,
                                    recompute_postact=self.recompute_postact, fp8=self.fp8)

    def extra_repr(self) -> str:
        e, f, h = self.up_proj.shape
        return f"num_experts={e}, hidden={h}, ffn={f}, backend={self.backend!r}"


@dataclass
class _Swap:
    parent: nn.Module
    name: str
    original: nn.Module
    replacement: nn.Module


@dataclass
class NemotronHPatch:
    """What `patch_nemotron_h` did; `restore()` puts the Hugging Face modules back."""

    model: nn.Module
    scheduler: object | None
    swaps: list = field(default_factory=list)
    hook: object | None = None
    extra_hooks: list = field(default_factory=list)

    @property
    def num_dense(self) -> int:
        return sum(isinstance(s.replacement, NemotronHSReLUMLP) for s in self.swaps)

    @property
    def num_routed(self) -> int:
        return sum(isinstance(s.replacement, NemotronHRoutedExperts) for s in self.swaps)

    def restore(self):
        """Put the original modules back, holding whatever parameters ours hold now (also
        after a `load_state_dict(..., assign=True)` replaced them)."""
        for s in reversed(self.swaps):
            for name in ("up_proj", "down_proj"):
                cur = getattr(s.replacement, name)
                if isinstance(cur, nn.Parameter):
                    s.original._parameters[name] = cur
                else:
                    s.original._modules[name] = cur
            s.original.train(s.replacement.training)
            setattr(s.parent, s.name, s.original)
        self.swaps.clear()
        if self.hook is not None:
            self.hook.remove()
            self.hook = None
        for h in self.extra_hooks:
            h.remove()
        self.extra_hooks.clear()
        if getattr(self.model, _MARK, None) is self:
            delattr(self.model, _MARK)


def _hf_classes():
    try:
        from transformers.models.nemotron_h import modeling_nemotron_h as m
    except ImportError as e:  # pragma: no cover - the extra is missing
        raise ImportError("patch_nemotron_h needs Hugging Face transformers 5.x with Nemotron-H "
                          "(pip install 'cute-kernels[transformers]')") from e
    return m


def _check_config(config):
    act = getattr(config, "mlp_hidden_act", None)
    if act != "relu2":
        raise InputError(f"config.mlp_hidden_act is {act!r}: cute_kernels runs the squared ReLU ('relu2') only")
    if getattr(config, "mlp_bias", False):
        raise InputError("config.mlp_bias is True: the cute_kernels MLP has no biases (needs mlp_bias=False)")


def _check_module(name: str, mod: nn.Module):
    if getattr(mod, "_hf_hook", None) is not None or mod._forward_hooks or mod._forward_pre_hooks:
        raise InputError(f"model.{name} has forward hooks (accelerate device_map/offload or user hooks): "
                         "patching would drop them; patch before adding hooks")
    for pname, p in mod.named_parameters(recurse=True):
        if type(p.data) is not torch.Tensor:
            raise InputError(f"model.{name}.{pname} is a {type(p.data).__name__} (tensor-parallel or quantized "
                             "weights are not supported): patch an unsharded model")
    if getattr(mod, "_is_expert_parallel", False):
        raise InputError(f"model.{name} is expert-parallel (experts._is_expert_parallel): not supported")


def _make_scheduler(offload, num_layers: int):
    if offload is None:
        return None
    from offload import MeasuredOffloadScheduler, OffloadPolicy, OffloadScheduler

    if isinstance(offload, str):
        if offload not in ("auto", "auto_measured"):
            raise InputError(f"offload must be None, 'auto', 'auto_measured', an OffloadPolicy or an OffloadScheduler, "
                             f"got {offload!r}")
        offload = OffloadPolicy(auto=True, peak="measured" if offload == "auto_measured" else "assumed")
    if isinstance(offload, OffloadPolicy):
        cls = MeasuredOffloadScheduler if offload.peak == "measured" else OffloadScheduler
        return cls(offload, num_layers=num_layers)
    if isinstance(offload, OffloadScheduler):
        if offload.num_layers is None:
            offload.num_layers = num_layers
        elif offload.num_layers != num_layers:
            raise InputError(f"offload: the OffloadScheduler has num_layers={offload.num_layers} but the model has "
                             f"{num_layers} layers to patch (each MLP, shared expert and routed-experts module is "
                             f"one): make it with num_layers={num_layers}, or None to have it set here")
        return offload
    raise InputError(f"offload must be None, 'auto', 'auto_measured', an OffloadPolicy or an OffloadScheduler, "
                     f"got {type(offload).__name__}")


def patch_nemotron_h(model: nn.Module, *, offload=None, backend: str = "auto",
                     recompute_postact: bool = False, fp8=None, chunked_loss=False) -> NemotronHPatch:
    """Run `model`'s Nemotron-H MLP and routed-expert layers on cute_kernels; returns the
    handle whose `restore()` undoes it.  backend: "auto" (CuTe kernels on a Hopper GPU
    with bf16/fp16 weights, else torch), "cute" or "torch".  fp8: an `Fp8Recipe` runs every patched
    MLP and routed-expert step in FP8 (cute_kernels/fp8/mlp.py).  chunked_loss: True (chunk size
    from the vocabulary) or tokens per chunk computes a labelled forward's loss with the LM head
    and cross-entropy in token chunks, never holding the logits (hf_chunked_loss.py): same
    `outputs.loss`, but `outputs.logits` is None when `labels` are given."""
    chunk_tokens = check_chunk_argument(chunked_loss)
    if fp8 is not None:
        from ..fp8 import Fp8Recipe

        if not isinstance(fp8, Fp8Recipe):
            raise InputError(f"fp8 must be a cute_kernels.fp8.Fp8Recipe or None, got {type(fp8).__name__}")
    m = _hf_classes()
    if backend not in ("auto", "cute", "torch"):
        raise InputError(f"backend must be 'auto', 'cute' or 'torch', got {backend!r}")
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be an nn.Module, got {type(model).__name__}")
    if getattr(model, _MARK, None) is not None:
        raise InputError("model is already patched by patch_nemotron_h (restore() it first)")
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) != "nemotron_h":
        raise InputError(f"model.config.model_type must be 'nemotron_h', got {getattr(config, 'model_type', None)!r}")
    if not any(isinstance(mod, m.NemotronHModel) for mod in model.modules()):
        raise InputError(f"model ({type(model).__name__}) holds no transformers NemotronHModel: a model loaded "
                         "with trust_remote_code (per-expert nn.Linear experts) is not supported")
    _check_config(config)
    targets = []  # (qualified name, parent, attribute, module, kind)
    for pname, parent in model.named_modules():
        for attr, child in parent.named_children():
            qual = f"{pname}.{attr}" if pname else attr
            if type(child) is m.NemotronHMLP:
                targets.append((qual, parent, attr, child, NemotronHSReLUMLP))
            elif type(child) is m.NemotronHExperts:
                targets.append((qual, parent, attr, child, NemotronHRoutedExperts))
    if not targets:
        raise InputError("model has no NemotronHMLP or NemotronHExperts module to patch "
                         "(config.layers_block_type has no 'mlp' or 'moe' layer)")
    for qual, _, _, child, _ in targets:
        _check_module(qual, child)
    if chunk_tokens is not None:
        check_causal_lm(model)
    checkpointing = getattr(model, "is_activation_checkpointing", None)
    if checkpointing is None:  # transformers before the rename
        checkpointing = getattr(model, "is_gradient_checkpointing", False)
    if offload is not None and checkpointing:
        raise InputError("offload with gradient checkpointing is not supported (the recompute would run the "
                         "layers' forward again inside backward)")
    sched = _make_scheduler(offload, num_layers=len(targets))
    handle = NemotronHPatch(model, sched)
    for _, parent, attr, child, cls in targets:
        new = cls(child, backend=backend, offload=sched, recompute_postact=recompute_postact, fp8=fp8)
        new.train(child.training)
        setattr(parent, attr, new)
        handle.swaps.append(_Swap(parent, attr, child, new))
    if chunk_tokens is not None:
        handle.extra_hooks.append(ChunkedLossForward(model, chunk_tokens))
    if isinstance(sched, _measured_class()):
        _capture_whole_forward(model, sched, handle)
    elif sched is not None:
        base = next(mod for mod in model.modules() if isinstance(mod, m.NemotronHModel))
        def _new_step(_mod, _args):  # returns None: a pre-hook's return value would replace the inputs
            sched.end_step()

        handle.hook = base.register_forward_pre_hook(_new_step)
    setattr(model, _MARK, handle)
    return handle


def _measured_class():
    from offload import MeasuredOffloadScheduler

    return MeasuredOffloadScheduler


def _capture_whole_forward(model: nn.Module, sched, handle: NemotronHPatch):
    """Measured offload: the scheduler sees every tensor the whole forward saves (attention,
    norms, the LM head and loss too), from the patched model's forward pre-hook (which also
    ends the previous step) to its forward hook (also run when the forward raises)."""
    def _start(_mod, _args):
        sched.end_step()
        sched.start_forward()

    def _stop(_mod, _args, _out):
        sched.stop_forward()

    handle.hook = model.register_forward_pre_hook(_start)
    handle.extra_hooks.append(model.register_forward_hook(_stop, always_call=True))


def unpatch(model: nn.Module):
    """Undo `patch_nemotron_h(model)` (no-op when the model is not patched)."""
    handle = getattr(model, _MARK, None)
    if handle is not None:
        handle.restore()
