"""The Hopper GEMM's shared-memory pipelines between its warp roles (traced inside
`Sm90Gemm.kernel`; the epilogue's TMA store pipeline is the consumers' own).

- The operand ring: ab_stages stages of A and B blocks.  A stage is full when its TMA loads
  have landed (their transaction bytes) and every producer arrival is in: one for a TMA
  producer, 1 + 128 for the gathering producer (`gather_producer.stage_arrivals`; A's bytes
  then arrive by cp.async, not as transaction bytes), plus one per producer lane when the FP8
  scales are staged with the operands (`scale_stage.stage_scale_arrivals`).  It is empty again when every consumer
  warp reading it, in this CTA and in the cluster peers its loads were multicast to, has
  released it.
- The descriptor ring (K-grouped problems): the writer warp hands the cut TMA descriptors of
  `gemm_base.descriptors.DescriptorRing` to the producer warp through desc_slots slots.
"""
from __future__ import annotations

import cutlass.cute as cute
import cutlass.pipeline as pipeline
from cutlass import const_expr

from .gather_producer import stage_arrivals
from .scale_stage import stage_scale_arrivals


def operand_pipeline(storage, cfg, *, ab_stages: int, a_smem_staged, b_smem_staged, ab_dtype, b_dtype,
                     cta_layout_mnk, consumer_warps_per_stage: int, gathered: bool, staged_scales: bool = False):
    """The operand ring's full/empty barriers in `storage.ab_bars` (see the module docstring)."""
    a_smem_one = cute.slice_(a_smem_staged, (None, None, 0))
    b_smem_one = cute.slice_(b_smem_staged, (None, None, 0))
    tx_bytes = cute.size_in_bytes(ab_dtype, a_smem_one) + cute.size_in_bytes(b_dtype, b_smem_one)
    producer_arrivals = 1
    if const_expr(gathered):  # A lands by cp.async: B's bytes, one arrival per gathering thread
        tx_bytes = cute.size_in_bytes(b_dtype, b_smem_one)
        producer_arrivals = stage_arrivals()
    if const_expr(staged_scales):  # the producer lanes' scale copies (cp.async.mbarrier.arrive.noinc)
        producer_arrivals += stage_scale_arrivals()
    mcast_peers = cfg.cluster_m + cfg.cluster_n - 1
    return pipeline.PipelineTmaAsync.create(
        barrier_storage=storage.ab_bars.data_ptr(),
        num_stages=ab_stages,
        producer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, producer_arrivals),
        consumer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, mcast_peers * consumer_warps_per_stage),
        tx_count=tx_bytes,
        cta_layout_vmnk=cute.make_layout((1, *cta_layout_mnk.shape)),
        defer_sync=True,
    )


def descriptor_pipeline(storage, desc_slots: int):
    """The writer warp -> producer warp hand-over of cut descriptors (K-grouped problems)."""
    return pipeline.PipelineAsync.create(
        barrier_storage=storage.desc_bars.data_ptr(),
        num_stages=desc_slots,
        producer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, 32),
        consumer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, 32),
        defer_sync=True,
    )
