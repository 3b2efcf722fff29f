"""bench_dense_configs' candidate syntax (CPU): autotuner overrides applied over the default config."""
import pytest

from benchmarks.bench_dense_configs import DEFAULT_TRIES, candidate
from cute_kernels import GemmConfig


def test_candidate_overrides_the_default_config():
    c = candidate("schedule=pingpong128,tile_n=192,cluster=2x1")
    assert (c.tile_m, c.tile_n, c.cluster_m, c.cluster_n, c.schedule) == (128, 192, 2, 1, "pingpong")
    d = GemmConfig()
    assert (c.raster, c.swizzle, c.epi_n, c.epi_stages) == (d.raster, d.swizzle, d.epi_n, d.epi_stages)
    assert candidate("") == d


def test_default_candidates_are_distinct_ping_pong_tiles():
    cfgs = [candidate(t) for t in DEFAULT_TRIES]
    assert len(set(cfgs)) == len(cfgs)
    assert all(c.schedule == "pingpong" and c.tile_m == 128 for c in cfgs)


@pytest.mark.parametrize("bad", ["tile_n=7", "tile=128", "cluster=3x1"])
def test_candidate_rejects_values_outside_the_space(bad):
    with pytest.raises(ValueError):
        candidate(bad)
