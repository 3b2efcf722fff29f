"""cute_kernels: fast, memory-lean squared-ReLU MLP kernels (CuTe DSL) for NVIDIA GPUs.

Public API:
- `fc1_srelu(x, w1, *, m_splits=None, prob=None, store_preact=True, config=None)`
- `fc2(h, w2, *, m_splits=None, config=None)`
- `fc2_dgrad_dsrelu(dy, w2, preact, *, m_splits=None, prob=None, store_postact=False)` (FC2 dgrad,
  SReLU derivative, postact recompute and router gradient fused)
- `weight_grad(dy, x, *, m_splits=None, out=None, accumulate=False)` (dW = dy^T x, per expert when grouped)
- `srelu_mlp(x, w1, w2, *, m_splits=None, prob=None, recompute_postact=False, fuse_wgrad_accumulation=False,
  backend="auto")`
- `routed_srelu_experts(hidden, topk_idx, topk_weight, w1, w2, ...)` (a routed MoE layer: sort by expert,
  grouped op with the router weights as prob, combine; cute_kernels.moe)
- `SReLUMLP`, `GroupedSReLUMLP` (nn.Modules)
- `cute_kernels.integrations.transformers.patch_nemotron_h(model)` (Hugging Face Nemotron-H; optional extra)
- `GemmConfig`, `validate`, `default_config`, `ConfigError`, `InputError`
- `SReLU`, `ScaledTanhSReLU` (activations: `activation=` of the ops, srelu_mlp and the modules)
"""
from .activations import ScaledTanhSReLU, SReLU
from .checks import InputError
from .config import ConfigError, GemmConfig, default_config, validate
from .gemm_ops import fc1_srelu, fc2, fc2_dgrad_dsrelu, weight_grad
from .mlp import srelu_mlp
from .moe import routed_srelu_experts
from .modules import GroupedSReLUMLP, SReLUMLP

import logging as _logging

# A library logs, the application decides where to: without a handler of its own, the
# "cute_kernels" logger would reach Python's last-resort stderr printer when nothing is
# configured.  logging.basicConfig() (or a handler on this logger) shows its warnings.
_logging.getLogger("cute_kernels").addHandler(_logging.NullHandler())

__all__ = ["SReLU", "ScaledTanhSReLU", "fc1_srelu", "fc2", "fc2_dgrad_dsrelu", "weight_grad", "srelu_mlp",
           "routed_srelu_experts", "SReLUMLP", "GroupedSReLUMLP", "GemmConfig", "validate", "default_config",
           "ConfigError", "InputError"]
