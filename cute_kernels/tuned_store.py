"""The tuned-config files: `tuned_configs/<arch>/<kernel>.yaml`.

One file per (arch, kernel); inside, `entries` maps an entry key
"<dtype>/<dense|grouped>/m<M>_n<N>_k<K>[_e<E>]" (dtype: the operands' precision,
`registry.dtype_key`: "bfloat16", or for the FP8 kernels "float8_e4m3fn" and
"float8_e5m2+float8_e4m3fn" when B's format differs from A's) to a record: the config, the shape,
dtype, measured time, default-config time, speedup, how they were timed (burst or
sustained), device, DSL version, date.
Written by `python -m autotune sweep`, read by `cute_kernels.config_lookup`.
Files are YAML with sorted keys so diffs stay small; merging keeps other entries.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass

import yaml

from . import archs
from .config import ConfigError, GemmConfig
from .registry import get_kernel

FORMAT_VERSION = 1


class TunedConfigError(ValueError):
    """A tuned-config file or entry that cannot be used; the message names both."""


@dataclass(frozen=True)
class ShapeKey:
    dtype: str  # "bfloat16" | "float16" | FP8: registry.dtype_key ("float8_e4m3fn", "float8_e5m2+float8_e4m3fn")
    m: int
    n: int
    k: int
    experts: int = 0  # 0: dense

    @property
    def grouped(self) -> bool:
        return self.experts > 0

    def key(self) -> str:
        e = f"_e{self.experts}" if self.experts else ""
        return f"{self.dtype}/{'grouped' if self.grouped else 'dense'}/m{self.m}_n{self.n}_k{self.k}{e}"

    def shape_dict(self) -> dict:
        return {"m": self.m, "n": self.n, "k": self.k, "experts": self.experts}


def default_root() -> str:
    """tuned_configs/ of the installed package (or the checkout)."""
    env = os.environ.get("CUTE_KERNELS_TUNED_CONFIGS")
    if env:
        return env
    import tuned_configs

    return str(tuned_configs.root())


def file_path(arch: str, kernel: str, root: str | None = None) -> str:
    return os.path.join(root or default_root(), arch, f"{kernel}.yaml")


def read_file(path: str, *, allow_empty: bool = True) -> dict:
    """The `entries` of one file ({} when absent).  Raises TunedConfigError naming the file
    for anything unreadable: not UTF-8, not YAML, not a mapping with an `entries` mapping
    (an empty file too unless `allow_empty`: the writer starts from one, the lookup warns)."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except UnicodeDecodeError as e:
        raise TunedConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except yaml.YAMLError as e:
        raise TunedConfigError(f"{path}: not valid YAML: {e}") from None
    except (OSError, ValueError, RecursionError) as e:  # a directory, no permission, NUL bytes, absurd nesting
        raise TunedConfigError(f"{path}: cannot be read: {type(e).__name__}: {e}") from None
    if doc is None:
        if allow_empty:
            return {}
        raise TunedConfigError(f"{path}: empty file (no entries)")
    if not isinstance(doc, dict) or not isinstance(doc.get("entries", {}), dict):
        raise TunedConfigError(f"{path}: expected a mapping with an 'entries' mapping at the top level, "
                               f"got {_kind(doc)}")
    if "entries" not in doc and not allow_empty:
        raise TunedConfigError(f"{path}: no 'entries' mapping at the top level (keys: {sorted(map(str, doc))})")
    return doc.get("entries") or {}


def _kind(doc) -> str:
    if isinstance(doc, dict):
        return f"'entries' of type {type(doc['entries']).__name__}"
    return f"a {type(doc).__name__}"


SHAPE_FIELDS = ("m", "n", "k", "experts")


def _shape_int(shape: dict, name: str) -> int:
    v = shape.get(name, 0) if name == "experts" else shape[name]
    if type(v) is not int:  # not a bool, a float or a numeric string
        raise TunedConfigError(f"shape {name} must be an int, got {type(v).__name__} {v!r}")
    if v < (0 if name == "experts" else 1):
        raise TunedConfigError(f"shape {name} must be {'>= 0' if name == 'experts' else '>= 1'}, got {v}")
    return v


def parse_entry(path: str, key, record, *, kernel: str = "fc2") -> tuple[ShapeKey, GemmConfig]:
    """Check one record and return its shape and config; TunedConfigError names file and entry.

    Every field the lookup reads is type-checked (ints are ints, not floats, bools or
    strings); unknown shape or config fields are errors, other record fields are kept as
    information (the writer may add some)."""
    where = f"{path}: entry {key!r}"
    if not isinstance(key, str):
        raise TunedConfigError(f"{where}: the entry key must be a string, got {type(key).__name__}")
    if not isinstance(record, dict):
        raise TunedConfigError(f"{where}: expected a mapping, got {type(record).__name__}")
    missing = [f for f in ("config", "shape", "dtype") if f not in record]
    if missing:
        raise TunedConfigError(f"{where}: missing field(s) {missing}")
    shape, dtype = record["shape"], record["dtype"]
    if not isinstance(dtype, str):
        raise TunedConfigError(f"{where}: dtype must be a string, got {type(dtype).__name__} {dtype!r}")
    if not isinstance(shape, dict):
        raise TunedConfigError(f"{where}: bad shape {shape!r} (expected a mapping of {SHAPE_FIELDS})")
    unknown = sorted(map(str, set(shape) - set(SHAPE_FIELDS)))
    if unknown:
        raise TunedConfigError(f"{where}: bad shape {shape!r} (unknown fields {unknown})")
    try:
        sk = ShapeKey(dtype, *(_shape_int(shape, f) for f in SHAPE_FIELDS))
    except KeyError as e:
        raise TunedConfigError(f"{where}: bad shape {shape!r} (missing {e})") from None
    except TunedConfigError as e:
        raise TunedConfigError(f"{where}: bad shape {shape!r} ({e})") from None
    if sk.key() != key:
        raise TunedConfigError(f"{where}: key does not match its shape/dtype (expected {sk.key()!r})")
    config = record["config"]
    if not isinstance(config, dict):
        raise TunedConfigError(f"{where}: bad config: expected a mapping, got {type(config).__name__} {config!r}")
    folder = os.path.basename(os.path.dirname(path))
    arch = folder if folder.startswith("sm") else "sm90"
    # the config type of the folder's arch (an unknown arch's rules say so below)
    config_type = archs.config_class(arch) if arch in archs.ARCHS else GemmConfig
    try:
        cfg = config_type.from_dict({str(k): v for k, v in config.items()})
    except (ConfigError, TypeError, ValueError) as e:
        raise TunedConfigError(f"{where}: bad config: {e}") from None
    spec = get_kernel(kernel)
    try:
        spec.check_dtype(sk.dtype)
    except ValueError as e:
        raise TunedConfigError(f"{where}: {e}") from None
    errs = spec.config_errors(cfg, sk.experts, arch=arch)
    if errs:
        raise TunedConfigError(f"{where}: config cannot run: {'; '.join(errs)}")
    return sk, cfg


def merge_write(path: str, new_entries: dict) -> dict:
    """Merge `new_entries` (key -> record) into the file at `path`, keeping the others.

    Safe against concurrent writers (sweep workers finishing different shapes at once, on one
    host or on a shared file system with working locks): the read-merge-write runs under a file
    lock (`.<name>.lock` beside the file), and the new text goes to a temporary file in the same
    folder that replaces the old one atomically, so readers see the old file or the new one."""
    import filelock

    d = os.path.dirname(path) or "."
    os.makedirs(d, exist_ok=True)
    with filelock.FileLock(os.path.join(d, f".{os.path.basename(path)}.lock")):
        entries = read_file(path)
        entries.update(new_entries)
        doc = {"format": FORMAT_VERSION, "entries": {k: _ordered(v) for k, v in sorted(entries.items())}}
        fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write("# Tuned GEMM configs, written by `python -m autotune sweep`; one entry per shape.\n")
                yaml.safe_dump(doc, f, sort_keys=True, default_flow_style=False)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    return entries


def _ordered(record: dict) -> dict:
    return {k: record[k] for k in sorted(record)}


def make_record(sk: ShapeKey, cfg: GemmConfig, *, time_ms: float, default_time_ms: float, device: str,
                dsl_version: str, date: str, trials: int, timing: str = "burst") -> dict:
    """One entry.  `timing` says how the times were taken (autotune.timing.make_timer): "burst"
    (short batches at boost clocks) or "sustained" (back to back at the power limit)."""
    return {
        "timing": timing,
        "config": cfg.to_dict(),
        "shape": sk.shape_dict(),
        "dtype": sk.dtype,
        "time_ms": round(float(time_ms), 5),
        "default_time_ms": round(float(default_time_ms), 5),
        "speedup": round(float(default_time_ms) / float(time_ms), 4),
        "device": device,
        "dsl_version": dsl_version,
        "date": date,
        "trials": int(trials),
    }
