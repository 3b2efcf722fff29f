"""GemmConfig validation and defaults (CPU)."""
import dataclasses

import pytest

from autotune.shapes import GEMM_SHAPES
from cute_kernels.config import (ConfigError, GemmConfig, default_config, max_ab_stages, resolved_ab_stages,
                                 smem_bytes, validate, validation_errors)


def test_default_config_is_valid():
    cfg = GemmConfig()
    assert validate(cfg, num_outputs=2) is cfg
    assert resolved_ab_stages(cfg, num_outputs=2) >= 3


@pytest.mark.parametrize("shape", GEMM_SHAPES, ids=lambda s: f"{s['kernel']}-{s['m']}-{s['n']}-{s['k']}-{s.get('experts', 0)}")
def test_default_config_valid_for_benchmark_shapes(shape):
    grouped = bool(shape.get("experts"))
    outputs = 2 if shape["kernel"] == "fc1_srelu" else 1
    cfg = default_config(shape["m"], shape["n"], shape["k"], grouped=grouped, num_experts=shape.get("experts", 1), num_outputs=outputs)
    validate(cfg, num_outputs=outputs, grouped=grouped)


@pytest.mark.parametrize("m,n,k", [(1, 8, 8), (5, 64, 4096), (100000, 100000, 64), (8192, 1856, 2688)])
@pytest.mark.parametrize("grouped", [False, True])
def test_default_config_valid_for_odd_shapes(m, n, k, grouped):
    for outputs in (1, 2):
        validate(default_config(m, n, k, grouped=grouped, num_outputs=outputs), num_outputs=outputs, grouped=grouped)


@pytest.mark.parametrize("fields,needle", [
    ({"tile_m": 64}, "cooperative schedule needs tile_m == 128"),
    ({"schedule": "pingpong", "tile_m": 96}, "ping-pong schedule needs tile_m in (64, 128)"),
    ({"schedule": "pingpong", "tile_m": 128, "tile_n": 192}, None),
    ({"schedule": "pingpong", "tile_m": 128}, "accumulator needs 256 registers"),
    ({"schedule": "pingpong", "tile_m": 128, "tile_n": 192, "epi_n": 64}, "epi_n 64 next to 192 accumulator"),
    ({"schedule": "pingpong", "tile_m": 128, "tile_n": 128, "epi_n": 64}, None),
    ({"tile_n": 96}, "tile_n must be one of"),
    ({"epi_n": 64, "tile_n": 192}, None),
    ({"tile_n": 192, "epi_n": 48}, "epi_n must be one of"),
    ({"ab_stages": 9}, "shared memory"),
    ({"ab_stages": 1}, "ab_stages must be >= 2"),
    ({"cluster_n": 4}, "cluster_m and cluster_n"),
    ({"swizzle": 3}, "swizzle must be one of"),
    ({"raster": "diagonal"}, "raster must be one of"),
    ({"schedule": "stream-k"}, "schedule must be one of"),
])
def test_validate_rejects_with_reason(fields, needle):
    cfg = dataclasses.replace(GemmConfig(), **fields)
    errs = validation_errors(cfg, num_outputs=2, grouped=True)
    if needle is None:
        assert errs == []
        return
    assert any(needle in e for e in errs), errs
    with pytest.raises(ConfigError, match="invalid GemmConfig"):
        validate(cfg, num_outputs=2, grouped=True)


def test_smem_budget_counts_outputs_and_schedule():
    cfg = GemmConfig(tile_n=128, epi_stages=4, epi_n=64)
    # one output fits more operand stages than two: (227 KiB - 1 KiB - 64 KiB) / 32 KiB vs (... - 128 KiB) / 32 KiB
    assert (max_ab_stages(cfg, num_outputs=1), max_ab_stages(cfg, num_outputs=2)) == (5, 3)
    # ping-pong keeps one epilogue buffer set per warpgroup: 2 outputs x 2 stages x 2 slots x 64x32 bf16
    pp = GemmConfig(tile_m=64, schedule="pingpong")
    assert smem_bytes(pp, ab_stages=0, num_outputs=2) == 2 * 2 * 2 * 64 * 32 * 2 + 1024
    big = GemmConfig(tile_k=128, ab_stages=5)
    assert any("shared memory" in e for e in validation_errors(big, num_outputs=2))


def test_accumulator_register_limit():
    # a 64x256 ping-pong tile needs 128 accumulator registers per thread, 128x192 192: allowed
    assert validation_errors(GemmConfig(tile_m=64, schedule="pingpong", tile_n=256)) == []
    assert validation_errors(GemmConfig(tile_m=128, schedule="pingpong", tile_n=192)) == []
    assert any("256 registers" in e for e in validation_errors(GemmConfig(tile_m=128, schedule="pingpong")))


def test_unknown_arch_rejected():
    assert any("unknown arch" in e for e in validation_errors(GemmConfig(), arch="sm75"))


def test_dict_round_trip_and_unknown_field():
    cfg = GemmConfig(tile_n=192, swizzle=2, schedule="cooperative")
    assert GemmConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown GemmConfig fields"):
        GemmConfig.from_dict({**cfg.to_dict(), "tile_q": 3})
