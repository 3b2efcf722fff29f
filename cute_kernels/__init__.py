"""cute_kernels: fast, memory-lean squared-ReLU MLP kernels (CuTe DSL) for NVIDIA GPUs.

Public API:
- `fc1_srelu(x, w1, *, m_splits=None, prob=None, store_preact=True, config=None)`
- `fc2(h, w2, *, m_splits=None, config=None)`
- `fc2_dgrad_dsrelu(dy, w2, preact, *, m_splits=None, prob=None, store_postact=False)` (FC2 dgrad,
  SReLU derivative, postact recompute and router gradient fused)
- `weight_grad(dy, x, *, m_splits=None, out=None, accumulate=False)` (dW = dy^T x, per expert when grouped)
- `srelu_mlp(x, w1, w2, *, m_splits=None, prob=None, recompute_postact=False, fuse_wgrad_accumulation=False,
  backend="auto")`
- `SReLUMLP`, `GroupedSReLUMLP` (nn.Modules)
- `GemmConfig`, `validate`, `default_config`, `ConfigError`, `InputError`
"""
from .checks import InputError
from .config import ConfigError, GemmConfig, default_config, validate
from .gemm_ops import fc1_srelu, fc2, fc2_dgrad_dsrelu, weight_grad
from .mlp import srelu_mlp
from .modules import GroupedSReLUMLP, SReLUMLP

import logging as _logging

# A library logs, the application decides where to: without a handler of its own, the
# "cute_kernels" logger would reach Python's last-resort stderr printer when nothing is
# configured.  logging.basicConfig() (or a handler on this logger) shows its warnings.
_logging.getLogger("cute_kernels").addHandler(_logging.NullHandler())

__all__ = ["fc1_srelu", "fc2", "fc2_dgrad_dsrelu", "weight_grad", "srelu_mlp", "SReLUMLP", "GroupedSReLUMLP", "GemmConfig", "validate", "default_config",
           "ConfigError", "InputError"]
