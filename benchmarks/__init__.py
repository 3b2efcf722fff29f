"""Benchmarks of cute_kernels against torch, run on the GPU machine."""
