"""Forward+backward step of the SReLU MLP: srelu_mlp's cute path against torch eager.

    python -m benchmarks.bench_mlp [--out results.md]

Shapes: dense M=8192, 4096 -> 16384; grouped E=8 (16384 tokens) and E=128 (32768
tokens), 2688 -> 1856, tokens split evenly.  Reports step time (CUDA events, median,
L2 flushed) and the step's peak memory above its inputs and weights.  Two step times:
"step" starts each step on an idle GPU (the host's latency to its first launch and any
host-bound gap count, as for a lone step), "back-to-back" runs steps one after another
with the host ahead of the GPU (as in training, where earlier layers keep the GPU busy
while the host enqueues; GPU time per step, L2 flushed before each batch of 3); grouped shapes also
with m_splits as a CUDA tensor (as a router produces it: no host sync in the step).  The cute path
runs all six GEMMs on the CuTe kernels (forward: FC1+SReLU, FC2; backward: FC2
dgrad+dSReLU, both weight gradients, FC1 dgrad).  Where QuACK is importable, the dense
step also runs against QuACK's fused MLP in the same run.  A further table runs the step as
Megatron-style training does, with fp32 `main_grad` buffers that the weight gradients
are added into (fuse_wgrad_accumulation=True; the torch side is the op's own torch path,
which adds torch's gradient into main_grad).  The last tables time each GEMM of the
dense step against cuBLAS, and the grouped backward GEMMs against torch._grouped_mm.
The "compile" table times, one after another per shape, torch eager, the same torch step
compiled by torch.compile in each of `--compile-modes` (default: "default" and
"max-autotune-no-cudagraphs"; Inductor's partitioner saves preact and recomputes relu^2), and
the cute path with and without recompute_postact and dpreact_over_preact (dpreact written over
preact's storage): step, back-to-back and peak memory.
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import sys

import torch

from benchmarks.compiled_baseline import COMPILE_MODES, compiled, parse_modes, short
from benchmarks.report import emit
from autotune.timing import step_ms, sustained_ms, time_ms
from cute_kernels.mlp import srelu_mlp

SHAPES = [
    {"name": "dense 8192x4096->16384", "m": 8192, "h": 4096, "f": 16384, "e": 0},
    {"name": "grouped E=8 16384x2688->1856", "m": 16384, "h": 2688, "f": 1856, "e": 8},
    {"name": "grouped E=128 32768x2688->1856", "m": 32768, "h": 2688, "f": 1856, "e": 128},
]


def mlp_inputs(m, h, f, e):
    """x, w1, w2 (requiring grad), dy and even splits (None when dense) of one MLP step,
    from seed 0 (nn.Linear-scaled weights, bf16, on the GPU)."""
    torch.manual_seed(0)
    x = torch.randn(m, h, device="cuda").bfloat16().requires_grad_()
    w1 = (torch.randn(*((e, f, h) if e else (f, h)), device="cuda") / h ** 0.5).bfloat16().requires_grad_()
    w2 = (torch.randn(*((e, h, f) if e else (h, f)), device="cuda") / f ** 0.5).bfloat16().requires_grad_()
    dy = torch.randn(m, h, device="cuda").bfloat16()
    return x, w1, w2, dy, ([m // e] * e if e else None)


def torch_eager(x, w1, w2, splits):
    """torch's own MLP: matmuls (grouped: torch._grouped_mm) and relu^2, autograd backward."""
    if splits is None:
        return torch.relu(x @ w1.t()).square() @ w2.t()
    if hasattr(torch, "_grouped_mm"):
        offs = torch.tensor(splits, device=x.device).cumsum(0).to(torch.int32)
        h = torch.relu(torch._grouped_mm(x, w1.transpose(-2, -1), offs=offs)).square()
        return torch._grouped_mm(h, w2.transpose(-2, -1), offs=offs)
    outs, s = [], 0
    for e, n in enumerate(splits):
        outs.append(torch.relu(x[s:s + n] @ w1[e].t()).square() @ w2[e].t())
        s += n
    return torch.cat(outs)


def run_step(fn, x, w1, w2, dy):
    """One forward+backward of `fn(x, w1, w2)` with output gradient dy; the gradients are
    dropped (as zero_grad(set_to_none=True) does), so each step allocates its own.  Returns y."""
    y = fn(x, w1, w2)
    y.backward(dy)
    x.grad = w1.grad = w2.grad = None
    return y


def measure(fn, x, w1, w2, dy, iters=20):
    """(isolated step ms, back-to-back step ms, peak MiB above the inputs)."""
    def step():
        run_step(fn, x, w1, w2, dy)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    peaks = []
    ms = step_ms(step, iters=iters, before=torch.cuda.reset_peak_memory_stats,
                 after=lambda: peaks.append(torch.cuda.max_memory_allocated() - base))
    b2b = time_ms(step, warmup=2, iters=10, batch=3, lead_ms=4.0)
    return ms, b2b, statistics.median(peaks) / 2**20


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out")
    ap.add_argument("--only", default="", help="comma-separated tables to run (default all): "
                    "step, compile, sustained, quack, main_grad, gemms, grouped")
    ap.add_argument("--compile-modes", default=",".join(COMPILE_MODES),
                    help="torch.compile modes of the compile table, comma-separated, or 'none'")
    args = ap.parse_args(argv)
    only = set(filter(None, args.only.split(",")))
    unknown = only - {"step", "compile", "sustained", "quack", "main_grad", "gemms", "grouped"}
    if unknown:
        ap.error(f"unknown --only tables {sorted(unknown)}")
    try:
        compile_modes = parse_modes(args.compile_modes)
    except ValueError as e:
        ap.error(str(e))
    want = lambda name: not only or name in only
    if not torch.cuda.is_available():
        print("bench_mlp needs a CUDA GPU", file=sys.stderr)
        return 2
    lines = [f"SReLU MLP forward+backward, {torch.cuda.get_device_name()}, "
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, bf16, L2 flushed, median of 20 steps "
             "(back-to-back: of 10 batches of 3)", "",
             "| shape | torch eager ms | torch peak MiB | cute path ms | vs torch | cute peak MiB | recompute ms | recompute peak MiB "
             "| cute, GPU m_splits ms | vs torch | back-to-back torch ms | back-to-back cute ms | vs torch |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in SHAPES if want("step") else []:
        x, w1, w2, dy, splits = mlp_inputs(s["m"], s["h"], s["f"], s["e"])
        t_ms, t_b2b, t_mib = measure(lambda a, b, c: torch_eager(a, b, c, splits), x, w1, w2, dy)
        c_ms, c_b2b, c_mib = measure(lambda a, b, c: srelu_mlp(a, b, c, m_splits=splits, backend="cute"), x, w1, w2, dy)
        r_ms, _, r_mib = measure(lambda a, b, c: srelu_mlp(a, b, c, m_splits=splits, backend="cute",
                                                           recompute_postact=True), x, w1, w2, dy)
        gpu_cols = "| - | - |"
        if splits is not None:  # the router's counts as a CUDA tensor: read on the GPU, no host sync
            st = torch.tensor(splits, device="cuda")
            g_ms, _, _ = measure(lambda a, b, c: srelu_mlp(a, b, c, m_splits=st, backend="cute"), x, w1, w2, dy)
            gpu_cols = f"| {g_ms:.2f} | {t_ms / g_ms:.2f}x |"
        lines.append(f"| {s['name']} | {t_ms:.2f} | {t_mib:.0f} | {c_ms:.2f} | {t_ms / c_ms:.2f}x | {c_mib:.0f} | {r_ms:.2f} "
                     f"| {r_mib:.0f} {gpu_cols} {t_b2b:.2f} | {c_b2b:.2f} | {t_b2b / c_b2b:.2f}x |")
        print(lines[-1], flush=True)
        del x, w1, w2, dy
        torch.cuda.empty_cache()
    tables = (("compile", lambda: compile_steps(compile_modes)), ("sustained", sustained_steps), ("quack", quack_steps),
              ("main_grad", main_grad_steps), ("gemms", dense_gemms), ("grouped", grouped_backward_breakdown))
    for name, table in tables:
        if want(name) and (name != "compile" or compile_modes):
            lines += ["", *table()]
    emit("\n".join(lines), args.out)
    return 0


def compile_steps(modes=COMPILE_MODES) -> list[str]:
    """Each shape's step, measured one variant after another in this run: torch eager, the torch
    step compiled in each mode (checked against eager first), the cute path, the cute path with
    recompute_postact and / or dpreact_over_preact.  A variant that fails is reported in its row."""
    rows = []
    for s in SHAPES:
        x, w1, w2, dy, splits = mlp_inputs(s["m"], s["h"], s["f"], s["e"])
        eager = lambda a, b, c: torch_eager(a, b, c, splits)  # noqa: E731
        # (name, a call making the step function: each compile right before its measurement)
        variants = [("torch eager", lambda: eager)]
        variants += [(f"torch.{short(mode)}", lambda mode=mode: _checked_compile(eager, mode, x, w1, w2))
                     for mode in modes]
        variants += [("cute", lambda: lambda a, b, c: srelu_mlp(a, b, c, m_splits=splits, backend="cute")),
                     ("cute recompute_postact", lambda: lambda a, b, c: srelu_mlp(
                         a, b, c, m_splits=splits, backend="cute", recompute_postact=True)),
                     ("cute dpreact_over_preact", lambda: lambda a, b, c: srelu_mlp(
                         a, b, c, m_splits=splits, backend="cute", dpreact_over_preact=True)),
                     ("cute recompute_postact + dpreact_over_preact", lambda: lambda a, b, c: srelu_mlp(
                         a, b, c, m_splits=splits, backend="cute", recompute_postact=True, dpreact_over_preact=True))]
        row = {"shape": s["name"], "variants": {}}
        for name, make in variants:
            try:
                row["variants"][name] = measure(make(), x, w1, w2, dy)
            except Exception as e:  # reported in its row, the others still run
                row["variants"][name] = f"{type(e).__name__}: {e}"[:150]
        torch._dynamo.reset()
        rows.append(row)
        print(format_compile_table(rows[-1:]).splitlines()[-1], flush=True)
        del x, w1, w2, dy
        torch.cuda.empty_cache()
    head = (f"torch.compile baselines (modes: {', '.join(modes)}; torch {torch.__version__}) against the cute path, "
            "each shape's variants one after another")
    return [head, "", format_compile_table(rows)]


def _checked_compile(fn, mode, x, w1, w2):
    """`fn` compiled in `mode`; raises unless its output matches eager (rel. error < 2e-2)."""
    cfn = compiled(fn, mode)
    with torch.no_grad():
        ref = fn(x, w1, w2).float()
    err = ((cfn(x, w1, w2).float() - ref).norm() / ref.norm()).item()
    if not err < 2e-2:
        raise RuntimeError(f"compiled step's output off by {err:.1e}")
    return cfn


def format_compile_table(rows: list[dict]) -> str:
    """Rows {"shape", "variants": name -> (step ms, back-to-back ms, peak MiB) or an error string};
    the last column is the cute path's speedup over each variant (step / back-to-back)."""
    lines = ["| shape | variant | step ms | back-to-back ms | peak MiB above inputs | cute vs this (step / back-to-back) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        cute = r["variants"].get("cute")
        for name, v in r["variants"].items():
            if isinstance(v, str):
                lines.append(f"| {r['shape']} | {name} | ERROR: {v} | | | |")
                continue
            vs = f"{v[0] / cute[0]:.2f}x / {v[1] / cute[1]:.2f}x" if isinstance(cute, tuple) else "-"
            lines.append(f"| {r['shape']} | {name} | {v[0]:.2f} | {v[1]:.2f} | {v[2]:.0f} | {vs} |")
    return "\n".join(lines)


def sustained_steps(rounds: int = 3):
    """Steps run back to back for 1.5 s each (after 0.5 s of the same), as a training loop runs
    them: the GPU at its power limit with settled clocks.  torch, QuACK (dense, when
    importable) and ours alternate in `rounds` rounds; medians over rounds, with the mean
    board power and SM clock while each ran (NVML)."""
    quack, _ = quack_mlp()
    names = ["torch", "QuACK", "cute"] if quack else ["torch", "cute"]
    out = [f"Sustained steps: back to back for 1.5 s each after 0.5 s warm-up, {rounds} alternating rounds, "
           "median ms per step; mean board power and SM clock while each ran", "",
           "| shape | " + " | ".join(f"{n} ms (W, MHz)" for n in names) + " | cute vs torch | cute vs QuACK |",
           "|---|" + "---|" * len(names) + "---|---|"]
    for s in SHAPES:
        x, w1, w2, dy, splits = mlp_inputs(s["m"], s["h"], s["f"], s["e"])
        fns = {"torch": lambda a, b, c: torch_eager(a, b, c, splits)}
        if quack and splits is None:  # QuACK's MLP has no grouped form
            fns["QuACK"] = quack
        fns["cute"] = lambda a, b, c: srelu_mlp(a, b, c, m_splits=splits, backend="cute")
        res = {n: [] for n in fns}
        for _ in range(rounds):
            for n, f in fns.items():
                res[n].append(sustained_ms(lambda f=f: run_step(f, x, w1, w2, dy)))
        med = {n: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v),
                   statistics.median(r[2] for r in v)) for n, v in res.items()}
        cells = [f"{med[n][0]:.2f} ({med[n][1]:.0f} W, {med[n][2]:.0f})" if n in med else "-" for n in names]
        vs_q = f"{med['QuACK'][0] / med['cute'][0]:.2f}x" if "QuACK" in med else "-"
        out.append(f"| {s['name']} | " + " | ".join(cells) + f" | {med['torch'][0] / med['cute'][0]:.2f}x | {vs_q} |")
        print(out[-1], flush=True)
        del x, w1, w2, dy
        torch.cuda.empty_cache()
    return out


def quack_steps():
    """The dense step against QuACK's fused MLP (quack.mlp.mlp_func, activation relu_sq, its
    default configs: tuned=False) and torch, all three in this run, when QuACK is importable.
    QuACK's MLP has no grouped form, so only the dense shape.  Its gradients are checked
    against ours first (relative error), so the comparison is of the same computation."""
    quack, why_not = quack_mlp()
    if quack is None:
        return [f"QuACK not importable here ({why_not}); no QuACK comparison in this run."]
    try:
        return _quack_table(quack)
    except Exception as exc:
        return [f"QuACK failed in this run ({type(exc).__name__}: {str(exc)[:300]}); no QuACK comparison."]


def quack_mlp():
    """(QuACK's fused MLP as fn(x, w1, w2), None) with relu_sq and its default configs
    (tuned=False), or (None, why) when QuACK cannot be imported here."""
    try:
        _quack_compat()
        from quack.mlp import mlp_func
    except Exception as exc:  # not installed, or built for another cutlass-dsl
        return None, f"{type(exc).__name__}: {exc}"
    return (lambda a, b, c: mlp_func(a, b, c, activation="relu_sq", tuned=False)), None


def _quack_compat():
    """QuACK 0.6.5 fingerprints each epilogue function and everything it references, and
    refuses values it has no key for.  Under Python 3.12 with cutlass-dsl 4.8.1 the walk
    reaches DSL internals that carry no math (a source-location ContextVar, a code-object
    method), so such values get a key by type and repr.  This only loosens QuACK's compile
    cache key, which is safe in one process whose epilogues never change."""
    import quack.gemm_runtime.identity as qid

    if getattr(qid.semantic_value_key, "_cute_kernels_compat", False):
        return
    original = qid.semantic_value_key

    def semantic_value_key(value, seen=None):
        try:
            return original(value, seen)
        except TypeError:
            return ("opaque", type(value).__module__, type(value).__qualname__, repr(value)[:200])

    semantic_value_key._cute_kernels_compat = True
    qid.semantic_value_key = semantic_value_key


def _quack_table(qf):
    import importlib.metadata as md
    try:
        version = md.version("quack-kernels")
    except md.PackageNotFoundError:
        version = "unknown"
    out = [f"Dense step against QuACK {version} (quack.mlp.mlp_func, relu_sq, tuned=False) in the same run; "
           "same timing as the first table", "",
           "| shape | torch ms | QuACK ms | cute ms | cute vs QuACK | cute vs torch | torch / QuACK / cute peak MiB "
           "| back-to-back torch / QuACK / cute ms | cute vs QuACK | QuACK vs ours: rel err y, dx, dw1, dw2 |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for s in SHAPES:
        if s["e"]:
            continue
        x, w1, w2, dy, _ = mlp_inputs(s["m"], s["h"], s["f"], s["e"])

        def grads(fn):
            y = fn(x, w1, w2)
            y.backward(dy)
            g = [y.detach().float(), x.grad.float(), w1.grad.float(), w2.grad.float()]
            x.grad = w1.grad = w2.grad = None
            return g

        cf = lambda a, b, c: srelu_mlp(a, b, c, backend="cute")
        errs = [((q - c).norm() / c.norm()).item() for q, c in zip(grads(qf), grads(cf))]
        t_ms, t_b2b, t_mib = measure(lambda a, b, c: torch_eager(a, b, c, None), x, w1, w2, dy)
        q_ms, q_b2b, q_mib = measure(qf, x, w1, w2, dy)
        c_ms, c_b2b, c_mib = measure(cf, x, w1, w2, dy)
        out.append(f"| {s['name']} | {t_ms:.2f} | {q_ms:.2f} | {c_ms:.2f} | {q_ms / c_ms:.2f}x | {t_ms / c_ms:.2f}x "
                   f"| {t_mib:.0f} / {q_mib:.0f} / {c_mib:.0f} | {t_b2b:.2f} / {q_b2b:.2f} / {c_b2b:.2f} "
                   f"| {q_b2b / c_b2b:.2f}x | {', '.join(f'{e:.1e}' for e in errs)} |")
        print(out[-1], flush=True)
        del x, w1, w2, dy
        torch.cuda.empty_cache()
    return out


def main_grad_steps():
    """The step with fuse_wgrad_accumulation: weight gradients added into fp32 main_grad
    (allocated before the step, so not part of its peak), cute path against the op's
    torch path (torch's gradient, then main_grad.add_)."""
    out = ["Step with the weight gradients accumulated into fp32 main_grad (fuse_wgrad_accumulation=True), "
           "same timing; torch = srelu_mlp(backend='torch'): torch GEMMs, then main_grad.add_", "",
           "| shape | torch ms | torch peak MiB | cute ms | vs torch | cute peak MiB | peak cute / torch "
           "| back-to-back torch ms | back-to-back cute ms | vs torch |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for s in SHAPES:
        x, w1, w2, dy, splits = mlp_inputs(s["m"], s["h"], s["f"], s["e"])
        w1.main_grad = torch.zeros(w1.shape, device="cuda")
        w2.main_grad = torch.zeros(w2.shape, device="cuda")
        res = {}
        for backend in ("torch", "cute"):
            res[backend] = measure(lambda a, b, c: srelu_mlp(a, b, c, m_splits=splits, backend=backend,
                                                             fuse_wgrad_accumulation=True), x, w1, w2, dy)
        (t_ms, t_b2b, t_mib), (c_ms, c_b2b, c_mib) = res["torch"], res["cute"]
        out.append(f"| {s['name']} | {t_ms:.2f} | {t_mib:.0f} | {c_ms:.2f} | {t_ms / c_ms:.2f}x | {c_mib:.0f} "
                   f"| {c_mib / t_mib:.2f}x | {t_b2b:.2f} | {c_b2b:.2f} | {t_b2b / c_b2b:.2f}x |")
        print(out[-1], flush=True)
        del x, w1, w2, dy
        torch.cuda.empty_cache()
    return out


DENSE = {"m": 8192, "h": 4096, "f": 16384}


def dense_operands(m=DENSE["m"], h=DENSE["h"], f=DENSE["f"]) -> dict:
    """Seed-0 bf16 operands of the dense step's GEMMs: x, w1, w2, dy, preact, postact, dpreact."""
    torch.manual_seed(0)
    t = {"x": torch.randn(m, h, device="cuda").bfloat16(),
         "w1": (torch.randn(f, h, device="cuda") / h ** 0.5).bfloat16(),
         "w2": (torch.randn(h, f, device="cuda") / f ** 0.5).bfloat16(),
         "dy": torch.randn(m, h, device="cuda").bfloat16(),
         "pre": torch.randn(m, f, device="cuda").bfloat16()}
    t["post"] = torch.relu(t["pre"]).square()
    t["dpre"] = torch.randn(m, f, device="cuda").bfloat16()
    return t


def dense_step_gemms(t: dict) -> list:
    """The six GEMMs of the dense step as the default step runs them, on `dense_operands()`:
    (name, cuBLAS matmul of its shape, ours as fn(config=None) -> its main output)."""
    from cute_kernels import fc1_srelu, fc2, fc2_dgrad_dsrelu, weight_grad

    x, w1, w2, dy, pre, post, dpre = (t[k] for k in ("x", "w1", "w2", "dy", "pre", "post", "dpre"))
    return [
        ("FC1 + SReLU (preact and postact out)", lambda: x @ w1.t(), lambda c=None: fc1_srelu(x, w1, config=c)[1]),
        ("FC2", lambda: post @ w2.t(), lambda c=None: fc2(post, w2, config=c)),
        ("FC2 dgrad + dSReLU (dpreact out)", lambda: dy @ w2, lambda c=None: fc2_dgrad_dsrelu(dy, w2, pre, config=c)[0]),
        ("FC2 wgrad dy^T postact", lambda: dy.t() @ post, lambda c=None: weight_grad(dy, post, config=c)),
        ("FC1 dgrad dpre w1", lambda: dpre @ w1, lambda c=None: fc2(dpre, w1.t(), config=c)),
        ("FC1 wgrad dpre^T x", lambda: dpre.t() @ x, lambda c=None: weight_grad(dpre, x, config=c)),
    ]


def dense_gemms():
    """The six GEMMs of the dense step, each against the cuBLAS matmul of the same shape
    (torch, no elementwise work), then their sums: torch's step minus its six matmuls is what
    torch spends outside cuBLAS, the most a fused op can win back with GEMMs at cuBLAS's
    speed.  Extra rows: the dgrad with postact recompute and the fp32 main_grad wgrad against
    the torch ops they replace."""
    from cute_kernels import fc2_dgrad_dsrelu, weight_grad

    m, h, f = DENSE["m"], DENSE["h"], DENSE["f"]
    t = dense_operands(m, h, f)
    dy, w2, pre, post = t["dy"], t["w2"], t["pre"], t["post"]
    main_grad = torch.zeros(h, f, device="cuda")
    tf = 2 * m * h * f / 1e9

    def torch_dgrad():
        d = (dy @ w2).float()
        return (2 * d * torch.relu(pre.float())).bfloat16()

    out = [f"The six GEMMs of the dense step, M={m} H={h} F={f} (CUDA events, L2 flushed, median): "
           "ours against cuBLAS (torch matmul of the same shape, no elementwise work)", "",
           "| GEMM | cuBLAS ms | cute ms | cute TFLOP/s | vs cuBLAS |", "|---|---|---|---|---|"]
    t_sum = c_sum = 0.0
    for name, t_fn, c_fn in dense_step_gemms(t):
        tt, c = time_ms(t_fn), time_ms(c_fn)
        t_sum, c_sum = t_sum + tt, c_sum + c
        out.append(f"| {name} | {tt:.3f} | {c:.3f} | {tf / c:.0f} | {tt / c:.2f}x |")
        print(out[-1], flush=True)
    out.append(f"| sum of the six | {t_sum:.3f} | {c_sum:.3f} | {6 * tf / c_sum:.0f} | {t_sum / c_sum:.2f}x |")
    out += ["", "Other backward variants against the torch ops they replace", "",
            "| GEMM | torch ms | cute ms | cute TFLOP/s | vs torch |", "|---|---|---|---|---|"]
    rows = [
        ("FC2 dgrad + dSReLU + postact recompute vs matmul + elementwise", torch_dgrad,
         lambda: fc2_dgrad_dsrelu(dy, w2, pre, store_postact=True)),
        ("FC2 dgrad + dSReLU vs matmul + elementwise", torch_dgrad, lambda: fc2_dgrad_dsrelu(dy, w2, pre)),
        ("FC2 wgrad into fp32 main_grad", lambda: main_grad.add_(dy.t() @ post),
         lambda: weight_grad(dy, post, out=main_grad, accumulate=True)),
    ]
    for name, t_fn, c_fn in rows:
        tt, c = time_ms(t_fn), time_ms(c_fn)
        out.append(f"| {name} | {tt:.3f} | {c:.3f} | {tf / c:.0f} | {tt / c:.2f}x |")
        print(out[-1], flush=True)
    return out


def grouped_backward_breakdown():
    """Grouped backward GEMMs of the E=8 and E=128 shapes: CuTe kernels vs torch._grouped_mm."""
    from cute_kernels import fc2_dgrad_dsrelu, weight_grad

    out = ["Grouped backward GEMMs (tokens split evenly; CUDA events, L2 flushed, median)", "",
           "| shape | GEMM | torch ms | cute ms | vs torch |", "|---|---|---|---|---|"]
    for s in SHAPES:
        if not s["e"] or not hasattr(torch, "_grouped_mm"):
            continue
        m, h, f, e = s["m"], s["h"], s["f"], s["e"]
        torch.manual_seed(0)
        splits = [m // e] * e
        offs = torch.tensor(splits, device="cuda").cumsum(0).to(torch.int32)
        dy = torch.randn(m, h, device="cuda").bfloat16()
        w2 = (torch.randn(e, h, f, device="cuda") / f ** 0.5).bfloat16()
        pre = torch.randn(m, f, device="cuda").bfloat16()
        post = torch.relu(pre).square()

        def torch_dgrad():
            d = torch._grouped_mm(dy, w2, offs=offs).float()
            return (2 * d * torch.relu(pre.float())).bfloat16()

        rows = [
            ("FC2 dgrad + dSReLU", torch_dgrad, lambda: fc2_dgrad_dsrelu(dy, w2, pre, m_splits=splits)),
            ("FC2 wgrad per expert", lambda: torch._grouped_mm(dy.t(), post, offs=offs),
             lambda: weight_grad(dy, post, m_splits=splits)),
        ]
        for name, t_fn, c_fn in rows:
            t, c = time_ms(t_fn), time_ms(c_fn)
            out.append(f"| E={e} | {name} | {t:.3f} | {c:.3f} | {t / c:.2f}x |")
            print(out[-1], flush=True)
    return out


if __name__ == "__main__":
    sys.exit(main())
