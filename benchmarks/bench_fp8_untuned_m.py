"""FP8 GEMM at untuned token counts (issue 24): `fp8_gemm` (1x128 activation / 128x128 weight block
scales, scales staged in shared memory as by default) at 10 of bench_untuned_m's UNTUNED_M values
against torch._scaled_mm rowwise on the same FP8 bytes, before the FP8 default config
(sm90/config.FP8_DEFAULT_CONFIG, 128x128 c1x2) is changed.

    python -m benchmarks.bench_fp8_untuned_m [--problems fc2_up,fc2_down] [--m 1000,12345]
        [--configs 128x256c2x1,128x128c2x1] [--sustained-s 0.25] [--no-sustained] [--out FILE]

Problems: fc2_up (M, 4096 -> 16384) and fc2_down (M, 16384 -> 4096), bench_untuned_m's shapes.  Per
(problem, M): fp8_gemm with the config the op picks itself (no config=: a tuned entry of this M
or a nearby one, else the kernel's default; the table names it), with each of CONFIGS
(128x256 c2x1, 128x128 c2x1), and torch._scaled_mm rowwise (bench_fp8.scaled_mm_rowwise).  The
outputs are checked once per M before anything is timed: ours bitwise equal across configs (they
promote the same K tiles in the same order) and each one's relative error against the float32
product of the dequantized operands.  Timed by bench_fp8.measure: burst (L2 flushed, median of 20
batches of 4) and sustained (--sustained-s back to back after WARM_S, at the power limit); the
default is not timed again when it picks one of CONFIGS.  Prints a markdown table (TFLOP/s =
2*M*N*K / time; x rowwise = rowwise ms / ours) and per problem, mode and config the geometric mean
and the least x rowwise across M and at how many M it is the fastest of ours; writes them to
--out, else to $OUT/bench_fp8_untuned_m.md when $OUT is set.  With the defaults: 10 M values x 2
problems x 4 timed calls, 3 kernels compiled, about 90 s on the H200.
"""
from __future__ import annotations

import datetime
import functools
import math
import sys

import torch

from benchmarks.bench_fp8 import _error, _rel, fp8_operands, measure, scaled_mm_rowwise
from benchmarks.bench_untuned_m import (MODES, PROBLEMS as BF16_PROBLEMS, UNTUNED_M, _csv, m_values, out_path,
                                        resolved_config, sweep_parser, sweep_rows)
from cute_kernels.config import GemmConfig

DEFAULT_M = UNTUNED_M[::2]  # 10 of the 20, 1000 to 33333
# name -> (N, K): the plain GEMMs of bench_untuned_m
PROBLEMS = {name: BF16_PROBLEMS[name][1:3] for name in ("fc2_up", "fc2_down")}
KERNEL = "fp8_fc2"  # the registry kernel fp8_gemm's configs are looked up under (fp8.ops.family_kernel)
DTYPE = "float8_e4m3fn"  # the operands' format (e4m3 x e4m3: the lookup's dtype key)
DEFAULT = "default"  # fp8_gemm without config=


def config_label(cfg: GemmConfig) -> str:
    return f"{cfg.tile_m}x{cfg.tile_n} c{cfg.cluster_m}x{cfg.cluster_n}"


# the configs timed beside the default, by their labels (issue 24's candidates for a new default)
CONFIGS = {config_label(c): c for c in (GemmConfig(tile_m=128, tile_n=256, tile_k=128, cluster_m=2, cluster_n=1),
                                        GemmConfig(tile_m=128, tile_n=128, tile_k=128, cluster_m=2, cluster_n=1))}
BASELINE = "rowwise"  # torch._scaled_mm rowwise
WARM_S = 0.15  # seconds back to back before each sustained time


def default_config(m: int, n: int, k: int) -> tuple[GemmConfig, str]:
    """(config, source) fp8_gemm picks for (M, N, K) without config= (config_lookup.resolve's rule)."""
    return resolved_config(KERNEL, m, n, k, "nearest", dtype=DTYPE)


def bench_problem(name: str, m: int, configs: dict, sustained: bool, seconds: float) -> dict:
    """One (problem, M): outputs checked, then rowwise _scaled_mm and ours timed (bench_fp8.measure)."""
    from cute_kernels.fp8.ops import fp8_gemm
    from cute_kernels.fp8.recipe import dequantize

    n, k = PROBLEMS[name]
    _, _, xq, xs, wq, ws = fp8_operands(m, n, k, seed=m)
    xs_col = xs.t().contiguous().t()  # column-major activation scales (coalesced reads)
    cfg, source = default_config(m, n, k)
    fns = {DEFAULT: functools.partial(fp8_gemm, xq, xs_col, wq, ws)}
    fns |= {label: functools.partial(fp8_gemm, xq, xs_col, wq, ws, config=c) for label, c in configs.items()}
    row = {"problem": name, "m": m, "n": n, "k": k, "default": (config_label(cfg), source), "cases": {},
           "rel_err": {}, "bitwise": {}}
    ref = dequantize(xq, xs) @ dequantize(wq, ws).t()
    outs = {}
    for label, fn in fns.items():
        try:
            outs[label] = fn()
            row["rel_err"][label] = _rel(outs[label], ref)
        except Exception as ex:  # noqa: BLE001 - one failing config must not lose the row
            row["cases"][label] = {"error": _error(ex)}
    del ref
    first = next(iter(outs), None)
    row["bitwise"] = {label: torch.equal(out, outs[first]) for label, out in outs.items() if label != first}
    del outs
    same = next((label for label, c in configs.items() if c == cfg), None)  # the default runs this one
    timed = {BASELINE: scaled_mm_rowwise(xq, xs, wq, ws)} | fns
    for label, fn in timed.items():
        if label not in row["cases"] and not (label == DEFAULT and same):
            row["cases"][label] = measure({}, fn, sustained, seconds, WARM_S)
    if same and DEFAULT not in row["cases"]:
        row["cases"][DEFAULT] = dict(row["cases"][same], same_as=same)
    return row


def _ours(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(lb for r in rows for lb in r.get("cases", {}) if lb != BASELINE))


def _modes(rows: list[dict]) -> list[str]:
    return [mode for mode in MODES if any(f"{mode}_ms" in c for r in rows for c in r.get("cases", {}).values())]


def _x_rowwise(row: dict, label: str, mode: str) -> float | None:
    base, ours = row["cases"].get(BASELINE, {}), row["cases"].get(label, {})
    key = f"{mode}_ms"
    return base[key] / ours[key] if key in base and key in ours else None


def format_table(rows: list[dict]) -> str:
    """One markdown row per (problem, M): the default's config (and where it came from), our
    outputs' largest rel err and whether they are bitwise equal, then per timing mode rowwise's
    TFLOP/s, ours per config and ours x rowwise (rowwise ms / ours)."""
    labels, modes = _ours(rows), _modes(rows)
    head = ["problem", "M", "N", "K", "default config", "rel err", "bitwise"]
    for mode in modes:
        head += [f"{mode} rowwise TFLOP/s"] + [f"{mode} {lb} TFLOP/s" for lb in labels] + [f"{mode} {lb} x"
                                                                                          for lb in labels]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["problem"], str(r["m"]), str(r["n"]), str(r["k"])]
        if "error" in r:
            lines.append("| " + " | ".join(cells + [f"ERROR: {r['error']}"] + [""] * (len(head) - 5)) + " |")
            continue
        errs = r["rel_err"].values()
        unequal = [lb for lb, same in r["bitwise"].items() if not same]
        cells += ["%s (%s)" % r["default"], f"{max(errs):.2e}" if errs else "-",
                  "no: " + ", ".join(unequal) if unequal else "yes" if r["bitwise"] else "-"]
        flops = 2.0 * r["m"] * r["n"] * r["k"]
        for mode in modes:
            for lb in [BASELINE] + labels:
                case = r["cases"].get(lb, {})
                cells.append("ERR" if "error" in case else f"{flops / case[f'{mode}_ms'] / 1e9:.0f}"
                             if f"{mode}_ms" in case else "-")
            cells += [f"{x:.3f}x" if (x := _x_rowwise(r, lb, mode)) is not None else "-" for lb in labels]
        lines.append("| " + " | ".join(cells) + " |")
    errors = [f"{r['problem']} M={r['m']} {lb}: {c['error']}" for r in rows for lb, c in r.get("cases", {}).items()
              if "error" in c]
    return "\n".join(lines + ([""] + [f"- error: {e}" for e in errors] if errors else []))


def summary_lines(rows: list[dict]) -> list[str]:
    """Per problem, timing mode and config of ours: the geometric mean and the least x rowwise
    across M (at which M), and at how many M it is the fastest of ours (ties count for each);
    for the default, which configs it ran."""
    out = []
    labels, modes = _ours(rows), _modes(rows)
    for name in dict.fromkeys(r["problem"] for r in rows):
        mine = [r for r in rows if r["problem"] == name and "error" not in r]
        errors = sum(1 for r in rows if r["problem"] == name and "error" in r)
        if not mine or not modes:
            out.append(f"{name}: no result ({errors} errors)")
            continue
        ran = {}
        for r in mine:
            ran[r["default"][0]] = ran.get(r["default"][0], 0) + 1
        for mode in modes:
            best = {r["m"]: min((r["cases"][lb][f"{mode}_ms"] for lb in labels
                                 if f"{mode}_ms" in r["cases"].get(lb, {})), default=None) for r in mine}
            for lb in labels:
                xs = [(x, r["m"]) for r in mine if (x := _x_rowwise(r, lb, mode)) is not None]
                if not xs:
                    out.append(f"{name} {mode} {lb}: no time")
                    continue
                geo = math.exp(sum(math.log(x) for x, _ in xs) / len(xs))
                least, at = min(xs)
                wins = sum(1 for r in mine if r["cases"].get(lb, {}).get(f"{mode}_ms", math.inf) == best[r["m"]])
                note = (" (ran " + ", ".join(f"{c} at {k} M" for c, k in ran.items()) + ")") if lb == DEFAULT else ""
                out.append(f"{name} {mode} {lb}{note}: geomean {geo:.3f}x rowwise, least {least:.3f}x at M={at}, "
                           f"fastest of ours at {wins}/{len(mine)} M" + (f" ({errors} errors)" if errors else ""))
    return out


def main(argv=None) -> int:
    p = sweep_parser(__doc__, "--problems", PROBLEMS, DEFAULT_M, "every other UNTUNED_M value", 0.25,
                     "bench_fp8_untuned_m.md")
    p.add_argument("--configs", default=",".join(c.replace(" ", "") for c in CONFIGS),
                   help="comma-separated configs timed beside the default, of " + ", ".join(
                       c.replace(" ", "") for c in CONFIGS) + " ('' for none)")
    p.add_argument("--no-sustained", action="store_true", help="burst times only")
    args = p.parse_args(argv)
    names, ms = _csv(args.problems), m_values(p, args.m)
    by_name = {c.replace(" ", ""): c for c in CONFIGS}
    if bad := [n for n in names if n not in PROBLEMS] or ([] if names else ["(none)"]):
        p.error(f"argument --problems: unknown {bad}; known: {list(PROBLEMS)}")
    if bad := [c for c in _csv(args.configs) if c.replace(" ", "") not in by_name]:
        p.error(f"argument --configs: unknown {bad}; known: {list(by_name)}")
    configs = {by_name[c.replace(" ", "")]: CONFIGS[by_name[c.replace(" ", "")]] for c in _csv(args.configs)}
    if not torch.cuda.is_available():
        print("bench_fp8_untuned_m needs a CUDA GPU", file=sys.stderr)
        return 2
    from benchmarks.report import emit
    from cute_kernels.fp8.ops import smem_scales_switch

    rows = sweep_rows(names, ms, lambda name, m: bench_problem(name, m, configs, not args.no_sustained,
                                                              args.sustained_s),
                      lambda name, m, e: {"problem": name, "m": m, "n": PROBLEMS[name][0], "k": PROBLEMS[name][1],
                                          "error": _error(e)}, format_table)
    head = (f"FP8 GEMM at untuned M, {torch.cuda.get_device_name()}, torch {torch.__version__}, "
            f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, e4m3, 1x128 x 128x128 scales "
            f"(staged in shared memory: {smem_scales_switch()}); burst: L2 flushed, median of 20 batches of 4"
            + ("" if args.no_sustained else f"; sustained: {args.sustained_s} s back to back after {WARM_S} s")
            + "; x = torch._scaled_mm rowwise ms / ours")
    emit(head + "\n\n" + format_table(rows) + "\n\n" + "\n".join(f"- {s}" for s in summary_lines(rows)),
         out_path(args, "bench_fp8_untuned_m.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
