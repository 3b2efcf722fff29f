"""Compile-only sweep: compile a kernel's whole config space for an arch on any machine (no GPU),
prune what fails validation, compilation, the PTX structure check (sm100) or spills, and report
what is left with compile times.

    python -m autotune compile-only --arch sm100                      # the four kernels, dense
    python -m autotune compile-only --arch sm100 --kernel fc1_srelu --experts 8 --workers 2
    python -m autotune compile-only --arch sm100 --limit 8 --out compile_only.json
    python -m autotune compile-only --arch sm90 --kernel fp8_fc1_srelu [--experts 8]   # the FP8 space

Configs that differ only in knobs that change no resource (the space's RUNTIME_ONLY: raster,
swizzle) compile alike, so one of each class is compiled and its verdict stands for the class.
The result says which configs can run; only timing on the GPU (`autotune sweep`) says which is
fastest.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
import os
import sys
import time

KERNEL_EPILOGUES = {  # kernel -> (epilogue kwargs dense, epilogue kwargs grouped, majors, out_dtype)
    "fc1_srelu": (dict(kind="srelu", store_preact=True), dict(kind="srelu", store_preact=True, row_scale=True),
                  ("k", "k"), ""),
    "fc2": (dict(kind="identity"), dict(kind="identity"), ("k", "k"), ""),
    "fc2_dgrad_dsrelu": (dict(kind="dsrelu", store_postact=True),
                         dict(kind="dsrelu", store_postact=True, row_scale=True, row_sum=True), ("k", "n"), ""),
    "weight_grad": (dict(kind="identity", accumulate=True), dict(kind="identity", accumulate=True), ("m", "n"),
                    "float32"),
}


@dataclasses.dataclass
class Verdict:
    kernel: str
    config: dict
    ok: bool
    stage: str  # "ok" | "validation" | "compile" | "structure" | "spill"
    reason: str = ""
    compile_s: float = 0.0
    registers: int | None = None
    members: int = 1  # configs of the class this verdict stands for


# The block-scaled FP8 kernels: the registry's key (its epilogue; grouped FC1 with the router
# probability as the MoE step launches it), their own search space and config rules.
FP8_KERNELS = ("fp8_fc1_srelu", "fp8_fc2", "fp8_dgrad_dact")


def _is_fp8(kernel: str) -> bool:
    return kernel in FP8_KERNELS


def kernel_key(arch: str, kernel: str, cfg, experts: int):
    from cute_kernels.compile import KernelKey
    from cute_kernels.epilogue import EpilogueSpec

    if _is_fp8(kernel):
        from cute_kernels.fp8.ops import with_staged_scales
        from cute_kernels.registry import get_kernel, kernel_key as registry_key

        spec = get_kernel(kernel)
        epi = dataclasses.replace(spec.epilogue, row_scale=True) if experts and spec.epilogue.kind == "act" \
            else spec.epilogue
        # the kernel the FP8 ops launch (scales staged in shared memory on cooperative 128-row tiles)
        return with_staged_scales(registry_key(kernel, arch, cfg, spec.default_dtype, experts, epi=epi))

    dense, grouped, majors, out_dtype = KERNEL_EPILOGUES[kernel]
    epi = EpilogueSpec(**(grouped if experts else dense))
    k_grouped = kernel == "weight_grad" and experts > 0
    return KernelKey(arch, cfg, epi, bool(experts) and not k_grouped, "bfloat16", *majors, out_dtype=out_dtype,
                     grouped_k=k_grouped)


def _validation(key) -> list[str]:
    if key.block_scaled:
        from cute_kernels.config import block_scaled_errors

        return block_scaled_errors(key.cfg, key.epi, arch=key.arch, grouped=key.grouped, grouped_k=key.grouped_k,
                                   majors=(key.a_major, key.b_major), out_bytes=key.out_bytes)
    if key.arch == "sm100":
        from cute_kernels.sm100.config import validation_errors

        return validation_errors(key.cfg, num_outputs=key.epi.num_outputs, out_bytes=key.out_bytes,
                                 grouped=key.grouped, grouped_k=key.grouped_k)
    from cute_kernels.config import epilogue_misfit, validation_errors

    misfit = epilogue_misfit(key.cfg, key.epi, out_bytes=key.out_bytes, grouped_k=key.grouped_k)
    return ([misfit] if misfit else []) + validation_errors(key.cfg, arch=key.arch, num_outputs=key.epi.num_outputs,
                                                            grouped=key.grouped, grouped_k=key.grouped_k,
                                                            out_bytes=key.out_bytes)


def judge(key, kernel: str) -> Verdict:
    """Validate, compile and inspect one config (runs in a worker process)."""
    from cute_kernels.archs import get_arch
    from cute_kernels.inspect_ptx import find_ptxas, kernel_ptx, ptxas_info

    v = Verdict(kernel, key.cfg.to_dict(), False, "validation")
    errs = _validation(key)
    if errs:
        v.reason = "; ".join(errs)
        return v
    t0 = time.time()
    try:
        ptx = kernel_ptx(key)
    except Exception as exc:
        v.stage, v.reason, v.compile_s = "compile", f"{type(exc).__name__}: {exc}"[:300], time.time() - t0
        return v
    v.compile_s = time.time() - t0
    if key.arch == "sm100":
        from cute_kernels.sm100.ptx_checks import structure_errors

        errs = structure_errors(ptx, key)
        if errs:
            v.stage, v.reason = "structure", "; ".join(errs)
            return v
    if find_ptxas() is not None:
        info = ptxas_info(ptx, get_arch(key.arch).dsl_target)
        v.registers = info.registers
        if info.spill_store_bytes or info.spill_load_bytes or info.stack_bytes:
            v.stage = "spill"
            v.reason = (f"{info.spill_store_bytes} B spill stores, {info.spill_load_bytes} B spill loads, "
                        f"{info.stack_bytes} B stack")
            return v
    v.ok, v.stage = True, "ok"
    return v


def _judge_job(args):
    arch, kernel, cfg_dict, experts = args
    from autotune import space

    cfg = space.to_config(cfg_dict, arch, block_scaled=_is_fp8(kernel))
    return judge(kernel_key(arch, kernel, cfg, experts), kernel)


def compile_classes(arch: str, block_scaled: bool = False) -> list[tuple[dict, int]]:
    """(representative params, class size) for each class of the space's grid that differs in a
    compile-relevant knob (`block_scaled`: the FP8 kernels' space)."""
    from autotune import space

    runtime_only = getattr(space.space_module(arch, block_scaled), "RUNTIME_ONLY", ())
    classes: dict = {}
    for params in space.grid(arch, block_scaled=block_scaled):
        sig = tuple((k, v) for k, v in params.items() if k not in runtime_only)
        if sig in classes:
            classes[sig][1] += 1
        else:
            classes[sig] = [params, 1]
    return [(p, n) for p, n in classes.values()]


def run(args) -> int:
    arch = args.arch
    kernels = [args.kernel] if args.kernel else list(KERNEL_EPILOGUES)
    from cute_kernels.archs import get_arch

    os.environ.setdefault("CUTE_DSL_ARCH", get_arch(arch).dsl_target)
    jobs, member_count = [], []
    for k in kernels:
        classes = compile_classes(arch, _is_fp8(k))
        if args.limit:
            classes = classes[:args.limit]
        jobs += [(arch, k, p, args.experts) for p, _ in classes]
        member_count += [n for _, n in classes]
    t0 = time.time()
    if args.workers > 1:
        with cf.ProcessPoolExecutor(args.workers) as pool:
            verdicts = list(pool.map(_judge_job, jobs))
    else:
        verdicts = []
        for i, job in enumerate(jobs):
            verdicts.append(_judge_job(job))
            if not args.quiet:
                v = verdicts[-1]
                print(f"[{i + 1}/{len(jobs)}] {v.kernel} {v.stage} {v.compile_s:.1f}s {v.reason[:80]}",
                      file=sys.stderr, flush=True)
    for v, n in zip(verdicts, member_count):
        v.members = n
    print(format_report(verdicts, arch, time.time() - t0))
    if args.out:
        with open(args.out, "w") as f:
            json.dump([dataclasses.asdict(v) for v in verdicts], f, indent=1)
    return 0


def format_report(verdicts, arch: str, wall_s: float) -> str:
    lines = [f"compile-only sweep, {arch}: {len(verdicts)} compile classes in {wall_s:.0f} s"]
    for kernel in dict.fromkeys(v.kernel for v in verdicts):
        vs = [v for v in verdicts if v.kernel == kernel]
        by = {s: sum(v.members for v in vs if v.stage == s) for s in ("ok", "validation", "compile", "structure",
                                                                     "spill")}
        times = sorted(v.compile_s for v in vs if v.compile_s)
        med = f"{times[len(times) // 2]:.1f}" if times else "-"
        lines.append(f"{kernel}: {by['ok']} configs left of {sum(v.members for v in vs)}; pruned: "
                     f"{by['validation']} validation, {by['compile']} compile, {by['structure']} structure, "
                     f"{by['spill']} spill; median compile {med} s")
        for v in vs:
            if v.ok:
                c = v.config
                lines.append(f"  ok   tile_n={c['tile_n']} cta{c.get('cta_group', 1)} c{c['cluster_m']}x{c['cluster_n']} "
                             f"k{c['tile_k']} acc{c.get('acc_stages', '-')} ab{c['ab_stages']} epi{c['epi_n']}x{c['epi_stages']}  "
                             f"{v.compile_s:.1f}s {v.registers} regs  (x{v.members})")
        for v in vs:
            if not v.ok and v.stage != "validation":
                lines.append(f"  {v.stage:9s} {v.config}: {v.reason[:160]}")
    return "\n".join(lines)


def add_parser(sub) -> None:
    c = sub.add_parser("compile-only", help="compile an arch's whole config space without a GPU; report what is left")
    c.add_argument("--arch", default="sm100", choices=["sm90", "sm100"])
    c.add_argument("--kernel", choices=list(KERNEL_EPILOGUES) + list(FP8_KERNELS),
                   help="one kernel (default: the four bf16 ones); fp8_*: sm90's block-scaled FP8 kernels")
    c.add_argument("--experts", type=int, default=0, help="grouped (M) or, for weight_grad, K-grouped kernels")
    c.add_argument("--limit", type=int, default=0, help="only the first N compile classes (a quick look)")
    c.add_argument("--workers", type=int, default=1, help="compile in N processes")
    c.add_argument("--out", help="write the verdicts as JSON here")
    c.add_argument("--quiet", action="store_true")
