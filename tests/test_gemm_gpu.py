"""GPU numerics of fc1_srelu and fc2 (dense and grouped) against float32 torch.

Fresh random inputs every run, outputs poisoned with NaN before the call and every
element checked, odd sizes, 1 to 128 experts with empty and skewed experts.
"""
import pytest
import torch

from cute_kernels import GemmConfig, fc1_srelu, fc2
from cute_kernels.config import epilogue_misfit, narrowed_for_epilogue
from cute_kernels.epilogue import EpilogueSpec
from reference import grouped_ref, rel_err, random_splits

pytestmark = pytest.mark.gpu
TOL = {torch.bfloat16: 1e-2, torch.float16: 5e-3}

CONFIGS = {
    "coop_128x256_c12": GemmConfig(),
    "coop_128x128_c21": GemmConfig(tile_n=128, cluster_m=2, cluster_n=1, raster="m", swizzle=1),
    "coop_128x192_c22": GemmConfig(tile_n=192, cluster_m=2, cluster_n=2, swizzle=2),
    "coop_128x64_c11_k128": GemmConfig(tile_n=64, tile_k=128, cluster_n=1, epi_n=64, epi_stages=3),
    "pingpong_64x256_c12": GemmConfig(tile_m=64, schedule="pingpong"),
    "pingpong_64x128_c11": GemmConfig(tile_m=64, tile_n=128, cluster_n=1, schedule="pingpong", raster="m", swizzle=4),
    # 128-row ping-pong tiles: two 64-row WGMMA blocks per warpgroup
    "pingpong_128x128_c21": GemmConfig(tile_m=128, tile_n=128, cluster_m=2, cluster_n=1, schedule="pingpong"),
    "pingpong_128x192_c21_m": GemmConfig(tile_m=128, tile_n=192, cluster_m=2, cluster_n=1, schedule="pingpong",
                                         raster="m", swizzle=4),
}
# The router probability (a row scale) does not fit next to 192 accumulator registers: such
# configs run without it here (tests/test_compile_sm90.py checks they are rejected with it).
SCALE_FITS = {name: epilogue_misfit(cfg, EpilogueSpec("srelu", row_scale=True)) is None for name, cfg in CONFIGS.items()}
GROUPED_CONFIGS = CONFIGS  # cluster_m 2: each expert's tiles are rounded up to whole clusters


def _gen():
    g = torch.Generator()
    g.seed()
    return g


def _inputs(m, n, k, dtype, gen, experts=None):
    x = (torch.randn(m, k, generator=gen) / k ** 0.25).to(dtype).cuda()
    shape = (experts, n, k) if experts else (n, k)
    w = (torch.randn(*shape, generator=gen) / k ** 0.25).to(dtype).cuda()
    return x, w


def _poisoned(m, n, dtype):
    return torch.full((m, n), float("nan"), dtype=dtype, device="cuda")


def _check(out, ref, dtype, what):
    assert torch.isfinite(out).all(), f"{what}: unwritten (NaN) or non-finite elements"
    err = rel_err(out, ref)
    assert err < TOL[dtype], f"{what}: relative error {err:.3e}"


@pytest.mark.parametrize("cfg_name", list(CONFIGS))
@pytest.mark.parametrize("mnk", [(1, 256, 64), (333, 384, 136), (1000, 1000, 512), (2048, 2048, 4096)])
def test_fc1_srelu_dense(cfg_name, mnk):
    m, n, k = mnk
    dtype = torch.bfloat16
    gen = _gen()
    x, w = _inputs(m, n, k, dtype, gen)
    prob = torch.rand(m, generator=gen).cuda() if SCALE_FITS[cfg_name] else None
    pre, post = _poisoned(m, n, dtype), _poisoned(m, n, dtype)
    fc1_srelu(x, w, prob=prob, config=CONFIGS[cfg_name], out=(pre, post))
    ref = x.float() @ w.float().t()
    _check(pre, ref, dtype, "preact")
    _check(post, torch.relu(ref).square() * (prob[:, None] if prob is not None else 1), dtype, "postact")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("store_preact", [True, False])
def test_fc1_srelu_default_config(dtype, store_preact):
    gen = _gen()
    m, n, k = 777, 1536, 1024
    x, w = _inputs(m, n, k, dtype, gen)
    pre, post = fc1_srelu(x, w, store_preact=store_preact)
    ref = x.float() @ w.float().t()
    assert (pre is not None) == store_preact
    if store_preact:
        _check(pre, ref, dtype, "preact")
    _check(post, torch.relu(ref).square(), dtype, "postact")


@pytest.mark.parametrize("cfg_name", list(CONFIGS))
@pytest.mark.parametrize("mnk", [(1, 128, 64), (517, 640, 264), (4096, 1024, 2048)])
def test_fc2_dense(cfg_name, mnk):
    m, n, k = mnk
    gen = _gen()
    x, w = _inputs(m, n, k, torch.bfloat16, gen)
    y = _poisoned(m, n, torch.bfloat16)
    fc2(x, w, config=CONFIGS[cfg_name], out=y)
    _check(y, x.float() @ w.float().t(), torch.bfloat16, "fc2")


@pytest.mark.parametrize("cfg_name", list(GROUPED_CONFIGS))
@pytest.mark.parametrize("experts,m,empty,skew", [(1, 300, 0, False), (8, 2000, 2, False), (8, 4096, 0, True),
                                                  (128, 8192, 17, True), (16, 5, 11, False)])
@pytest.mark.parametrize("splits_as_tensor", [False, True])
def test_fc1_srelu_grouped(cfg_name, experts, m, empty, skew, splits_as_tensor):
    n, k = 384, 256
    dtype = torch.bfloat16
    gen = _gen()
    x, w = _inputs(m, n, k, dtype, gen, experts)
    splits = random_splits(m, experts, gen, empty=empty, skew=skew)
    prob = torch.rand(m, generator=gen).cuda() if SCALE_FITS[cfg_name] else None
    m_splits = torch.tensor(splits, device="cuda") if splits_as_tensor else splits
    pre, post = _poisoned(m, n, dtype), _poisoned(m, n, dtype)
    fc1_srelu(x, w, m_splits=m_splits, prob=prob, config=GROUPED_CONFIGS[cfg_name], out=(pre, post))
    ref = grouped_ref(x, w, splits)
    _check(pre, ref, dtype, "grouped preact")
    _check(post, torch.relu(ref).square() * (prob[:, None] if prob is not None else 1), dtype, "grouped postact")


@pytest.mark.parametrize("experts,m", [(8, 3000), (128, 10000)])
def test_fc2_grouped(experts, m):
    n, k = 2688, 1856
    gen = _gen()
    x, w = _inputs(m, n, k, torch.bfloat16, gen, experts)
    splits = random_splits(m, experts, gen, empty=experts // 8, skew=True)
    y = _poisoned(m, n, torch.bfloat16)
    fc2(x, w, m_splits=splits, out=y)
    _check(y, grouped_ref(x, w, splits), torch.bfloat16, "grouped fc2")


def test_grouped_all_rows_in_one_expert_and_empty_rest():
    gen = _gen()
    x, w = _inputs(513, 256, 128, torch.bfloat16, gen, 4)
    splits = [0, 0, 513, 0]
    _, post = fc1_srelu(x, w, m_splits=splits, store_preact=False)
    _check(post, torch.relu(grouped_ref(x, w, splits)).square(), torch.bfloat16, "one expert")


def test_large_k_and_new_shape_no_recompile():
    from cute_kernels import gemm_ops

    gen = _gen()
    cfg = GemmConfig(tile_n=128)
    for m, n, k in [(256, 512, 8192), (640, 768, 4104)]:
        x, w = _inputs(m, n, k, torch.bfloat16, gen)
        before = gemm_ops.compiled_count()
        y = fc2(x, w, config=cfg)
        _check(y, x.float() @ w.float().t(), torch.bfloat16, f"k={k}")
    assert gemm_ops.compiled_count() == before, "a new shape recompiled the kernel"


@pytest.mark.parametrize("a_t,b_t", [(True, False), (False, True), (True, True)])
def test_transposed_operands(a_t, b_t):
    """Operands contiguous along M (A) or N (B): the kernel reads them as they are."""
    gen = _gen()
    m, n, k = 264, 392, 328
    x, w = _inputs(m, n, k, torch.bfloat16, gen)
    xa = x.t().contiguous().t() if a_t else x
    wb = w.t().contiguous().t() if b_t else w
    y = _poisoned(m, n, torch.bfloat16)
    fc2(xa, wb, config=GemmConfig(tile_n=128), out=y)
    _check(y, x.float() @ w.float().t(), torch.bfloat16, f"fc2 a_t={a_t} b_t={b_t}")
    pre, post = _poisoned(m, n, torch.bfloat16), _poisoned(m, n, torch.bfloat16)
    fc1_srelu(xa, wb, out=(pre, post))
    ref = x.float() @ w.float().t()
    _check(post, torch.relu(ref).square(), torch.bfloat16, "fc1 transposed")


def test_grouped_transposed_weights():
    gen = _gen()
    experts, m, n, k = 6, 1500, 384, 256
    x, w = _inputs(m, n, k, torch.bfloat16, gen, experts)
    wt = w.transpose(1, 2).contiguous().transpose(1, 2)  # (E, N, K) contiguous along N
    splits = random_splits(m, experts, gen, empty=1)
    y = _poisoned(m, n, torch.bfloat16)
    fc2(x, wt, m_splits=splits, out=y)
    _check(y, grouped_ref(x, w, splits), torch.bfloat16, "grouped fc2 with N-major weights")



@pytest.mark.parametrize("grouped", [False, True])
def test_fc2_transpose_w_is_bitwise_fc2_of_the_transpose(grouped):
    """fc2(h, w1, transpose_w=True) (the FC1 data gradient reading w1 in place: its kernel view made
    in one op) gives exactly fc2(h, w1^T), also after w1 is updated in place."""
    gen = _gen()
    experts, m, f, h = 5, 1333, 328, 264
    _, w1 = _inputs(m, f, h, torch.bfloat16, gen, experts if grouped else None)  # (E, F, H) / (F, H): FC1's weight
    hin = (torch.randn(m, f, generator=gen) / f ** 0.25).to("cuda", torch.bfloat16)  # dpreact
    splits = random_splits(m, experts, gen, empty=1) if grouped else None
    for _ in range(2):
        ref = fc2(hin, w1.transpose(-2, -1), m_splits=splits)
        got = fc2(hin, w1, m_splits=splits, transpose_w=True)
        assert torch.equal(got, ref)
        w1.mul_(0.5)

@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("store_postact", [False, True])
@pytest.mark.parametrize("with_prob", [False, True])
@pytest.mark.parametrize("cfg_name", ["coop_128x256_c12", "pingpong_64x128_c11", "coop_128x128_c21",
                                      "pingpong_128x128_c21", "pingpong_128x192_c21_m"])
def test_fc2_dgrad_dsrelu(grouped, store_postact, with_prob, cfg_name):
    from cute_kernels import fc2_dgrad_dsrelu

    cfg = CONFIGS[cfg_name]
    if with_prob:
        # the row sum needs narrower tiles: as the op narrows a looked-up config
        cfg = narrowed_for_epilogue(cfg, EpilogueSpec("dsrelu", row_scale=True, row_sum=True))
    gen = _gen()
    m, h, f, e = 1111, 264, 1000, 5
    dy = torch.randn(m, h, generator=gen).bfloat16().cuda()
    w2 = (torch.randn(*((e, h, f) if grouped else (h, f)), generator=gen) / h ** 0.5).bfloat16().cuda()
    pre = torch.randn(m, f, generator=gen).bfloat16().cuda()
    prob = torch.rand(m, 1, generator=gen).cuda() if with_prob else None
    splits = random_splits(m, e, gen, empty=1) if grouped else None
    dpre, post, dprob = fc2_dgrad_dsrelu(dy, w2, pre, m_splits=splits, prob=prob, store_postact=store_postact,
                                         config=cfg)
    if grouped:
        dpost, s = [], 0
        for i, n in enumerate(splits):
            dpost.append(dy[s:s + n].float() @ w2[i].float())
            s += n
        dpost = torch.cat(dpost)
    else:
        dpost = dy.float() @ w2.float()
    act = torch.relu(pre.float())
    p = prob.float() if with_prob else torch.ones(m, 1, device="cuda")
    _check(dpre, 2 * dpost * act * p, torch.bfloat16, "dpreact")
    if store_postact:
        _check(post, act * act * p, torch.bfloat16, "recomputed postact")
    else:
        assert post is None
    if with_prob:
        assert dprob.dtype == torch.float32 and dprob.shape == (m,)
        _check(dprob, (dpost * act * act).sum(1), torch.bfloat16, "dprob (row sum)")
    else:
        assert dprob is None


def test_fc2_dgrad_dsrelu_rowsum_rejects_wide_tiles():
    from cute_kernels import InputError, fc2_dgrad_dsrelu

    dy = torch.randn(64, 64, device="cuda").bfloat16()
    w2 = torch.randn(64, 256, device="cuda").bfloat16()
    pre = torch.randn(64, 256, device="cuda").bfloat16()
    with pytest.raises(InputError, match="row-sum"):
        fc2_dgrad_dsrelu(dy, w2, pre, prob=torch.rand(64, device="cuda"), config=GemmConfig())


WGRAD_CONFIGS = {
    "default": None,
    "coop_128x256_c12": GemmConfig(),
    "coop_128x128_c21": GemmConfig(tile_n=128, cluster_m=2, cluster_n=1),
    "coop_128x192_c11_k128": GemmConfig(tile_n=192, tile_k=128, cluster_n=1),
    "pingpong_64x256_c21": GemmConfig(tile_m=64, schedule="pingpong", cluster_m=2, cluster_n=1),
    "pingpong_128x128_c21": GemmConfig(tile_m=128, tile_n=128, schedule="pingpong", cluster_m=2, cluster_n=1),
}


def _wgrad_ref(dy, x, splits, experts):
    if splits is None:
        return dy.float().t() @ x.float()
    out, s = [], 0
    for n in splits:
        out.append(dy[s:s + n].float().t() @ x[s:s + n].float())
        s += n
    return torch.stack(out)


@pytest.mark.parametrize("cfg_name", list(WGRAD_CONFIGS))
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("tnk", [(1, 264, 136), (1111, 264, 1000), (4096, 1024, 2048)])
def test_weight_grad_dense(cfg_name, out_dtype, tnk):
    check_weight_grad(cfg_name, False, out_dtype, tnk)


def test_weight_grad_dense_accumulates_into_main_grad():
    check_weight_grad_accumulate(False)


def test_weight_grad_dense_transposed_inputs():
    from cute_kernels import weight_grad

    gen = _gen()
    t, n, k = 2000, 256, 384
    dy = torch.randn(n, t, generator=gen).bfloat16().cuda().t()  # column-major views
    x = torch.randn(k, t, generator=gen).bfloat16().cuda().t()
    _check(weight_grad(dy, x), _wgrad_ref(dy, x, None, 1), torch.bfloat16, "dw from transposed inputs")


def check_weight_grad(cfg_name, grouped, out_dtype, tnk):
    from cute_kernels import weight_grad

    t, n, k = tnk
    e = 6
    gen = _gen()
    dy = torch.randn(t, n, generator=gen).bfloat16().cuda()
    x = torch.randn(t, k, generator=gen).bfloat16().cuda()
    splits = random_splits(t, e, gen, empty=min(2, e - 1)) if grouped else None
    if grouped and t > 1:
        splits[0] = 0  # an empty first expert too
        splits[-1] = t - sum(splits[:-1])
    shape = (e, n, k) if grouped else (n, k)
    out = torch.full(shape, float("nan"), dtype=out_dtype, device="cuda")
    weight_grad(dy, x, m_splits=splits, out=out, config=WGRAD_CONFIGS[cfg_name])
    ref = _wgrad_ref(dy, x, splits, e)
    _check(out, ref, torch.bfloat16, f"dw ({out_dtype})")
    if grouped:
        for i, cnt in enumerate(splits):
            if cnt == 0:
                assert (out[i] == 0).all(), f"expert {i} is empty: its gradient must be zeros"


def check_weight_grad_accumulate(grouped):
    from cute_kernels import weight_grad

    gen = _gen()
    t, n, k, e = 3000, 512, 776, 5
    dy = torch.randn(t, n, generator=gen).bfloat16().cuda()
    x = torch.randn(t, k, generator=gen).bfloat16().cuda()
    splits = random_splits(t, e, gen, empty=1) if grouped else None
    main_grad = torch.randn(*((e, n, k) if grouped else (n, k)), generator=gen).cuda() * 30
    before = main_grad.clone()
    for _ in range(2):
        weight_grad(dy, x, m_splits=splits, out=main_grad, accumulate=True)
    ref = before + 2 * _wgrad_ref(dy, x, splits, e)
    err = rel_err(main_grad, ref)
    assert err < 1e-5, f"main_grad accumulation relative error {err:.3e} (fp32 accumulate expected)"


def test_list_splits_upload_does_not_wait_for_the_gpu():
    """A list m_splits reaches the GPU by an async copy from pinned memory: the host
    does not wait for queued work (a pageable copy would serialize CPU and GPU)."""
    from cute_kernels.gemm_ops import _splits_metadata

    splits = [5, 0, 300, 17]
    torch.cuda.synchronize()
    torch.cuda._sleep(200_000_000)  # keep the stream busy for a while
    rows, tiles = _splits_metadata(splits, 128, torch.device("cuda"))
    assert not torch.cuda.current_stream().query(), "the upload waited for the queued GPU work"
    torch.cuda.synchronize()
    assert rows.tolist() == [0, 5, 5, 305, 322]
    assert tiles.tolist() == [0, 1, 1, 4, 5]
