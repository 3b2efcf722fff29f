"""Tuned GEMM configs shipped with the package: `<arch>/<kernel>.yaml` (written by
`python -m autotune sweep`, read by cute_kernels.config_lookup)."""
from importlib.resources import files


def root():
    """The folder holding the tuned YAML files, wherever the package is installed."""
    return files(__name__)
