"""Per-launch metadata of grouped launches, on CPU: cu_rows / cu_tiles
(gemm_ops._splits_metadata; values, and that a GPU-style tensor's metadata is computed
once per tensor version) and the K-grouped descriptor workspace's reuse rules."""
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
            for given in (splits.tolist(), tuple(splits.tolist()), splits, splits.to(torch.int32)):
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


def test_descriptor_workspace_is_kept_per_stream_and_fresh_in_a_capture(monkeypatch):
    """The K-grouped kernel's descriptor scratch: one buffer per (device, stream), reused by
    the launches of that stream (they run in order) and grown when a launch needs more; a
    fresh one while a CUDA graph is captured (no replay may share it)."""
    from cute_kernels import gemm_ops

    stream = {"id": 1}
    capturing = {"on": False}
    monkeypatch.setattr(gemm_ops, "_current_stream_key", lambda device: (stream["id"], device.index, 1))
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing["on"])
    monkeypatch.setattr(gemm_ops, "_desc_ws_cache", {})
    dev = torch.device("cpu")
    a = gemm_ops._desc_workspace(64, dev)
    assert a.dtype == torch.int64 and a.numel() == 64
    assert gemm_ops._desc_workspace(32, dev) is a  # same stream, fits: reused
    b = gemm_ops._desc_workspace(128, dev)  # needs more: grown
    assert b is not a and b.numel() == 128 and gemm_ops._desc_workspace(64, dev) is b
    stream["id"] = 2
    c = gemm_ops._desc_workspace(64, dev)  # another stream: its own
    assert c is not b
    capturing["on"] = True
    assert gemm_ops._desc_workspace(64, dev) is not c  # inside a capture: always fresh


def test_a_repeated_call_returns_the_same_views():
    """The kept metadata's two rows are views made once: a launch indexes nothing (each index
    of the (2, E+1) tensor would be a torch op per launch)."""
    for splits in ([5, 0, 300, 17], torch.tensor([5, 0, 300, 17])):
        first = _splits_metadata(splits, 128, torch.device("cpu"), 2)
        again = _splits_metadata(splits, 128, torch.device("cpu"), 2)
        assert again[0] is first[0] and again[1] is first[1]
        assert first[0].tolist() == [0, 5, 5, 305, 322] and first[1].tolist() == [0, 2, 2, 6, 8]


def test_a_tuple_is_known_by_identity_and_its_metadata_follows_the_tile():
    """srelu_mlp hands its GEMMs one tuple: its metadata is found by identity, per (tile_m,
    cluster_m, device), and equals what its values (a list) give."""
    cpu = torch.device("cpu")
    splits = (5, 0, 130, 17)
    first = _splits_metadata(splits, 64, cpu)
    assert _splits_metadata(splits, 64, cpu) is first
    assert [t.tolist() for t in first] == [t.tolist() for t in _splits_metadata(list(splits), 64, cpu)]
    for tile_m, cluster_m in ((128, 1), (64, 2)):
        rows, tiles = _splits_metadata(splits, tile_m, cpu, cluster_m)
        assert (rows.tolist(), tiles.tolist()) == _expected(splits, tile_m, cluster_m)
    other = tuple(list(splits))  # equal values, another object: the same values' metadata
    assert [t.tolist() for t in _splits_metadata(other, 64, cpu)] == [t.tolist() for t in first]
