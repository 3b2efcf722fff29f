"""The config types' shared part (cute_kernels/gemm_base/config_types.py): each arch's config type
extends `TileConfig` by its own fields only, reads and writes the same dict form, and the
arch-neutral rules give the same reasons on every arch (CPU)."""
import dataclasses

import pytest

from cute_kernels import archs
from cute_kernels.config import ConfigError, GemmConfig, validate
from cute_kernels.gemm_base.config_types import SmemBudget, TileConfig, choice_errors
from cute_kernels.sm100 import config as c100
from cute_kernels.sm100.config import Sm100Config
from cute_kernels.sm90 import config as c90

SHARED = [f.name for f in dataclasses.fields(TileConfig)]
OWN = {"sm90": {"schedule"}, "sm100": {"cta_group", "acc_stages"}}


@pytest.mark.parametrize("arch", sorted(archs.ARCHS))
def test_each_arch_config_type_adds_only_its_own_fields(arch):
    cls = archs.config_class(arch)
    assert issubclass(cls, TileConfig)
    names = [f.name for f in dataclasses.fields(cls)]
    assert names[:len(SHARED)] == SHARED and set(names[len(SHARED):]) == OWN[arch]


def test_the_arch_types_are_siblings_not_each_other():
    assert not isinstance(Sm100Config(), GemmConfig) and not isinstance(GemmConfig(), Sm100Config)
    assert GemmConfig().cluster_n == 2 and Sm100Config().cluster_n == 1  # each arch's default cluster


@pytest.mark.parametrize("cfg", [GemmConfig(tile_n=192, swizzle=2, schedule="pingpong", tile_m=64),
                                 Sm100Config(tile_n=128, cta_group=2, cluster_m=2, acc_stages=1, raster="m")])
def test_dict_form_round_trips_and_names_the_type(cfg):
    cls = type(cfg)
    assert cls.from_dict(cfg.to_dict()) == cfg
    assert set(cfg.to_dict()) >= set(SHARED)
    with pytest.raises(ConfigError, match=f"unknown {cls.__name__} fields: \\['tile_q'\\]"):
        cls.from_dict({**cfg.to_dict(), "tile_q": 3})
    with pytest.raises(ConfigError, match=f"a {cls.__name__} is read from a mapping"):
        cls.from_dict([("tile_n", 128)])


def test_an_sm100_field_is_unknown_to_the_sm90_type():
    with pytest.raises(ConfigError, match="unknown GemmConfig fields: \\['acc_stages', 'cta_group'\\]"):
        GemmConfig.from_dict(Sm100Config().to_dict())


@pytest.mark.parametrize("mod,cfg", [(c90, GemmConfig()), (c100, Sm100Config())])
def test_neutral_rules_read_alike_on_both_arches(mod, cfg):
    arch = mod.SMEM.arch
    bad = dataclasses.replace(cfg, swizzle=3, cluster_n=8)
    errs = mod.validation_errors(bad)
    assert "swizzle must be one of (1, 2, 4, 8), got 3" in errs
    assert any(e.startswith("cluster_m and cluster_n must be in") and "got (1, 8)" in e for e in errs), errs
    assert mod.validation_errors(dataclasses.replace(cfg, ab_stages=1)) == [
        "ab_stages must be >= 2 (or 0 for automatic), got 1"]
    deep = dataclasses.replace(cfg, tile_k=128, ab_stages=8)
    need = mod.smem_bytes(deep, ab_stages=8, num_outputs=2)
    assert mod.validation_errors(deep, num_outputs=2) == [
        f"shared memory: {need} bytes needed, {mod.SMEM_CAPACITY} available on {arch}"]
    with pytest.raises(ConfigError, match=f"invalid {type(cfg).__name__} "):
        validate(deep, arch=arch, num_outputs=2)


def test_the_tile_order_values_are_the_shared_walk_s_on_every_arch():
    from cute_kernels.gemm_base import config_types

    assert c90.RASTERS is c100.RASTERS is config_types.RASTERS
    assert c90.SWIZZLES is c100.SWIZZLES is config_types.SWIZZLES
    for cfg in (GemmConfig(raster="z", swizzle=16), Sm100Config(raster="z", swizzle=16)):
        errs = archs.arch_config("sm100" if isinstance(cfg, Sm100Config) else "sm90").validation_errors(cfg)
        assert errs == ["raster must be one of ('n', 'm'), got 'z'", "swizzle must be one of (1, 2, 4, 8), got 16"]


def test_smem_budget_arithmetic():
    budget = SmemBudget("toy", capacity=10_000, reserved=1_000, most_ab_stages=4,
                        stage_bytes=lambda cfg, elem_bytes: 1_000 * elem_bytes,
                        epi_bytes=lambda cfg, *, num_outputs, out_bytes: 500 * num_outputs * out_bytes)
    cfg = TileConfig()
    assert budget.smem_bytes(cfg, ab_stages=3, num_outputs=2) == 3 * 2_000 + 2_000 + 1_000
    assert budget.max_ab_stages(cfg, num_outputs=2) == (10_000 - 3_000) // 2_000 == 3
    assert budget.max_ab_stages(cfg, num_outputs=1, elem_bytes=1) == (10_000 - 2_000) // 1_000 == 8
    assert budget.resolved_ab_stages(cfg, num_outputs=2) == 3  # as many as fit
    assert budget.resolved_ab_stages(cfg, num_outputs=1) == 4  # (10000 - 2000) // 2000, at most most_ab_stages
    assert dataclasses.replace(budget, most_ab_stages=2).resolved_ab_stages(cfg, num_outputs=1) == 2
    assert budget.resolved_ab_stages(dataclasses.replace(cfg, ab_stages=7), num_outputs=2) == 7
    assert budget.stage_errors(dataclasses.replace(cfg, ab_stages=4), num_outputs=2) == [
        "shared memory: 11000 bytes needed, 10000 available on toy"]


def test_choice_errors_check_divisibility_only_of_an_allowed_epi_n():
    cfg = TileConfig(tile_n=96, epi_n=64)
    assert choice_errors(cfg, {"epi_n": (32, 64)}, clusters=(1, 2)) == ["tile_n 96 is not a multiple of epi_n 64"]
    assert choice_errors(cfg, {"epi_n": (32,)}, clusters=(1, 2)) == ["epi_n must be one of (32,), got 64"]


def test_tuned_entries_are_read_as_their_folder_arch_config_type(tmp_path):
    """tuned_configs/<arch>/ entries hold that arch's config type: an Sm100Config written by the
    store's writer reads back as one; a Hopper config in the sm100 folder is refused by name."""
    from cute_kernels.tuned_store import ShapeKey, TunedConfigError, file_path, make_record, merge_write, parse_entry

    sk = ShapeKey("bfloat16", 8192, 4096, 4096)
    for arch, cfg in (("sm100", Sm100Config(tile_n=192, cta_group=2, cluster_m=2, acc_stages=2, swizzle=4)),
                      ("sm90", GemmConfig(tile_n=192, cluster_m=1, cluster_n=1, schedule="cooperative"))):
        path = file_path(arch, "fc2", str(tmp_path))
        rec = make_record(sk, cfg, time_ms=1.0, default_time_ms=1.1, device="test", dsl_version="4.8.1",
                          date="2026-12-03", trials=1)
        merge_write(path, {sk.key(): rec})
        assert parse_entry(path, sk.key(), rec) == (sk, cfg)
    wrong = make_record(sk, GemmConfig(), time_ms=1.0, default_time_ms=1.1, device="test", dsl_version="4.8.1",
                        date="2026-12-03", trials=1)
    with pytest.raises(TunedConfigError, match="unknown Sm100Config fields: \\['schedule'\\]"):
        parse_entry(file_path("sm100", "fc2", str(tmp_path)), sk.key(), wrong)
