"""The sm100 search space and the compile-only sweep (CPU): the space round-trips, every grid
point is an Sm100Config the validator answers for, and the sweep prunes by validation, keeps a
compiling spill-free config and reports the counts."""
import argparse

from autotune import compile_only, space
from cute_kernels.sm100 import space as space_sm100
from autotune.__main__ import build_parser
from cute_kernels.sm100.config import Sm100Config, validation_errors


def test_space_round_trips_and_covers_cta_groups_and_clusters():
    from cute_kernels.archs import arch_space

    assert arch_space("sm100") is space_sm100 and space.grid_values("sm100") is space_sm100.GRID
    pts = space.grid("sm100")
    cfgs = [space_sm100.to_config(p) for p in pts]
    assert all(space_sm100.to_params(c) == p for c, p in zip(cfgs, pts))
    assert {c.cta_group for c in cfgs} == {1, 2} and {(c.cluster_m, c.cluster_n) for c in cfgs} >= {(1, 1), (2, 2)}
    assert all(isinstance(validation_errors(c, num_outputs=2), list) for c in cfgs)
    assert space_sm100.parse_overrides("mma=2cta_c2x1,tile_n=256") == {"mma": "2cta_c2x1", "tile_n": 256}
    assert space_sm100.in_space(Sm100Config(tile_n=256, cta_group=2, cluster_m=2))


def test_the_arch_space_and_the_tuner_space_answer_alike():
    """sm100/space.py's own grid, membership and override parsing are the tuner's (gemm_base.config_space)."""
    import pytest

    assert space_sm100.grid() == space.grid("sm100")
    cfgs = (Sm100Config(tile_n=256, cta_group=2, cluster_m=2), Sm100Config(tile_n=64), Sm100Config(swizzle=2))
    for cfg in cfgs:
        assert space_sm100.in_space(cfg) == space.in_space(cfg, "sm100")
    assert not space_sm100.in_space(Sm100Config(tile_n=64)) and not space_sm100.in_space(Sm100Config(swizzle=2))
    for text, needle in (("mma=3cta_c1x1", "mma=3cta_c1x1 is not in the space"), ("tile_q=1", "unknown parameter 'tile_q'")):
        for parse in (space_sm100.parse_overrides, lambda t: space.parse_overrides(t, "sm100")):
            with pytest.raises(ValueError, match=needle):
                parse(text)


def test_compile_classes_merge_runtime_only_knobs():
    classes = compile_only.compile_classes("sm100")
    assert sum(n for _, n in classes) == len(space_sm100.grid())
    assert len(classes) * 6 == len(space_sm100.grid())  # raster (2) x swizzle (3)


def test_judge_prunes_invalid_and_keeps_a_compiling_config():
    bad = compile_only.kernel_key("sm100", "fc1_srelu", Sm100Config(cta_group=2, cluster_m=1), 0)
    v = compile_only.judge(bad, "fc1_srelu")
    assert not v.ok and v.stage == "validation" and "even cluster_m" in v.reason
    good = compile_only.kernel_key("sm100", "weight_grad", Sm100Config(tile_n=128, cta_group=2, cluster_m=2), 8)
    assert good.grouped_k and good.out_dtype == "float32"
    v = compile_only.judge(good, "weight_grad")
    assert v.ok and v.stage == "ok" and v.compile_s > 0, v.reason
    report = compile_only.format_report([v, compile_only.judge(bad, "fc1_srelu")], "sm100", 1.0)
    assert "weight_grad: 1 configs left of 1" in report and "fc1_srelu: 0 configs left of 1" in report


def test_cli_has_compile_only():
    args = build_parser().parse_args(["compile-only", "--arch", "sm100", "--kernel", "fc2", "--limit", "2"])
    assert isinstance(args, argparse.Namespace) and args.cmd == "compile-only" and args.limit == 2
