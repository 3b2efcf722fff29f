"""Nemotron-H training step: Hugging Face transformers against the model patched by
`patch_nemotron_h`, in one run on one GPU.

    python -m benchmarks.bench_nemotron [--out DIR] [--budget-s 110] [--tokens 8192] [--only moe,dense]
                                        [--auto-measured] [--ce-kernel]

Models (random weights, bf16, routers fp32): "moe", a Nemotron-3-Nano-shaped MoE stack
(hidden 2688, 128 routed experts top-6, moe_intermediate 1856, shared expert 3712,
routed_scaling_factor 2.5, 32 heads of 128, 2 KV heads) and "dense", the same with
dense MLP layers (intermediate 10752); layers: one attention layer and two MLP/MoE
layers (no Mamba layers: their kernels are not on the GPU machine), vocabulary 16384
(the real 131072 would make the LM head most of a 3-layer step).  A step is forward +
backward of the next-token loss (no optimizer), `--tokens` tokens in sequences of 4096.

Variants: Hugging Face eager (its default experts implementation, grouped_mm), the same
under torch.compile, patched, patched with the chunked LM head + loss (`chunked_loss=True`:
no tokens x vocab logits, docs/chunked_loss.md; always with CUTE_KERNELS_CE_KERNEL=0, and with
`--ce-kernel` twice more with =1, each chunk's loss and gradient by the row kernel,
sm90/softmax_xent.py: at the default chunk and at twice it), patched with offload "auto" (and with
`--auto-measured`, patched with offload "auto_measured", planned from the measured peak, with
its plan, without and with the chunked loss); and Hugging Face with the
MLP/MoE mixers replaced by a pass-through, from which the MLP/MoE share of the step is
step minus that.  Then, for the MoE model, the routed experts alone (fwd+bwd, one
layer): Hugging Face's grouped_mm experts, ours (sort, gather, grouped op, combine),
ours with the dispatch gather fused into FC1 (`fused_gather=True`, no x_perm copy), and
our grouped op on tokens already sorted, whose difference to ours is what fusing the
permutation into the GEMMs' loads and stores could save at most; for each, the bytes one
forward saves for backward (distinct storages, parameters excluded: benchmarks/saved_storage.py),
which "peak above weights" cannot show (it includes the weight gradients).

CUDA events, 3 warm-up steps, median of 8, three input batches rotated.  Variants run
in order of importance and are skipped once `--budget-s` is spent (torch.compile gets
what is left, under an alarm).  Writes bench_nemotron.md/.json/.png to --out ($OUT).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import torch
from torch import nn

from benchmarks import nemotron_common as common
from benchmarks.nemotron_common import Budget, build_model, deadline, time_steps, transformers_version
from benchmarks.report import emit
from benchmarks.saved_storage import saved_storages

COMMON = dict(vocab_size=16384, hidden_size=2688, num_attention_heads=32, num_key_value_heads=2, head_dim=128,
              max_position_embeddings=4096)
MODELS = {
    "moe": dict(layers_block_type=["full_attention", "moe", "moe"], n_routed_experts=128, num_experts_per_tok=6,
                moe_intermediate_size=1856, moe_shared_expert_intermediate_size=3712, routed_scaling_factor=2.5,
                n_group=1, topk_group=1, norm_topk_prob=True),
    "dense": dict(layers_block_type=["full_attention", "mlp", "mlp"], intermediate_size=10752),
}
WARMUP, STEPS, SEQ = 3, 8, 4096


class PassThrough(nn.Module):
    def forward(self, x):
        return x


def _step(model):
    def run(ids):  # gradients freed after the step: peak above resident = activations + gradients
        model(input_ids=ids, labels=ids).loss.backward()
        model.zero_grad(set_to_none=True)
    return run


def _row(name, ms, peak, resident, first, **extra):
    return {"variant": name, "ms": ms, "peak_gib": peak / 2**30, "act_gib": (peak - resident) / 2**30,
            "first_step_s": first, **extra}


def _measure(rows, name, fn, batches, budget, *, need_s=5.0, alarm=False):
    if budget.left() < need_s:
        rows.append({"variant": name, "skipped": "time budget"})
        return None
    torch.cuda.empty_cache()
    try:
        if alarm:
            with deadline(budget.left() - 2):
                res = time_steps(fn, batches, warmup=WARMUP, steps=STEPS)
        else:
            res = time_steps(fn, batches, warmup=WARMUP, steps=STEPS)
    except Exception as e:  # OutOfTime, OOM, a compile error: one shot, so record it and go on
        first_line = (str(e).strip().splitlines() or [""])[0].replace("|", "/")[:160]
        rows.append({"variant": name, "skipped": f"{type(e).__name__}: {first_line}"})
        print(f"  {name}: skipped ({type(e).__name__}: {first_line})", flush=True)
        torch.cuda.empty_cache()
        return None
    rows.append(_row(name, *res))
    print(f"  {name}: {res[0]:.2f} ms, peak {res[1] / 2**30:.2f} GiB (first step {res[3]:.1f} s)", flush=True)
    return rows[-1]


CE_KERNEL_ENV = "CUTE_KERNELS_CE_KERNEL"


def _measure_with_env(rows, name, fn, batches, budget, env: dict):
    """_measure with the environment variables `env` set for it (restored after)."""
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return _measure(rows, name, fn, batches, budget)
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def bench_model(kind, tokens, budget, ce_kernel=False):
    from cute_kernels.integrations.transformers import patch_nemotron_h

    rows = []
    model = build_model(**COMMON, **MODELS[kind])
    g = torch.Generator(common.DEVICE).manual_seed(1)
    batches = [torch.randint(0, COMMON["vocab_size"], (max(tokens // SEQ, 1), min(tokens, SEQ)), device=common.DEVICE,
                             generator=g) for _ in range(3)]
    print(f"{kind}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters, {tokens} tokens", flush=True)
    _measure(rows, "hf eager", _step(model), batches, budget)
    blocks = [b for b in model.model.layers if b.block_type in ("mlp", "moe")]
    mixers = [b.mixer for b in blocks]
    for b in blocks:
        b.mixer = PassThrough()
    _measure(rows, "hf, MLP/MoE passed through", _step(model), batches, budget)
    for b, m in zip(blocks, mixers):
        b.mixer = m
    handle = patch_nemotron_h(model)
    _measure(rows, "patched", _step(model), batches, budget)
    handle.restore()
    handle = patch_nemotron_h(model, chunked_loss=True)
    _measure_with_env(rows, "patched, chunked loss", _step(model), batches, budget, {CE_KERNEL_ENV: "0"})
    if ce_kernel:
        _measure_with_env(rows, "patched, chunked loss, CE kernel", _step(model), batches, budget,
                          {CE_KERNEL_ENV: "1"})
    handle.restore()
    if ce_kernel:  # the kernel's chunk temporaries are the bf16 logits alone: twice the chunk in less memory
        from cute_kernels.integrations.chunked_ce import default_chunk_tokens

        handle = patch_nemotron_h(model, chunked_loss=2 * default_chunk_tokens(COMMON["vocab_size"]))
        _measure_with_env(rows, "patched, chunked loss 2x chunk, CE kernel", _step(model), batches, budget,
                          {CE_KERNEL_ENV: "1"})
        handle.restore()
    handle = patch_nemotron_h(model, offload="auto")
    r = _measure(rows, "patched, offload auto", _step(model), batches, budget)
    if r is not None:
        r.update(offload_summary(handle.scheduler))
    handle.restore()
    extra = bench_routed(model, batches[0], budget) if kind == "moe" else {}
    return model, batches, rows, extra


MEASURED_VARIANTS = {"patched, offload auto_measured": False, "patched, chunked loss + offload auto_measured": True}


def bench_measured(model, batches, rows, budget):
    """Patched with offload "auto_measured" (planned from the measured peak; any large saved
    tensor of the step may move), without and with the chunked loss: step time, peak, bytes
    moved and the plan's prediction."""
    for name, chunked in MEASURED_VARIANTS.items():
        _bench_measured_variant(model, batches, rows, budget, name, chunked)


def _bench_measured_variant(model, batches, rows, budget, name, chunked):
    from cute_kernels.integrations.transformers import patch_nemotron_h

    handle = patch_nemotron_h(model, offload="auto_measured", chunked_loss=chunked)
    r = _measure(rows, name, _step(model), batches, budget)
    sched = handle.scheduler
    if r is not None and sched.plan is not None:
        r["offloaded_gib"] = sched.offloaded_bytes() / 2**30
        r["predicted_peak_gib"] = (sched.plan.peak_before / 2**30, sched.plan.peak_after / 2**30)
        r["plan"] = sched.plan.describe()
        r["exposed_ms"] = sched.exposed_ms()  # the compute stream's waits for reloads, last timed step
        print(r["plan"].split("\n")[0], flush=True)
    handle.restore()


def offload_summary(sched) -> dict:
    """What an `auto` OffloadScheduler did in its latest step: GiB offloaded, and the roles its
    plan moves (offloaded or recomputed) in each layer ({} before it has planned)."""
    plan = sched.step_plan
    return {"offloaded_gib": sched.offloaded_bytes() / 2**30,
            "plans": {i: list(lp.roles) for i, lp in sorted(plan.layers.items())} if plan is not None else {}}


def bench_compile(model, batches, rows, budget):
    torch._dynamo.reset()
    compiled = torch.compile(model)
    _measure(rows, "hf torch.compile", _step(compiled), batches, budget, need_s=20, alarm=True)


ROUTED_ROWS = ("hf grouped_mm experts", "ours", "ours, fused gather", "our grouped op on pre-sorted tokens")


def bench_routed(model, ids, budget):
    """One MoE layer's routed experts alone, fwd+bwd, on that layer's real routing: time, peak,
    and the bytes one forward saves for backward (distinct storages, parameters excluded)."""
    from cute_kernels.integrations.transformers import NemotronHRoutedExperts
    from cute_kernels.mlp import srelu_mlp
    from cute_kernels.moe import route, routed_srelu_experts

    if budget.left() < 10:
        return {"skipped": "time budget"}
    moe = next(b.mixer for b in model.model.layers if b.block_type == "moe")
    seen = {}
    hook = moe.gate.register_forward_hook(lambda _m, inp, out: seen.update(x=inp[0], w=out[1], i=out[2]))
    with torch.no_grad():
        model(input_ids=ids)
    hook.remove()
    x = seen["x"].reshape(-1, seen["x"].size(-1)).detach()
    idx, w = seen["i"], seen["w"].detach()
    hf_experts = moe.experts
    weights = (hf_experts.up_proj, hf_experts.down_proj)
    ours = NemotronHRoutedExperts(hf_experts, backend="auto", offload=None, recompute_postact=False)
    dy = torch.randn_like(x)
    r = route(idx, hf_experts.up_proj.size(0))
    x_sorted = x.index_select(0, r.token).detach()
    prob_sorted = w.reshape(-1).index_select(0, r.order).detach()
    dy_sorted = torch.randn_like(x_sorted)

    def experts_fwd(mod):  # fresh leaves each call: (output, its gradient)
        return lambda: (mod(x.detach().requires_grad_(), idx, w.detach().requires_grad_()), dy)

    def fused_gather(xx, ii, ww):
        return routed_srelu_experts(xx, ii, ww, *weights, backend="auto", fused_gather=True)

    def sorted_fwd():
        pp = prob_sorted.detach().requires_grad_()
        return srelu_mlp(x_sorted.detach().requires_grad_(), *weights, m_splits=r.counts, prob=pp), dy_sorted

    def step(fwd):
        def run(_):
            y, dy_ = fwd()
            y.backward(dy_)
            hf_experts.up_proj.grad = hf_experts.down_proj.grad = None  # no accumulation into the last step's
        return run

    out = {"tokens": x.size(0), "rows": idx.numel(), "experts_hit": int((r.counts > 0).sum())}
    fwds = (experts_fwd(hf_experts), experts_fwd(ours), experts_fwd(fused_gather), sorted_fwd)
    for name, fwd in zip(ROUTED_ROWS, fwds):
        try:
            ms, peak, resident, _ = time_steps(step(fwd), [None], warmup=3, steps=10)
            (y, _), saved = saved_storages(fwd, exclude=weights)
            del y
        except Exception as e:  # a kernel that fails to build or run: recorded, the other rows go on
            out[name] = {"skipped": f"{type(e).__name__}: {str(e).strip()[:160]}".replace("|", "/")}
            print(f"  routed experts, {name}: skipped ({out[name]['skipped']})", flush=True)
            torch.cuda.empty_cache()
            continue
        out[name] = {"ms": ms, "act_gib": (peak - resident) / 2**30, "saved_mib": saved.nbytes / 2**20,
                     "saved_largest": saved.largest(6)}
        print(f"  routed experts, {name}: {ms:.2f} ms, saves {saved.nbytes / 2**20:.1f} MiB", flush=True)
    return out


def report(results, routed, device, tokens):
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"Nemotron-H training step (forward + backward, no optimizer), {device}, {now}, transformers "
             f"{transformers_version()}, torch {torch.__version__}, bf16, {tokens} tokens per step, median of {STEPS} "
             f"steps after {WARMUP} warm-up", ""]
    for kind, rows in results.items():
        by = {r["variant"]: r for r in rows if "ms" in r}
        base, rest = by.get("hf eager"), by.get("hf, MLP/MoE passed through")
        lines += [f"**{kind}** ({' / '.join(MODELS[kind]['layers_block_type'])})", "",
                  "| variant | step ms | vs hf eager | peak GiB | peak vs hf eager | peak above weights GiB | MLP/MoE ms | "
                  "MLP/MoE share | first step s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if "ms" not in r:
                lines.append(f"| {r['variant']} | skipped: {r.get('skipped', '?')} | | | | | | | |")
                continue
            sp = f"{base['ms'] / r['ms']:.2f}x" if base and r is not rest else "-"
            mlp = share = "-"
            if rest and r is not rest and r["variant"] != "hf torch.compile":
                mlp_ms = r["ms"] - rest["ms"]
                mlp, share = f"{mlp_ms:.2f}", f"{mlp_ms / r['ms']:.0%}"
            peak_vs = f"{r['peak_gib'] / base['peak_gib']:.2f}x" if base else "-"
            lines.append(f"| {r['variant']} | {r['ms']:.2f} | {sp} | {r['peak_gib']:.2f} | {peak_vs} | {r['act_gib']:.2f} | "
                         f"{mlp} | {share} | {r['first_step_s']:.1f} |")
        off = by.get("patched, offload auto")
        if off:
            lines.append(f"\noffload auto: {off['offloaded_gib']:.2f} GiB offloaded per step; roles per offload layer "
                         f"(shared expert and routed experts are one layer each): {off['plans']}")
        for name in MEASURED_VARIANTS:
            lines += _measured_lines(name, by)
        lines.append("")
    if routed and "rows" in routed:
        lines += routed_table(routed)
    return "\n".join(lines)


def routed_table(routed) -> list:
    """The routed-experts table: ms, speed vs HF's experts, peak above weights (gradient buffers
    included), bytes one forward saves for backward and their ratio to HF's; then the targets
    of issue 28 (fused gather no slower than the grouped op on pre-sorted tokens, saved <= 0.5x HF's)."""
    ok = {k: routed[k] for k in ROUTED_ROWS if "ms" in routed.get(k, {})}
    hf = ok.get("hf grouped_mm experts", {})
    lines = [f"Routed experts of one MoE layer alone, fwd+bwd, {routed['tokens']} tokens x top-k = {routed['rows']} rows, "
             f"{routed['experts_hit']} experts hit (the model's own routing); saved activations: bytes of the distinct "
             "storages one forward saves for backward (saved_tensors_hooks), parameters excluded", "",
             "| | ms | vs hf | peak above weights GiB | saved activations MiB | saved vs hf |", "|---|---|---|---|---|---|"]
    for k in ROUTED_ROWS:
        if k not in routed:
            continue
        if k not in ok:
            lines.append(f"| {k} | skipped: {routed[k].get('skipped', '?')} | | | | |")
            continue
        r = ok[k]
        speed = f"{hf['ms'] / r['ms']:.2f}x" if hf else "-"
        saved = f"{r['saved_mib']:.1f}" if "saved_mib" in r else "-"
        ratio = f"{r['saved_mib'] / hf['saved_mib']:.2f}x" if "saved_mib" in r and hf.get("saved_mib") else "-"
        lines.append(f"| {k} | {r['ms']:.2f} | {speed} | {r['act_gib']:.2f} | {saved} | {ratio} |")
    ours, pre, fused = (ok.get(k, {}).get("ms") for k in ("ours", "our grouped op on pre-sorted tokens",
                                                          "ours, fused gather"))
    lines.append("")
    if ours and pre:
        lines.append(f"sort + gather + combine (fwd+bwd): {ours - pre:.2f} ms = {(ours - pre) / ours:.0%} of ours: the most "
                     "fusing the permutation into the GEMMs could save")
    if fused and pre:
        lines.append(f"fused gather: {fused:.2f} ms = {fused / pre:.3f}x the grouped op on pre-sorted tokens "
                     f"(target <= 1x){f', {fused / ours:.3f}x ours' if ours else ''}")
    saved_f = ok.get("ours, fused gather", {}).get("saved_mib")
    if saved_f is not None and hf.get("saved_mib"):
        lines.append(f"fused gather saves {saved_f / hf['saved_mib']:.2f}x HF's activations (target <= 0.5x)")
    return lines


def _measured_lines(name, by) -> list:
    """A measured-offload variant's summary: bytes moved, predicted and measured peak, step and
    peak against the patched step and Hugging Face eager (issue 28's targets), then its plan."""
    meas = by.get(name)
    if not meas or "predicted_peak_gib" not in meas:
        return []
    before, after = meas["predicted_peak_gib"]
    label = name.removeprefix("patched, ")
    lines = [f"\n{label}: {meas['offloaded_gib']:.2f} GiB offloaded per step; its plan put the profiled peak at "
             f"{before:.2f} GiB and predicted {after:.2f} GiB (measured here: {meas['peak_gib']:.2f})"]
    patched, eager = by.get("patched"), by.get("hf eager")
    if patched and "exposed_ms" in meas:
        lines.append(f"step {meas['ms'] / patched['ms']:.3f}x the patched step (target <= 1.03x); the compute "
                     f"stream waited {meas['exposed_ms']:.2f} ms for reloads in the last step (measured)")
    if eager:
        lines.append(f"peak {meas['peak_gib'] / eager['peak_gib']:.2f}x Hugging Face eager's, above the weights "
                     f"{meas['act_gib'] / eager['act_gib']:.2f}x (target <= 0.75x; the peak GiB column counts every "
                     f"model resident on the GPU, the one above the weights this step's own memory)")
    return lines + [f"\n{meas['plan']}"]


def plot(results, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, key, label in ((axes[0], "ms", "step ms"), (axes[1], "peak_gib", "peak GiB")):
        names, width = None, 0.38
        for j, (kind, rows) in enumerate(results.items()):
            ok = [r for r in rows if "ms" in r and "passed through" not in r["variant"]]
            names = [r["variant"] for r in ok]
            ax.bar([i + j * width for i in range(len(ok))], [r[key] for r in ok], width, label=kind)
        if names:
            ax.set_xticks([i + width / 2 for i in range(len(names))], names, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(label)
        ax.legend()
    fig.suptitle("Nemotron-H step: Hugging Face vs patch_nemotron_h")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_out"))
    ap.add_argument("--budget-s", type=float, default=110)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--only", default="moe,dense")
    ap.add_argument("--auto-measured", action="store_true",
                    help='also run the patched model with offload "auto_measured" (planned from the measured peak)')
    ap.add_argument("--ce-kernel", action="store_true",
                    help="also run the chunked loss with its row kernel (CUTE_KERNELS_CE_KERNEL=1; the plain "
                         "chunked-loss variant runs with =0)")
    args = ap.parse_args(argv)
    if common.DEVICE == "cuda" and not torch.cuda.is_available():
        print("bench_nemotron needs a CUDA GPU", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    budget = Budget(args.budget_s)
    results, routed, kept = {}, {}, {}
    for kind in [k for k in args.only.split(",") if k]:
        if budget.left() < 15:
            results[kind] = [{"variant": "all", "skipped": "time budget"}]
            continue
        model, batches, rows, extra = bench_model(kind, args.tokens, budget, args.ce_kernel)
        if args.auto_measured:
            bench_measured(model, batches, rows, budget)
        results[kind], routed = rows, routed or extra
        kept[kind] = (model, batches)  # both fit on one H200 (~6 GB of weights together)
    for kind, (model, batches) in kept.items():  # torch.compile last: it gets what time is left
        bench_compile(model, batches, results[kind], budget)
    text = report(results, routed, torch.cuda.get_device_name(0), args.tokens)
    with open(os.path.join(args.out, "bench_nemotron.json"), "w") as f:
        json.dump({"results": results, "routed": routed, "tokens": args.tokens}, f, indent=1, default=str)
    plot(results, os.path.join(args.out, "bench_nemotron.png"))
    emit(text, os.path.join(args.out, "bench_nemotron.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
