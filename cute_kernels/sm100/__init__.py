"""Blackwell (sm_100a) GEMM kernel family: config space (config.py), kernel (gemm.py)."""
