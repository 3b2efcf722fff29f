"""The tests' float32 references and helpers: those of the package (one copy)."""
from cute_kernels.reference import grouped_ref, random_splits, rel_err  # noqa: F401
