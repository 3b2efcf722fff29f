"""Offload benchmark: a stack of 8 SReLU MLP layers, one training step under each policy.

    python -m benchmarks.bench_offload [--out results.md] [--timeline timeline.png]

Policies: no offload, offload everything (but the last layer), a hand-picked policy
(preact + postact), and auto.  Reports step time, peak memory of the step above the
weights and inputs, bytes offloaded, and the achieved copy bandwidth against the
measured link bandwidth; writes a PNG timeline of one step (compute vs copy streams).
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys

import torch

from benchmarks.report import emit
from cute_kernels.mlp import srelu_mlp
from offload import OffloadPolicy, OffloadScheduler
from offload.bandwidth import measure_link

SHAPES = {
    "dense": {"layers": 8, "m": 8192, "h": 4096, "f": 16384, "experts": 0},
    "moe-e8": {"layers": 8, "m": 16384, "h": 2688, "f": 1856, "experts": 8},
}
POLICIES = {
    "none": lambda: None,
    "all": lambda: OffloadPolicy(),
    "preact+postact": lambda: OffloadPolicy(roles=("preact", "postact")),
    "auto": lambda: OffloadPolicy(auto=True),
}


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
    return ws, x0, prob, splits, dy


def step(model, sched):
    ws, x0, prob, splits, dy = model
    x = x0
    for i, (w1, w2) in enumerate(ws):
        if sched is None:
            x = srelu_mlp(x, w1, w2, m_splits=splits, prob=prob)
        else:
            with sched.layer(i):
                x = srelu_mlp(x, w1, w2, m_splits=splits, prob=prob)
    x.backward(dy)
    for p in [x0, prob] + [w for pair in ws for w in pair]:
        if p is not None:
            p.grad = None
    if sched is not None:
        sched.end_step()


def run_policy(model, name, iters=8):
    pol = POLICIES[name]()
    sched = None if pol is None else OffloadScheduler(pol, num_layers=len(model[0]))
    for _ in range(3):  # warm-up; auto calibrates on the first
        step(model, sched)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    times, peaks = [], []
    for _ in range(iters):
        torch.cuda.reset_peak_memory_stats()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        step(model, sched)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
        peaks.append(torch.cuda.max_memory_allocated() - base)
    off = sched.offloaded_bytes() if sched else 0
    ms = statistics.median(times)
    chosen = ""
    if sched is not None:
        plans = {tuple(st.plan.roles) for st in sched.stats.values() if st.plan is not None}
        chosen = "; ".join(",".join(p) or "-" for p in sorted(plans))
    return {"policy": name, "step_ms": ms, "peak_mib": statistics.median(peaks) / 2**20, "offloaded_mib": off / 2**20,
            "chosen": chosen, "sched": sched}


def trace_step(model, policy_name):
    """One traced step: spans (ms since step start) of compute, D2H and H2D work."""
    sched = OffloadScheduler(POLICIES[policy_name](), num_layers=len(model[0]), record_timeline=True)
    for _ in range(3):  # auto calibrates; the pinned pool fills
        step(model, sched)
    torch.cuda.synchronize()
    sched.timeline.clear()
    sched.bwd_marks.clear()
    t0 = torch.cuda.Event(enable_timing=True)
    t0.record()
    step(model, sched)
    t1 = torch.cuda.Event(enable_timing=True)
    t1.record()
    t1.synchronize()
    rel = lambda ev: t0.elapsed_time(ev)
    marks = sorted(rel(ev) for _, ev in sched.bwd_marks)
    end = rel(t1)
    return {
        "policy": policy_name,
        "device": torch.cuda.get_device_name(),
        "fwd": [(rel(st.fwd_events[0]), st.fwd_events[0].elapsed_time(st.fwd_events[1])) for st in sched.stats.values()],
        "bwd": [(a, b - a) for a, b in zip(marks, marks[1:] + [end])],
        "d2h": [(rel(h.t_d2h[0]), h.t_d2h[0].elapsed_time(h.t_d2h[1]), h.nbytes) for h in sched.timeline if h.t_d2h],
        "h2d": [(rel(h.t_h2d[0]), h.t_h2d[0].elapsed_time(h.t_h2d[1]), h.nbytes) for h in sched.timeline if h.t_h2d],
        "step_ms": end,
    }


def achieved_bandwidth(trace) -> dict:
    out = {}
    for kind in ("d2h", "h2d"):
        busy = sum(d for _, d, _ in trace[kind])
        out[kind] = sum(n for _, _, n in trace[kind]) / (busy * 1e6) if busy else 0.0
    return out


def render_timeline(trace, path):
    """PNG of a trace (needs matplotlib; `python -m benchmarks.bench_offload --render trace.json out.png`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(13, 3.2))
    ax.broken_barh([tuple(x) for x in trace["fwd"]], (20, 8), facecolors="C0", edgecolors="white", label="compute: layer forward")
    ax.broken_barh([tuple(x) for x in trace["bwd"]], (20, 8), facecolors="C2", edgecolors="white", label="compute: layer backward")
    ax.broken_barh([(s, d) for s, d, _ in trace["d2h"]], (10, 8), facecolors="C1", label="D2H copies")
    ax.broken_barh([(s, d) for s, d, _ in trace["h2d"]], (0, 8), facecolors="C3", label="H2D copies")
    ax.set_yticks([4, 14, 24], ["H2D stream", "D2H stream", "compute"])
    ax.set_xlabel("ms since step start")
    ax.set_title(f"offload timeline of one step, policy '{trace['policy']}', {trace['device']}")
    ax.legend(loc="upper right", fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out")
    ap.add_argument("--timeline", help="PNG of one step of the dense stack with the 'all' policy")
    ap.add_argument("--only", choices=list(SHAPES))
    ap.add_argument("--render", nargs=2, metavar=("TRACE_JSON", "PNG"), help="render a saved trace and exit")
    args = ap.parse_args(argv)
    if args.render:
        with open(args.render[0]) as f:
            render_timeline(json.load(f), args.render[1])
        return 0
    if not torch.cuda.is_available():
        print("bench_offload needs a CUDA GPU", file=sys.stderr)
        return 2
    d2h, h2d = measure_link()
    lines = [f"Offload benchmark, {torch.cuda.get_device_name()}, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
             f"bf16, cute forward + torch backward; link measured {d2h:.1f} GB/s to CPU, {h2d:.1f} GB/s back", ""]
    for sname, shape in SHAPES.items():
        if args.only and args.only != sname:
            continue
        model = build(shape)
        rows = [run_policy(model, p) for p in POLICIES]
        base = rows[0]
        lines += [f"### {sname}: {shape}", "",
                  "| policy | step ms | vs none | peak MiB | peak vs none | offloaded MiB/step | roles chosen |",
                  "|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['policy']} | {r['step_ms']:.2f} | {r['step_ms'] / base['step_ms']:.3f}x | {r['peak_mib']:.0f} | "
                         f"{r['peak_mib'] / base['peak_mib']:.2f}x | {r['offloaded_mib']:.0f} | {r['chosen']} |")
        lines.append("")
        print("\n".join(lines[-len(rows) - 4:]), flush=True)
        if args.timeline:
            for pol in ("all", "auto"):
                trace = trace_step(model, pol)
                bw = achieved_bandwidth(trace)
                lines.append(f"{sname}, traced '{pol}' step: achieved copy bandwidth D2H {bw['d2h']:.1f} GB/s "
                             f"({bw['d2h'] / d2h:.0%} of link), H2D {bw['h2d']:.1f} GB/s ({bw['h2d'] / h2d:.0%} of link)")
                base_path = args.timeline.rsplit(".", 1)[0] + f"-{sname}-{pol}"
                with open(base_path + ".json", "w") as f:
                    json.dump(trace, f)
                try:
                    render_timeline(trace, base_path + ".png")
                except ImportError:
                    lines.append(f"(matplotlib missing here: render with --render {base_path}.json)")
            lines.append("")
        del model
        torch.cuda.empty_cache()
    emit("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
