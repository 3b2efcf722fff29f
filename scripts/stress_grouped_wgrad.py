"""Fresh-process stress test of the K-grouped weight-gradient kernel.

Its first design faulted with an illegal address in fresh processes (a 3-D TMA view
with its base address below the operand's allocation: every variant below but
"guard" faulted 6 times in 6 on the H100, 2026-11-24).  This driver starts many fresh processes, each doing one grouped
`weight_grad` on an MoE shape (synchronising before and after, so a fault is pinned
to that launch) and checking the result against an fp32 per-expert reference, under
variants that tell the suspects apart:

  list     m_splits as a Python list (uploaded through the pinned ring)
  tensor   m_splits as a GPU tensor
  warm     compile and launch once on a tiny problem first, then the real one
  guard    dy and x placed at the end of a larger buffer, so that the ragged view's
           (negative-offset) base address points into mapped memory
  nocache  PYTORCH_NO_CUDA_MEMORY_CACHING=1 (every tensor its own cudaMalloc, so an
           out-of-bounds access is more likely to hit unmapped memory)
  accum    accumulate into an fp32 main_grad (epilogue reads the old value)
  fwd      not the weight gradient: a grouped FC2 forward whose output is the process's
           first GPU allocation (the M-grouped kernels store through a ragged view whose
           base address lies below the output)

  python scripts/stress_grouped_wgrad.py --reps 8 --par 8 [--variants list,tensor]
"""
import argparse
import json
import os
import subprocess
import sys
import time

VARIANTS = ("list", "tensor", "warm", "guard", "nocache", "accum", "fwd")
SHAPES = {"e128": (32768, 128, 1856, 2688), "e16": (16384, 16, 1856, 2688)}


def worker(variant: str, shape: str, seed: int) -> dict:
    import torch

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from reference import random_splits

    from cute_kernels import weight_grad

    t, e, n, k = SHAPES[shape]
    gen = torch.Generator().manual_seed(seed)
    splits = random_splits(t, e, gen, empty=max(1, e // 16), skew=True)
    dev = torch.device("cuda")
    if variant == "fwd":
        return _forward(t, e, n, k, splits, gen, dev)
    if variant == "guard":
        pad_dy, pad_x = t * n, t * k
        dy = torch.empty(pad_dy + t * n, dtype=torch.bfloat16, device=dev)[pad_dy:].view(t, n)
        x = torch.empty(pad_x + t * k, dtype=torch.bfloat16, device=dev)[pad_x:].view(t, k)
        dy.copy_(torch.randn(t, n, generator=gen))
        x.copy_(torch.randn(t, k, generator=gen))
    else:
        dy = torch.randn(t, n, generator=gen).to(dev, torch.bfloat16)
        x = torch.randn(t, k, generator=gen).to(dev, torch.bfloat16)
    m_splits = torch.tensor(splits, device=dev) if variant == "tensor" else splits
    if variant == "warm":
        tiny = [3, 0, 5]
        weight_grad(torch.randn(8, n, device=dev, dtype=torch.bfloat16),
                    torch.randn(8, k, device=dev, dtype=torch.bfloat16), m_splits=tiny)
        torch.cuda.synchronize()
    out = None
    if variant == "accum":
        out = torch.randn(e, n, k, generator=gen).to(dev)
        before = out.clone()
    torch.cuda.synchronize()
    t0 = time.time()
    try:
        dw = weight_grad(dy, x, m_splits=m_splits, out=out, accumulate=variant == "accum")
        torch.cuda.synchronize()
    except Exception as exc:  # noqa: BLE001 - reported, that is the point
        return {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:200]}", "t": time.time() - t0}
    worst = 0.0
    row = 0
    for i, s in enumerate(splits):
        ref = dy[row:row + s].float().t() @ x[row:row + s].float()  # zeros for an empty expert
        if variant == "accum":
            ref = ref + before[i]
        row += s
        got = dw[i].float()
        if ref.norm() > 0:
            rel = ((got - ref).norm() / ref.norm()).item()
        else:  # an empty expert without accumulation: exact zeros expected
            rel = got.abs().max().item()
        worst = max(worst, rel)
    return {"ok": worst < 2e-2, "worst_rel": worst, "t": time.time() - t0}


def _forward(t, e, n, k, splits, gen, dev) -> dict:
    import torch

    from cute_kernels import fc2

    y = torch.empty(t, n, dtype=torch.bfloat16, device=dev)  # first allocation: lowest address
    h = torch.randn(t, k, generator=gen).to(dev, torch.bfloat16)
    w = (torch.randn(e, n, k, generator=gen) / k ** 0.5).to(dev, torch.bfloat16)
    torch.cuda.synchronize()
    t0 = time.time()
    try:
        fc2(h, w, m_splits=splits, out=y)
        torch.cuda.synchronize()
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:200]}", "t": time.time() - t0}
    worst, row = 0.0, 0
    for i, s in enumerate(splits):
        if s:
            ref = h[row:row + s].float() @ w[i].float().t()
            worst = max(worst, ((y[row:row + s].float() - ref).norm() / ref.norm()).item())
        row += s
    return {"ok": worst < 2e-2, "worst_rel": worst, "t": time.time() - t0}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--variant", default="list")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--shape", default="e128", choices=sorted(SHAPES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--par", type=int, default=8)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.variant, args.shape, args.seed)), flush=True)
        return 0
    jobs = [(v, r) for r in range(args.reps) for v in args.variants.split(",")]
    results: dict = {}
    running: list = []
    while jobs or running:
        while jobs and len(running) < args.par:
            v, r = jobs.pop(0)
            env = dict(os.environ)
            if v == "nocache":
                env["PYTORCH_NO_CUDA_MEMORY_CACHING"] = "1"
            cmd = [sys.executable, __file__, "--worker", "--variant", v, "--shape", args.shape, "--seed", str(r)]
            running.append((v, r, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                   text=True)))
        time.sleep(0.2)
        for item in list(running):
            v, r, p = item
            if p.poll() is None:
                continue
            running.remove(item)
            text = p.stdout.read()
            line = [ln for ln in text.splitlines() if ln.startswith("RESULT ")]
            res = json.loads(line[-1][7:]) if line else {"ok": False, "error": f"rc={p.returncode}: {text[-300:]}"}
            results.setdefault(v, []).append(res)
            print(f"{v:8s} seed {r}: {res}", flush=True)
    print("\n| variant | runs | ok | faults/errors |\n|---|---|---|---|")
    for v, rs in results.items():
        print(f"| {v} | {len(rs)} | {sum(r['ok'] for r in rs)} | {sum('error' in r for r in rs)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
