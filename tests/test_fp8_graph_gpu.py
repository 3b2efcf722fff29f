"""The FP8 MLP step (`srelu_mlp(..., fp8=Fp8Recipe())`, kernel path) captured in a CUDA graph, as
host-bound MoE layers are run: forward and backward (quantization kernels, weight copies, the FP8
GEMMs and the weight-gradient kernels) replay to the eager results bit for bit for new input
values, dense and grouped with list or GPU-tensor splits (with the tensor, also after the splits
change in place between replays), both weight-gradient recipes (grouped wgrad="fp8" with GPU-tensor splits expected to fail to capture
today: a torch loop over the experts).  The FP8 kernels are
deterministic (fixed promotion order, no float atomics; the router gradient's per-tile partials
are summed in a fixed order), so equality is exact."""
import pytest
import torch

from cute_kernels.fp8 import Fp8Recipe
from graph_replay import check_step_replays_bitwise

pytestmark = pytest.mark.gpu


TORCH_LOOP = pytest.mark.xfail(
    reason="grouped wgrad='fp8' is a torch loop over the experts that reads GPU-tensor splits on the host "
           "(not capturable) until the grouped FP8 weight-gradient kernel is the default (issue 26)", strict=False)


@pytest.mark.parametrize("splits_kind,wgrad", [("dense", "bf16"), ("list", "bf16"), ("tensor", "bf16"),
                                               ("dense", "fp8"), ("list", "fp8"),
                                               pytest.param("tensor", "fp8", marks=TORCH_LOOP)])
def test_fp8_step_replays_in_a_cuda_graph(splits_kind, wgrad):
    g = torch.Generator(device="cuda").manual_seed(11)
    m, h, f, e = 1024, 256, 512, 4
    grouped = splits_kind != "dense"
    shape1, shape2 = ((e, f, h), (e, h, f)) if grouped else ((f, h), (h, f))
    w1 = (torch.randn(*shape1, device="cuda", generator=g) / h ** 0.5).bfloat16().requires_grad_()
    w2 = (torch.randn(*shape2, device="cuda", generator=g) / f ** 0.5).bfloat16().requires_grad_()
    prob = torch.rand(m, device="cuda", generator=g).requires_grad_() if grouped else None
    splits = [384, 0, 512, 128] if grouped else None
    ms = torch.tensor(splits, device="cuda") if splits_kind == "tensor" else splits
    sx = torch.randn(m, h, device="cuda", generator=g).bfloat16().requires_grad_()
    sdy = torch.randn(m, h, device="cuda", generator=g).bfloat16()
    check_step_replays_bitwise(sx, w1, w2, sdy, prob, ms, [[384, 0, 512, 128], [0, 640, 128, 256]], g,
                               f"{splits_kind}, wgrad={wgrad}", fp8=Fp8Recipe(wgrad=wgrad))
