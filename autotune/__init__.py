"""Optuna autotuning of the GEMM configs per shape and architecture (its own issue;
nothing here yet beyond the package)."""
