"""Float32 references and comparison helpers shared by the tests."""
import torch


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.float(), ref.float()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def random_splits(m_total: int, num_experts: int, gen: torch.Generator, *, empty: int = 0, skew: bool = False) -> list[int]:
    """Random per-expert counts summing to m_total, `empty` of them zero."""
    weights = torch.rand(num_experts, generator=gen) + 0.05
    if skew:
        weights = weights ** 4
    if empty:
        weights[torch.randperm(num_experts, generator=gen)[:empty]] = 0
    if weights.sum() == 0:
        weights[0] = 1
    raw = (weights / weights.sum() * m_total).floor().long()
    raw[int(torch.argmax(weights))] += m_total - int(raw.sum())
    return [int(v) for v in raw]


def grouped_ref(x, w, splits, fn=None):
    """Per-expert fp32 reference of x @ w[e]^T (then `fn`)."""
    outs, start = [], 0
    for e, s in enumerate(splits):
        y = x[start:start + s].float() @ w[e].float().t()
        outs.append(fn(y) if fn else y)
        start += s
    return torch.cat(outs, 0)
