"""Where a Nemotron-H training step's memory peaks: one recorded step per model and variant,
the allocated-bytes timeline plotted with the peak marked, and the peak's phase and largest
live blocks named.

    python -m benchmarks.memory_timeline [--out DIR] [--only moe,dense]
        [--variants hf,patched,auto,auto_measured,chunked,chunked_measured] [--tokens 8192] [--optimizer]

The models are bench_nemotron's (same config, random bf16 weights, fp32 routers).  Variants:
"hf" (Hugging Face eager), "patched" (patch_nemotron_h), "auto" (patched, offload "auto"),
"auto_measured" (patched, offload "auto_measured"), "chunked" and "chunked_measured" (the
same with `chunked_loss=True`: the LM head + loss in token chunks, docs/chunked_loss.md).
Each variant runs 3 warm-up steps (the
offload variants profile and plan there), then one step under
torch.cuda.memory._record_memory_history with phase marks: forward of decoder layer i (a
forward pre-hook), the head and loss, backward of layer i (a hook on the layer's output
gradient), the optimizer (AdamW, with --optimizer).  benchmarks/snapshot_analysis.py turns the
snapshot into the timeline.  Writes to --out ($OUT): memory_timeline_<model>.png,
memory_timeline.md (per variant: the peak, its phase, the phase peaks, the largest blocks
live at the peak with the phase and code that allocated them; the auto_measured plan) and
memory_timeline.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from benchmarks import snapshot_analysis as sa

# variant -> patch_nemotron_h's (offload, chunked_loss); "hf" is not patched
PATCHES = {"patched": (None, False), "auto": ("auto", False), "auto_measured": ("auto_measured", False),
           "chunked": (None, True), "chunked_measured": ("auto_measured", True)}
VARIANTS = ("hf",) + tuple(PATCHES)
WARMUP = 3


class Marks:
    """Phase marks in the allocator trace: mark k is an allocation of MARK_MAGIC bytes then
    one of mark_size(k) bytes, both freed at once."""

    def __init__(self):
        self.labels: list[str] = []

    def __call__(self, label: str):
        k = len(self.labels)
        self.labels.append(label)
        a = torch.empty(sa.MARK_MAGIC, dtype=torch.uint8, device="cuda")
        b = torch.empty(sa.mark_size(k), dtype=torch.uint8, device="cuda")
        del b, a


def _first_grad_tensor(out):
    if isinstance(out, torch.Tensor):
        return out if out.requires_grad else None
    if isinstance(out, (tuple, list)):
        return next((t for t in map(_first_grad_tensor, out) if t is not None), None)
    return None


def _phase_hooks(model, mark) -> list:
    """Forward pre-hooks and output-gradient hooks that mark each decoder layer's phases."""
    handles, layers = [], list(model.model.layers)

    def on_forward(i, block):
        def pre(_m, _a):
            mark(f"forward layer {i} ({block.block_type})")

        def post(_m, _a, out):
            t = _first_grad_tensor(out)
            if t is not None:
                t.register_hook(lambda g: mark(f"backward layer {i} ({block.block_type})"))
            if i == len(layers) - 1:
                mark("forward: final norm, LM head, loss")
        return pre, post

    for i, block in enumerate(layers):
        pre, post = on_forward(i, block)
        handles += [block.register_forward_pre_hook(pre), block.register_forward_hook(post)]
    return handles


def record_step(model, ids, optimizer=None):
    """(snapshot, labels, max_memory_allocated) of one recorded training step."""
    mark = Marks()
    hooks = _phase_hooks(model, mark)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.memory._record_memory_history(max_entries=1_000_000)
    try:
        mark("step start")
        loss = model(input_ids=ids, labels=ids).loss
        mark("backward: loss, LM head, final norm")
        loss.backward()
        del loss
        if optimizer is not None:
            mark("optimizer")
            optimizer.step()
        mark("zero_grad")
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        snapshot = torch.cuda.memory._snapshot()
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
        for h in hooks:
            h.remove()
    return snapshot, mark.labels, torch.cuda.max_memory_allocated()


def run_variant(model, batches, variant, optimizer_cls=None):
    from cute_kernels.integrations.transformers import patch_nemotron_h

    if variant == "hf":
        handle = None
    else:
        offload, chunked = PATCHES[variant]
        handle = patch_nemotron_h(model, offload=offload, chunked_loss=chunked)
    opt = optimizer_cls(model.parameters(), lr=1e-6) if optimizer_cls else None
    try:
        for i in range(WARMUP):
            ids = batches[i % len(batches)]
            model(input_ids=ids, labels=ids).loss.backward()
            if opt is not None:
                opt.step()
            model.zero_grad(set_to_none=True)
        snap, labels, peak = record_step(model, batches[0], opt)
        plan = None
        sched = handle.scheduler if handle is not None else None
        if sched is not None and getattr(sched, "step_plan", None) is not None:
            plan = sched.step_plan.describe()
        return snap, labels, peak, plan
    finally:
        if handle is not None:
            handle.restore()
        del opt
        torch.cuda.empty_cache()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_out"))
    ap.add_argument("--only", default="moe,dense")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--optimizer", action="store_true", help="include an AdamW step in the recorded step")
    args = ap.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        ap.error(f"unknown variant(s) {bad}; choose from {', '.join(VARIANTS)}")
    if not torch.cuda.is_available():
        print("memory_timeline needs a CUDA GPU", file=sys.stderr)
        return 2
    from benchmarks import nemotron_common as common
    from benchmarks.bench_nemotron import COMMON, MODELS, SEQ

    os.makedirs(args.out, exist_ok=True)
    text, summary = [f"# Memory timeline of one Nemotron-H training step ({torch.cuda.get_device_name(0)}, "
                     f"{args.tokens} tokens, bf16{', AdamW' if args.optimizer else ', no optimizer'})", ""], {}
    for kind in [k for k in args.only.split(",") if k]:
        model = common.build_model(**COMMON, **MODELS[kind])
        g = torch.Generator("cuda").manual_seed(1)
        batches = [torch.randint(0, COMMON["vocab_size"], (max(args.tokens // SEQ, 1), min(args.tokens, SEQ)),
                                 device="cuda", generator=g) for _ in range(3)]
        timelines = []
        for variant in variants:
            print(f"{kind}: {variant}", flush=True)
            snap, labels, peak, plan = run_variant(model, batches, variant,
                                                   torch.optim.AdamW if args.optimizer else None)
            tl = sa.analyze(snap, labels, device=torch.cuda.current_device(), title=f"{kind}: {variant}")
            timelines.append(tl)
            text += [sa.markdown(tl), "", f"torch.cuda.max_memory_allocated() over the recorded step: "
                     f"{peak / 2**30:.2f} GiB (the timeline counts alloc to free_requested, as it does)", ""]
            if plan:
                text += ["<details><summary>offload plan</summary>", "", plan, "", "</details>", ""]
            summary.setdefault(kind, {})[variant] = {
                "peak_gib": tl.peak_bytes / 2**30, "peak_phase": tl.peak_phase, "max_memory_allocated_gib": peak / 2**30,
                "top": [(b.size, b.phase, b.where) for b in tl.top(12)],
                "phase_peaks_gib": {p: b / 2**30 for p, b in tl.phase_peaks.items()}}
            print(f"  peak {tl.peak_bytes / 2**30:.2f} GiB in {tl.peak_phase}", flush=True)
        sa.plot(timelines, os.path.join(args.out, f"memory_timeline_{kind}.png"))
        del model, batches
        torch.cuda.empty_cache()
    with open(os.path.join(args.out, "memory_timeline.md"), "w") as f:
        f.write("\n".join(text) + "\n")
    with open(os.path.join(args.out, "memory_timeline.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
