"""The row-sum partials (the dact epilogue's router gradient, one fp32 per (row, N tile)) are
written inside their (M, N tiles) tensor only: with an odd number of N tiles on a 1x2 cluster the
cluster's second CTA holds an N tile past the last one, whose partial column does not exist.  A
canary region right after the partials (NaN-poisoned) must stay untouched, bf16 and FP8, dense and
grouped.  (Found reading the epilogue on 2026-12-03; the store is guarded since.)"""
import pytest
import torch

from cute_kernels.compile import KernelKey
from cute_kernels.config import GemmConfig
from cute_kernels.epilogue import EpilogueSpec
from cute_kernels.gemm_base.launch_args import GemmArgs
from cute_kernels.gemm_ops import _run
from cute_kernels.host_args import as_mkl, as_nkl, splits_metadata

gpu = pytest.mark.gpu


@gpu
@pytest.mark.parametrize("grouped", [False, True])
def test_bf16_rowsum_partials_stay_in_bounds(grouped):
    m, k, n = 300, 256, 3 * 128  # three N tiles on 1x2 clusters: one CTA past N
    cfg = GemmConfig(tile_m=128, tile_n=128, cluster_m=1, cluster_n=2)
    epi = EpilogueSpec("dact", row_scale=True, row_sum=True)
    key = KernelKey("sm90", cfg, epi, grouped, "bfloat16", "k", "n")
    splits = [100, 0, 200]
    dy = torch.randn(m, k, device="cuda").bfloat16()
    w = torch.randn(*((3,) if grouped else ()), k, n, device="cuda").bfloat16()  # w2: (H, F), read N-major
    pre = torch.randn(m, n, device="cuda").bfloat16()
    prob = torch.rand(m, device="cuda")
    nt = -(-n // cfg.tile_n)
    buf = torch.full(((nt + 2) * m,), float("nan"), device="cuda")
    partials = buf[: nt * m].view(nt, m)
    dpre = torch.empty(m, n, device="cuda").bfloat16()
    cu_rows = cu_tiles = None
    if grouped:
        cu_rows, cu_tiles = splits_metadata(splits, cfg.tile_m, dy.device, cfg.cluster_m)
    b = w.transpose(-2, -1)  # (N, K) views, N-major
    _run(key, GemmArgs(as_mkl(dy), as_nkl(b), as_mkl(dpre), None, prob, as_mkl(pre), partials.t(), cu_rows, cu_tiles))
    torch.cuda.synchronize()
    assert buf[nt * m:].isnan().all(), "a row-sum partial was written past its tensor"
    assert not partials.isnan().any(), "every (row, N tile) partial written"
