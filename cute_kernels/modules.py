"""nn.Modules around `srelu_mlp`: a dense MLP and a grouped (mixture-of-experts) one.

`SReLUMLP(hidden, ffn)` holds `fc1` (ffn x hidden) and `fc2` (hidden x ffn) as
bias-free nn.Linear, so weight layout, initialization and state_dict keys are those of
nn.Linear.  `GroupedSReLUMLP(num_experts, hidden, ffn)` holds `fc1_weight` (E, ffn,
hidden) and `fc2_weight` (E, hidden, ffn), each expert initialized like nn.Linear.
With `fuse_wgrad_accumulation=True` the weights' gradients are added into an fp32
`main_grad` attribute the training loop gives each weight (Megatron style) instead of
being returned as .grad.  With `offload=sched` (an offload.OffloadScheduler) each forward
is the next layer of the step for that scheduler (srelu_mlp's `offload`).  `activation=`
picks the activation (default relu^2; e.g. "tanh_srelu:4.0", see srelu_mlp).
Bad inputs raise srelu_mlp's `InputError`s (cute_kernels.mlp_checks), on every backend.
With `fp8=Fp8Recipe()` the step runs in FP8 (srelu_mlp's `fp8`).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .activations import resolve_activation
from .checks import InputError
from .mlp import srelu_mlp
from .mlp_checks import check_module_dtype, check_module_input


def _module_activation(activation):
    try:
        return resolve_activation(activation)
    except (TypeError, ValueError) as e:
        raise InputError(f"activation: {e}") from None


class SReLUMLP(nn.Module):
    def __init__(self, hidden: int, ffn: int, *, recompute_postact: bool = False, backend: str = "auto",
                 fuse_wgrad_accumulation: bool = False, offload=None, activation=None, fp8=None, device=None, dtype=None,
                 dpreact_over_preact: bool = False):
        super().__init__()
        check_module_dtype(dtype)
        self.activation = _module_activation(activation)
        self.fp8 = fp8
        self.fc1 = nn.Linear(hidden, ffn, bias=False, device=device, dtype=dtype)
        self.fc2 = nn.Linear(ffn, hidden, bias=False, device=device, dtype=dtype)
        self.recompute_postact = recompute_postact
        self.dpreact_over_preact = dpreact_over_preact  # srelu_mlp's option: dpreact written over preact
        self.backend = backend
        self.fuse_wgrad_accumulation = fuse_wgrad_accumulation
        self.offload = offload

    def forward(self, x: torch.Tensor, prob: torch.Tensor | None = None) -> torch.Tensor:
        check_module_input(x, self.fc1.in_features)
        shape = x.shape
        y = srelu_mlp(x.reshape(-1, shape[-1]), self.fc1.weight, self.fc2.weight, prob=prob,
                      recompute_postact=self.recompute_postact, backend=self.backend,
                      fuse_wgrad_accumulation=self.fuse_wgrad_accumulation, offload=self.offload,
                      activation=self.activation, fp8=self.fp8, dpreact_over_preact=self.dpreact_over_preact)
        return y.reshape(shape)


class GroupedSReLUMLP(nn.Module):
    def __init__(self, num_experts: int, hidden: int, ffn: int, *, recompute_postact: bool = False,
                 backend: str = "auto", fuse_wgrad_accumulation: bool = False, offload=None, activation=None, fp8=None,
                 device=None, dtype=None, dpreact_over_preact: bool = False):
        super().__init__()
        check_module_dtype(dtype)
        self.activation = _module_activation(activation)
        self.fp8 = fp8
        self.num_experts, self.hidden, self.ffn = num_experts, hidden, ffn
        self.fc1_weight = nn.Parameter(torch.empty(num_experts, ffn, hidden, device=device, dtype=dtype))
        self.fc2_weight = nn.Parameter(torch.empty(num_experts, hidden, ffn, device=device, dtype=dtype))
        self.recompute_postact = recompute_postact
        self.dpreact_over_preact = dpreact_over_preact  # srelu_mlp's option: dpreact written over preact
        self.backend = backend
        self.fuse_wgrad_accumulation = fuse_wgrad_accumulation
        self.offload = offload
        self.reset_parameters()

    def reset_parameters(self):
        # nn.Linear's initialization, expert by expert
        for w in (self.fc1_weight, self.fc2_weight):
            for e in range(self.num_experts):
                nn.init.kaiming_uniform_(w[e], a=math.sqrt(5))

    def forward(self, x: torch.Tensor, m_splits, prob: torch.Tensor | None = None) -> torch.Tensor:
        """x: (tokens, hidden) sorted by expert; m_splits: tokens per expert."""
        return srelu_mlp(x, self.fc1_weight, self.fc2_weight, m_splits=m_splits, prob=prob,
                         recompute_postact=self.recompute_postact, backend=self.backend,
                         fuse_wgrad_accumulation=self.fuse_wgrad_accumulation, offload=self.offload,
                         activation=self.activation, fp8=self.fp8,
                         dpreact_over_preact=self.dpreact_over_preact)

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, hidden={self.hidden}, ffn={self.ffn}, activation={self.activation.key()}"
