"""`python -m autotune sweep --model hidden,ffn,experts`: the GEMMs of a model's MLP step at the
M buckets (or --tokens), grouped when experts > 1; bad values refused with argparse's one-line
error; a simulated sweep end to end (no GPU)."""
import os

import optuna
import pytest

from autotune.__main__ import build_parser, main, problems_from_args
from autotune.shapes import MODEL_TOKEN_BUCKETS, model_token_buckets

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(autouse=True)
def _run_in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def _problems(*argv):
    parser = build_parser()
    args = parser.parse_args(["sweep", *argv])
    return problems_from_args(args, args.subparser)


def test_the_buckets_are_powers_of_two_and_midpoints():
    assert MODEL_TOKEN_BUCKETS == [1024, 1536, 2048, 3072, 4096, 6144, 8192, 12288, 16384, 24576, 32768, 49152,
                                   65536]
    assert model_token_buckets(1024, 4096) == [1024, 1536, 2048, 3072, 4096]


def test_moe_model_gives_every_gemm_of_the_step_at_every_bucket():
    probs = _problems("--model", "2688,1856,128")
    assert len(probs) == 5 * len(MODEL_TOKEN_BUCKETS)
    got = {(p.kernel, p.shape.m, p.shape.n, p.shape.k, p.shape.experts) for p in probs}
    for m in MODEL_TOKEN_BUCKETS:
        assert {("fc1_srelu", m, 1856, 2688, 128), ("fc2", m, 2688, 1856, 128),
                ("fc2_dgrad_dsrelu", m, 1856, 2688, 128),
                ("weight_grad", 1856, 2688, m, 128), ("weight_grad", 2688, 1856, m, 128)} <= got
    assert {p.shape.dtype for p in probs} == {"bfloat16"}


@pytest.mark.parametrize("experts", ["0", "1"])
def test_one_expert_or_none_is_the_dense_step(experts):
    probs = _problems("--model", f"4096,16384,{experts}", "--tokens", "3000,5000,3000")
    assert {p.shape.experts for p in probs} == {0}
    assert sorted({p.shape.m for p in probs if p.kernel != "weight_grad"}) == [3000, 5000]  # repeats once
    assert len(probs) == 10


def test_tokens_and_only_narrow_it():
    probs = _problems("--model", "2688,1856,8", "--tokens", "12000", "--only", "weight_grad")
    assert [(p.shape.m, p.shape.n, p.shape.k, p.shape.experts) for p in probs] == [(1856, 2688, 12000, 8),
                                                                                (2688, 1856, 12000, 8)]


@pytest.mark.parametrize("argv,needle", [
    (["--model", "2688,1856"], "expected hidden,ffn,experts"),
    (["--model", "2688,x,8"], "expected a whole number"),
    (["--model", "0,1856,8"], "must be at least 1"),
    (["--model", "2688,1856,-1"], "must be 0 or more"),
    (["--model", "2688,1856,8", "--tokens", "0"], "--tokens"),
    (["--model", "2688,1856,8", "--preset", "moe-e8"], "--model takes the place of --preset"),
    (["--model", "2690,1856,8"], "must be a multiple of 8"),
])
def test_bad_values_are_refused_before_the_sweep(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["sweep", *argv, "--simulate", "--trials", "2"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and needle in err, err


def test_a_simulated_model_sweep_runs_every_problem(capsys, tmp_path):
    out = tmp_path / "table.md"
    assert main(["sweep", "--model", "2688,1856,8", "--tokens", "3000,20000", "--simulate", "--trials", "2",
                 "--quiet", "--out", str(out)]) == 0
    table = out.read_text()
    for label in ("fc1_srelu bfloat16 M=3000 N=1856 K=2688 E=8", "fc2 bfloat16 M=20000 N=2688 K=1856 E=8",
                  "fc2_dgrad_dsrelu bfloat16 M=3000 N=1856 K=2688 E=8", "weight_grad bfloat16 M=1856 N=2688 K=20000 E=8",
                  "weight_grad bfloat16 M=2688 N=1856 K=3000 E=8"):
        assert label in table
    assert "not finished" not in table and not os.path.exists(tmp_path / "autotune_studies.journal")
