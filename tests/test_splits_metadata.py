"""cu_rows / cu_tiles metadata of grouped launches (gemm_ops._splits_metadata), on CPU:
values, and that a GPU-style tensor's metadata is computed once per tensor version."""
import torch

from cute_kernels.gemm_ops import _splits_metadata


def _expected(splits, tile_m, cluster_m=1):
    """Row offsets, and tile offsets with each expert's tiles rounded up to whole clusters."""
    rows, tiles = [0], [0]
    for s in splits:
        rows.append(rows[-1] + s)
        t = -(-s // tile_m)
        tiles.append(tiles[-1] + t + (-t) % cluster_m)
    return rows, tiles


def test_list_and_tensor_give_the_same_metadata():
    g = torch.Generator().manual_seed(5)
    splits = torch.randint(0, 400, (9,), generator=g)
    splits[3] = 0
    for tile_m in (64, 128):
        for cluster_m in (1, 2):
            want = _expected(splits.tolist(), tile_m, cluster_m)
            for given in (splits.tolist(), splits, splits.to(torch.int32)):
                rows, tiles = _splits_metadata(given, tile_m, torch.device("cpu"), cluster_m)
                assert (rows.tolist(), tiles.tolist()) == want, (type(given), tile_m, cluster_m)


def test_cluster_rounding_keeps_each_cluster_on_one_expert():
    splits = [5, 0, 300, 17, 256]
    _, tiles = _splits_metadata(splits, 128, torch.device("cpu"), 2)
    assert tiles.tolist() == [0, 2, 2, 6, 8, 10]
    assert all(t % 2 == 0 for t in tiles.tolist())  # every expert starts a cluster


def test_tensor_metadata_is_cached_per_version_and_tile():
    splits = torch.tensor([5, 0, 300, 17])
    rows, _ = _splits_metadata(splits, 128, torch.device("cpu"))
    again, _ = _splits_metadata(splits, 128, torch.device("cpu"))
    assert again.data_ptr() == rows.data_ptr()  # one computation shared by a step's GEMMs
    _, tiles64 = _splits_metadata(splits, 64, torch.device("cpu"))
    assert tiles64.tolist() == [0, 1, 1, 6, 7]
    splits[0] = 200  # in place: a new version, so new metadata
    rows2, tiles2 = _splits_metadata(splits, 128, torch.device("cpu"))
    assert rows2.tolist() == [0, 200, 200, 500, 517] and tiles2.tolist() == [0, 2, 2, 5, 6]
    other = torch.tensor([5, 0, 300, 17])  # equal values, another tensor: its own entry
    rows3, _ = _splits_metadata(other, 128, torch.device("cpu"))
    assert rows3.tolist() == [0, 5, 5, 305, 322]
