"""Activation offload scheduler and selective-offload policy (its own issue; nothing
here yet beyond the package)."""
