"""cute_kernels: fast, memory-lean squared-ReLU MLP kernels (CuTe DSL) for NVIDIA GPUs.

Public API:
- `fc1_srelu(x, w1, *, m_splits=None, prob=None, store_preact=True, config=None)`
- `fc2(h, w2, *, m_splits=None, config=None)`
- `GemmConfig`, `validate`, `default_config`, `ConfigError`, `InputError`
"""
from .checks import InputError
from .config import ConfigError, GemmConfig, default_config, validate
from .gemm_ops import fc1_srelu, fc2

__all__ = ["fc1_srelu", "fc2", "GemmConfig", "validate", "default_config", "ConfigError", "InputError"]
