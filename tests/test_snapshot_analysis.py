"""The memory timeline's analysis (benchmarks/snapshot_analysis.py) on synthetic snapshots in
torch's format: the allocated-bytes series, the phases from marks, the peak's phase and the
blocks live there with their allocation stacks summarized."""
import random

import pytest

from benchmarks import snapshot_analysis as sa

MB = 1 << 20
NN = "/usr/lib/python3/site-packages/torch/nn/modules/linear.py"
HF = "/usr/lib/python3/site-packages/transformers/models/nemotron_h/modeling_nemotron_h.py"


class Trace:
    """Builds a device trace the way the caching allocator records one."""

    def __init__(self):
        self.events, self.next_addr, self.marks = [], 1 << 32, 0

    def alloc(self, size, frames=()):
        addr = self.next_addr
        self.next_addr += size + 512
        self.events.append({"action": "alloc", "addr": addr, "size": size, "stream": 0, "frames": list(frames)})
        return addr

    def free(self, addr, size):
        self.events.append({"action": "free_requested", "addr": addr, "size": size, "stream": 0, "frames": []})
        self.events.append({"action": "free_completed", "addr": addr, "size": size, "stream": 0, "frames": []})

    def mark(self):
        """What benchmarks.memory_timeline's mark(k) leaves in the trace (with a segment_alloc in between)."""
        a = self.alloc(sa.MARK_MAGIC)
        self.events.append({"action": "segment_alloc", "addr": 7, "size": 2 * MB, "stream": 0, "frames": []})
        b = self.alloc(sa.mark_size(self.marks))
        self.free(b, sa.mark_size(self.marks))
        self.free(a, sa.MARK_MAGIC)
        self.marks += 1


def _frames(file, line, name, *inner):
    return [{"filename": f, "line": ln, "name": n} for f, ln, n in inner] + [{"filename": file, "line": line, "name": name}]


def _snapshot(trace, active):
    """Segments holding `active` [(addr, size, frames)] as active blocks at the end."""
    blocks = [{"address": a, "size": s, "requested_size": s, "state": "active_allocated", "frames": f} for a, s, f in active]
    blocks.append({"address": 5, "size": 3 * MB, "requested_size": 0, "state": "inactive", "frames": []})
    return {"segments": [{"address": 0, "total_size": 1 << 40, "blocks": blocks}], "device_traces": [trace.events]}


def _step():
    """Weights before recording; forward of 2 layers saving activations; a backward whose
    peak is in layer 1's backward (a large weight gradient while layer 0's activations live)."""
    tr = Trace()
    weights = [(1 << 40, 512 * MB, _frames(HF, 10, "__init__"))]
    pre = 1 << 41  # allocated before recording, freed during the step (an old gradient)
    labels = ["forward layer 0", "forward layer 1", "backward layer 1", "backward layer 0", "optimizer"]
    tr.mark()
    a0 = tr.alloc(100 * MB, _frames(HF, 200, "forward", (NN, 125, "forward")))
    tmp = tr.alloc(30 * MB, _frames(HF, 201, "forward"))
    tr.free(tmp, 30 * MB)
    tr.mark()
    a1 = tr.alloc(200 * MB, _frames("/x/cute_kernels/mlp.py", 171, "forward"))
    tr.free(pre, 64 * MB)
    tr.mark()
    g1 = tr.alloc(300 * MB, [{"filename": "", "line": 0, "name": "torch::autograd::generated::MmBackward0::apply"},
                             {"filename": "/x/benchmarks/bench_nemotron.py", "line": 47, "name": "run"}])
    tr.free(a1, 200 * MB)
    tr.mark()
    g0 = tr.alloc(150 * MB, [{"filename": "", "line": 0, "name": "torch::autograd::generated::MmBackward0::apply"}])
    tr.free(a0, 100 * MB)
    tr.mark()
    tr.free(g1, 300 * MB)
    tr.free(g0, 150 * MB)
    return _snapshot(tr, weights), labels


def test_peak_phase_and_live_blocks_of_a_step():
    snap, labels = _step()
    tl = sa.analyze(snap, labels, title="synthetic")
    assert tl.baseline == 512 * MB + 64 * MB  # weights + the block freed during the step
    assert tl.peak_bytes == 512 * MB + 100 * MB + 200 * MB + 300 * MB  # old gradient freed before the peak
    assert tl.peak_phase == "backward layer 1"
    assert [b.size for b in tl.live_at_peak] == [512 * MB, 300 * MB, 200 * MB, 100 * MB]
    assert sum(b.size for b in tl.live_at_peak) == tl.peak_bytes
    w, g1, a1, a0 = tl.live_at_peak
    assert w.phase == "before recording" and "modeling_nemotron_h.py:10 __init__" in w.where
    assert g1.phase == "backward layer 1" and g1.where == "autograd MmBackward0 (from benchmarks/bench_nemotron.py:47 run)"
    assert a1.phase == "forward layer 1" and a1.where == "cute_kernels/mlp.py:171 forward"
    assert a0.where == "nemotron_h/modeling_nemotron_h.py:200 forward via modules/linear.py:125 forward"
    assert tl.phase_peaks["forward layer 0"] == 512 * MB + 64 * MB + 130 * MB
    assert tl.phase_peaks["optimizer"] == 512 * MB + 300 * MB + 150 * MB
    assert [p for _, p in tl.phase_starts] == labels
    assert tl.allocated[-1] == 512 * MB  # the end state: weights only; the marks add nothing
    text = sa.markdown(tl)
    assert "**backward layer 1**" in text and "| 300.0 | backward layer 1 | autograd MmBackward0" in text


def test_pre_trace_block_freed_after_the_peak_is_live_at_it():
    tr = Trace()
    tr.mark()
    x = tr.alloc(10 * MB)
    tr.free(1 << 45, 40 * MB)  # allocated before recording, freed after the peak
    tr.free(x, 10 * MB)
    tl = sa.analyze(_snapshot(tr, []), ["only"])
    assert tl.baseline == 40 * MB and tl.peak_bytes == 50 * MB and tl.peak_index == 0
    assert sorted(b.size for b in tl.live_at_peak) == [10 * MB, 40 * MB]
    assert {b.phase for b in tl.live_at_peak} == {"only", "before recording"}


def test_random_traces_match_a_direct_replay():
    rng = random.Random(3)
    for _ in range(30):
        tr, live, series, labels = Trace(), {}, [], []
        for k in range(rng.randint(1, 5)):
            tr.mark()
            labels.append(f"phase {k}")
            for _ in range(rng.randint(1, 30)):
                if live and rng.random() < 0.45:
                    addr = rng.choice(sorted(live))
                    tr.free(addr, live.pop(addr))
                else:
                    size = rng.randint(1, 64) * 512
                    live[tr.alloc(size)] = size
                series.append(sum(live.values()))
        tl = sa.analyze(_snapshot(tr, [(a, s, []) for a, s in live.items()]), labels)
        assert tl.baseline == 0 and tl.allocated == series
        assert tl.peak_bytes == max(series) and tl.peak_index == series.index(max(series))
        assert sum(b.size for b in tl.live_at_peak) == tl.peak_bytes


def test_bad_snapshots_say_what_is_missing():
    with pytest.raises(ValueError, match="no trace for device 1"):
        sa.analyze({"segments": [], "device_traces": [[]]}, device=1)
    with pytest.raises(ValueError, match="_record_memory_history"):
        sa.analyze({"segments": [], "device_traces": [[]]})
    with pytest.raises(ValueError, match="mark index"):
        sa.mark_size(sa.MARK_MAGIC // sa.MARK_UNIT)


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    snap, labels = _step()
    tl = sa.analyze(snap, labels, title="synthetic")
    path = tmp_path / "timeline.png"
    assert sa.plot([tl, tl], str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
