"""Fuzz-style CPU tests of the config entry points: `validate` / `validation_errors` with
values of every wrong type, and the tuned-config lookup over many generated bad YAML files.

Documented behaviour: `validate` raises ConfigError (never TypeError/AttributeError) and
`validation_errors` returns reasons; the lookup never raises on file content: a bad
file or entry is skipped with a warning on the "cute_kernels" logger naming the file, the
entry and the reason, the launch gets the default config, and nothing is written.
"""
import dataclasses
import logging
import os
import random

import pytest
import yaml

from cute_kernels import config_lookup as cl
from cute_kernels.config import ConfigError, GemmConfig, default_config, validate, validation_errors
from cute_kernels.tuned_store import ShapeKey, file_path, make_record, merge_write

FIELDS = [f.name for f in dataclasses.fields(GemmConfig)]
STR_FIELDS = {"schedule", "raster"}
# values of a wrong type for an int field / for a str field
BAD_INTS = [None, "256", "abc", [256], {"v": 256}, 256.0, 1.5, True, False, b"256", (256,), float("nan")]
BAD_STRS = [None, 1, 0.5, ["cooperative"], {"s": "n"}, True, b"n"]

TUNED = GemmConfig(tile_n=192, cluster_m=1, cluster_n=1, swizzle=4, raster="m", epi_stages=4)
SK = ShapeKey("bfloat16", 8192, 4096, 4096)
KEY = SK.key()


# ----- validate / validation_errors ---------------------------------------------------------

def _bad_configs():
    for name in FIELDS:
        for v in (BAD_STRS if name in STR_FIELDS else BAD_INTS):
            yield name, v


@pytest.mark.parametrize("name,value", list(_bad_configs()), ids=lambda v: repr(v)[:20])
def test_validate_rejects_every_wrong_field_type_with_config_error(name, value):
    cfg = dataclasses.replace(GemmConfig(), **{name: value})
    with pytest.raises(ConfigError, match=name):
        validate(cfg)
    errs = validation_errors(cfg, num_outputs=2, grouped=True)
    assert errs and all(isinstance(e, str) for e in errs) and name in errs[0]


@pytest.mark.parametrize("cfg", [None, "GemmConfig()", 3, {"tile_n": 256}, [GemmConfig()], GemmConfig])
def test_validate_of_a_non_config_is_a_config_error(cfg):
    with pytest.raises(ConfigError, match="expected a GemmConfig"):
        validate(cfg)
    assert validation_errors(cfg) == [f"expected a GemmConfig, got {type(cfg).__name__}"]


@pytest.mark.parametrize("kw", [{"arch": None}, {"arch": ["sm90"]}, {"num_outputs": "2"}, {"num_outputs": 1.0},
                                {"out_bytes": None}])
def test_validate_keyword_of_a_wrong_type_is_a_config_error(kw):
    with pytest.raises(ConfigError, match=next(iter(kw))):
        validate(GemmConfig(), **kw)


@pytest.mark.parametrize("d", [None, [("tile_n", 128)], "tile_n: 128", {"tile_q": 1}])
def test_from_dict_of_a_bad_mapping_is_a_config_error(d):
    with pytest.raises(ConfigError):
        GemmConfig.from_dict(d)


# ----- the tuned-config lookup over bad files -------------------------------------------------

@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("CUTE_KERNELS_TUNED_CONFIGS", str(tmp_path))
    cl.clear_cache()
    yield tmp_path
    cl.clear_cache()


def _good_record() -> dict:
    return make_record(SK, TUNED, time_ms=1.0, default_time_ms=1.1, device="H100", dsl_version="4.8.1",
                       date="2026-11-24", trials=24)


def _good_text() -> str:
    return yaml.safe_dump({"format": 1, "entries": {KEY: _good_record()}}, sort_keys=True)


def _snapshot(root) -> dict:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[p] = fh.read()
    return out


def _look():
    return cl.lookup_config("fc2", arch="sm90", dtype="torch.bfloat16", m=8192, n=4096, k=4096)


def _lookup_bad(root, content: bytes, caplog) -> tuple[GemmConfig, str]:
    """Write `content` as the fc2 file, look up its shape; checks nothing was written or
    raised, and that a good file read after clear_cache() is used (no stale state)."""
    path = file_path("sm90", "fc2", str(root))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content)
    before = _snapshot(root)
    cl.clear_cache()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cute_kernels"):
        cfg = _look()
    msgs = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("cute_kernels"))
    assert _snapshot(root) == before, "the lookup wrote to the tuned-configs directory"
    with open(path, "w") as f:
        f.write(_good_text())
    cl.clear_cache()
    assert _look() == TUNED
    return cfg, msgs


def _with_config_field(name, value) -> bytes:
    rec = _good_record()
    rec["config"][name] = value
    return yaml.safe_dump({"entries": {KEY: rec}}, allow_unicode=True).encode()


@pytest.mark.parametrize("name", FIELDS)
def test_lookup_skips_an_entry_with_a_wrong_typed_config_field(root, caplog, name):
    for value in (BAD_STRS if name in STR_FIELDS else BAD_INTS):
        if isinstance(value, float) and value != value:
            continue  # nan: safe_dump writes .nan, checked below as a float
        cfg, msgs = _lookup_bad(root, _with_config_field(name, value), caplog)
        assert cfg == default_config(8192, 4096, 4096), (name, value)
        assert "fc2.yaml" in msgs and KEY in msgs and name in msgs, (name, value, msgs)


def _with_record(mutate) -> bytes:
    rec = _good_record()
    mutate(rec)
    return yaml.safe_dump({"entries": {KEY: rec}}).encode()


def _set(path, value):
    def mutate(rec):
        d = rec
        for p in path[:-1]:
            d = d[p]
        d[path[-1]] = value
    return mutate


def _delete(path):
    def mutate(rec):
        d = rec
        for p in path[:-1]:
            d = d[p]
        del d[path[-1]]
    return mutate


BAD_ENTRIES = {
    **{f"shape.{f}={v!r}": (_set(("shape", f), v), f) for f in ("m", "n", "k", "experts")
       for v in (None, "8192", [8192], 8192.0, 8192.5, True, -1, {"m": 1})},
    "shape.m=0": (_set(("shape", "m"), 0), "m"),
    "shape unknown field": (_set(("shape", "batch"), 2), "unknown fields"),
    "shape is a list": (_set(("shape",), [8192, 4096, 4096]), "bad shape"),
    "shape is null": (_set(("shape",), None), "bad shape"),
    "shape missing k": (_delete(("shape", "k")), "missing"),
    "dtype null": (_set(("dtype",), None), "dtype"),
    "dtype int": (_set(("dtype",), 16), "dtype"),
    "dtype other": (_set(("dtype",), "float16"), "key does not match"),
    "config null": (_set(("config",), None), "bad config"),
    "config list": (_set(("config",), [1, 2]), "bad config"),
    "config str": (_set(("config",), "tile_n=128"), "bad config"),
    "config unknown field": (_set(("config", "tile_q"), 1), "unknown GemmConfig fields"),
    "config value cannot run": (_set(("config", "tile_n"), 100), "config cannot run"),
    "missing config": (_delete(("config",)), "missing field"),
    "missing shape": (_delete(("shape",)), "missing field"),
    "missing dtype": (_delete(("dtype",)), "missing field"),
}


@pytest.mark.parametrize("case", sorted(BAD_ENTRIES))
def test_lookup_skips_a_malformed_entry_naming_file_entry_and_reason(root, caplog, case):
    mutate, needle = BAD_ENTRIES[case]
    cfg, msgs = _lookup_bad(root, _with_record(mutate), caplog)
    assert cfg == default_config(8192, 4096, 4096)
    assert "fc2.yaml" in msgs and KEY in msgs and needle in msgs, msgs


def test_one_bad_entry_leaves_the_good_ones_in_use(root, caplog):
    bad = _good_record()
    bad["config"]["tile_n"] = "wide"
    other = ShapeKey("bfloat16", 8192, 2048, 4096)
    text = yaml.safe_dump({"entries": {KEY: _good_record(), other.key(): {**bad, "shape": other.shape_dict()}}})
    path = file_path("sm90", "fc2", str(root))
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        f.write(text)
    with caplog.at_level(logging.WARNING, logger="cute_kernels"):
        assert _look() == TUNED
    assert other.key() in caplog.text and "tile_n must be an int" in caplog.text


BAD_FILES = {
    "empty": (b"", "empty file"),
    "whitespace": (b"  \n\n", "empty file"),
    "comment only": (b"# nothing here\n", "empty file"),
    "latin-1": ("entries: {caf\u00e9: 1}\n".encode("latin-1"), "not UTF-8"),
    "utf-16": ("entries: {}\n".encode("utf-16"), "not UTF-8"),
    "random bytes": (bytes(range(128, 256)), "not UTF-8"),
    "NUL byte": (b"entries: {a: \x00}\n", "not valid YAML"),
    "unclosed flow": (b"entries: [unclosed", "not valid YAML"),
    "bad indent": (b"entries:\n  a: 1\n b: 2\n", "not valid YAML"),
    "tab indent": (b"entries:\n\ta: 1\n", "not valid YAML"),
    "python tag": (b"entries: !!python/object:os.system {}\n", "not valid YAML"),
    "duplicate anchor use": (b"entries: *missing\n", "not valid YAML"),
    "deep nesting": (b"[" * 1500, "fc2.yaml"),
    "top-level list": (b"- a\n- b\n", "expected a mapping"),
    "top-level int": (b"42\n", "expected a mapping"),
    "top-level str": (b"hello\n", "expected a mapping"),
    "entries is a list": (b"entries: [1, 2]\n", "expected a mapping"),
    "entries is a str": (b"entries: none\n", "expected a mapping"),
    "no entries key": (b"format: 1\n", "no 'entries' mapping"),
    "entry is a list": (f"entries: {{{KEY}: [1, 2]}}\n".encode(), "expected a mapping"),
    "entry is null": (f"entries: {{{KEY}: null}}\n".encode(), "expected a mapping"),
    "entry key an int": (b"entries: {1: {}}\n", "key must be a string"),
    "entry key a list": (b"entries: {[1, 2]: {}}\n", "not valid YAML"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_lookup_falls_back_on_an_unreadable_file_with_a_named_warning(root, caplog, case):
    content, needle = BAD_FILES[case]
    cfg, msgs = _lookup_bad(root, content, caplog)
    assert cfg == default_config(8192, 4096, 4096)
    assert "fc2.yaml" in msgs and needle in msgs, msgs


def test_lookup_falls_back_when_the_file_is_a_directory(root, caplog):
    os.makedirs(file_path("sm90", "fc2", str(root)))
    with caplog.at_level(logging.WARNING, logger="cute_kernels"):
        assert _look() == default_config(8192, 4096, 4096)
    assert "fc2.yaml" in caplog.text and "cannot be read" in caplog.text


def test_lookup_survives_random_corruptions_of_a_good_file(root, caplog):
    """Byte flips, truncations, deletions and duplications of a good file: every lookup
    returns the tuned config or the default, never raises, and writes nothing."""
    rng = random.Random(20)
    good = _good_text().encode()
    seen = {"tuned": 0, "default": 0}
    for _ in range(100):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            op, i = rng.randrange(4), rng.randrange(len(data))
            if op == 0:
                data[i] = rng.randrange(256)
            elif op == 1:
                del data[i:]
            elif op == 2:
                del data[i:i + rng.randint(1, 8)]
            else:
                data[i:i] = data[i:i + rng.randint(1, 8)]
            if not data:
                break
        cfg, msgs = _lookup_bad(root, bytes(data), caplog)
        if cfg == TUNED:
            seen["tuned"] += 1
        else:
            assert cfg == default_config(8192, 4096, 4096)
            seen["default"] += 1
            assert "fc2.yaml" in msgs or not msgs  # a corrupted key or shape elsewhere: just not this entry
    assert seen["default"] > 30, seen  # the corruptions did hit the entry


def test_the_fallback_warning_does_not_reach_the_last_resort_printer(root):
    """In a fresh process with no logging configured, a bad file prints nothing to stderr
    (the "cute_kernels" logger has a NullHandler); after logging.basicConfig() the warning
    shows, through the logger."""
    import subprocess
    import sys

    path = file_path("sm90", "fc2", str(root))
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        f.write("entries: [unclosed")
    prog = ("import logging, sys\n"
            "import cute_kernels\n"
            "from cute_kernels.config_lookup import clear_cache, lookup_config\n"
            "def look(): lookup_config('fc2', arch='sm90', dtype='bfloat16', m=8192, n=4096, k=4096)\n"
            "look()\n"
            "sys.stderr.write('--configured--\\n')\n"
            "logging.basicConfig(format='%(name)s %(levelname)s %(message)s')\n"
            "clear_cache()\n"
            "look()\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(__file__)),
                                                       os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", prog], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    quiet, shown = r.stderr.split("--configured--\n")
    assert quiet == ""
    assert shown.startswith("cute_kernels.config WARNING ignoring tuned configs") and "fc2.yaml" in shown


# ----- config= of the GEMM entry points -------------------------------------------------------

@pytest.mark.parametrize("name,value", [(n, v) for n, v in _bad_configs() if isinstance(v, (list, dict, float, str))][:24],
                         ids=lambda v: repr(v)[:20])
def test_gemm_config_argument_of_a_wrong_type_is_an_input_error(name, value):
    from cute_kernels import InputError, checks

    with pytest.raises(InputError, match=f"config: {name}"):
        checks.check_config(dataclasses.replace(GemmConfig(), **{name: value}))
    with pytest.raises(InputError, match="expected a GemmConfig"):
        checks.check_config({"tile_n": 128})
    checks.check_config(None)
    checks.check_config(GemmConfig())


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", [GemmConfig(tile_n=[128]), GemmConfig(tile_n=128.0), "GemmConfig()"], ids=repr)
def test_gemm_entry_points_reject_a_wrongly_typed_config(cfg):
    import torch

    from cute_kernels import InputError, fc1_srelu, fc2, weight_grad

    x = torch.randn(256, 128, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(256, 128, device="cuda", dtype=torch.bfloat16)
    for call in (lambda: fc2(x, w, config=cfg), lambda: fc1_srelu(x, w, config=cfg),
                 lambda: weight_grad(x, x, config=cfg)):
        with pytest.raises(InputError, match="config"):
            call()
