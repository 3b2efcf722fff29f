"""The benchmark problem shapes, one list the benchmarks and the autotuner share.

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
