"""Input validation of the torch API (CPU): each bad input raises InputError naming the argument."""
import pytest
import torch

from cute_kernels import GemmConfig, InputError, fc1_srelu, fc2


def _x(m=64, k=128, dtype=torch.bfloat16):
    return torch.randn(m, k).to(dtype)


def _w(n=256, k=128, experts=None, dtype=torch.bfloat16):
    return torch.randn(*((experts, n, k) if experts else (n, k))).to(dtype)


@pytest.mark.parametrize("call,needle", [
    (lambda: fc1_srelu(_x(dtype=torch.float32), _w()), "x dtype must be bfloat16 or float16"),
    (lambda: fc1_srelu(_x(), _w(dtype=torch.float16)), "w1 dtype torch.float16 does not match"),
    (lambda: fc1_srelu(_x(), _w(k=64)), "w1 has K=64 but x has K=128"),
    (lambda: fc1_srelu(_x(k=12), _w(k=12)), "x last dimension 12 must be a multiple of 8"),
    (lambda: fc1_srelu(_x()[:, ::2], _w(k=64)), "x must be contiguous along one of its last two dimensions"),
    (lambda: fc1_srelu(_x(m=60).t().contiguous().t(), _w()), "x contiguous dimension (dim -2) 60 must be a multiple of 8"),
    (lambda: fc1_srelu(_x(), _w(), out=(None, torch.empty(64, 256).bfloat16().t().contiguous().t())), "out[1] (postact) must have a contiguous last dimension"),
    (lambda: fc1_srelu(_x(), _w(), out=(None, torch.empty(64, 255).bfloat16())), "out[1] (postact) last dimension 255 must be a multiple of 8"),
    (lambda: fc2(_x(), _w(), config="fast"), "config must be a GemmConfig, got str"),
    (lambda: fc1_srelu(torch.randn(4, 64, 128).bfloat16(), _w()), "x must have 2 dimensions"),
    (lambda: fc1_srelu(_x(), "w"), "w1 must be a torch.Tensor"),
    (lambda: fc1_srelu(_x(), _w()), "x is a CPU tensor"),
    (lambda: fc2(_x(), _w()), "h is a CPU tensor"),
    (lambda: fc1_srelu(_x(), _w(experts=4), m_splits=[10, 10, 10, 10]), "m_splits sum to 40 but the input has M=64"),
    (lambda: fc1_srelu(_x(), _w(experts=4), m_splits=[32, 32]), "m_splits has 2 entries but the weights have 4 experts"),
    (lambda: fc1_srelu(_x(), _w(experts=2), m_splits=[65, -1]), "m_splits[1] must be a non-negative int"),
    (lambda: fc1_srelu(_x(), _w(experts=2), m_splits=torch.tensor([32, 32.0])), "m_splits dtype must be int32 or int64"),
    (lambda: fc1_srelu(_x(), _w(experts=2), m_splits=torch.tensor([64])), "m_splits must have one entry per expert (2)"),
    (lambda: fc1_srelu(_x(), _w(experts=2), m_splits=7), "m_splits must be a list of ints or an int tensor"),
    (lambda: fc1_srelu(_x(), _w(), m_splits=[64]), "w1 must have 3 dimensions"),
    (lambda: fc1_srelu(_x(), _w(experts=2)), "w1 must have 2 dimensions"),
    (lambda: fc1_srelu(_x(), _w(), prob=torch.rand(63)), "prob must have shape (M,) or (M, 1) with M=64"),
    (lambda: fc1_srelu(_x(), _w(), prob=torch.ones(64, dtype=torch.int32)), "prob must be floating point"),
    (lambda: fc2(_x(), torch.randn(0, 256, 128).bfloat16(), m_splits=[]), "w2 has 0 experts"),
    (lambda: fc1_srelu(_x(k=0), _w(k=0)), "x has K=0"),
])
def test_bad_input_names_the_argument(call, needle):
    with pytest.raises(InputError) as ei:
        call()
    assert needle in str(ei.value), str(ei.value)


def test_misaligned_pointer_rejected():
    buf = torch.randn(64 * 128 + 1).bfloat16()
    x = buf[1:].view(64, 128)  # 2-byte offset
    with pytest.raises(InputError, match="x data pointer is not 16-byte aligned"):
        fc1_srelu(x, _w())


def test_unaligned_row_stride_rejected():
    x = torch.randn(64, 132).bfloat16()[:, :128]
    with pytest.raises(InputError, match="x stride 132 of dim 0 is not a multiple of 16 bytes"):
        fc1_srelu(x, _w())


def test_transposed_operands_are_accepted_and_detected():
    from cute_kernels.checks import check_gemm_operands

    x, w = _x(), _w()
    assert check_gemm_operands("x", x, "w", w, grouped=False) == ("k", "k")
    xt = x.t().contiguous().t()  # same values, contiguous along M
    wt = w.t().contiguous().t()  # contiguous along N
    assert check_gemm_operands("x", xt, "w", wt, grouped=False) == ("m", "n")
    we = _w(experts=3)
    assert check_gemm_operands("x", x, "w", we.transpose(1, 2).contiguous().transpose(1, 2), grouped=True) == ("k", "n")
    # reaches the device check, i.e. passes every layout check
    with pytest.raises(InputError, match="x is a CPU tensor"):
        fc1_srelu(xt, wt)


def test_checked_splits_are_remembered_but_not_trusted_blindly():
    """check_m_splits remembers splits that passed (each MoE step checks the same splits
    six times); a tuple equal to one that passed but holding a bool, or the same splits
    against another row count or expert count, is still checked in full."""
    from cute_kernels import checks

    dev = torch.device("cpu")
    ok = [3, 0, 5]
    checks.check_m_splits(ok, num_experts=3, m_total=8, device=dev)
    checks.check_m_splits(tuple(ok), num_experts=3, m_total=8, device=dev)  # remembered
    with pytest.raises(InputError, match=r"m_splits\[1\] must be a non-negative int"):
        checks.check_m_splits([3, False, 5], num_experts=3, m_total=8, device=dev)
    with pytest.raises(InputError, match="sum to 8 but the input has M=9"):
        checks.check_m_splits(ok, num_experts=3, m_total=9, device=dev)
    with pytest.raises(InputError, match="3 entries but the weights have 4 experts"):
        checks.check_m_splits(ok, num_experts=4, m_total=8, device=dev)


def test_device_mismatch_names_both_devices():
    from cute_kernels import checks

    a = torch.empty(4, 8, dtype=torch.bfloat16)
    with pytest.raises(InputError, match=r"w is on cpu, expected cuda:0"):
        checks.check_matrix("w", a, ndim=2, device=torch.device("cuda", 0))
    checks.check_matrix("w", a, ndim=2, device=torch.device("cpu"))


def test_cpu_tensor_to_a_gemm_entry_point_names_what_to_call_instead():
    """The GEMM entry points have no backend argument: their CPU error names the calls that do,
    and the call it names runs on these CPU tensors."""
    import inspect

    from cute_kernels import GroupedSReLUMLP, SReLUMLP, fc2_dgrad_dsrelu, srelu_mlp, weight_grad

    x, w1, w2 = _x(), _w(), _w(n=128, k=256)
    for fn in (fc1_srelu, fc2, fc2_dgrad_dsrelu, weight_grad):
        assert "backend" not in inspect.signature(fn).parameters
    with pytest.raises(InputError) as exc:
        fc1_srelu(x, w1)
    msg = str(exc.value)
    assert "srelu_mlp(..., backend='torch')" in msg and "SReLUMLP / GroupedSReLUMLP(..., backend='torch')" in msg
    for call in (srelu_mlp, SReLUMLP, GroupedSReLUMLP):
        assert "backend" in inspect.signature(call).parameters
    y = srelu_mlp(x.float(), w1.float(), w2.float(), backend="torch")
    ref = torch.relu(x.double() @ w1.double().t()) ** 2 @ w2.double().t()
    assert ((y.double() - ref).norm() / ref.norm()).item() < 1e-5


def test_an_empty_matrix_is_not_refused_for_its_strides():
    """(m, 0) tensors get strides like (1, 1) from torch: the 16-byte stride rule must not refuse
    a tensor nothing reads (the H200's zero-size fc2_dgrad_dsrelu with N = 0 failed on it)."""
    from cute_kernels.checks import check_matrix

    empty = torch.empty(40, 0, dtype=torch.bfloat16)
    assert check_matrix("preact", empty, ndim=2) == "row"
    with pytest.raises(InputError, match="stride"):
        check_matrix("preact", torch.empty(40, 12, dtype=torch.bfloat16)[:, :8], ndim=2)
