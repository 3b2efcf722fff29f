"""`python -m cute_kernels.selfcheck`: every kernel variant of this GPU's arch against torch.

Prints one row per variant (normalised max error of each output, pass/fail, the small
problem's kernel time) and writes the rows as JSON to $OUT/selfcheck_<arch>.json (default
./gpu_out).  Exit status 1 when any variant fails.  --quick runs one cluster shape per
(grouping, epilogue) instead of all of them.  --flat runs the bf16 variants' flat-argument kernels
(KernelKey.flat_args, CUTE_KERNELS_FLAT_ARGS=1) instead, on the arches that have them.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys
import time

from .archs import arch_space, get_arch
from .compile import KernelKey
from .config import block_scaled_errors
from .epilogue import EpilogueSpec

ACCUMULATE = EpilogueSpec("identity", accumulate=True)  # the weight gradient added into main_grad
EPILOGUES = [
    EpilogueSpec("identity"), EpilogueSpec("identity", accumulate=True), EpilogueSpec("srelu"),
    EpilogueSpec("srelu", store_preact=True), EpilogueSpec("srelu", store_preact=True, row_scale=True),
    EpilogueSpec("dsrelu"), EpilogueSpec("dsrelu", store_postact=True),
    EpilogueSpec("dsrelu", store_postact=True, row_scale=True, row_sum=True),
    EpilogueSpec("act", store_preact=True, row_scale=True, activation="tanh_srelu:4.0"),
    EpilogueSpec("dact", store_postact=True, row_scale=True, row_sum=True, activation="tanh_srelu:4.0"),
]


def variant_keys(arch: str, quick: bool = False) -> list[KernelKey]:
    """The keys `python -m cute_kernels.selfcheck` runs: each grouping x epilogue x config, bf16
    (fp32 outputs for the accumulating weight gradients), the backward's operand views."""
    keys = []
    for cfg, epi in itertools.product(arch_space(arch).selfcheck_configs(quick), EPILOGUES):
        for grouping in ("dense", "grouped", "grouped_k"):
            if grouping == "grouped_k" and epi.kind != "identity":
                continue
            if grouping == "grouped" and epi.accumulate:
                continue
            majors = ("m", "n") if grouping == "grouped_k" or epi.accumulate else (
                ("k", "n") if epi.kind == "dact" else ("k", "k"))
            keys.append(KernelKey(arch, cfg, epi, grouping == "grouped", "bfloat16", *majors,
                                  out_dtype="float32" if epi.accumulate else "", grouped_k=grouping == "grouped_k"))
    return keys + fp8_variant_keys(arch, quick)


def flat_variant_keys(arch: str, quick: bool = False) -> list[KernelKey]:
    """The bf16 variants' flat-argument kernels (KernelKey.flat_args): their tensors handed as stored
    (`--flat`); none on an arch without them (archs.Arch.flat_args)."""
    if not get_arch(arch).flat_args:
        return []
    return [dataclasses.replace(k, flat_args=True) for k in variant_keys(arch, quick) if not k.block_scaled]


FP8_TABLE_TANH = "tanh_srelu:4.0"  # the tanh clamp of the FP8 variants in the table


def fp8_variant_keys(arch: str, quick: bool = False) -> list[KernelKey]:
    """The block-scaled FP8 kernels' keys (arches that have them): each registered FP8 kernel
    dense and grouped (grouped FC1 with the router probability, as the MoE step launches it)
    per FP8 self-check config, the gradient GEMM's e5m2 x e4m3 operands, each also with its scales
    staged in shared memory on cooperative 128-row tiles (KernelKey.scales_smem), and on 128-wide tiles the
    weight gradient with per-row B scales (b_scale "row" and "rows_staged", fp32 out: fp8/wgrad_ops.py; and
    "rows_staged" grouped along K, the grouped weight gradient; each also accumulating into an fp32 main_grad), and
    the FC1 with the tanh clamp (dense and grouped: the FP8 step's other activation)."""
    from .registry import KERNELS, kernel_key, with_activation

    if not get_arch(arch).block_scaled_fp8:
        return []
    keys = []
    for cfg in arch_space(arch, block_scaled=True).selfcheck_configs(quick):
        first = len(keys)
        for spec in (s for s in KERNELS.values() if s.block_scaled):
            for experts in (0, 4):
                epi = dataclasses.replace(spec.epilogue, row_scale=bool(experts) and spec.epilogue.kind == "act")
                keys.append(kernel_key(spec.name, arch, cfg, spec.default_dtype, experts, epi=epi))
                if epi.kind == "act":
                    keys.append(kernel_key(spec.name, arch, cfg, spec.default_dtype, experts,
                                           epi=with_activation(epi, FP8_TABLE_TANH)))
        keys.append(kernel_key("fp8_fc2", arch, cfg, "float8_e5m2+float8_e4m3fn", 0))
        if cfg.schedule == "cooperative" and cfg.tile_m == 128:  # the scales staged in shared memory (the
            keys += [dataclasses.replace(k, scales_smem=True) for k in keys[first:]]  # FP8 ops' default there)
        if cfg.tile_n == 128:
            wgrad = []
            for b_scale in ("row", "rows_staged"):
                wgrad.append(dataclasses.replace(kernel_key("fp8_fc2", arch, cfg, "float8_e4m3fn", 0), b_scale=b_scale,
                                                 out_dtype="float32"))
            # the grouped weight gradient (grouped along K over per-expert padded copies, "rows_staged" only)
            wgrad.append(dataclasses.replace(kernel_key("fp8_fc2", arch, cfg, "float8_e4m3fn", 0), b_scale="rows_staged",
                                             out_dtype="float32", grouped_k=True))
            keys += wgrad
            # each added into an fp32 main_grad by its epilogue, where the config takes it (the filter below)
            keys += [dataclasses.replace(k, epi=ACCUMULATE) for k in wgrad]
    # only what its config can run (the dgrad's dsrelu epilogue takes 128-wide tiles: 128x256 has none;
    # an accumulating weight gradient needs room for its epilogue input)
    return [k for k in keys if not block_scaled_errors(k.cfg, k.epi, arch=arch, grouped=k.grouped, grouped_k=k.grouped_k,
                                                       majors=(k.a_major, k.b_major), out_bytes=4 if k.out_dtype ==
                                                       "float32" else 2, b_scale=k.b_scale)]


def format_table(rows) -> str:
    lines = [f"{'variant':72s} {'ok':4s} {'time_ms':>8s}  errors"]
    for r in rows:
        errs = " ".join(f"{k}={v:.1e}" for k, v in r.errors.items()) or r.message
        t = f"{r.time_ms:8.3f}" if r.time_ms is not None else f"{'-':>8s}"
        lines.append(f"{r.variant:72s} {'yes' if r.ok else 'NO':4s} {t}  {errs}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cute_kernels.selfcheck", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one or two cluster shapes instead of all")
    p.add_argument("--flat", action="store_true",
                   help="the bf16 variants' flat-argument kernels (CUTE_KERNELS_FLAT_ARGS=1) instead")
    p.add_argument("--out", default=os.environ.get("OUT", "gpu_out"))
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("the self-check needs a CUDA GPU", file=sys.stderr)
        return 2
    from . import selfcheck
    from .gemm_ops import _run, _selfchecked, device_arch

    arch = device_arch(torch.device("cuda"))
    rows = []
    for key in (flat_variant_keys if args.flat else variant_keys)(arch, args.quick):
        _selfchecked.add(key)  # run the kernel itself here, not through the first-launch gate
        t0 = time.time()
        res = selfcheck.run_variant(key, launch=_run, time_it=True)
        rows.append(res)
        print(f"{res.variant}: {'ok' if res.ok else 'FAIL'} ({time.time() - t0:.1f} s with compile)", file=sys.stderr,
              flush=True)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"selfcheck_{arch}{'_flat' if args.flat else ''}.json")
    with open(path, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "arch": arch,
                   "rows": [dict(variant=r.variant, ok=r.ok, errors=r.errors, tolerance=r.tolerance,
                                 time_ms=r.time_ms, message=r.message) for r in rows]}, f, indent=1)
    print(f"wrote {path}")
    print(format_table(rows))
    return 0 if all(r.ok for r in rows) else 1
