"""Every SM90 GEMM variant compiles for sm_90a without a GPU, and the PTX holds what
the design says: WGMMA, TMA loads (multicast when clustered) and stores, setmaxnreg,
stmatrix, no local memory; ptxas (where installed) reports no spills."""
import dataclasses
import itertools
import os
import re

import pytest

from cute_kernels.compile import KernelKey, build_kernel, get_compiled
from cute_kernels.config import ConfigError, GemmConfig, epilogue_misfit, narrowed_for_epilogue
from cute_kernels.epilogue import EpilogueSpec
from cute_kernels.inspect_ptx import find_ptxas, kernel_ptx, ptxas_info
from cute_kernels.sm90.epilogue_aux import prefetches_aux_into_l2

EPILOGUES = {
    "identity": EpilogueSpec("identity"),
    "srelu": EpilogueSpec("srelu"),
    "srelu_preact": EpilogueSpec("srelu", store_preact=True),
    "srelu_preact_scale": EpilogueSpec("srelu", store_preact=True, row_scale=True),
    "dsrelu": EpilogueSpec("dsrelu"),
    "dsrelu_postact": EpilogueSpec("dsrelu", store_postact=True),
}
SCHEDULES = {
    "coop128x256": dict(tile_m=128, tile_n=256, schedule="cooperative"),
    "pingpong64x256": dict(tile_m=64, tile_n=256, schedule="pingpong"),
    # a 128-row ping-pong tile: two 64-row WGMMA blocks per warpgroup, 192 accumulator registers
    "pingpong128x192": dict(tile_m=128, tile_n=192, schedule="pingpong"),
}
CLUSTERS = {False: [(1, 2), (2, 1)], True: [(1, 1), (1, 2), (2, 1)]}

VARIANTS = [
    (grouped, epi, sched, cl)
    for grouped in (False, True)
    for epi, sched, cl in itertools.product(EPILOGUES, SCHEDULES, CLUSTERS[grouped])
    # a row scale next to 192 accumulator registers spills: rejected (test_per_row_epilogues_reject_wide_tiles)
    if epilogue_misfit(GemmConfig(**SCHEDULES[sched]), EPILOGUES[epi]) is None
]


def _key(grouped, epi, sched, cluster, dtype="bfloat16", a_major="k", b_major="k"):
    cfg = GemmConfig(**SCHEDULES[sched], cluster_m=cluster[0], cluster_n=cluster[1])
    return KernelKey("sm90", cfg, EPILOGUES[epi], grouped, dtype, a_major, b_major)


def _check_ptx(ptx: str, key: KernelKey):
    cfg, epi = key.cfg, key.epi
    dt = "bf16" if key.dtype == "bfloat16" else "f16"
    assert f"wgmma.mma_async.sync.aligned.m64n{cfg.tile_n}k16.f32.{dt}.{dt}" in ptx
    assert "cp.async.bulk.tensor" in ptx and "mbarrier" in ptx
    loads = [l for l in ptx.splitlines() if "cp.async.bulk.tensor" in l and "mbarrier::complete_tx" in l]
    assert len(loads) >= 2, "TMA loads of A and B completing on an mbarrier"
    stores = len([l for l in ptx.splitlines() if "cp.async.bulk.tensor" in l and ".global.shared::cta" in l])
    per_tile = epi.num_outputs * cfg.tile_n // cfg.epi_n
    assert stores == per_tile, f"one TMA store per output and epilogue sub-tile ({per_tile}), found {stores}"
    if cfg.cluster_size > 1:
        assert ".multicast::cluster" in ptx
    else:
        assert ".multicast::cluster" not in ptx
    assert re.search(r"setmaxnreg\.dec\.sync\.aligned\.u32\s+40;", ptx), "producer gives registers away"
    assert re.search(r"setmaxnreg\.inc\.sync\.aligned\.u32\s+232;", ptx), "consumers take registers"
    assert "stmatrix.sync.aligned" in ptx
    assert ".local" not in ptx, "local memory in PTX"


@pytest.mark.parametrize("grouped,epi,sched,cluster", VARIANTS,
                         ids=[f"{'grouped' if g else 'dense'}-{e}-{s}-c{c[0]}x{c[1]}" for g, e, s, c in VARIANTS])
def test_variant_compiles_and_ptx_is_as_designed(grouped, epi, sched, cluster):
    key = _key(grouped, epi, sched, cluster)
    ptx = kernel_ptx(key)
    _check_ptx(ptx, key)
    if find_ptxas() is not None:
        info = ptxas_info(ptx)
        assert info.spill_store_bytes == 0 and info.spill_load_bytes == 0, info.raw[-600:]
        assert info.stack_bytes == 0, info.raw[-600:]
        assert "C7519" not in info.raw, "ptxas injected warpgroup.arrive (accumulator touched between WGMMAs)"


@pytest.mark.parametrize("dtype,a_major,b_major", [("float16", "k", "k"), ("bfloat16", "k", "n"), ("bfloat16", "m", "k"),
                                                   ("bfloat16", "m", "n")])
def test_other_dtypes_and_operand_majorness_compile(dtype, a_major, b_major):
    key = _key(False, "srelu_preact", "coop128x256", (1, 2), dtype=dtype, a_major=a_major, b_major=b_major)
    dump_dir = _dsl_dump_dir()  # where --keep-ptx writes unless told otherwise (the cwd at DSL start)
    before = _artifacts(dump_dir)
    _check_ptx(kernel_ptx(key), key)
    assert _artifacts(dump_dir) - before == set(), "kernel_ptx wrote files to the DSL's dump directory"


def _artifacts(d: str) -> set:
    """(name, mtime) of the compiler artifacts in `d` (a rewritten file counts as new)."""
    return {(e.name, e.stat().st_mtime_ns) for e in os.scandir(d) if e.name.endswith((".ptx", ".cubin"))}


def _dsl_dump_dir() -> str:
    from cutlass.cutlass_dsl import CuTeDSL

    return CuTeDSL._get_dsl().envar.dump_dir


def test_compiled_kernels_are_cached():
    key = _key(False, "identity", "coop128x256", (1, 2))
    assert get_compiled(key) is get_compiled(key)


BACKWARD_VARIANTS = {
    # FC2 dgrad with router probability: row scale + row sum (router gradient), <= 192-wide tiles
    "dsrelu_prob_rowsum_128x192": KernelKey("sm90", GemmConfig(tile_n=192, cluster_m=2, cluster_n=1),
                                            EpilogueSpec("dsrelu", store_postact=True, row_scale=True, row_sum=True),
                                            False, "bfloat16", "k", "n"),
    "dsrelu_prob_rowsum_grouped_128x128": KernelKey("sm90", GemmConfig(tile_n=128, cluster_n=2),
                                                    EpilogueSpec("dsrelu", row_scale=True, row_sum=True),
                                                    True, "bfloat16", "k", "n"),
    "dsrelu_prob_rowsum_pingpong_64x192": KernelKey("sm90", GemmConfig(tile_m=64, tile_n=192, schedule="pingpong"),
                                                    EpilogueSpec("dsrelu", row_scale=True, row_sum=True),
                                                    True, "bfloat16", "k", "n"),
    # 128-row ping-pong: the row sum keeps four rows per thread (r0, r0 + 8, r0 + 64, r0 + 72)
    "dsrelu_prob_rowsum_pingpong_128x64": KernelKey("sm90", GemmConfig(tile_m=128, tile_n=64, schedule="pingpong"),
                                                    EpilogueSpec("dsrelu", store_postact=True, row_scale=True,
                                                                 row_sum=True),
                                                    True, "bfloat16", "k", "n"),
    "dsrelu_dense_pingpong_128x128": KernelKey("sm90", GemmConfig(tile_m=128, tile_n=128, schedule="pingpong",
                                                                  cluster_m=2, cluster_n=1),
                                               EpilogueSpec("dsrelu"), False, "bfloat16", "k", "n"),
    "wgrad_grouped_k_pingpong_128x128": KernelKey("sm90", GemmConfig(tile_m=128, tile_n=128, schedule="pingpong",
                                                                     cluster_m=2, cluster_n=1),
                                                  EpilogueSpec("identity"), False, "bfloat16", "m", "n",
                                                  out_dtype="float32", grouped_k=True),
    # the dense default: 256-wide tiles, preact prefetched into L2 (not registers)
    "dsrelu_dense_128x256": KernelKey("sm90", GemmConfig(tile_n=256, cluster_m=2, cluster_n=1),
                                      EpilogueSpec("dsrelu"), False, "bfloat16", "k", "n"),
    # weight gradients: A = dy^T (M-major), B = x^T (N-major)
    "wgrad_dense_bf16": KernelKey("sm90", GemmConfig(), EpilogueSpec("identity"), False, "bfloat16", "m", "n"),
    "wgrad_dense_fp32_accumulate": KernelKey("sm90", GemmConfig(), EpilogueSpec("identity", accumulate=True),
                                             False, "bfloat16", "m", "n", out_dtype="float32"),
    "wgrad_grouped_k_fp32": KernelKey("sm90", GemmConfig(cluster_m=2, cluster_n=1), EpilogueSpec("identity"),
                                      False, "bfloat16", "m", "n", out_dtype="float32", grouped_k=True),
    "wgrad_grouped_k_bf16_accumulate": KernelKey("sm90", GemmConfig(tile_n=128, cluster_n=1),
                                                 EpilogueSpec("identity", accumulate=True),
                                                 False, "float16", "m", "n", grouped_k=True),
    # ping-pong: each warpgroup skips the other's tile by that tile's own per-expert K tiles
    "wgrad_grouped_k_pingpong_64x256": KernelKey("sm90", GemmConfig(tile_m=64, schedule="pingpong"),
                                                 EpilogueSpec("identity"), False, "bfloat16", "m", "n",
                                                 grouped_k=True),
}


@pytest.mark.parametrize("name", list(BACKWARD_VARIANTS))
def test_backward_variant_compiles_and_ptx_is_as_designed(name):
    key = BACKWARD_VARIANTS[name]
    ptx = kernel_ptx(key)
    cfg, epi = key.cfg, key.epi
    dt = "bf16" if key.dtype == "bfloat16" else "f16"
    assert f"wgmma.mma_async.sync.aligned.m64n{cfg.tile_n}k16.f32.{dt}.{dt}" in ptx
    stores = len([l for l in ptx.splitlines() if "cp.async.bulk.tensor" in l and ".global.shared::cta" in l])
    assert stores == epi.num_outputs * cfg.tile_n // cfg.epi_n
    if key.grouped_k:
        # per-CTA descriptors rewritten in global memory when the expert changes (K extent
        # and base address), released and acquired through the tensormap proxy, and every
        # operand load goes through such a descriptor held in a register (not a kernel parameter)
        assert "tensormap.replace.tile.global_dim.global" in ptx
        assert "tensormap.replace.tile.global_address.global" in ptx
        assert "fence.proxy.tensormap::generic.release" in ptx
        assert "fence.proxy.tensormap::generic.acquire" in ptx
        loads = [ln for ln in ptx.splitlines() if re.search(r"cp\.async\.bulk\.tensor\.\dd\.shared::(cta|cluster)\.global", ln)]
        assert loads and all(re.search(r"\[%rd\d+, \{", ln) for ln in loads), loads[:2]
    # the epilogue input (preact, or the accumulated output) is TMA-prefetched into L2 by one
    # elected producer lane, one box per epilogue sub-tile
    prefetch_at = [i for i, ln in enumerate(ptx.splitlines()) if "cp.async.bulk.prefetch.tensor" in ln]
    assert bool(prefetch_at) == prefetches_aux_into_l2(cfg, epi, grouped=key.grouped, grouped_k=key.grouped_k)
    if prefetch_at:
        assert "elect.sync" in "\n".join(ptx.splitlines()[max(prefetch_at[0] - 8, 0):prefetch_at[0]])
        assert len(prefetch_at) % (cfg.tile_n // cfg.epi_n) == 0
    if epi.aux_input:
        # the epilogue input is read two adjacent columns per load, never element by element
        assert "ld.global.b16" not in ptx
        assert re.search(r"ld\.global(\.\w+)*\.b(32|64)", ptx)
    if key.d_dtype == "float32":
        assert "stmatrix" not in ptx, "fp32 outputs go to smem with plain stores"
    else:
        assert "stmatrix.sync.aligned" in ptx
    if epi.row_sum:
        # quad shuffle reduction, then plain stores of per-tile partials: no atomics (reproducible)
        assert "shfl.sync.bfly" in ptx and "st.global.b32" in ptx and "atom.global" not in ptx
    assert ".local" not in ptx
    if find_ptxas() is not None:
        info = ptxas_info(ptx)
        assert info.spill_store_bytes == 0 and info.spill_load_bytes == 0, info.raw[-600:]
        assert info.stack_bytes == 0, info.raw[-600:]


@pytest.mark.parametrize("cfg,epi,what", [
    (GemmConfig(), EpilogueSpec("dsrelu", row_sum=True), "row-sum"),
    (GemmConfig(tile_m=128, tile_n=192, schedule="pingpong"), EpilogueSpec("srelu", row_scale=True), "row-scale"),
])
def test_per_row_epilogues_reject_wide_tiles(cfg, epi, what):
    from cute_kernels.compile import build_kernel
    from cute_kernels.config import ConfigError

    with pytest.raises(ConfigError, match=what):
        build_kernel(KernelKey("sm90", cfg, epi, False, "bfloat16", "k", "n"))


def test_looked_up_configs_narrow_to_fit_per_row_epilogues():
    """A looked-up config too wide for a per-row epilogue keeps a tile_n dividing its own."""
    rowsum = EpilogueSpec("dsrelu", row_sum=True, row_scale=True)
    assert narrowed_for_epilogue(GemmConfig(tile_n=256), rowsum).tile_n == 128
    assert narrowed_for_epilogue(GemmConfig(tile_n=192), rowsum).tile_n == 192
    pp = GemmConfig(tile_m=128, tile_n=192, schedule="pingpong")
    assert narrowed_for_epilogue(pp, EpilogueSpec("srelu", row_scale=True)) == GemmConfig(
        tile_m=64, tile_n=192, schedule="pingpong")
    assert narrowed_for_epilogue(dataclasses.replace(pp, tile_n=128, epi_n=64), rowsum) == GemmConfig(
        tile_m=64, tile_n=128, schedule="pingpong", epi_n=64)
    assert narrowed_for_epilogue(pp, EpilogueSpec("srelu")) == pp


def test_fp32_accumulating_k_grouped_epilogue_narrows_its_sub_tiles():
    """The K-grouped weight gradient adding into fp32 main_grad spills at epi_n 64 next to 128
    accumulator registers: a looked-up config keeps its tile and buffered columns at epi_n 32,
    the kernel builder refuses the wide form, and the other outputs keep it."""
    acc = EpilogueSpec("identity", accumulate=True)
    wide = GemmConfig(tile_n=256, cluster_m=2, cluster_n=1, epi_n=64, epi_stages=2)
    assert "epi_n 32" in epilogue_misfit(wide, acc, out_bytes=4, grouped_k=True)
    assert narrowed_for_epilogue(wide, acc, out_bytes=4, grouped_k=True) == dataclasses.replace(
        wide, epi_n=32, epi_stages=4)
    for where in (dict(out_bytes=2, grouped_k=True), dict(out_bytes=4, grouped_k=False)):
        assert epilogue_misfit(wide, acc, **where) is None
    assert epilogue_misfit(dataclasses.replace(wide, tile_n=192, epi_stages=3), acc, out_bytes=4, grouped_k=True) is None
    with pytest.raises(ConfigError, match="epi_n 32"):
        build_kernel(KernelKey("sm90", wide, acc, False, "bfloat16", "m", "n", out_dtype="float32", grouped_k=True))


def test_grouped_configs_accept_every_schedule_and_cluster():
    from cute_kernels.config import validation_errors

    for cfg in (GemmConfig(tile_m=64, schedule="pingpong"), GemmConfig(cluster_m=2, cluster_n=1)):
        assert validation_errors(cfg, grouped_k=True) == []
        assert validation_errors(cfg, grouped=True) == []


def _held_by_another_thread(lock) -> bool:
    import threading

    got = []

    def probe():
        got.append(lock.acquire(blocking=False))
        if got[0]:
            lock.release()

    t = threading.Thread(target=probe)
    t.start()
    t.join()
    return not got[0]


def test_every_dsl_compile_holds_the_dsl_lock(monkeypatch):
    """The DSL keeps a compile's options in one process-wide object, so compiles on two
    threads corrupt each other (an autotuner sweep got a kernel compiled without TVM-FFI
    that way: 'Missing required arguments: stream').  Our compiles and the occupancy
    query (HardwareInfo compiles a probe kernel) hold compile.dsl_lock."""
    import cutlass.cute as cute
    import cutlass.utils as cu

    from cute_kernels import compile as cc
    from cute_kernels import gemm_ops

    seen = []

    def fake_compile(*args, **kwargs):
        seen.append(_held_by_another_thread(cc.dsl_lock))
        return "compiled"

    monkeypatch.setattr(cute, "compile", fake_compile)
    assert cc.compile_kernel(KernelKey("sm90", GemmConfig(), EpilogueSpec("identity"), False, "bfloat16",
                                       "k", "k"), tvm_ffi=True) == "compiled"

    class FakeHardwareInfo:
        def __init__(self, device_id=0):
            pass

        def get_max_active_clusters(self, cluster_size):
            seen.append(_held_by_another_thread(cc.dsl_lock))
            return 66

    monkeypatch.setattr(cu, "HardwareInfo", FakeHardwareInfo)
    assert gemm_ops._max_clusters.__wrapped__(0, 2) == 66
    assert seen == [True, True]
    assert not _held_by_another_thread(cc.dsl_lock)
