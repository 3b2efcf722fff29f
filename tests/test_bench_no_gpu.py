"""Every benchmark, without a GPU, prints one line saying it needs one and exits non-zero
(CUDA is hidden through torch.cuda.is_available, so this runs on GPU machines too)."""
import importlib

import pytest
import torch

ENTRY = {"bench_gemm": "main", "bench_mlp": "main", "bench_offload": "main", "bench_dense_configs": "main",
         "bench_grouped_configs": "main", "bench_host_overhead": "cli", "bench_quantize": "main",
         "memory_timeline": "main", "bench_nemotron": "main", "train_nemotron": "main", "bench_fp8": "main",
         "bench_untuned_m": "main", "bench_fp8_untuned_m": "main"}


@pytest.mark.parametrize("name", sorted(ENTRY))
def test_benchmark_without_gpu_says_so_in_one_line(name, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    entry = getattr(importlib.import_module(f"benchmarks.{name}"), ENTRY[name])
    rc = entry([])
    out = capsys.readouterr()
    assert rc not in (0, None)
    assert out.out == ""
    assert out.err.strip().splitlines() == [f"{name} needs a CUDA GPU"]
