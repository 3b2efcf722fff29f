"""Offload benchmark: stacks of 8 SReLU MLP layers (the full op: cute forward and fused
cute backward), one training step under no offload, torch's save_on_cpu and `auto`.

    python -m benchmarks.bench_offload [--only dense,moe-e8] [--budget-s 200]

Stacks: dense, MoE E=8, MoE E=128, and dense MLPs each after an attention layer (torch
scaled_dot_product_attention, not marked: its saved tensors are not ours, its time
widens the window).  Columns: step time and peak memory against no offload, bytes
offloaded per step, the link-bound bytes (measured D2H bandwidth x forward time of the
no-offload step), offloaded / link-bound, the achieved copy bandwidth and how much of
the forward the D2H stream was busy (from a traced step).  Writes to $OUT (default
./gpu_out): offload.md (tables), offload-plan-<stack>.md (auto's plan), and
offload-timeline-<stack>.png / .json.  Falls back to backend='torch' (and says so) if the
cute kernels do not load.  Keeps to --budget-s seconds: stacks not reached are listed.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
import traceback

import torch

from benchmarks.report import emit
from cute_kernels.mlp import srelu_mlp
from offload import OffloadPolicy, OffloadScheduler
from offload.bandwidth import measure_link

STACKS = {
    "dense": {"layers": 8, "m": 8192, "h": 4096, "f": 16384, "experts": 0},
    "moe-e8": {"layers": 8, "m": 16384, "h": 2688, "f": 1856, "experts": 8},
    "attn+dense": {"layers": 8, "m": 8192, "h": 4096, "f": 16384, "experts": 0, "attn": (2, 32)},  # (batch, heads)
    "moe-e128": {"layers": 8, "m": 16384, "h": 2688, "f": 1856, "experts": 128},
}
MIB = 1 << 20


def pick_backend() -> tuple[str, str]:
    """('cute', '') when the cute op runs here, else ('torch', why not)."""
    try:
        x = torch.randn(256, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        w1 = torch.randn(256, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        w2 = torch.randn(128, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        srelu_mlp(x, w1, w2, backend="cute").sum().backward()
        torch.cuda.synchronize()
        return "cute", ""
    except Exception as e:  # noqa: BLE001 - any failure to load or run the kernels
        return "torch", f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"


def build(shape):
    torch.manual_seed(0)
    L, m, h, f, e = (shape[k] for k in ("layers", "m", "h", "f", "experts"))
    ws = []
    for _ in range(L):
        w1 = torch.nn.Parameter((torch.randn(*((e, f, h) if e else (f, h)), device="cuda") / h ** 0.5).bfloat16())
        w2 = torch.nn.Parameter((torch.randn(*((e, h, f) if e else (h, f)), device="cuda") / f ** 0.5).bfloat16())
        ws.append((w1, w2))
    x0 = torch.randn(m, h, device="cuda").bfloat16().requires_grad_()
    prob = torch.rand(m, device="cuda").requires_grad_() if e else None
    splits = [m // e] * e if e else None
    dy = torch.randn(m, h, device="cuda").bfloat16()
    return {"ws": ws, "x0": x0, "prob": prob, "splits": splits, "dy": dy, "attn": shape.get("attn")}


def attention(x, batch, heads):
    m, h = x.shape
    q = x.view(batch, m // batch, heads, h // heads).transpose(1, 2)
    out = torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
    return out.transpose(1, 2).reshape(m, h)


def step(model, sched, backend, marks=None):
    x = model["x0"]
    for i, (w1, w2) in enumerate(model["ws"]):
        if model["attn"]:
            x = attention(x, *model["attn"])
        if sched is None:
            x = srelu_mlp(x, w1, w2, m_splits=model["splits"], prob=model["prob"], backend=backend)
        else:
            with sched.layer(i):
                x = srelu_mlp(x, w1, w2, m_splits=model["splits"], prob=model["prob"], backend=backend)
    if marks is not None:
        marks.append(torch.cuda.Event(enable_timing=True))
        marks[-1].record()
    x.backward(model["dy"])
    for p in [model["x0"], model["prob"]] + [w for pair in model["ws"] for w in pair]:
        if p is not None:
            p.grad = None
    if sched is not None and sched != "save_on_cpu":
        sched.end_step()


def timed(model, sched, backend, warm, iters):
    for _ in range(warm):
        run_step(model, sched, backend)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    times, fwd, peaks = [], [], []
    for _ in range(iters):
        torch.cuda.reset_peak_memory_stats()
        a = torch.cuda.Event(enable_timing=True)
        marks = []
        a.record()
        run_step(model, sched, backend, marks)
        b = torch.cuda.Event(enable_timing=True)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
        fwd.append(a.elapsed_time(marks[0]))
        peaks.append(torch.cuda.max_memory_allocated() - base)
    return statistics.median(times), statistics.median(fwd), statistics.median(peaks)


def run_step(model, sched, backend, marks=None):
    if sched == "save_on_cpu":
        with torch.autograd.graph.save_on_cpu(pin_memory=True):
            step(model, None, backend, marks)
    else:
        step(model, sched, backend, marks)


def saved_bytes(model, backend) -> int:
    """What autograd saves on the GPU in one step (what save_on_cpu copies)."""
    total = [0]

    def pack(t):
        if t.is_cuda:
            total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step(model, None, backend)
    return total[0]


def trace(sched, model, backend):
    """One traced step of a planned scheduler: spans (ms since the step start)."""
    sched.record_timeline = True
    sched.timeline.clear()
    sched.bwd_marks.clear()
    torch.cuda.synchronize()
    t0 = torch.cuda.Event(enable_timing=True)
    t0.record()
    marks = []
    step(model, sched, backend, marks)
    t1 = torch.cuda.Event(enable_timing=True)
    t1.record()
    t1.synchronize()
    sched.record_timeline = False
    rel = lambda ev: t0.elapsed_time(ev)
    bwd = sorted(rel(ev) for _, ev in sched.bwd_marks)
    tr = {"device": torch.cuda.get_device_name(), "step_ms": rel(t1), "fwd_end": rel(marks[0]),
          "fwd": [(rel(st.fwd_events[0]), st.fwd_events[0].elapsed_time(st.fwd_events[1])) for st in sched.stats.values()
                  if st.fwd_events],
          "bwd": [(a, b - a) for a, b in zip(bwd, bwd[1:] + [rel(t1)])],
          "d2h": [(rel(h.t_d2h[0]), h.t_d2h[0].elapsed_time(h.t_d2h[1]), h.head_bytes) for h in sched.timeline if h.t_d2h],
          "h2d": [(rel(h.t_h2d[0]), h.t_h2d[0].elapsed_time(h.t_h2d[1]), h.head_bytes) for h in sched.timeline if h.t_h2d]}
    busy = sum(d for _, d, _ in tr["d2h"])
    tr["d2h_gbps"] = sum(n for _, _, n in tr["d2h"]) / (busy * 1e6) if busy else 0.0
    in_fwd = sum(max(0.0, min(s + d, tr["fwd_end"]) - s) for s, d, _ in tr["d2h"])
    tr["d2h_busy_fwd"] = in_fwd / tr["fwd_end"] if tr["fwd_end"] else 0.0
    return tr


def render_timeline(tr, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(13, 3.2))
    ax.broken_barh([tuple(x) for x in tr["fwd"]], (20, 8), facecolors="C0", edgecolors="white", label="compute: our layers' forward")
    ax.broken_barh([tuple(x) for x in tr["bwd"]], (20, 8), facecolors="C2", edgecolors="white", label="compute: backward, per layer")
    ax.broken_barh([(s, d) for s, d, _ in tr["d2h"]], (10, 8), facecolors="C1", label="D2H copies")
    ax.broken_barh([(s, d) for s, d, _ in tr["h2d"]], (0, 8), facecolors="C3", label="H2D copies")
    ax.axvline(tr["fwd_end"], color="k", lw=0.8, ls="--", label="forward ends")
    ax.set_yticks([4, 14, 24], ["H2D stream", "D2H stream", "compute"])
    ax.set_xlabel("ms since step start")
    ax.set_title(f"{title}: D2H busy {tr['d2h_busy_fwd']:.0%} of the forward, {tr['d2h_gbps']:.1f} GB/s ({tr['device']})")
    ax.legend(loc="upper right", fontsize=7, ncol=5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bench_stack(name, shape, backend, link, out_dir, notes):
    model = build(shape)
    none_ms, fwd_ms, none_peak = timed(model, None, backend, 2, 5)
    rows = [{"policy": "none", "ms": none_ms, "peak": none_peak, "off": 0}]
    link_bound = link[0] * 1e6 * fwd_ms
    pol = OffloadPolicy(auto=True, d2h_gbps=link[0], h2d_gbps=link[1])
    sched = OffloadScheduler(pol, num_layers=len(model["ws"]))
    ms, _, peak = timed(model, sched, backend, pol.calibration_steps + 1, 5)
    tr = trace(sched, model, backend)
    rows.append({"policy": "auto", "ms": ms, "peak": peak, "off": sched.offloaded_bytes(), "tr": tr,
                 "rec": sched.step_plan.recompute_bytes if sched.step_plan else 0})
    with open(os.path.join(out_dir, f"offload-plan-{name}.md"), "w") as f:
        f.write(f"# auto's plan, stack {name} {shape}\n\n" + (sched.step_plan.describe() if sched.step_plan else "no plan") + "\n")
    with open(os.path.join(out_dir, f"offload-timeline-{name}.json"), "w") as f:
        json.dump(tr, f)
    try:
        render_timeline(tr, os.path.join(out_dir, f"offload-timeline-{name}.png"), f"auto, {name}")
    except ImportError:
        notes.append(f"{name}: matplotlib missing, no PNG (the trace is in offload-timeline-{name}.json)")
    del sched
    saved = saved_bytes(model, backend)
    heavy = shape["experts"] >= 64  # save_on_cpu copies the weights too: 20 GB a step here
    ms, _, peak = timed(model, "save_on_cpu", backend, 1, 2 if heavy else 4)
    rows.append({"policy": "save_on_cpu", "ms": ms, "peak": peak, "off": saved})
    lines = [f"### {name}: {shape}", "",
             f"forward {fwd_ms:.2f} ms of a {none_ms:.2f} ms step; link-bound {link_bound / MIB:.0f} MiB "
             f"({link[0]:.1f} GB/s x forward)", "",
             "| policy | step ms | vs none | peak MiB | peak vs none | offloaded MiB/step | offloaded / link-bound | "
             "recomputed MiB | D2H GB/s achieved | D2H busy, % of fwd |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tr = r.get("tr")
        bw = f"{tr['d2h_gbps']:.1f}" if tr else "-"
        busy = f"{tr['d2h_busy_fwd']:.0%}" if tr else "-"
        lines.append(f"| {r['policy']} | {r['ms']:.2f} | {r['ms'] / none_ms:.3f}x | {r['peak'] / MIB:.0f} | "
                     f"{r['peak'] / none_peak:.2f}x | {r['off'] / MIB:.0f} | {r['off'] / link_bound:.2f} | "
                     f"{r.get('rec', 0) / MIB:.0f} | {bw} | {busy} |")
    auto = rows[1]
    summary = (name, auto["ms"] / none_ms, auto["peak"] / none_peak, auto["off"] / link_bound, rows[2]["ms"] / none_ms,
               rows[2]["peak"] / none_peak)
    del model
    torch.cuda.empty_cache()
    return lines + [""], summary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated stacks: " + ", ".join(STACKS))
    ap.add_argument("--budget-s", type=float, default=200.0, help="start no new stack after this many seconds")
    ap.add_argument("--render", nargs=2, metavar=("TRACE_JSON", "PNG"), help="render a saved trace and exit")
    args = ap.parse_args(argv)
    if args.render:
        with open(args.render[0]) as f:
            render_timeline(json.load(f), args.render[1], "auto")
        return 0
    names = [n.strip() for n in args.only.split(",")] if args.only else list(STACKS)
    bad = [n for n in names if n not in STACKS]
    if bad:
        print(f"bench_offload: unknown stack(s) {bad}; known: {list(STACKS)}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("bench_offload needs a CUDA GPU", file=sys.stderr)
        return 2
    t_start = time.time()
    out_dir = os.environ.get("OUT", "./gpu_out")
    os.makedirs(out_dir, exist_ok=True)
    backend, why = pick_backend()
    link = measure_link()
    notes = [] if backend == "cute" else [f"**the cute kernels did not run here ({why}): backend='torch' throughout**"]
    lines = [f"Offload benchmark, {torch.cuda.get_device_name()}, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} "
             f"UTC, bf16, backend '{backend}' ({'cute forward + fused cute backward' if backend == 'cute' else 'torch fallback'}); "
             f"link measured {link[0]:.1f} GB/s to CPU, {link[1]:.1f} GB/s back", ""]
    summary = []
    for name in names:
        if time.time() - t_start > args.budget_s:
            notes.append(f"{name}: not run (time budget of {args.budget_s:.0f} s spent)")
            continue
        t0 = time.time()
        try:
            block, s = bench_stack(name, STACKS[name], backend, link, out_dir, notes)
        except Exception as e:  # noqa: BLE001 - one shot on the GPU: report the stack's failure, go on
            first = str(e).splitlines()[0][:160] if str(e) else ""
            notes.append(f"{name}: failed, {type(e).__name__}: {first}")
            print(traceback.format_exc(), file=sys.stderr, flush=True)
            torch.cuda.empty_cache()
            continue
        lines += block
        summary.append(s)
        print("\n".join(block), f"({time.time() - t0:.0f} s)", flush=True)
    lines += notes + ["", "Summary (target: auto >= 0.85 of link-bound at <= 1.03x step):", "",
                      "| stack | auto step vs none | auto peak vs none | auto offloaded / link-bound | "
                      "save_on_cpu step vs none | save_on_cpu peak vs none |", "|---|---|---|---|---|---|"]
    lines += [f"| {n} | {a:.3f}x | {p:.2f}x | {o:.2f} | {s:.2f}x | {sp:.2f}x |" for n, a, p, o, s, sp in summary]
    lines.append(f"\n(total {time.time() - t_start:.0f} s)")
    emit("\n".join(lines), os.path.join(out_dir, "offload.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
