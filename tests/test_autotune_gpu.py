"""The autotuner's GPU runner on small problems: compile, correctness check, timed call."""
import pytest
import torch

from autotune.problem import GpuRunner, Problem
from cute_kernels.config import GemmConfig
from cute_kernels.tuned_store import ShapeKey

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("kernel,shape", [
    ("fc2", ShapeKey("bfloat16", 1000, 384, 256)),
    ("fc1_srelu", ShapeKey("bfloat16", 1000, 384, 256, 4)),
    ("fc2_dgrad_dsrelu", ShapeKey("bfloat16", 1000, 384, 256)),
    ("fc2_dgrad_dsrelu", ShapeKey("bfloat16", 1000, 384, 256, 5)),
    ("weight_grad", ShapeKey("bfloat16", 384, 256, 2000)),
    ("weight_grad", ShapeKey("bfloat16", 384, 256, 2000, 6)),
])
def test_runner_checks_and_times(kernel, shape):
    prob = Problem(kernel, shape)
    runner = GpuRunner(prob)
    for cfg in (prob.default_config(), GemmConfig(tile_n=128, cluster_m=1, cluster_n=1)):
        runner.prepare(cfg)
        err = runner.check(cfg)
        assert err < 1e-2, f"{kernel} {cfg}: relative error {err:.3e}"
        out = runner.timed(cfg)()
        torch.cuda.synchronize()
        assert torch.isfinite(out).all()
