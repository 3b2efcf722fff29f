"""The host side of a GEMM launch's tensor arguments: the (M, K, 1) / (N, K, E) views the
kernels take (or, flat-argument kernels, the 2-D operands as stored), and the grouped launches'
per-expert metadata (cu_rows, cu_tiles) made without a host sync and kept for the GEMMs of one
step.  Shared by the entry points (gemm_ops, fp8/ops) and the self-check's own launch
(selfcheck), below all of them."""
from __future__ import annotations

import collections
import weakref

import torch


def upload_int32(rows: list[int], cols: list[int], device) -> torch.Tensor:
    """(2, n) int32 on `device` from two host lists, by an async copy from pinned memory.

    torch's pinned (caching host) allocator keeps the host block alive until the copy
    has run, so the host never waits for the GPU here; a copy from pageable memory
    would make it wait for all queued work.  While a CUDA graph is being captured the
    copy is recorded, not run: every replay reads the host block again, so that block is
    kept for the life of the process (a few bytes per captured grouped launch)."""
    if torch.device(device).type != "cuda":
        return torch.tensor([rows, cols], dtype=torch.int32, device=device)
    host = torch.empty((2, len(rows)), dtype=torch.int32, pin_memory=True)
    view = host.numpy()
    view[0] = rows
    view[1] = cols
    if torch.cuda.is_current_stream_capturing():
        _graph_host_blocks.append(host)
    return host.to(device, non_blocking=True)


_graph_host_blocks: list = []


def as_mkl(t: torch.Tensor) -> torch.Tensor:
    """(M, K) -> (M, K, 1) view with a batch stride the TMA accepts (a multiple of 8
    elements: K, the row length, is one)."""
    r, c = t.shape
    s0, s1 = t.stride()
    n = r * c
    return t.as_strided((r, c, 1), (s0, s1, n if n > 8 else 8))  # (no max(): a builtin call per view)


def as_nkl(w: torch.Tensor) -> torch.Tensor:
    """(N, K) -> (N, K, 1); (E, N, K) -> (N, K, E)."""
    if w.dim() == 2:
        return as_mkl(w)
    return w.permute(1, 2, 0)


def as_mkl_t(t: torch.Tensor) -> torch.Tensor:
    """as_mkl(t.t()) in one torch op: (T, M) -> the (M, T, 1) view of t's transpose."""
    r, c = t.shape
    s0, s1 = t.stride()
    n = r * c
    return t.as_strided((c, r, 1), (s1, s0, n if n > 8 else 8))


def as_nkl_t(w: torch.Tensor) -> torch.Tensor:
    """as_nkl(w.transpose(-2, -1)) in one torch op: (K, N) -> (N, K, 1); (E, K, N) -> (N, K, E)."""
    if w.dim() == 2:
        return as_mkl_t(w)
    return w.permute(2, 1, 0)


def flat_operand(t: torch.Tensor, major: str, transposed: bool) -> torch.Tensor:
    """An operand as a flat-argument kernel takes it (KernelKey.flat_args, gemm_base/flat_args.py):
    as stored, the kernel's own (rows, K) (per expert (E, rows, K)) when it is K-major, its transpose
    (K, rows) when it is M-/N-major.  `t` is the operand, or with `transposed` its transpose (the
    weight gradient's dy and x, a weight read as its transpose); no torch op where `t` already is
    what the kernel takes (the step's every operand)."""
    return t if (major == "k") != transposed else t.transpose(-2, -1)


_META_CACHE_SIZE = 64
_meta_cache: "collections.OrderedDict[tuple, torch.Tensor]" = collections.OrderedDict()


_TUPLE_META_SIZE = 16
_tuple_meta: dict = {}  # (id(splits tuple), tile_m, cluster_m) -> (the tuple, device, (cu_rows, cu_tiles))

_TENSOR_META_CACHE_SIZE = 16
_tensor_meta_cache: "collections.OrderedDict[tuple, tuple]" = collections.OrderedDict()


def splits_metadata(m_splits, tile_m: int, device, cluster_m: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """cu_rows (E+1) and cu_tiles (E+1) as int32 on `device`, without a host sync.

    Each expert's M tile count is rounded up to a multiple of `cluster_m`, so the CTAs
    of one cluster (which share B through multicast) always work on the same expert;
    a rounded-up tile lies past its expert's rows and stores nothing.

    Kept per splits and tile_m, so the GEMMs of one MoE layer's step (FC1, FC2 and their
    gradients) share one upload or one computation: a list's by its values (LRU; a tuple's found
    by its identity first, without hashing its values); a GPU
    tensor's by identity and version (its values are not read on the host), so an
    in-place change of the tensor computes it again."""
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        # In a CUDA graph: computed inside the graph and not cached, so a replay reads
        # memory the graph owns (a cached tensor could be evicted and reused) and sees
        # the current values of an m_splits tensor changed in place between replays.
        return _rows_and_tiles(_fresh_splits_metadata(m_splits, tile_m, device, cluster_m))
    if isinstance(m_splits, torch.Tensor):
        return _tensor_splits_metadata(m_splits, tile_m, device, cluster_m)
    is_tuple = type(m_splits) is tuple
    if is_tuple:  # the step's own tuple (srelu_mlp hands its GEMMs one): known by identity
        hit = _tuple_meta.get((id(m_splits), tile_m, cluster_m))
        if hit is not None and hit[0] is m_splits and hit[1] == device:
            return hit[2]
    key = (m_splits if isinstance(m_splits, tuple) else tuple(m_splits), tile_m, cluster_m, device.type, device.index)
    pair = _meta_cache.get(key)
    if pair is not None:
        _meta_cache.move_to_end(key)
    else:
        pair = _rows_and_tiles(_fresh_splits_metadata(m_splits, tile_m, device, cluster_m))
        _meta_cache[key] = pair
        if len(_meta_cache) > _META_CACHE_SIZE:
            _meta_cache.popitem(last=False)
    if is_tuple:
        if len(_tuple_meta) >= _TUPLE_META_SIZE:
            _tuple_meta.clear()
        # (the entry holds the tuple, so no other object gets its id while the entry is there)
        _tuple_meta[(id(m_splits), tile_m, cluster_m)] = (m_splits, device, pair)
    return pair


def _rows_and_tiles(meta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cu_rows, cu_tiles): the two rows of a (2, E+1) metadata tensor, as views made once and
    kept with it (indexing the kept tensor on every launch would cost two torch ops each time)."""
    return meta[0], meta[1]


def _fresh_splits_metadata(m_splits, tile_m: int, device, cluster_m: int = 1) -> torch.Tensor:
    """(2, E+1) int32: row offsets and tile offsets (per expert cluster_m * ceil(rows /
    (tile_m * cluster_m)) tiles), from a list (uploaded) or a tensor (computed on its device)."""
    span = tile_m * cluster_m
    if isinstance(m_splits, torch.Tensor):
        s = m_splits.to(torch.int32)
        meta = torch.zeros((2, s.numel() + 1), dtype=torch.int32, device=device)
        tiles = torch.div(s + (span - 1), span, rounding_mode="floor")
        if cluster_m > 1:
            tiles = tiles * cluster_m
        torch.cumsum(torch.stack((s, tiles)), 1, out=meta[:, 1:])
        return meta
    rows, tiles = [0], [0]
    for s in m_splits:
        rows.append(rows[-1] + s)
        tiles.append(tiles[-1] + cluster_m * -(-s // span))
    return upload_int32(rows, tiles, device)


def _tensor_splits_metadata(m_splits: torch.Tensor, tile_m: int, device, cluster_m: int = 1):
    key = (id(m_splits), m_splits._version, tile_m, cluster_m, device.type, device.index)
    hit = _tensor_meta_cache.get(key)
    if hit is not None and hit[0]() is m_splits:
        _tensor_meta_cache.move_to_end(key)
        return hit[1]
    pair = _rows_and_tiles(_fresh_splits_metadata(m_splits, tile_m, device, cluster_m))
    _tensor_meta_cache[key] = (weakref.ref(m_splits), pair)
    if len(_tensor_meta_cache) > _TENSOR_META_CACHE_SIZE:
        _tensor_meta_cache.popitem(last=False)
    return pair
