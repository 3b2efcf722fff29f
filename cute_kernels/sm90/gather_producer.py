"""The gathering producer of the sm90 GEMM (`KernelKey.gather_a`): A's rows by index.

Routed experts multiply each expert's tokens by its weights; with the dispatch gather fused
into FC1, row r of the grouped problem is x[a_rows[r]] (x: (T, K) the hidden states in token
order, a_rows: (M,) int32 the token of each sorted (token, expert) pair), so no (M, K) copy of
the hidden states is ever made.  TMA cannot gather rows on sm90 (its boxes are rectangles), so
the whole producer warpgroup (4 warps, 128 threads) loads A by 16-byte `cp.async` copies into
the same swizzled shared-memory stage the TMA would fill; B stays a TMA load (multicast across
the cluster as usual), issued by warp 0.

One stage's full barrier completes on 1 + 128 arrivals and B's bytes:
- warp 0 arrives once with B's transaction bytes (`arrive_and_expect_tx`, one elected lane)
  and issues B's TMA load;
- each of the 128 threads issues its A copies, then `cp.async.mbarrier.arrive.noinc`: the
  barrier counts that thread's arrival when all its earlier copies have landed.
The consumers wait on the full barrier as for TMA stages, then fence the async proxy
(`fence.proxy.async.shared::cta`): cp.async writes shared memory through the generic proxy
and WGMMA reads it through the async proxy.

Thread split of a (tile_m, tile_k) K-major stage: 8 threads cover one 128-byte line of a row
(eight 16-byte chunks; tile_k 128 gives each thread two chunks per row), so 16 rows per
pass and tile_m / 16 rows per thread.  Each thread reads its rows' indices once per tile.
Rows past the expert's end (the tile's padding: computed, never stored) load the expert's
last row; columns past K are zero-filled (cp.async with source size 0), as TMA would.
"""
from __future__ import annotations

import cutlass
import cutlass.cute as cute
from cutlass import Int32, const_expr
from cutlass.cute.nvgpu import cpasync

GATHER_THREADS = 128  # the producer warpgroup
COPY_BITS = 128  # one cp.async: 16 bytes
LINE_BYTES = 128  # threads of one row cover one 128-byte line per pass


def gather_tiled_copy(dtype, tile_k: int):
    """The cp.async tiled copy of a K-major (tile_m, tile_k) A stage by the producer warpgroup."""
    elems = COPY_BITS // dtype.width
    threads_per_row = min(tile_k // elems, LINE_BYTES * 8 // COPY_BITS)
    atom = cute.make_copy_atom(cpasync.CopyG2SOp(cache_mode=cpasync.LoadCacheMode.GLOBAL), dtype,
                               num_bits_per_copy=COPY_BITS)
    threads = cute.make_layout((GATHER_THREADS // threads_per_row, threads_per_row), stride=(threads_per_row, 1))
    return atom, cute.make_tiled_copy_tv(atom, threads, cute.make_layout((1, elems)))


def stage_arrivals() -> int:
    """Producer arrivals per stage of the gathered pipeline: B's TMA warp once, every gathering
    thread once (cp.async.mbarrier.arrive.noinc)."""
    return 1 + GATHER_THREADS


class GatherProducer:
    """Trace-time helper of the producer warpgroup of a gathered-A kernel."""

    def __init__(self, tile_m: int, tile_n: int, tile_k: int, ab_stages: int):
        self.tile_m, self.tile_n, self.tile_k = tile_m, tile_n, tile_k
        self.ab_stages = ab_stages

    @cute.jit
    def run(self, walk, ab_pipeline, mA, mARows, sA, tma_b, mB, sB, b_cta_layout, cluster_coord, b_mcast_mask,
            k_tiles, k_total, start, step, thread, is_tma_warp):
        """Walk this CTA's tiles (work indices start, start + step, ...) and fill their stages:
        B by TMA from the elected warp, A's gathered rows by cp.async from every thread."""
        atom, tiled = gather_tiled_copy(mA.element_type, self.tile_k)
        thr = tiled.get_slice(thread)
        tAsA = thr.partition_D(sA)  # (copy, rows, chunks, stage)
        tAcA = thr.partition_S(cute.make_identity_tensor((self.tile_m, self.tile_k)))
        rows_per_thread = cute.size(tAcA, mode=[1])
        chunks_per_thread = cute.size(tAcA, mode=[2])
        elems = COPY_BITS // mA.element_type.width
        src_rows = cute.make_rmem_tensor((rows_per_thread,), Int32)
        state = cutlass.pipeline.make_pipeline_state(cutlass.pipeline.PipelineUserType.Producer, self.ab_stages)
        t = start
        while t < walk.num_work:
            row_start, row_end, n_tile, expert = walk.coords(t, cluster_coord)
            gB = cute.local_tile(mB[None, None, expert], (self.tile_n, self.tile_k), (n_tile, None))
            tBsB, tBgB = cpasync.tma_partition(
                tma_b, cluster_coord[0], b_cta_layout, cute.group_modes(sB, 0, 2), cute.group_modes(gB, 0, 2))
            for m in cutlass.range_constexpr(rows_per_thread):
                # the tile's padding rows (never stored) read the expert's last row
                src_rows[m] = mARows[cutlass.min(row_start + tAcA[0, m, 0][0], row_end - 1)]
            for kt in range(k_tiles):
                ab_pipeline.sync_object_empty.wait(state.index, state.phase)
                bar = ab_pipeline.producer_get_barrier(state)
                if is_tma_warp:
                    ab_pipeline.sync_object_full.arrive(state.index, ab_pipeline.producer_mask)
                    cute.copy(tma_b, tBgB[(None, kt)], tBsB[(None, state.index)], tma_bar_ptr=bar,
                              mcast_mask=b_mcast_mask)
                for m in cutlass.range_constexpr(rows_per_thread):
                    for c in cutlass.range_constexpr(chunks_per_thread):
                        col = kt * self.tile_k + tAcA[0, m, c][1]
                        src = self._chunk(mA, src_rows[m], col, elems)
                        pred = cute.make_rmem_tensor((1,), cutlass.Boolean)
                        pred[0] = col < k_total  # past K: zero-filled (K is a multiple of a chunk)
                        cute.copy(atom, src, tAsA[(None, m, c, state.index)], pred=pred)
                cute.arch.cp_async_mbarrier_arrive_noinc(bar)
                state.advance()
            t += step
        # (every thread's copies land before it leaves; warp 0 then waits out the consumers)
        cute.arch.cp_async_commit_group()
        cute.arch.cp_async_wait_group(0)
        if is_tma_warp:
            ab_pipeline.producer_tail(state)

    @staticmethod
    def _chunk(mA, row, col, elems: int):
        """The 16-byte chunk of A at (row, col) as a copy source (16-byte aligned: K-major rows
        of 16-byte multiples, col a multiple of a chunk)."""
        col = cutlass.min(col, cute.size(mA, mode=[1]) - elems)  # a zero-filled chunk past K stays in the row
        ptr = mA.iterator + cute.crd2idx((row, col, 0), mA.layout)
        aligned = cute.make_ptr(mA.element_type, ptr.toint(), cute.AddressSpace.gmem, assumed_align=16)
        return cute.make_tensor(aligned, cute.make_layout(((elems, 1),)))
