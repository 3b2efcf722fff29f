"""The wave-quantization model (cute_kernels.wave_model) and the wave-aware lookup behind
$CUTE_KERNELS_WAVE_LOOKUP (config_lookup.resolve_wave): counts checked by hand, the choice at a
wave boundary, the calibration by a tuned entry's measured speedup, the switch."""
import dataclasses

import pytest

from cute_kernels import config_lookup as cl
from cute_kernels import wave_model as wm
from cute_kernels.config import GemmConfig, default_config
from cute_kernels.sm90 import config as sm90
from cute_kernels.tuned_store import ShapeKey, file_path, make_record, merge_write

SMS = 132
C256 = GemmConfig(tile_m=128, tile_n=256, cluster_m=1, cluster_n=1)
C128 = GemmConfig(tile_m=128, tile_n=128, cluster_m=1, cluster_n=1)


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("CUTE_KERNELS_TUNED_CONFIGS", str(tmp_path))
    monkeypatch.delenv(cl.WAVE_LOOKUP_ENV, raising=False)
    cl.clear_cache()
    yield str(tmp_path)
    cl.clear_cache()


def _write(root, kernel, sk, cfg, speedup=1.0):
    rec = make_record(sk, cfg, time_ms=1.0, default_time_ms=speedup, device="H200", dsl_version="4.8.1",
                      date="2026-12-03", trials=8)
    merge_write(file_path("sm90", kernel, root), {sk.key(): rec})


# ---------------------------------------------------------------- the model
def test_tile_and_work_counts_by_hand():
    assert wm.m_tiles(1000, 128) == 8
    # 8 experts of 125 rows: one tile each, rounded up to a cluster of 2 -> 16
    assert wm.m_tiles(1000, 128, cluster_m=2, experts=8) == 16
    # 3 experts over 1000 rows: 334, 333, 333 -> 3 tiles each
    assert wm.m_tiles(1000, 128, cluster_m=1, experts=3) == 9
    c2x1 = dataclasses.replace(C256, cluster_m=2)
    assert wm.work_units(c2x1, 1000, 4096) == 4 * 16  # 8 M tiles in 4 clusters, 16 N tiles
    assert wm.resident_clusters(c2x1, SMS) == 66
    # grouped along K: every expert walks the whole (M, N) grid
    assert wm.work_units(C256, 1856, 2688, experts=8, grouping="k") == 15 * 11 * 8
    assert wm.waves(C256, 1856, 2688, sms=SMS, experts=8, grouping="k") == -(-1320 // 132) == 10


def test_a_wave_boundary():
    """N=2048: 128x256 tiles fill exactly two waves at 33 M tiles; one row more starts a third
    wave of 8 tiles (6 % full), where 128x128 tiles need 5 waves of half the area."""
    assert wm.waves(C256, 33 * 128, 2048, sms=SMS) == 2 and wm.wave_fill(C256, 33 * 128, 2048, sms=SMS) == 1.0
    assert wm.waves(C256, 33 * 128 + 1, 2048, sms=SMS) == 3
    assert wm.wave_fill(C256, 33 * 128 + 1, 2048, sms=SMS) == pytest.approx(272 / 396)
    at = [wm.estimated_cost(c, 33 * 128, 2048, 4096, sms=SMS) for c in (C256, C128)]
    above = [wm.estimated_cost(c, 33 * 128 + 1, 2048, 4096, sms=SMS) for c in (C256, C128)]
    assert at[0] == at[1] and wm.cheapest(at) == 0  # a tie keeps the preferred one
    assert above[1] / above[0] == pytest.approx(2.5 / 3) and wm.cheapest(above) == 1


def test_k_per_tile_and_efficiency_scale_the_cost():
    base = wm.estimated_cost(C256, 4096, 4096, 8192, sms=SMS)
    assert wm.estimated_cost(C256, 4096, 4096, 8192, sms=SMS, efficiency=0.5) == 2 * base
    # K-grouped: each expert reduces k / experts
    assert wm.estimated_cost(C256, 4096, 4096, 8192, sms=SMS, experts=8, grouping="k") == pytest.approx(
        wm.waves(C256, 4096, 4096, sms=SMS, experts=8, grouping="k") * 128 * 256 * 1024)
    with pytest.raises(ValueError, match="efficiency"):
        wm.estimated_cost(C256, 1, 1, 1, sms=SMS, efficiency=0)


def test_cheapest_needs_more_than_the_margin():
    assert wm.cheapest([1.0, 0.995]) == 0
    assert wm.cheapest([1.0, 0.98]) == 1
    assert wm.cheapest([1.0, 0.98, 0.975]) == 1  # 0.975 is not 1 % below 0.98
    with pytest.raises(ValueError):
        wm.cheapest([])


def test_sm90_priors_and_default_variants():
    assert sm90.tile_efficiency(GemmConfig(tile_n=256, cluster_m=2, cluster_n=1)) == 1.0
    assert sm90.tile_efficiency(C128) == pytest.approx(0.86 * 0.93)
    d = default_config(16384, 4096, 4096)
    variants = sm90.wave_default_candidates(d)
    assert variants[0] == d and len(variants) == len(set(variants)) == 6
    assert {(c.tile_n, c.cluster_size) for c in variants} == {(t, s) for t in (128, 192, 256) for s in (1, 2)}
    assert sm90.wave_default_candidates(default_config(4096, 64, 4096)) == [default_config(4096, 64, 4096)]


# ---------------------------------------------------------------- the lookup
TUNED_1X1 = GemmConfig(tile_m=128, tile_n=256, cluster_m=1, cluster_n=1, swizzle=4)


def _wave(m, n=2048, k=4096, kernel="fc2", **kw):
    return cl.resolve_wave(kernel, arch="sm90", dtype="bfloat16", m=m, n=n, k=k, **kw)


def test_just_above_a_wave_boundary_prefers_a_config_that_fills_the_last_wave(root):
    """The tuned 128x256 entry (M=4100, 33 M tiles) fills two waves exactly at M=4224; at
    M=4300 (34 M tiles) it would start a third wave of 8 tiles: the wave lookup takes a config
    whose last wave is fuller, where the nearest-M rule keeps the entry."""
    _write(root, "fc2", ShapeKey("bfloat16", 4100, 2048, 4096), TUNED_1X1)
    assert _wave(4224) == (TUNED_1X1, "wave tuned m=4100")
    cfg, source = _wave(4300)
    assert source.startswith("wave default") and cfg != TUNED_1X1
    fill = lambda c: wm.wave_fill(c, 4300, 2048, sms=SMS)
    assert fill(cfg) > 0.9 > fill(TUNED_1X1)
    assert cl.resolve("fc2", arch="sm90", dtype="bfloat16", m=4300, n=2048, k=4096) == (TUNED_1X1,
                                                                                          "tuned-nearest m=4100")


def test_a_tuned_entry_keeps_its_measured_speedup(root):
    """Same waves as the default at the new M: the entry measured 20 % faster than the default
    at its own M stays 20 % faster; measured slower, the default wins."""
    sk = ShapeKey("bfloat16", 8192, 16384, 4096)
    tuned = GemmConfig(tile_n=256, cluster_m=2, cluster_n=1, schedule="pingpong", tile_m=64)
    _write(root, "fc1_srelu", sk, tuned, speedup=1.2)
    cands = cl.wave_candidates("fc1_srelu", arch="sm90", dtype="bfloat16", m=6000, n=16384, k=4096)
    (cfg, source, cost), default = cands[0], cands[1]
    assert (cfg, source) == (tuned, "wave tuned m=8192") and default[1] == "wave default"
    ratio = (wm.estimated_cost(tuned, 6000, 16384, 4096, sms=SMS) / wm.estimated_cost(tuned, 8192, 16384, 4096, sms=SMS)
             * wm.estimated_cost(default_config(8192, 16384, 4096), 8192, 16384, 4096, sms=SMS)
             / wm.estimated_cost(default[0], 6000, 16384, 4096, sms=SMS))
    assert cost / default[2] == pytest.approx(ratio / 1.2)
    assert _wave(6000, n=16384, kernel="fc1_srelu")[1] == "wave tuned m=8192"
    _write(root, "fc1_srelu", sk, tuned, speedup=0.8)
    cl.clear_cache()
    assert _wave(6000, n=16384, kernel="fc1_srelu")[1].startswith("wave default")


def test_exact_entry_wins_and_far_or_mismatched_entries_are_not_candidates(root):
    _write(root, "fc2", ShapeKey("bfloat16", 4100, 2048, 4096), TUNED_1X1)
    assert _wave(4100) == (TUNED_1X1, "tuned")
    sources = [s for _, s, _ in cl.wave_candidates("fc2", arch="sm90", dtype="bfloat16", m=40000, n=2048, k=4096)]
    assert sources[0] == "wave default" and not any("tuned" in s for s in sources)  # 3 buckets away
    assert not any("tuned" in s for _, s, _ in cl.wave_candidates("fc2", arch="sm90", dtype="bfloat16", m=4300,
                                                                   n=2048, k=4104))  # K differs
    assert not any("tuned" in s for _, s, _ in cl.wave_candidates("fc2", arch="sm90", dtype="float16", m=4300,
                                                                   n=2048, k=4096))


def test_weight_grad_takes_its_neighbours_along_the_tokens(root):
    """weight_grad's token count is K: an entry at K=16384 serves K=20000 (same M, N, E)."""
    tuned = GemmConfig(tile_m=128, tile_n=192, cluster_m=1, cluster_n=2, epi_n=64, epi_stages=3)
    _write(root, "weight_grad", ShapeKey("bfloat16", 1856, 2688, 16384, 8), tuned, speedup=1.1)
    cfg, source = cl.resolve_wave(
        "weight_grad", arch="sm90", dtype="bfloat16", m=1856, n=2688, k=20000, experts=8)
    assert (cfg, source) == (tuned, "wave tuned k=16384")
    assert cl.resolve_wave("weight_grad", arch="sm90", dtype="bfloat16", m=1864, n=2688, k=20000,
                           experts=8)[1].startswith("wave default")  # M differs


def test_every_candidate_can_run(root):
    for kernel, m, n, k, e in [("fc1_srelu", 12345, 16384, 4096, 0), ("fc2", 3000, 4096, 16384, 0),
                               ("fc1_srelu", 20000, 1856, 2688, 8), ("fc2_dgrad_dsrelu", 5000, 14848, 2688, 0),
                               ("weight_grad", 1856, 2688, 30000, 128)]:
        for cfg, _, cost in cl.wave_candidates(kernel, arch="sm90", dtype="bfloat16", m=m, n=n, k=k, experts=e):
            assert cost > 0
            from cute_kernels.registry import get_kernel

            assert get_kernel(kernel).config_errors(cfg, e) == [], (kernel, cfg)


def test_the_switch(root, monkeypatch):
    """On by default (since the H200 run of bench_untuned_m, 2026-12-03); "0" turns it off after
    clear_cache() (the nearest-M rule); the lookup's cache keeps the two apart."""
    _write(root, "fc2", ShapeKey("bfloat16", 4100, 2048, 4096), TUNED_1X1)
    look = lambda: cl.lookup_config("fc2", arch="sm90", dtype="torch.bfloat16", m=4300, n=2048, k=4096)
    assert cl.wave_lookup_enabled() and look() == _wave(4300)[0] != TUNED_1X1
    monkeypatch.setenv(cl.WAVE_LOOKUP_ENV, "0")
    assert look() == _wave(4300)[0]  # read once
    cl.clear_cache()
    assert not cl.wave_lookup_enabled() and look() == TUNED_1X1
    monkeypatch.setenv(cl.WAVE_LOOKUP_ENV, "1")
    cl.clear_cache()
    assert look() == _wave(4300)[0]


def test_fp8_kernels_keep_the_nearest_m_rule(root):
    """The priors are bf16 measurements: the block-scaled kernels resolve as without the switch."""
    for kernel in ("fp8_fc1_srelu", "fp8_fc2"):
        kw = dict(arch="sm90", dtype="float8_e4m3fn", m=2345, n=4096, k=16384)
        assert cl.resolve(kernel, **kw, wave=True) == cl.resolve(kernel, **kw)


@pytest.mark.parametrize("value,expected", [(1.25, 1.25), (7.0, 2.0), (0.1, 0.5), ("1.3", 1.0), (True, 1.0),
                                            (float("nan"), 1.0), (None, 1.0), (-1.0, 1.0)])
def test_a_records_speedup_is_read_safely(value, expected):
    assert cl._speedup(value) == expected
