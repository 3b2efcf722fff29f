"""Softmax cross-entropy of a chunk of logits, row by row, with its gradient written over the
logits (sm_90a): the loss-and-gradient core of integrations/chunked_ce.py in two passes over
the chunk instead of about seven torch passes in fp32.

logits (R, V) bf16 or fp16 (rows 16-byte aligned, V a multiple of 8), targets (R,) int64 (a
target outside [0, V) marks an ignored row: the host maps ignore_index to -1), scale (1,) fp32
-> per row r with target t:
    M = max_j x[r, j],  S = sum_j exp(x[r, j] - M)                       (fp32)
    loss[r] = (M - x[r, t]) + log(S)                                     (fp32; 0 on ignored rows)
    x[r, j] <- (exp(x[r, j] - M) - S * [j == t]) * (scale / S)           (the logits' dtype; 0 on ignored rows)
i.e. (softmax - onehot(t)) * scale, the gradient of scale * loss[r] for the logits, rounded
once to the logits' dtype as the torch form's `torch.mul(x, coef, out=g)`.

One CTA of 256 threads per row.  Pass 1 reads the row once with 16-byte loads (UNROLL vectors
of 8 values in flight per thread) and keeps an online (max, sum of exp) pair per thread, merged
over the warp by shuffles and over the 8 warps through shared memory (every thread merges the
8 warp pairs in the same order: one M and S for the CTA).  Thread 0 reads x[r, t] before the
barrier (pass 2 overwrites it) and writes loss[r].  Pass 2 reads the row again (mostly from L2:
the rows in flight on the GPU are a few tens of MiB) and writes g with 16-byte stores; after a
barrier thread 0 rewrites the target's element as (exp(x_t - M) - S) * (scale / S).  An ignored
row writes zeros without reading.  exp is ex2.approx of (x - M) * log2(e) (relative error a few
2^-24); log(S) is the accurate log.  Traffic: read 2 x 2 bytes, write 2 bytes per logit.
"""
from __future__ import annotations

import math

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, Int64
from cutlass.memory import SmemAllocator

THREADS = 256
WARPS = THREADS // 32
VEC = 8  # 16-bit values per 16-byte load
UNROLL = 4  # vectors per thread in flight in a sweep
SWEEP = THREADS * VEC * UNROLL  # columns of the row per sweep of the CTA
LOG2E = 1.4426950408889634
LOWEST = -3.4028234663852886e38  # the running max's start: finite, so that merges never see inf - inf


@cute.jit
def merge(m_a, s_a, m_b, s_b):
    """The (max, sum of exp(x - max)) pair of two parts of a row from the pairs of each."""
    m = cute.arch.fmax(m_a, m_b)
    s = s_a * cute.math.exp2((m_a - m) * Float32(LOG2E), approx=True, ftz=True) \
        + s_b * cute.math.exp2((m_b - m) * Float32(LOG2E), approx=True, ftz=True)
    return m, s


def sweep_tile(dtype):
    """A thread's UNROLL vectors of one sweep in registers."""
    return cute.make_rmem_tensor(cute.make_layout((UNROLL, VEC), stride=(VEC, 1)), dtype)


@cute.jit
def copy_sweep(mX, xv, row, sweep, tidx, vecs, load: cutlass.Constexpr):
    """Load the thread's vectors of `sweep` of `row` into xv (or with `load=False` store xv into
    them): vector (sweep * UNROLL + u) * THREADS + tidx of the row as register row u, those past
    the row's `vecs` vectors left alone."""
    for u in cutlass.range_constexpr(UNROLL):
        v = (sweep * UNROLL + u) * THREADS + tidx
        if v < vecs:
            if cutlass.const_expr(load):
                cute.autovec_copy(cute.local_tile(mX, (1, VEC), (row, v)), cute.local_tile(xv, (1, VEC), (u, 0)))
            else:
                cute.autovec_copy(cute.local_tile(xv, (1, VEC), (u, 0)), cute.local_tile(mX, (1, VEC), (row, v)))


class Sm90SoftmaxXent:
    """(logits, targets, scale, loss) -> loss rows written, g written over the logits; see the
    module docstring.  `dtype`: the logits' cutlass type (BFloat16 or Float16)."""

    def __init__(self, dtype=cutlass.BFloat16):
        self.dtype = dtype

    @cute.jit
    def __call__(self, mX: cute.Tensor, mT: cute.Tensor, mScale: cute.Tensor, mLoss: cute.Tensor, stream):
        rows = cute.size(mX, mode=[0])
        vocab = cute.size(mX, mode=[1])
        self.kernel(mX, mT, mScale, mLoss, vocab).launch(grid=(rows, 1, 1), block=[THREADS, 1, 1], stream=stream)

    @cute.kernel
    def kernel(self, mX: cute.Tensor, mT: cute.Tensor, mScale: cute.Tensor, mLoss: cute.Tensor, vocab: Int32):
        tidx, _, _ = cute.arch.thread_idx()
        row, _, _ = cute.arch.block_idx()
        smem = SmemAllocator()
        sPair = smem.allocate_tensor(Float32, cute.make_layout((2, WARPS), stride=(WARPS, 1)), byte_alignment=16)
        lane = tidx % 32
        warp = tidx // 32
        vecs = vocab // VEC
        sweeps = (vocab + SWEEP - 1) // SWEEP
        target = mT[row]
        valid = target >= Int64(0) and target < Int64(vocab)
        if valid:
            t = Int32(target)
            picked = Float32(0.0)
            if tidx == 0:
                picked = Float32(mX[(row, t)])
            # ---- pass 1: the thread's online (max, sum of exp) over its vectors
            m = Float32(LOWEST)
            s = Float32(0.0)
            for sweep in cutlass.range(sweeps, unroll=1):
                xv = sweep_tile(self.dtype)
                xv.fill(-math.inf)  # vectors past the row: no effect on the max or the sum
                copy_sweep(mX, xv, row, sweep, tidx, vecs, True)
                vals = sweep_tile(Float32)
                vals.store(xv.load().to(Float32))
                m_new = m
                for j in cutlass.range_constexpr(UNROLL * VEC):
                    m_new = cute.arch.fmax(m_new, vals[j])
                part = Float32(0.0)
                for j in cutlass.range_constexpr(UNROLL * VEC):
                    part += cute.math.exp2((vals[j] - m_new) * Float32(LOG2E), approx=True, ftz=True)
                s = s * cute.math.exp2((m - m_new) * Float32(LOG2E), approx=True, ftz=True) + part
                m = m_new
            # ---- the row's (M, S): over the warp, then over the warps
            for k in cutlass.range_constexpr(5):
                m_o = cute.arch.shuffle_sync_bfly(m, offset=16 >> k)
                s_o = cute.arch.shuffle_sync_bfly(s, offset=16 >> k)
                m, s = merge(m, s, m_o, s_o)
            if lane == 0:
                sPair[(0, warp)] = m
                sPair[(1, warp)] = s
            cute.arch.barrier()
            m = sPair[(0, 0)]
            s = sPair[(1, 0)]
            for w in cutlass.range_constexpr(1, WARPS):
                m, s = merge(m, s, sPair[(0, w)], sPair[(1, w)])
            scale = mScale[0]
            coef = scale / s
            if tidx == 0:
                mLoss[row] = (m - picked) + cute.math.log(s)  # m - picked exact: no cancellation at |m| >> loss
            # ---- pass 2: g over the row
            for sweep in cutlass.range(sweeps, unroll=1):
                xv = sweep_tile(self.dtype)
                copy_sweep(mX, xv, row, sweep, tidx, vecs, True)
                vals = sweep_tile(Float32)
                vals.store(xv.load().to(Float32))
                for j in cutlass.range_constexpr(UNROLL * VEC):
                    vals[j] = cute.math.exp2((vals[j] - m) * Float32(LOG2E), approx=True, ftz=True) * coef
                xv.store(vals.load().to(self.dtype))
                copy_sweep(mX, xv, row, sweep, tidx, vecs, False)
            cute.arch.barrier()
            if tidx == 0:
                e_t = cute.math.exp2((picked - m) * Float32(LOG2E), approx=True, ftz=True)
                mX[(row, t)] = self.dtype((e_t - s) * coef)
        else:
            if tidx == 0:
                mLoss[row] = Float32(0.0)
            zeros = cute.make_rmem_tensor((1, VEC), self.dtype)
            zeros.fill(0.0)
            for v in cutlass.range(tidx, vecs, THREADS, unroll=1):
                cute.autovec_copy(zeros, cute.local_tile(mX, (1, VEC), (row, v)))
