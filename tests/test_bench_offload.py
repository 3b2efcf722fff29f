"""benchmarks/bench_offload on the CPU: its argument checks and the timeline PNG from a trace."""
import pytest

from benchmarks import bench_offload


def test_unknown_stack_and_no_gpu_are_one_line_errors(capsys):
    assert bench_offload.main(["--only", "dense,nope"]) == 2
    assert "unknown stack" in capsys.readouterr().err


def test_timeline_png_from_a_trace(tmp_path):
    pytest.importorskip("matplotlib")
    tr = {"device": "test", "step_ms": 30.0, "fwd_end": 10.0, "fwd": [(0.0, 4.0), (5.0, 4.0)],
          "bwd": [(10.0, 8.0), (18.0, 12.0)], "d2h": [(1.0, 3.0, 1 << 20), (4.0, 5.0, 1 << 20)],
          "h2d": [(11.0, 2.0, 1 << 20)], "d2h_gbps": 50.0, "d2h_busy_fwd": 0.8}
    path = tmp_path / "t.png"
    bench_offload.render_timeline(tr, str(path), "auto, test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
