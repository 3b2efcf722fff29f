"""benchmarks/saved_storage.py: the bytes one forward saves for backward, counted once per
storage, parameters left out (what bench_nemotron's "saved activations" column reports)."""
import torch

from benchmarks.saved_storage import saved_storages


def test_counts_each_storage_once_and_leaves_out_the_parameters():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=g, requires_grad=True)
    w = torch.nn.Parameter(torch.randn(3, 5, generator=g))

    def forward():
        y = torch.relu(x @ w.t())  # mm saves x and w (w.t() a view of w); relu saves its output y
        return y * y  # mul saves y twice: y's storage once more

    out, saved = saved_storages(forward, exclude=[w])
    assert saved.nbytes == (7 * 5 + 7 * 3) * 4
    assert sorted(nb for nb, _ in saved.largest()) == [7 * 3 * 4, 7 * 5 * 4]
    assert max(len(views) for _, views in saved.largest()) == 3  # y: by relu and twice by mul
    out.sum().backward()  # the graph still runs: the hooks saved the tensors unchanged
    z = (x @ w.t()).detach()
    assert torch.allclose(x.grad, (2 * torch.relu(z)) @ w.detach(), rtol=1e-5, atol=1e-6)
    _, with_w = saved_storages(forward)
    assert with_w.nbytes == saved.nbytes + 3 * 5 * 4


def test_a_saved_view_counts_its_whole_buffer():
    base = torch.randn(100, 4, requires_grad=True)
    big = base * 2  # (100, 4) intermediate
    _, saved = saved_storages(lambda: big[:10].sin())  # sin saves its input, a view of big
    assert saved.nbytes == 100 * 4 * 4
    assert saved.largest(1) == [(1600, [([10, 4], "float32")])]


def test_nothing_saved_without_grad():
    x = torch.randn(8, 8)
    out, saved = saved_storages(lambda: x.sin() * 2)
    assert saved.nbytes == 0 and saved.largest() == [] and out.shape == (8, 8)
