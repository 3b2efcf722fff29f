"""Instructions per K tile in the consumer K loop of a block-scaled FP8 kernel, from its SASS (CPU,
no GPU: the PTX of `cute_kernels.inspect_ptx.kernel_ptx`, ptxas, nvdisasm).

The K loop is the smallest loop (a backward branch and its target) holding at least two K tiles'
QGMMAs (4 per K tile and N block of a 128-row tile); per K tile it prints the instructions in
all, the promotion FFMAs, and the rest (scale loads and their addresses, descriptors, barriers)
by opcode.  docs/fp8.md quotes these counts (e.g. the scales staged in shared memory).

    python scripts/sass_fp8_kloop.py                       # default 128x128 plain GEMM
    python scripts/sass_fp8_kloop.py --smem-scales --tile-n 256 --cluster 2x1
    python scripts/sass_fp8_kloop.py --grouped --epilogue act-q --smem-scales
    python scripts/sass_fp8_kloop.py --sass dump.sass     # count an existing nvdisasm -c dump
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import re
import subprocess
import sys
import tempfile

QGMMA_PER_K_BLOCK_GROUP = 4  # m64n128k32 WGMMAs per K tile (tile_k 128) and 128-column N block


def parse_sass(text: str) -> tuple[list[str], dict[str, int]]:
    """(instructions in order, label -> index of the instruction after it) of an `nvdisasm -c` dump."""
    instructions, labels = [], {}
    for line in text.splitlines():
        m = re.match(r"\s*(\.L_x_\d+):", line)
        if m:
            labels[m.group(1)] = len(instructions)
            continue
        m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(.*?)\s*;", line)
        if m:
            instructions.append(m.group(1))
    return instructions, labels


def opcode(instruction: str) -> str:
    """The opcode without its predicate and modifiers: '@!P0 SYNCS.ARRIVE.TRANS64 ...' -> 'SYNCS'."""
    return re.sub(r"^@!?U?P\w+\s+", "", instruction).split()[0].split(".")[0]


def k_loop_counts(text: str, n_blocks: int = 1) -> dict:
    """Per K tile counts of the consumer K loop in SASS `text` (n_blocks: 128-column N blocks per
    tile): {'k_tiles': K tiles per loop iteration, 'total', 'ffma', 'other', 'ops': Counter of the
    other instructions per loop iteration}.  ValueError where no loop holds two K tiles' QGMMAs."""
    instructions, labels = parse_sass(text)
    per_k_tile = QGMMA_PER_K_BLOCK_GROUP * n_blocks
    best = None
    for i, ins in enumerate(instructions):
        m = re.search(r"\bBRA\b.*?(\.L_x_\d+)", ins)
        if not (m and m.group(1) in labels and labels[m.group(1)] <= i):
            continue
        start = labels[m.group(1)]
        body = instructions[start:i + 1]
        qgmma = sum(1 for s in body if opcode(s).endswith("GMMA"))
        if qgmma >= 2 * QGMMA_PER_K_BLOCK_GROUP and (best is None or len(body) < len(best[0])):
            best = (body, qgmma)
    if best is None:
        raise ValueError("no loop with two K tiles' QGMMAs in this SASS")
    body, qgmma = best
    k_tiles = qgmma / per_k_tile
    ops = collections.Counter(opcode(s) for s in body)
    ffma = ops.pop("FFMA", 0)
    for name in [o for o in ops if o.endswith("GMMA")]:
        ops.pop(name)
    return {"k_tiles": k_tiles, "total": len(body) / k_tiles, "ffma": ffma / k_tiles,
            "other": sum(ops.values()) / k_tiles, "ops": ops}


def variant_key(args):
    """The FP8 family kernel key the arguments name (bf16 output, e4m3 operands, K-major)."""
    from cute_kernels.compile import KernelKey
    from cute_kernels.epilogue import EpilogueSpec
    from cute_kernels.sm90.config import FP8_DEFAULT_CONFIG

    cm, cn = (int(v) for v in args.cluster.split("x"))
    cfg = dataclasses.replace(FP8_DEFAULT_CONFIG, tile_n=args.tile_n, cluster_m=cm, cluster_n=cn)
    epi = (EpilogueSpec("identity") if args.epilogue == "identity"
           else EpilogueSpec("act", row_scale=args.grouped, quantized="postact"))
    return KernelKey("sm90", cfg, epi, args.grouped, "float8_e4m3fn", "k", "k", out_dtype="bfloat16",
                     scales_smem=args.smem_scales)


def sass_of(key, ptxas: str, nvdisasm: str) -> str:
    from cute_kernels.inspect_ptx import kernel_ptx

    with tempfile.TemporaryDirectory() as d:
        ptx, cubin = os.path.join(d, "k.ptx"), os.path.join(d, "k.cubin")
        with open(ptx, "w") as f:
            f.write(kernel_ptx(key))
        subprocess.run([ptxas, "-arch=sm_90a", "-o", cubin, ptx], check=True)
        return subprocess.run([nvdisasm, "-c", cubin], check=True, capture_output=True, text=True).stdout


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sass", help="count this nvdisasm -c dump instead of compiling a variant")
    p.add_argument("--tile-n", type=int, default=128, choices=(128, 256))
    p.add_argument("--cluster", default="1x2", help="cluster_m x cluster_n")
    p.add_argument("--grouped", action="store_true")
    p.add_argument("--epilogue", default="identity", choices=("identity", "act-q"),
                   help="act-q: FC1 + relu^2 writing FP8 postact (with the router probability when grouped)")
    p.add_argument("--smem-scales", action="store_true", help="KernelKey.scales_smem")
    p.add_argument("--ptxas", default="ptxas")
    p.add_argument("--nvdisasm", default=os.environ.get("NVDISASM", "nvdisasm"))
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.sass:
        with open(args.sass) as f:
            text = f.read()
    else:
        text = sass_of(variant_key(args), args.ptxas, args.nvdisasm)
    c = k_loop_counts(text, n_blocks=args.tile_n // 128)
    print(f"K loop: {c['k_tiles']:g} K tiles per iteration; per K tile and warp: {c['total']:.1f} instructions, "
          f"{c['ffma']:.1f} FFMA, {c['other']:.1f} other")
    print("other per iteration: " + ", ".join(f"{k} {v}" for k, v in c["ops"].most_common()))


if __name__ == "__main__":
    sys.exit(main())
