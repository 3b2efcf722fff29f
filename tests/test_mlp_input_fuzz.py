"""Fuzz-style CPU tests of the MLP entry points (srelu_mlp on the torch path, SReLUMLP,
GroupedSReLUMLP): many generated bad inputs, each must raise cute_kernels.InputError
naming the argument, before anything runs: no gradient written, no offload layer
numbered, the checked-splits cache unchanged.  (The cute path runs the same checks,
cute_kernels.mlp_checks, before the backend is chosen; GPU tests in test_mlp_gpu.py.)
"""
import pytest
import torch

from cute_kernels import GroupedSReLUMLP, InputError, SReLUMLP, checks, srelu_mlp

M, K, N, E = 12, 8, 16, 3
SPLITS = [5, 0, 7]


def _dense(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(M, K, generator=g, dtype=dtype, requires_grad=True),
            torch.randn(N, K, generator=g, dtype=dtype, requires_grad=True),
            torch.randn(K, N, generator=g, dtype=dtype, requires_grad=True))


def _grouped(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(M, K, generator=g, dtype=dtype, requires_grad=True),
            torch.randn(E, N, K, generator=g, dtype=dtype, requires_grad=True),
            torch.randn(E, K, N, generator=g, dtype=dtype, requires_grad=True))


def _bad_splits():
    """(case id, m_splits, word the message must hold)."""
    yield "too few entries", [5, 7], "entries"
    yield "too many entries", [5, 0, 7, 0], "entries"
    yield "empty list", [], "entries"
    yield "sum short", [5, 0, 6], "sum to 11"
    yield "sum over", [5, 1, 7], "sum to 13"
    yield "negative", [13, -1, 0], "m_splits[1]"
    yield "float entry", [5, 0.0, 7], "m_splits[1]"
    yield "float entries", [5.0, 0.0, 7.0], "m_splits[0]"
    yield "bool entry", [5, False, 7], "m_splits[1]"
    yield "str entry", [5, "0", 7], "m_splits[1]"
    yield "None entry", [5, None, 7], "m_splits[1]"
    yield "nested list", [[5], [0], [7]], "m_splits[0]"
    yield "tuple sum short", (5, 0, 6), "sum to 11"
    yield "int", 12, "list of ints"
    yield "str", "507", "list of ints"
    yield "dict", {0: 5, 1: 0, 2: 7}, "list of ints"
    yield "set", {5, 0, 7}, "list of ints"
    yield "generator", (s for s in SPLITS), "list of ints"
    yield "tensor sum short", torch.tensor([5, 0, 6]), "sum to 11"
    yield "tensor negative", torch.tensor([13, -1, 0]), "m_splits[1]"
    yield "tensor too long", torch.tensor([5, 0, 7, 0]), "entries"
    yield "tensor 2-D", torch.tensor([[5, 0, 7]]), "one entry per expert"
    yield "tensor 0-D", torch.tensor(12), "one entry per expert"
    yield "tensor float", torch.tensor([5.0, 0.0, 7.0]), "dtype"
    yield "tensor bool", torch.tensor([True, False, True]), "dtype"
    yield "tensor int16", torch.tensor([5, 0, 7], dtype=torch.int16), "dtype"
    yield "tensor int32 sum over", torch.tensor([5, 1, 7], dtype=torch.int32), "sum to 13"


BAD_SPLITS = list(_bad_splits())


def _bad_dense():
    """(case id, x, w1, w2, kwargs, word the message must hold)."""
    x, w1, w2 = _dense()
    yield "x not a tensor", x.tolist(), w1, w2, {}, "x must be a torch.Tensor"
    yield "x None", None, w1, w2, {}, "x must be a torch.Tensor"
    yield "w1 not a tensor", x, w1.detach().numpy(), w2, {}, "w1 must be a torch.Tensor"
    yield "w2 None", x, w1, None, {}, "w2 must be a torch.Tensor"
    yield "x 1-D", x[0], w1, w2, {}, "x must have 2 dimensions"
    yield "x 3-D", x.reshape(2, 6, K), w1, w2, {}, "x must have 2 dimensions"
    yield "x 0-D", x[0, 0], w1, w2, {}, "x must have 2 dimensions"
    yield "x int", x.long(), w1, w2, {}, "x dtype must be floating point"
    yield "x bool", x > 0, w1, w2, {}, "x dtype must be floating point"
    yield "x complex", x.to(torch.complex64), w1, w2, {}, "x dtype must be floating point"
    yield "x fp8", x.detach().to(torch.float8_e4m3fn), w1, w2, {}, "x has the quantized dtype"
    yield "w1 fp8", x, w1.detach().to(torch.float8_e5m2), w2, {}, "w1 has the quantized dtype"
    yield "x and weights fp8", *(t.detach().to(torch.float8_e4m3fn) for t in (x, w1, w2)), {}, \
        "x has the quantized dtype"
    yield "K = 0", x[:, :0], w1[:, :0], w2[:0], {}, "K=0"
    yield "w1 K mismatch", x, w1[:, :4], w2, {}, "w1 has K=4 but x has K=8"
    yield "w1 1-D", x, w1[0], w2, {}, "w1 must have 2 dimensions"
    yield "w1 3-D without m_splits", x, w1.reshape(1, N, K), w2.reshape(1, K, N), {}, "give m_splits"
    yield "w2 transposed", x, w1, w2.t(), {}, "w2 must have shape (K, N)"
    yield "w2 N mismatch", x, w1, w2[:, :10], {}, "w2 must have shape"
    yield "w2 K mismatch", x, w1, w2[:4], {}, "w2 must have shape"
    yield "w2 3-D", x, w1, w2.reshape(1, K, N), {}, "w2 must have 2 dimensions"
    yield "w1 dtype", x, w1.double(), w2, {}, "w1 dtype torch.float64 does not match"
    yield "w2 dtype", x, w1, w2.half(), {}, "w2 dtype torch.float16 does not match"
    yield "w1 meta device", x, w1.to("meta"), w2, {}, "w1 is on meta"
    yield "w2 meta device", x, w1, w2.to("meta"), {}, "w2 is on meta"
    yield "m_splits with 2-D weights", x, w1, w2, {"m_splits": [M]}, "w1 must have 3 dimensions"
    for pname, p, word in [("prob list", [1.0] * M, "prob must be a torch.Tensor"),
                           ("prob short", torch.rand(M - 1), "prob must have shape"),
                           ("prob (M, 2)", torch.rand(M, 2), "prob must have shape"),
                           ("prob (1, M)", torch.rand(1, M), "prob must have shape"),
                           ("prob int", torch.ones(M, dtype=torch.int64), "prob must be floating point"),
                           ("prob fp8", torch.rand(M).to(torch.float8_e4m3fn), "prob has the quantized dtype"),
                           ("prob meta", torch.rand(M, device="meta"), "prob is on meta")]:
        yield pname, x, w1, w2, {"prob": p}, word
    yield "main_grad missing", x, w1, w2, {"fuse_wgrad_accumulation": True}, "w1.main_grad"


BAD_DENSE = list(_bad_dense())


def _bad_grouped():
    x, w1, w2 = _grouped()
    yield "w1 2-D with m_splits", x, w1[0], w2, "w1 must have 3 dimensions"
    yield "w2 2-D with m_splits", x, w1, w2[0], "w2 must have 3 dimensions"
    yield "w2 experts mismatch", x, w1, w2[:2], "w2 must have shape (E, K, N)"
    yield "w2 not transposed", x, w1, w2.transpose(1, 2), "w2 must have shape (E, K, N)"
    yield "w1 K mismatch", x, w1[..., :4], w2, "w1 has K=4"
    yield "zero experts", x, w1[:0], w2[:0], "0 experts"
    yield "w1 dtype", x, w1.double(), w2, "w1 dtype"


BAD_GROUPED = list(_bad_grouped())


@pytest.fixture
def no_state_change():
    """Snapshot of the state a rejected call must not touch."""
    before = dict(checks._checked_splits)
    yield
    assert checks._checked_splits == before


def _no_grads(*ts):
    for t in ts:
        if isinstance(t, torch.Tensor) and t.is_leaf:
            assert t.grad is None


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("case,x,w1,w2,kw,word", BAD_DENSE, ids=[c[0] for c in BAD_DENSE])
def test_srelu_mlp_rejects_bad_dense_inputs(case, x, w1, w2, kw, word, backend, no_state_change):
    with pytest.raises(InputError) as exc:
        srelu_mlp(x, w1, w2, backend=backend, **kw)
    assert word in str(exc.value)
    _no_grads(x, w1, w2)


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("case,splits,word", BAD_SPLITS, ids=[c[0] for c in BAD_SPLITS])
def test_srelu_mlp_rejects_bad_m_splits(case, splits, word, backend, no_state_change):
    x, w1, w2 = _grouped()
    with pytest.raises(InputError) as exc:
        srelu_mlp(x, w1, w2, m_splits=splits, backend=backend)
    assert word in str(exc.value) and "m_splits" in str(exc.value)
    _no_grads(x, w1, w2)


@pytest.mark.parametrize("case,x,w1,w2,word", BAD_GROUPED, ids=[c[0] for c in BAD_GROUPED])
def test_srelu_mlp_rejects_bad_grouped_inputs(case, x, w1, w2, word, no_state_change):
    splits = [M] + [0] * (w1.size(0) - 1) if w1.dim() == 3 and w1.size(0) else [M]
    with pytest.raises(InputError) as exc:
        srelu_mlp(x, w1, w2, m_splits=splits, backend="torch")
    assert word in str(exc.value)


def test_random_split_perturbations_are_rejected_unless_valid():
    """Random m_splits around a valid one: every list the op accepts is valid (E
    non-negative ints summing to M) and gives the per-expert reference; every other is an
    InputError."""
    import random

    rng = random.Random(20)
    x, w1, w2 = (t.detach() for t in _grouped(torch.float64))
    ok = bad = 0
    for _ in range(200):
        splits = [rng.randint(-2, M + 2) for _ in range(rng.choice([E - 1, E, E, E, E + 1]))]
        if rng.random() < 0.5 and len(splits) == E:  # land on the right sum half of the time
            splits[-1] = M - sum(splits[:-1])
        valid = len(splits) == E and all(s >= 0 for s in splits) and sum(splits) == M
        if not valid:
            with pytest.raises(InputError, match="m_splits"):
                srelu_mlp(x, w1, w2, m_splits=splits, backend="torch")
            assert tuple(splits) not in checks._checked_splits
            bad += 1
            continue
        y = srelu_mlp(x, w1, w2, m_splits=splits, backend="torch")
        ref, s = [], 0
        for e, n in enumerate(splits):
            ref.append(torch.relu(x[s:s + n] @ w1[e].t()).square() @ w2[e].t())
            s += n
        torch.testing.assert_close(y, torch.cat(ref))
        ok += 1
    assert ok > 20 and bad > 50, (ok, bad)


def test_valid_splits_forms_agree():
    """list, tuple, CPU int32/int64 tensors: the same output."""
    x, w1, w2 = (t.detach() for t in _grouped(torch.float64))
    ys = [srelu_mlp(x, w1, w2, m_splits=s, backend="torch")
          for s in (SPLITS, tuple(SPLITS), torch.tensor(SPLITS), torch.tensor(SPLITS, dtype=torch.int32))]
    for y in ys[1:]:
        assert torch.equal(y, ys[0])


def test_a_rejected_call_numbers_no_offload_layer():
    from offload import OffloadPolicy, OffloadScheduler

    sched = OffloadScheduler(OffloadPolicy(roles=()), num_layers=4)
    x, w1, w2 = _grouped()
    with pytest.raises(InputError):
        srelu_mlp(x, w1, w2, m_splits=[5, 0, 6], backend="torch", offload=sched)
    assert sched.current_layer is None and sched._next_layer == 0
    srelu_mlp(x, w1, w2, m_splits=SPLITS, backend="torch", offload=sched)
    assert sched._next_layer == 1


# ----- modules ----------------------------------------------------------------------------

@pytest.mark.parametrize("x,word", [(None, "x must be a torch.Tensor"), ([[0.0] * K], "x must be a torch.Tensor"),
                                    (torch.tensor(1.0), "hidden size 8"), (torch.randn(3, 5), "hidden size 8"),
                                    (torch.randn(2, 3, 16), "hidden size 8"), (torch.randn(3, K).long(), "floating"),
                                    (torch.randn(3, K).double(), "dtype torch.float64")])
def test_dense_module_rejects_bad_input(x, word, no_state_change):
    mlp = SReLUMLP(K, N)
    with pytest.raises(InputError, match=word):
        mlp(x)
    assert mlp.fc1.weight.grad is None


@pytest.mark.parametrize("prob", [torch.rand(5), torch.rand(2, 3, 1), [0.5] * 6])
def test_dense_module_rejects_bad_prob(prob):
    with pytest.raises(InputError, match="prob"):
        SReLUMLP(K, N)(torch.randn(2, 3, K), prob=prob)


@pytest.mark.parametrize("case,splits,word", BAD_SPLITS, ids=[c[0] for c in BAD_SPLITS])
def test_grouped_module_rejects_bad_m_splits(case, splits, word, no_state_change):
    moe = GroupedSReLUMLP(E, K, N)
    with pytest.raises(InputError) as exc:
        moe(torch.randn(M, K), splits)
    assert word in str(exc.value)
    assert moe.fc1_weight.grad is None and moe.fc2_weight.grad is None


@pytest.mark.parametrize("x,word", [(torch.randn(2, 6, K), "x must have 2 dimensions"),
                                    (torch.randn(M, K + 1), "w1 has K=8 but x has K=9"),
                                    (torch.randn(M, K).half(), "dtype"), ("x", "x must be a torch.Tensor")])
def test_grouped_module_rejects_bad_x(x, word):
    with pytest.raises(InputError, match=word):
        GroupedSReLUMLP(E, K, N)(x, SPLITS)


def test_grouped_module_main_grad_must_match():
    moe = GroupedSReLUMLP(E, K, N, fuse_wgrad_accumulation=True)
    moe.fc1_weight.main_grad = torch.zeros(E, N, K)
    moe.fc2_weight.main_grad = torch.zeros(N, K)  # wrong shape
    with pytest.raises(InputError, match="w2.main_grad"):
        moe(torch.randn(M, K), SPLITS)


def test_error_messages_match_the_gemm_ops_checks():
    """The shared layer reuses the GEMM ops' m_splits check: the same message on both paths."""
    x, w1, w2 = _grouped()
    for splits in ([5, 0, 6], [5, 7], [13, -1, 0]):
        with pytest.raises(InputError) as mlp_err:
            srelu_mlp(x, w1, w2, m_splits=splits, backend="torch")
        with pytest.raises(InputError) as op_err:
            checks.check_m_splits(splits, num_experts=E, m_total=M, device=x.device)
        assert str(mlp_err.value) == str(op_err.value)


def test_cases_are_many_and_distinct():
    for cases in (BAD_DENSE, BAD_SPLITS, BAD_GROUPED):
        ids = [c[0] for c in cases]
        assert len(ids) == len(set(ids))
    assert len(BAD_DENSE) + len(BAD_SPLITS) + len(BAD_GROUPED) > 60


# ----- GPU: the cute path raises what the torch path raises ----------------------------------

def _cuda(case):
    return tuple(t.detach().to("cuda", torch.bfloat16) if isinstance(t, torch.Tensor) and t.is_floating_point()
                 and t.device.type == "cpu" else t for t in case)


@pytest.mark.gpu
@pytest.mark.parametrize("case", [c for c in BAD_DENSE if c[0] in ("w1 K mismatch", "w2 transposed", "w2 N mismatch",
                                                                  "w1 3-D without m_splits", "m_splits with 2-D weights")],
                         ids=lambda c: c[0])
def test_cute_path_gives_the_torch_paths_errors(case):
    name, x, w1, w2, kw, word = case
    x, w1, w2 = _cuda((x, w1, w2))
    msgs = []
    for backend in ("cute", "torch"):
        with pytest.raises(InputError) as exc:
            srelu_mlp(x, w1, w2, backend=backend, **kw)
        msgs.append(str(exc.value))
    assert msgs[0] == msgs[1] and word in msgs[0]


@pytest.mark.gpu
@pytest.mark.parametrize("case,splits,word", [c for c in BAD_SPLITS if isinstance(c[1], (list, tuple))],
                         ids=lambda c: c if isinstance(c, str) else None)
def test_cute_path_rejects_bad_m_splits_lists(case, splits, word):
    x, w1, w2 = _cuda(_grouped())
    with pytest.raises(InputError, match="m_splits"):
        srelu_mlp(x, w1, w2, m_splits=splits, backend="cute")


@pytest.mark.gpu
def test_cuda_m_splits_tensor_values_checked_where_the_torch_path_syncs():
    x, w1, w2 = _cuda(_grouped())
    bad = torch.tensor([5, 0, 6], device="cuda")
    with pytest.raises(InputError, match="sum to 11"):
        srelu_mlp(x, w1, w2, m_splits=bad, backend="torch")
    for t in (torch.tensor([5, 0, 7, 0], device="cuda"), torch.tensor([5.0, 0.0, 7.0], device="cuda")):
        for backend in ("cute", "torch"):  # shape and dtype: checked on both, no sync needed
            with pytest.raises(InputError, match="m_splits"):
                srelu_mlp(x, w1, w2, m_splits=t, backend=backend)


@pytest.mark.parametrize("backend", ["triton", None, 1, "CUTE"])
def test_unknown_backend_is_an_input_error(backend):
    x, w1, w2 = _dense()
    with pytest.raises(InputError, match="backend must be"):
        srelu_mlp(x, w1, w2, backend=backend)


def test_cute_backend_without_a_hopper_gpu_is_an_input_error():
    x, w1, w2 = _dense(torch.float64)  # float64 on CPU: the kernels take neither
    with pytest.raises(InputError, match="backend='cute' needs"):
        srelu_mlp(x, w1, w2, backend="cute")
