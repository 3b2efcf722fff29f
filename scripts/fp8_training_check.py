"""Training check of the FP8 MLP step: FP8 loss curve against bf16 on the same data and seed.

Two small models, each trained twice (bf16, then FP8 with `Fp8Recipe()`), same init, same
batches, with each optimizer asked for (`--optimizer`, default both): AdamW (torch's default) and
AdamW(fused=True), whose kernels write the parameters outside autograd (no `_version` bump: the
FP8 weight copies must still follow the weights, fp8/weight_cache.py; issue 26).  Where this
torch has no fused AdamW for the device, that variant's rows say so and the others still run.
- dense: embedding-free residual stack, 4 x (RMSNorm -> SReLUMLP 512 -> 2048), linear head;
- MoE: the same with GroupedSReLUMLP, 8 experts, top-1 softmax router (tokens sorted by
  expert, router probability p into the MLP, so the router is trained through dp).
Task: classify x ~ N(0, I) (512-d) into 64 classes by a frozen random teacher (argmax of a
random 2-layer tanh net), cross-entropy; fresh batch of 4096 each step from a seeded stream.

bf16 run: srelu_mlp's torch path in bf16 (numerically the bf16 step; no kernel compiles, to
stay well inside the time budget).  FP8 run: srelu_mlp(..., fp8=Fp8Recipe()) (kernels on
sm_90a; the torch implementation elsewhere).  Everything outside the MLPs is bf16 torch.

Tolerance (stated, checked, per model and optimizer, FP8 against bf16 with the same optimizer):
with L_s the loss smoothed over 15 steps, |L_fp8 - L_bf16| / L_bf16 <= 5% at every step from
30 on, and <= 2% for the mean of the last 30 steps; and the bf16 loss must fall to < 0.85x its
first value (else the check says nothing).  Writes $OUT/fp8_training_check.png, .md and .json;
prints the table last.  The exit status is 0 only when every row passes.

    PYTHONPATH=$PWD OUT=gpu_out python scripts/fp8_training_check.py [--steps 300]
        [--optimizer adamw|fused-adamw|both] [--device cuda|cpu]

On CPU the FP8 runs take the torch implementation and the full sizes are slow: a few steps
(`--steps 3 --device cpu`) check the plumbing only; tests/test_scripts_cpu.py runs the whole check
at a tiny size (module constants patched), where 60 steps pass in seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from torch import nn

from cute_kernels.fp8 import Fp8Recipe
from cute_kernels.modules import GroupedSReLUMLP, SReLUMLP

DIM, FFN, LAYERS, CLASSES, BATCH, EXPERTS = 512, 2048, 4, 64, 4096, 8
CURVE_TOL, FINAL_TOL, SMOOTH = 0.05, 0.02, 15
OPTIMIZERS = {"adamw": "AdamW", "fused-adamw": "AdamW(fused=True)"}  # --optimizer name: row label


class Block(nn.Module):
    def __init__(self, moe: bool, fp8, backend, device):
        super().__init__()
        self.norm = nn.RMSNorm(DIM, device=device, dtype=torch.bfloat16)
        self.moe = moe
        if moe:
            self.router = nn.Linear(DIM, EXPERTS, bias=False, device=device, dtype=torch.bfloat16)
            self.mlp = GroupedSReLUMLP(EXPERTS, DIM, FFN, fp8=fp8, backend=backend, device=device, dtype=torch.bfloat16)
        else:
            self.mlp = SReLUMLP(DIM, FFN, fp8=fp8, backend=backend, device=device, dtype=torch.bfloat16)

    def forward(self, x):
        h = self.norm(x)
        if not self.moe:
            return x + self.mlp(h)
        probs = torch.softmax(self.router(h).float(), dim=-1)
        p, expert = probs.max(dim=-1)
        order = torch.argsort(expert, stable=True)
        splits = torch.bincount(expert, minlength=EXPERTS).tolist()
        y_sorted = self.mlp(h[order], splits, p[order].to(h.dtype))
        y = torch.empty_like(y_sorted)
        y[order] = y_sorted
        return x + y


class Model(nn.Module):
    def __init__(self, moe, fp8, backend, device):
        super().__init__()
        self.blocks = nn.ModuleList(Block(moe, fp8, backend, device) for _ in range(LAYERS))
        self.head = nn.Linear(DIM, CLASSES, bias=False, device=device, dtype=torch.bfloat16)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.head(x).float()


def batches(steps, device, seed=1234):
    g = torch.Generator(device="cpu").manual_seed(seed)
    t1 = torch.randn(DIM, 256, generator=g) / DIM ** 0.5
    t2 = torch.randn(256, CLASSES, generator=g) / 16
    t1, t2 = t1.to(device), t2.to(device)
    for _ in range(steps):
        x = torch.randn(BATCH, DIM, generator=g).to(device)
        yield x.bfloat16(), (torch.tanh(x @ t1) @ t2).argmax(-1)


def make_optimizer(params, name: str, device):
    """AdamW, torch's default implementation (`adamw`: for-each on CUDA) or fused (`fused-adamw`);
    a fused AdamW this torch cannot run on `device` is a RuntimeError saying so."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {name!r}")
    fused = name == "fused-adamw"
    try:
        return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0, **({"fused": True} if fused else {}))
    except (RuntimeError, ValueError) as e:
        raise RuntimeError(f"AdamW(fused=True) is not available for bf16 parameters on {device} in torch "
                           f"{torch.__version__}: {str(e).splitlines()[0]}") from e


def train(moe: bool, fp8, steps, device, backend, optimizer: str = "adamw"):
    torch.manual_seed(0)
    model = Model(moe, fp8, backend, device)
    opt = make_optimizer(model.parameters(), optimizer, device)
    losses = []
    t0 = time.perf_counter()
    for x, y in batches(steps, device):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    losses = [float(v) for v in torch.stack(losses).cpu()]
    return losses, time.perf_counter() - t0


def smooth(v, w=SMOOTH):
    out, acc = [], 0.0
    for i, x in enumerate(v):
        acc += x - (v[i - w] if i >= w else 0.0)
        out.append(acc / min(i + 1, w))
    return out


def verdict(bf16, fp8):
    sb, sf = smooth(bf16), smooth(fp8)
    curve = max(abs(a - b) / b for a, b in zip(sf[30:], sb[30:])) if len(sb) > 30 else float("nan")
    n = min(30, len(bf16))
    fb, ff = sum(bf16[-n:]) / n, sum(fp8[-n:]) / n
    final = abs(ff - fb) / fb
    learned = sb[-1] < 0.85 * bf16[0]
    ok = learned and curve <= CURVE_TOL and final <= FINAL_TOL
    return {"curve_max_rel": curve, "final_rel": final, "final_bf16": fb, "final_fp8": ff, "first_bf16": bf16[0],
            "bf16_learned": learned, "pass": ok}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--optimizer", choices=[*OPTIMIZERS, "both"], default="both",
                    help="AdamW, AdamW(fused=True) or both (default), each run bf16 and FP8")
    args = ap.parse_args(argv)
    out_dir = os.environ.get("OUT", "gpu_out")
    os.makedirs(out_dir, exist_ok=True)
    optimizers = list(OPTIMIZERS) if args.optimizer == "both" else [args.optimizer]
    t_start = time.perf_counter()
    results = {}
    for optimizer in optimizers:
        for name, moe in (("dense", False), (f"moe E={EXPERTS}", True)):
            r = {"model": name, "optimizer": OPTIMIZERS[optimizer]}
            for prec, fp8 in (("bf16", None), ("fp8", Fp8Recipe())):
                try:
                    r[prec], r[prec + "_s"] = train(moe, fp8, args.steps, args.device,
                                                    "torch" if fp8 is None else "auto", optimizer)
                except Exception as e:  # noqa: BLE001 - report the other runs anyway
                    import traceback

                    traceback.print_exc()
                    r[prec + "_error"] = f"{type(e).__name__}: {str(e)[:200]}"
            if "bf16" in r and "fp8" in r:
                r["verdict"] = verdict(r["bf16"], r["fp8"])
            results[f"{name}, {OPTIMIZERS[optimizer]}"] = r
    with open(os.path.join(out_dir, "fp8_training_check.json"), "w") as f:
        json.dump(results, f)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(len(optimizers), 2, figsize=(12, 4 * len(optimizers)), squeeze=False)
        for ax, (name, r) in zip(axes.flat, results.items()):
            for prec in ("bf16", "fp8"):
                if prec in r:
                    ax.plot(smooth(r[prec]), label=f"{prec} (smoothed {SMOOTH})")
            ax.set_title(name)
            ax.set_xlabel("step")
            ax.set_ylabel("cross-entropy")
            ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "fp8_training_check.png"), dpi=120)
    except Exception as e:  # noqa: BLE001 - the table matters more than the plot
        print(f"plot failed: {e}")
    dev = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    lines = [f"# FP8 training check, {args.steps} steps on {dev}",
             f"tolerance: smoothed-loss rel. diff <= {CURVE_TOL:.0%} from step 30, last-30 mean <= {FINAL_TOL:.0%}", "",
             "| model, optimizer | first loss | final bf16 | final fp8 | final rel | curve max rel | bf16 s | fp8 s "
             "| result |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        v = r.get("verdict")
        if v is None:
            lines.append(f"| {name} | error: {r.get('bf16_error') or r.get('fp8_error')} ||||||| FAIL |")
            continue
        lines.append(f"| {name} | {v['first_bf16']:.3f} | {v['final_bf16']:.4f} | {v['final_fp8']:.4f} | "
                     f"{v['final_rel']:.2%} | {v['curve_max_rel']:.2%} | {r['bf16_s']:.1f} | {r['fp8_s']:.1f} | "
                     f"{'PASS' if v['pass'] else 'FAIL'}{'' if v['bf16_learned'] else ' (bf16 did not learn)'} |")
    lines += ["", f"total {time.perf_counter() - t_start:.0f} s"]
    table = "\n".join(lines)
    with open(os.path.join(out_dir, "fp8_training_check.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    return 0 if all(r.get("verdict", {}).get("pass") for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
