"""Training check: the same small Nemotron-H trained from the same seed on the same
generated data by Hugging Face's modules and by the patched model; loss curves overlaid.

    python -m benchmarks.train_nemotron [--out DIR] [--steps 200] [--budget-s 45]

Model: attention, MoE (16 experts top-4, grouped routing 4 groups / top-2, scaling 2.5,
shared expert), MLP, MoE; hidden 512; bf16 weights, fp32 routers; AdamW (lr 1e-3) on
both.  Data: sequences of a fixed random Markov chain (each token has 4 successors with
probabilities .55/.25/.15/.05, so the best loss is their entropy, 1.11 nats), 16 x 256
tokens a step, the same batches for both models.  The two models step in turn, so a
time budget cuts both at the same step.  Writes nemotron_train_check.png/.json/.md.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time

import torch

from benchmarks import nemotron_common as common
from benchmarks.nemotron_common import Budget, build_model, transformers_version
from benchmarks.report import emit

CONFIG = dict(vocab_size=1024, hidden_size=512, layers_block_type=["full_attention", "moe", "mlp", "moe"],
              num_attention_heads=8, num_key_value_heads=2, head_dim=64, intermediate_size=1024, n_routed_experts=16,
              num_experts_per_tok=4, moe_intermediate_size=256, moe_shared_expert_intermediate_size=512,
              n_group=4, topk_group=2, routed_scaling_factor=2.5, max_position_embeddings=256)
PROBS = (0.55, 0.25, 0.15, 0.05)
BATCH, SEQ = 16, 256


def markov_batches(steps: int, *, seed: int = 0, device=None):
    """(steps, BATCH, SEQ) token ids from a fixed random chain with len(PROBS) successors per token."""
    device = device or common.DEVICE
    g = torch.Generator(device).manual_seed(seed)
    v = CONFIG["vocab_size"]
    succ = torch.stack([torch.randperm(v, device=device, generator=g)[:len(PROBS)] for _ in range(v)])
    cum = torch.tensor(PROBS, device=device).cumsum(0)
    rows = steps * BATCH
    ids = torch.empty(rows, SEQ, dtype=torch.long, device=device)
    ids[:, 0] = torch.randint(0, v, (rows,), device=device, generator=g)
    u = torch.rand(rows, SEQ, device=device, generator=g)
    for t in range(1, SEQ):
        pick = torch.searchsorted(cum, u[:, t].contiguous()).clamp_max(len(PROBS) - 1)
        ids[:, t] = succ[ids[:, t - 1], pick]
    return ids.view(steps, BATCH, SEQ)


def entropy() -> float:
    return -sum(p * math.log(p) for p in PROBS)


def main(argv=None):
    from cute_kernels.integrations.transformers import patch_nemotron_h

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_out"))
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--budget-s", type=float, default=45)
    args = ap.parse_args(argv)
    if common.DEVICE == "cuda" and not torch.cuda.is_available():
        print("train_nemotron needs a CUDA GPU", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    budget = Budget(args.budget_s)
    hf = build_model(seed=0, **CONFIG)
    ours = copy.deepcopy(hf)
    handle = patch_nemotron_h(ours)
    data = markov_batches(args.steps)
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.0) for name, m in (("hf", hf), ("ours", ours))}
    losses = {"hf": [], "ours": []}
    wall = {"hf": 0.0, "ours": 0.0}
    done = 0
    for i in range(args.steps):
        if budget.left() < 1:
            break
        for name, m in (("hf", hf), ("ours", ours)):
            t0 = time.perf_counter()
            loss = m(input_ids=data[i], labels=data[i]).loss
            loss.backward()
            opts[name].step()
            opts[name].zero_grad(set_to_none=True)
            losses[name].append(loss.detach())
            torch.cuda.synchronize()
            wall[name] += time.perf_counter() - t0
        done = i + 1
    lh = torch.stack(losses["hf"]).float().tolist()
    lo = torch.stack(losses["ours"]).float().tolist()
    diff = [abs(a - b) for a, b in zip(lh, lo)]
    tail = max(1, min(10, done))
    summary = {
        "steps": done, "transformers": transformers_version(), "device": torch.cuda.get_device_name(0),
        "first_loss": [lh[0], lo[0]], "final_loss_mean_last10": [sum(lh[-tail:]) / tail, sum(lo[-tail:]) / tail],
        "max_abs_diff": max(diff), "mean_abs_diff": sum(diff) / len(diff),
        "max_rel_diff": max(d / abs(a) for d, a in zip(diff, lh)), "entropy_floor": entropy(),
        "ms_per_step": {k: 1e3 * v / max(done, 1) for k, v in wall.items()},
        "patched": {"dense": handle.num_dense, "routed": handle.num_routed}, "loss_hf": lh, "loss_ours": lo,
    }
    with open(os.path.join(args.out, "nemotron_train_check.json"), "w") as f:
        json.dump(summary, f, indent=1)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (a0, a1) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
        a0.plot(lh, label="Hugging Face modules", lw=1.6)
        a0.plot(lo, label="patch_nemotron_h (cute_kernels)", lw=1.0, ls="--")
        a0.axhline(entropy(), color="gray", lw=0.8, ls=":", label="entropy of the data")
        a0.set_ylabel("loss (nats)")
        a0.legend()
        a0.set_title(f"Nemotron-H training check, {summary['device']}, bf16, same seed and data")
        a1.plot([b - a for a, b in zip(lh, lo)], color="C3", lw=0.8)
        a1.set_ylabel("ours - HF")
        a1.set_xlabel("step")
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, "nemotron_train_check.png"), dpi=120)
    except ImportError:
        pass
    text = (f"Nemotron-H training check ({summary['device']}, transformers {summary['transformers']}): {done} steps, "
            f"loss {lh[0]:.3f} -> {summary['final_loss_mean_last10'][0]:.3f} (HF) and "
            f"{lo[0]:.3f} -> {summary['final_loss_mean_last10'][1]:.3f} (patched; mean of the last {tail}), "
            f"data entropy {entropy():.3f}\n\n| | value |\n|---|---|\n"
            f"| max abs loss difference | {summary['max_abs_diff']:.4f} |\n"
            f"| mean abs loss difference | {summary['mean_abs_diff']:.4f} |\n"
            f"| max relative difference | {summary['max_rel_diff']:.2%} |\n"
            f"| ms per step HF / patched (incl. optimizer, one sync) | {summary['ms_per_step']['hf']:.1f} / "
            f"{summary['ms_per_step']['ours']:.1f} |")
    emit(text, os.path.join(args.out, "nemotron_train_check.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
