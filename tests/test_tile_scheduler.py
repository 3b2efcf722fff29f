"""The banded raster visits every tile exactly once (host twin of the device code)."""
import pytest

from cute_kernels.tile_scheduler import banded_coord


@pytest.mark.parametrize("num_m,num_n", [(1, 1), (5, 7), (64, 64), (3, 1), (1, 9), (17, 33)])
@pytest.mark.parametrize("swizzle", [1, 2, 4, 8])
@pytest.mark.parametrize("raster_n", [True, False])
def test_banded_raster_is_a_bijection(num_m, num_n, swizzle, raster_n):
    seen = [banded_coord(t, num_m, num_n, swizzle, raster_n) for t in range(num_m * num_n)]
    assert sorted(seen) == [(m, n) for m in range(num_m) for n in range(num_n)]


def test_band_stays_on_few_rows():
    # raster n, swizzle 4: the first 4*num_n tiles touch only M tiles 0..3
    coords = [banded_coord(t, 64, 64, 4, True) for t in range(4 * 64)]
    assert {m for m, _ in coords} == {0, 1, 2, 3}
