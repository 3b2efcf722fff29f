"""Structure comparison: our sm100 GEMM against CUTLASS's hardware-tested Blackwell persistent
dense GEMM (examples/python/CuTeDSL/cute/blackwell/kernel/dense_gemm/dense_gemm_persistent.py),
both compiled here for sm_100a (no GPU) with the same tiles, bf16 in and out, fp32 accumulation.

    python scripts/compare_sm100_cutlass.py --cutlass-example /path/to/dense_gemm_persistent.py
    CUTLASS_DIR=/path/to/cutlass/git python scripts/compare_sm100_cutlass.py   # reads the file from HEAD

Counts are static (per PTX text): the k-block loop is unrolled once per K block of a stage, so
tcgen05.mma per K block is the MMA count of the mainloop body.  Also: tcgen05.ld shape and count
(one per epilogue sub-tile), commits, mbarrier operations, named barriers, TMA loads / stores,
the TMEM columns allocated, ptxas registers and barriers.  CUTLASS's code is loaded from the path
given, never copied into this repository.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = "examples/python/CuTeDSL/cute/blackwell/kernel/dense_gemm/dense_gemm_persistent.py"
CONFIGS = [  # (name, cta_group, mma tile (M, N), cluster (M, N))
    ("1cta 128x256 c1x1", 1, (128, 256), (1, 1)),
    ("1cta 128x256 c1x2", 1, (128, 256), (1, 2)),
    ("2cta 256x256 c2x1", 2, (256, 256), (2, 1)),
]


def load_example(path: str | None):
    if path is None:
        repo = os.environ.get("CUTLASS_DIR")
        if not repo:
            raise SystemExit("give --cutlass-example PATH or CUTLASS_DIR (a CUTLASS git checkout)")
        src = subprocess.run(["git", "-C", repo, "show", f"HEAD:{EXAMPLE}"], capture_output=True, text=True,
                             check=True).stdout
        path = os.path.join(tempfile.mkdtemp(), "dense_gemm_persistent.py")
        with open(path, "w") as f:
            f.write(src)
    spec = importlib.util.spec_from_file_location("cutlass_dense_gemm_persistent", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def cutlass_ptx(mod, cta_group, mma_mn, cluster_mn) -> str:
    import cutlass
    import cutlass.cute as cute
    from cutlass.cute.runtime import make_fake_stream, make_fake_tensor

    m, n, k = cute.sym_int32(), cute.sym_int32(), cute.sym_int32()

    def t(rows, cols):
        return make_fake_tensor(cutlass.BFloat16, (rows, cols, 1),
                                (cute.sym_int64(divisibility=8), 1, cute.sym_int64(divisibility=8)), assumed_align=16)

    gemm = mod.PersistentDenseGemmKernel(cutlass.Float32, cta_group == 2, mma_mn, cluster_mn, True)
    fn = cute.compile(gemm, t(m, k), t(n, k), t(m, n), 148, make_fake_stream(),
                      options="--gpu-arch sm_100a --keep-ptx")
    return fn.__ptx__


def ours_ptx(cta_group, mma_mn, cluster_mn) -> str:
    from cute_kernels.compile import KernelKey
    from cute_kernels.epilogue import EpilogueSpec
    from cute_kernels.inspect_ptx import kernel_ptx
    from cute_kernels.sm100.config import Sm100Config

    cfg = Sm100Config(tile_n=mma_mn[1], cta_group=cta_group, cluster_m=cluster_mn[0], cluster_n=cluster_mn[1])
    return kernel_ptx(KernelKey("sm100", cfg, EpilogueSpec("identity"), False, "bfloat16", "k", "k"))


def metrics(ptx: str) -> dict:
    from cute_kernels.inspect_ptx import ptxas_info

    lines = ptx.splitlines()

    def count(pat):
        return sum(1 for ln in lines if re.search(pat, ln))

    ld_shapes = sorted(set(re.findall(r"tcgen05\.ld\.sync\.aligned\.(\w+\.x\d+)", ptx)))
    cols = "?"
    for i, ln in enumerate(lines):  # the column operand: an immediate moved into a register just before
        hit = re.search(r"tcgen05\.alloc\.[^\n]*,\s*(%r\d+|\d+);", ln)
        if hit:
            cols = hit.group(1)
            for prev in reversed(lines[max(0, i - 4):i]):
                mv = re.search(rf"mov\.b32\s+{re.escape(cols)},\s*(\d+);", prev)
                if mv:
                    cols = mv.group(1)
            break
    # runs of tcgen05.mma between waits on / commits to a stage barrier: one stage's (K block's) MMAs
    runs, cur = [], 0
    for ln in lines:
        if "tcgen05.mma.cta_group" in ln:
            cur += 1
        elif cur and ("mbarrier.try_wait" in ln or "tcgen05.commit" in ln):
            runs.append(cur)
            cur = 0
    info = ptxas_info(ptx, "sm_100a")
    barriers = re.search(r"used (\d+) barriers", info.raw)
    return {
        "tcgen05.mma (static)": count(r"tcgen05\.mma\.cta_group"),
        "tcgen05.mma per K block": ",".join(str(r) for r in sorted(set(runs))),
        "tcgen05.ld (static)": count(r"tcgen05\.ld\.sync"),
        "tcgen05.ld shape": ",".join(ld_shapes),
        "tcgen05.wait::ld": count(r"tcgen05\.wait::ld"),
        "tcgen05.commit": count(r"tcgen05\.commit"),
        "TMEM alloc columns": cols,
        "TMA loads": count(r"cp\.async\.bulk\.tensor.*mbarrier::complete_tx"),
        "TMA loads multicast": count(r"cp\.async\.bulk\.tensor.*multicast::cluster"),
        "TMA stores": count(r"cp\.async\.bulk\.tensor.*\.global\.shared::cta"),
        "mbarrier.try_wait": count(r"mbarrier\.try_wait"),
        "mbarrier.arrive*": count(r"mbarrier\.arrive"),
        "mbarrier expect_tx": count(r"expect_tx"),
        "bar.sync / barrier.sync": count(r"\b(bar|barrier)\.sync"),
        "fence.proxy.async": count(r"fence\.proxy\.async"),
        "elect.sync": count(r"elect\.sync"),
        "PTX lines": len(lines),
        "ptxas registers": info.registers,
        "ptxas barriers": int(barriers.group(1)) if barriers else "?",
        "spill bytes": info.spill_store_bytes + info.spill_load_bytes,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cutlass-example", help=f"path to CUTLASS's {EXAMPLE}")
    args = p.parse_args(argv)
    os.environ.setdefault("CUTE_DSL_ARCH", "sm_100a")
    mod = load_example(args.cutlass_example)
    for name, g, mma_mn, cluster in CONFIGS:
        ours, theirs = metrics(ours_ptx(g, mma_mn, cluster)), metrics(cutlass_ptx(mod, g, mma_mn, cluster))
        print(f"\n== {name} (K block 64, identity epilogue, bf16 -> bf16)")
        print(f"{'':28s} {'ours':>12s} {'CUTLASS':>12s}")
        for k in ours:
            print(f"{k:28s} {str(ours[k]):>12s} {str(theirs[k]):>12s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
