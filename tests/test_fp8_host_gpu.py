"""The FP8 kernels through the family's host machinery on an sm_90a GPU (issue 24): the
first-use self-check of every FP8 variant `python -m cute_kernels.selfcheck` runs, the FP8
custom ops (CUDA kernels against their CPU torch implementation) and under torch.compile, the
op's first family launch self-checked once, and the autotuner's FP8 runner (prepare, check,
timed) on configs of the FP8 space."""
import pytest
import torch

from cute_kernels import registry, torch_ops  # noqa: F401  (registers the ops)
from cute_kernels.fp8.recipe import dequantize, quantize_1x128, quantize_128x128
from cute_kernels.reference import rel_err

gpu = pytest.mark.gpu
pytestmark = [gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
SPLITS = [256, 0, 129, 1, 383]


def _operands(m, n, k, experts, seed):
    g = torch.Generator().manual_seed(seed)
    xq, sx = quantize_1x128(torch.randn(m, k, generator=g))
    w = torch.randn(max(experts, 1), n, k, generator=g) * 0.05
    parts = [quantize_128x128(w[i]) for i in range(max(experts, 1))]
    wq, ws = torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts])
    if not experts:
        wq, ws = wq[0], ws[0]
    return xq.cuda(), sx.t().contiguous().t().cuda(), wq.contiguous().cuda(), ws.contiguous().cuda()


def test_every_fp8_selfcheck_variant_passes():
    from cute_kernels import gemm_ops, selfcheck
    from cute_kernels.selfcheck_table import fp8_variant_keys

    results = [selfcheck.run_variant(key, launch=gemm_ops._run) for key in fp8_variant_keys("sm90")]
    bad = [(r.variant, r.errors, r.message) for r in results if not r.ok]
    assert not bad, bad


@pytest.mark.parametrize("grouped", [False, True])
def test_fp8_custom_ops_on_cuda_agree_with_their_cpu_math(grouped):
    m, n, k = sum(SPLITS), 384, 1040
    x, sx, w, sw = _operands(m, n, k, len(SPLITS) if grouped else 0, seed=7)
    splits = SPLITS if grouped else None
    pre, q, qs = torch.ops.cute_kernels.fp8_fc1_srelu_fwd(x, sx, w, sw, splits, True)
    cpu = torch.ops.cute_kernels.fp8_fc1_srelu_fwd(x.cpu(), sx.cpu(), w.cpu(), sw.cpu(), splits, True)
    assert rel_err(pre.cpu(), cpu[0]) < 4e-3
    rq, rs = quantize_1x128(torch.relu(pre.float()) ** 2)  # the recipe of the stored preact
    assert torch.equal(qs, rs)
    assert rel_err(dequantize(q, qs), dequantize(rq, rs)) < 1e-3
    w2q, w2s = _operands(16, 272, n, len(SPLITS) if grouped else 0, seed=8)[2:]
    y = torch.ops.cute_kernels.fp8_fc2_fwd(q, qs, w2q, w2s, splits)
    y_cpu = torch.ops.cute_kernels.fp8_fc2_fwd(q.cpu(), qs.cpu(), w2q.cpu(), w2s.cpu(), splits)
    assert rel_err(y.cpu(), y_cpu) < 4e-3
    torch._dynamo.reset()

    def step(a, sa, b, sb, c, sc):
        _, h, sh = torch.ops.cute_kernels.fp8_fc1_srelu_fwd(a, sa, b, sb, splits, False)
        return torch.ops.cute_kernels.fp8_fc2_fwd(h, sh, c, sc, splits)

    compiled = torch.compile(step, fullgraph=True)
    assert torch.equal(compiled(x, sx, w, sw, w2q, w2s), step(x, sx, w, sw, w2q, w2s))


def test_first_family_launch_is_self_checked_once(monkeypatch):
    from cute_kernels import gemm_ops, selfcheck
    from cute_kernels.fp8.ops import fp8_gemm

    calls = []
    real = selfcheck.run_variant
    monkeypatch.setattr(selfcheck, "run_variant", lambda key, **kw: calls.append(key) or real(key, **kw))
    monkeypatch.setattr(selfcheck, "verified_table", lambda *a, **k: {})  # the FP8 variants have evidence now
    monkeypatch.delenv(selfcheck.ENV_SWITCH, raising=False)
    x, sx, w, sw = _operands(77, 144, 272, 0, seed=9)
    for key in list(gemm_ops._selfchecked):
        if key.block_scaled:
            gemm_ops._selfchecked.discard(key)
    fp8_gemm(x, sx, w, sw)
    fp8_gemm(x, sx, w, sw)
    assert len(calls) == 1 and calls[0].block_scaled


@pytest.mark.parametrize("kernel,experts", [("fp8_fc1_srelu", 0), ("fp8_fc2", 8)])
def test_autotune_fp8_runner(kernel, experts):
    from autotune import space
    from autotune.problem import Problem, make_runner
    from cute_kernels.tuned_store import ShapeKey

    prob = Problem(kernel, ShapeKey("float8_e4m3fn", 2048, 1856, 2688, experts))
    runner = make_runner(prob)
    checked = 0
    for params in space.grid(block_scaled=True)[::97]:
        cfg = space.to_config(params, block_scaled=True)
        if prob.config_errors(cfg):
            continue
        runner.prepare(cfg)
        assert runner.check(cfg) < 1e-2, cfg
        runner.timed(cfg)()
        checked += 1
    torch.cuda.synchronize()
    assert checked >= 3


@pytest.mark.parametrize("experts", [0, 8])
def test_autotune_fp8_runner_on_the_dgrad_with_the_activation_derivative(experts):
    """The runner of fp8_dgrad_dact (the FC2 data gradient with dSReLU and the postact recompute, as
    the step calls it) on the default and the first fixed candidates (`sweep --candidates`): each
    compiles the key the op launches, checks against the float32 reference and times."""
    from autotune import space, tuner
    from autotune.problem import Problem, make_runner
    from cute_kernels.tuned_store import ShapeKey

    prob = Problem("fp8_dgrad_dact", ShapeKey("float8_e4m3fn", 2048, 1856, 2688, experts))
    runner = make_runner(prob)
    base = space.to_params(prob.default_config(), block_scaled=True)
    cfgs = [prob.default_config()] + [space.to_config({**base, **t}, block_scaled=True)
                                      for t in tuner.candidate_tries(prob, 3)]
    for cfg in cfgs:
        runner.prepare(cfg)
        assert runner.check(cfg) < 1e-2, cfg
        dpre, post, dprob = runner.timed(cfg)()
        assert dpre.shape == post.shape == (2048, 1856) and dprob is None
    torch.cuda.synchronize()


@pytest.mark.parametrize("grouped", [False, True])
def test_the_fp8_step_is_bitwise_the_same_on_planned_calls(grouped):
    """The FP8 step's first call (checks run, kernel keys resolved, self-check gate passed) and its
    repeated calls (launch plans and checked signatures, issue 26's host cuts) give bitwise the same
    output and gradients, the router probability's included."""
    from cute_kernels.config_lookup import clear_cache
    from cute_kernels.fp8 import Fp8Recipe
    from cute_kernels.mlp import srelu_mlp

    g = torch.Generator().manual_seed(5)
    m, h, f, e = sum(SPLITS), 256, 384, len(SPLITS)
    x = torch.randn(m, h, generator=g).bfloat16().cuda()
    w1 = (torch.randn(*((e, f, h) if grouped else (f, h)), generator=g) * 0.05).bfloat16().cuda()
    w2 = (torch.randn(*((e, h, f) if grouped else (h, f)), generator=g) * 0.05).bfloat16().cuda()
    prob = torch.rand(m, generator=g).cuda() if grouped else None
    dy = torch.randn(m, h, generator=g).bfloat16().cuda()

    def step():
        leaves = [t.detach().clone().requires_grad_() for t in (x, w1, w2) + ((prob,) if grouped else ())]
        y = srelu_mlp(*leaves[:3], m_splits=list(SPLITS) if grouped else None, prob=leaves[3] if grouped else None,
                      fp8=Fp8Recipe(), backend="cute")
        y.backward(dy)
        return [y] + [t.grad for t in leaves]

    clear_cache()  # the first call resolves everything again
    first = step()
    for _ in range(2):
        for a, b in zip(first, step()):
            assert torch.equal(a, b)
