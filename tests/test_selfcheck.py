"""The self-check's decision logic on CPU with a fake runner: which variants are checked, once,
what a disagreement raises, the switch and the evidence table."""
import pytest

from cute_kernels import selfcheck
from cute_kernels.compile import KernelKey
from cute_kernels.config import GemmConfig
from cute_kernels.epilogue import EpilogueSpec
from cute_kernels.gemm_base.launch_args import GemmArgs
from cute_kernels.sm100.config import Sm100Config

SM100 = KernelKey("sm100", Sm100Config(cta_group=2, cluster_m=2), EpilogueSpec("srelu", store_preact=True), False,
                  "bfloat16", "k", "k")
SM90 = KernelKey("sm90", GemmConfig(), EpilogueSpec("identity"), True, "bfloat16", "k", "k")


@pytest.fixture(autouse=True)
def _no_recorded_failures(monkeypatch):
    monkeypatch.setattr(selfcheck, "_failed", {})


class FakeRunner:
    def __init__(self, error=1e-3):
        self.error, self.calls = error, []

    def __call__(self, key):
        self.calls.append(key)
        return selfcheck.CheckResult(key.arch, selfcheck.variant_name(key), {"postact": self.error}, tolerance=2e-2)


def gate(key, seen, runner, table=None, env=None):
    return selfcheck.before_first_launch(key, seen, runner=runner, table=table if table is not None else
                                         selfcheck.verified_table(), env=env or {}, capturing=lambda: False)


def test_shipped_table_verifies_sm90_and_no_sm100_variant():
    table = selfcheck.verified_table()
    assert selfcheck.is_verified("sm90", selfcheck.variant_name(SM90), table)
    assert not selfcheck.is_verified("sm100", selfcheck.variant_name(SM100), table)
    assert table["sm100"] == []


def test_verified_variant_is_not_checked():
    run = FakeRunner()
    assert gate(SM90, set(), run) is None and run.calls == []


def test_unverified_variant_is_checked_once_per_process_and_passes():
    run, seen = FakeRunner(), set()
    res = gate(SM100, seen, run)
    assert res.ok and run.calls == [SM100] and SM100 in seen
    # the caller (gemm_ops._run) skips keys in `seen`: the check's own launch and later launches


def test_disagreement_raises_naming_the_variant():
    with pytest.raises(selfcheck.SelfCheckError, match=r"sm100 kernel dense/srelu\+preact/cta2-c2x1.*backend='torch'"):
        gate(SM100, set(), FakeRunner(error=0.5))


def test_nan_or_launch_failure_fails_the_check():
    nan = selfcheck.CheckResult("sm100", "v", {"out": float("nan")}, tolerance=1e-2)
    crashed = selfcheck.CheckResult("sm100", "v", {}, tolerance=1e-2, message="RuntimeError: launch failed")
    assert not nan.ok and not crashed.ok


def test_switch_and_graph_capture_skip_the_check():
    run = FakeRunner(error=0.5)
    assert gate(SM100, set(), run, env={"CUTE_KERNELS_SELFCHECK": "0"}) is None
    assert selfcheck.before_first_launch(SM100, set(), runner=run, table={}, env={}, capturing=lambda: True) is None
    assert run.calls == []


def test_table_patterns_and_variant_names():
    v = selfcheck.variant_name(SM100)
    assert v == "dense/srelu+preact/cta2-c2x1/bfloat16->bfloat16/akbk"
    assert selfcheck.is_verified("sm100", v, {"sm100": ["dense/srelu+preact/cta2-*"]})
    assert not selfcheck.is_verified("sm100", v, {"sm100": ["dense/srelu+preact/cta1-*"]})
    one_cta = KernelKey("sm100", Sm100Config(), SM100.epi, False, "bfloat16", "k", "k")
    assert selfcheck.variant_name(one_cta) != v


def test_the_op_path_runs_the_gate_once_per_key(monkeypatch):
    """gemm_ops._run calls the gate before a key's first launch only."""
    from cute_kernels import gemm_ops

    calls = []
    monkeypatch.setattr(selfcheck, "before_first_launch",
                        lambda key, seen, launch: (calls.append((key, launch)), seen.add(key)))
    monkeypatch.setattr(gemm_ops, "_selfchecked", set())
    monkeypatch.setattr(gemm_ops, "_max_clusters_arg", lambda *a: (1, 1))
    monkeypatch.setattr(gemm_ops, "use_tvm_ffi", lambda: True)
    monkeypatch.setattr(gemm_ops, "get_compiled", lambda key: (lambda *a: None))

    class T:
        class device:
            index = 0
    for _ in range(2):
        gemm_ops._run(SM100, GemmArgs(T, None, None))
    assert calls == [(SM100, gemm_ops._run)]  # the op hands its own launch down for the check's run


def test_a_failed_variant_keeps_refusing(monkeypatch):
    """The gate's caller skips keys in `seen`: a failed check must leave its key out of it, or the
    variant's second launch would run unchecked (seen on the H200: the FP8 step's second call ran a
    variant whose self-check had failed).  Later launches raise again without re-running."""
    monkeypatch.setattr(selfcheck, "_failed", {})
    run, seen = FakeRunner(error=0.5), set()
    for _ in range(3):
        with pytest.raises(selfcheck.SelfCheckError, match="disagrees"):
            gate(SM100, seen, run)
        assert SM100 not in seen
    assert run.calls == [SM100], "the failed check is not re-run"
