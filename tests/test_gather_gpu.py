"""GPU: the gathered grouped FC1 (fc1_srelu(..., a_rows=idx), KernelKey.gather_a) gives the same
bits as the plain grouped FC1 on the gathered copy x[idx]: same tiles, same K order, only the
loads of A differ.  Empty experts, odd splits (padding rows inside tiles), K not a multiple of
tile_k (the zero-filled K tail), a CUDA-tensor m_splits, rows taken several times or never,
and routed_srelu_experts(fused_gather=True) against the x_perm path."""
import pytest
import torch

from cute_kernels import GemmConfig, fc1_srelu
from reference import random_splits

pytestmark = pytest.mark.gpu

CONFIGS = {
    "coop_128x256_c11": GemmConfig(cluster_n=1),
    "coop_128x256_c12": GemmConfig(),  # A not multicast when gathered: each CTA loads its own rows
    "coop_128x128_c21": GemmConfig(tile_n=128, cluster_m=2, cluster_n=1),  # B multicast, tiles per cluster
    "coop_128x64_c11_k128": GemmConfig(tile_n=64, tile_k=128, cluster_n=1, epi_n=64, epi_stages=3),
    "pingpong_64x256_c12": GemmConfig(tile_m=64, schedule="pingpong"),
    "pingpong_128x128_c21": GemmConfig(tile_m=128, tile_n=128, cluster_m=2, cluster_n=1, schedule="pingpong"),
}


def _gen(seed=None):
    g = torch.Generator()
    g.manual_seed(seed) if seed is not None else g.seed()
    return g


def _problem(tokens, rows, n, k, experts, gen, *, empty=0, dtype=torch.bfloat16):
    x = (torch.randn(tokens, k, generator=gen) / k ** 0.25).to(dtype).cuda()
    w1 = (torch.randn(experts, n, k, generator=gen) / k ** 0.25).to(dtype).cuda()
    idx = torch.randint(0, tokens, (rows,), generator=gen, dtype=torch.int64).cuda()
    splits = random_splits(rows, experts, gen, empty=empty)
    prob = torch.rand(rows, generator=gen).cuda()
    return x, w1, idx, splits, prob


def _same_bits(a, b, what):
    assert a.shape == b.shape, what
    assert torch.equal(a.view(torch.int16), b.view(torch.int16)), \
        f"{what}: {int((a.view(torch.int16) != b.view(torch.int16)).sum())} elements differ"


@pytest.mark.parametrize("cfg_name", list(CONFIGS))
@pytest.mark.parametrize("tokens,rows,n,k,experts,empty", [
    (300, 777, 384, 136, 5, 1),  # K tail (136 = 2 * 64 + 8), odd splits, an empty expert
    (64, 1, 256, 64, 3, 2),  # one row, two empty experts
    (4096, 6 * 2048, 1856, 2688, 8, 0),  # Nemotron-shaped FC1, top-6 pairs of 2048 tokens
])
def test_gathered_fc1_equals_fc1_on_the_gathered_copy(cfg_name, tokens, rows, n, k, experts, empty):
    cfg = CONFIGS[cfg_name]
    x, w1, idx, splits, prob = _problem(tokens, rows, n, k, experts, _gen(), empty=empty)
    x_perm = x.index_select(0, idx)
    pre_ref, post_ref = fc1_srelu(x_perm, w1, m_splits=splits, prob=prob, config=cfg)
    pre, post = fc1_srelu(x, w1, m_splits=splits, prob=prob, config=cfg, a_rows=idx)
    torch.cuda.synchronize()
    _same_bits(pre, pre_ref, "preact")
    _same_bits(post, post_ref, "postact")


@pytest.mark.parametrize("store_preact", [False, True])
def test_gathered_fc1_with_gpu_splits_and_int32_rows(store_preact):
    gen = _gen()
    x, w1, idx, splits, _ = _problem(500, 1200, 512, 256, 16, gen, empty=3)
    splits_t = torch.tensor(splits, dtype=torch.int64).cuda()
    rows = idx.to(torch.int32)
    ref = fc1_srelu(x.index_select(0, idx), w1, m_splits=splits_t, store_preact=store_preact)
    got = fc1_srelu(x, w1, m_splits=splits_t, store_preact=store_preact, a_rows=rows)
    got2 = fc1_srelu(x, w1, m_splits=splits_t, store_preact=store_preact, a_rows=rows)  # a kept launch plan
    torch.cuda.synchronize()
    for r, g, g2, name in zip(ref, got, got2, ("preact", "postact")):
        if r is None:
            assert g is None and g2 is None
            continue
        _same_bits(g, r, name)
        _same_bits(g2, r, name + " (second call)")


def test_gathered_fc1_float16_and_every_token_once():
    gen = _gen()
    x, w1, _, splits, prob = _problem(1000, 1000, 320, 192, 4, gen, dtype=torch.float16)
    idx = torch.randperm(1000, generator=gen).cuda()
    pre_ref, post_ref = fc1_srelu(x.index_select(0, idx), w1, m_splits=splits, prob=prob)
    pre, post = fc1_srelu(x, w1, m_splits=splits, prob=prob, a_rows=idx)
    torch.cuda.synchronize()
    _same_bits(pre, pre_ref, "preact")
    _same_bits(post, post_ref, "postact")



@pytest.mark.parametrize("t,e,k,h,f,unused", [(1000, 16, 4, 256, 384, (3, 11)), (8192, 128, 6, 2688, 1856, ())])
def test_routed_experts_fused_gather_equals_the_x_perm_path(t, e, k, h, f, unused):
    from cute_kernels.moe import routed_srelu_experts

    gen = _gen()
    allowed = torch.tensor([i for i in range(e) if i not in unused])
    idx = torch.stack([allowed[torch.randperm(len(allowed), generator=gen)[:k]] for _ in range(t)]).cuda()
    hidden = (torch.randn(t, h, generator=gen)).to(torch.bfloat16).cuda()
    weight = torch.rand(t, k, generator=gen).cuda()
    w1 = (torch.randn(e, f, h, generator=gen) / h ** 0.5).to(torch.bfloat16).cuda()
    w2 = (torch.randn(e, h, f, generator=gen) / f ** 0.5).to(torch.bfloat16).cuda()
    dy = torch.randn(t, h, generator=gen).to(torch.bfloat16).cuda()

    def run(fused):
        leaves = [v.clone().requires_grad_() for v in (hidden, weight, w1, w2)]
        y = routed_srelu_experts(leaves[0], idx, leaves[1], leaves[2], leaves[3], backend="cute", fused_gather=fused)
        y.backward(dy)
        return [y] + [v.grad for v in leaves]

    base, fused = run(False), run(True)
    torch.cuda.synchronize()
    for name, a, b in zip(("y", "hidden", "weight", "w1", "w2"), fused, base):
        assert torch.equal(a, b), f"{name}: {int((a != b).sum())} elements differ"
