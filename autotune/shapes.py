"""The benchmark problem shapes: one list the benchmarks and the autotuner share.

Each entry: kernel name, M (tokens), N, K, and for grouped problems the number of
experts (tokens split evenly unless `splits` says otherwise).
"""
GEMM_SHAPES = [
    # dense FC1 + SReLU
    {"kernel": "fc1_srelu", "m": 8192, "n": 16384, "k": 4096},
    {"kernel": "fc1_srelu", "m": 16384, "n": 14848, "k": 2688},
    # dense FC2 (the matching down projections)
    {"kernel": "fc2", "m": 8192, "n": 4096, "k": 16384},
    {"kernel": "fc2", "m": 16384, "n": 2688, "k": 14848},
    # grouped FC1 + SReLU (MoE experts)
    {"kernel": "fc1_srelu", "m": 16384, "n": 1856, "k": 2688, "experts": 8},
    {"kernel": "fc1_srelu", "m": 32768, "n": 1856, "k": 2688, "experts": 128},
    # grouped FC2
    {"kernel": "fc2", "m": 16384, "n": 2688, "k": 1856, "experts": 8},
    {"kernel": "fc2", "m": 32768, "n": 2688, "k": 1856, "experts": 128},
]


def even_splits(m: int, experts: int) -> list[int]:
    base, rem = divmod(m, experts)
    return [base + (1 if e < rem else 0) for e in range(experts)]


def shape_label(s: dict) -> str:
    g = f" E={s['experts']}" if s.get("experts") else ""
    return f"{s['kernel']} M={s['m']} N={s['n']} K={s['k']}{g}"


# Model presets for `python -m autotune sweep --preset NAME`: MLP sizes and token counts.
MODEL_PRESETS = {
    "dense-4096x16384": {"hidden": 4096, "ffn": 16384, "experts": 0, "tokens": [8192]},
    "dense-2688x14848": {"hidden": 2688, "ffn": 14848, "experts": 0, "tokens": [16384]},
    "moe-e8": {"hidden": 2688, "ffn": 1856, "experts": 8, "tokens": [16384]},
    "moe-e128": {"hidden": 2688, "ffn": 1856, "experts": 128, "tokens": [32768]},
}


# Token counts per step (M) `sweep --model` tunes by default: powers of two from 1k to 64k tokens
# and the midpoints between them (x1.5), so every M a user sees lies within one bucket's reach of
# an entry for the nearest-M and wave-aware lookups (cute_kernels.config_lookup).  Grouped (MoE)
# steps tune the total: grouped tiles walk all experts, so the total moves the waves, the split
# across experts (even here) at most one rounded-up tile per expert.
def model_token_buckets(lo: int = 1024, hi: int = 65536) -> list[int]:
    """Powers of two from `lo` to `hi` and the midpoints (x1.5) between them."""
    out, m = [], lo
    while m <= hi:
        out.append(m)
        if m * 3 // 2 <= hi and m * 2 <= hi:
            out.append(m * 3 // 2)
        m *= 2
    return out


MODEL_TOKEN_BUCKETS = model_token_buckets()


def model_shapes(hidden: int, ffn: int, experts: int, tokens: list[int]) -> list[dict]:
    """The GEMMs of an SReLU MLP step: FC1 (M=tokens, N=ffn, K=hidden), FC2 (N=hidden,
    K=ffn), FC2's data gradient with dSReLU (N=ffn, K=hidden), and the weight gradients
    dW1 (M=ffn, N=hidden) and dW2 (M=hidden, N=ffn), each summed over K=tokens.  (FC1's
    data gradient runs the fc2 kernel on FC2's shape and takes its config.)"""
    out = []
    for m in dict.fromkeys(tokens):
        out.append({"kernel": "fc1_srelu", "m": m, "n": ffn, "k": hidden, "experts": experts})
        out.append({"kernel": "fc2", "m": m, "n": hidden, "k": ffn, "experts": experts})
        out.append({"kernel": "fc2_dgrad_dsrelu", "m": m, "n": ffn, "k": hidden, "experts": experts})
        out.append({"kernel": "weight_grad", "m": ffn, "n": hidden, "k": m, "experts": experts})
        out.append({"kernel": "weight_grad", "m": hidden, "n": ffn, "k": m, "experts": experts})
    return out


def fp8_step_shapes(hidden: int, ffn: int, experts: int, tokens: list[int]) -> list[dict]:
    """The tuned-config lookups of the FP8 training step's GEMMs (cute_kernels/fp8/ops.py,
    `family_kernel`): FC1 + activation (fp8_fc1_srelu: M=tokens, N=ffn, K=hidden), FC2
    (fp8_fc2: N=hidden, K=ffn; FC1's data gradient is the same plain GEMM on the same shape and
    takes its entry) and FC2's data gradient with the activation derivative (fp8_dgrad_dact:
    N=ffn, K=hidden).  The FP8 weight gradients have their own kernel (not tuned here)."""
    out = []
    for m in dict.fromkeys(tokens):
        out.append({"kernel": "fp8_fc1_srelu", "m": m, "n": ffn, "k": hidden, "experts": experts})
        out.append({"kernel": "fp8_fc2", "m": m, "n": hidden, "k": ffn, "experts": experts})
        out.append({"kernel": "fp8_dgrad_dact", "m": m, "n": ffn, "k": hidden, "experts": experts})
    return out
