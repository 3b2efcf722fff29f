"""Where a sweep's studies live, and the lock several workers share there.

`open_store(spec)` turns `--storage` into a `Store`:

- a journal file path (`studies.journal`, or `journal:PATH`): Optuna's JournalStorage on a
  JournalFileBackend.  Its appends are serialised by an fcntl lock (`filelock`), which the
  kernel drops when a process dies, so a worker killed with kill -9 never leaves the journal
  locked (Optuna's own symlink/open-file locks stay behind until their 30 s grace period).
  For several processes on one host (or a file system with working fcntl locks).
- an RDB URL: `postgresql://user@host:port/db` (or `postgres://`) for several hosts, through
  the PostgreSQL driver installed: psycopg 3 if present, else psycopg2 (the `[postgres]` extra;
  SQLAlchemy 2.1 alone would take `postgresql://` to mean psycopg 3); `postgresql+DRIVER://`
  names one; `sqlite:///PATH` for one host (SQLite is not made for many
  concurrent writers; the claim lock below serialises the workers' claims).
- None: in memory, one process, nothing written.

`Store.claim()` is a lock across every worker of the storage, held while a worker counts a
study's trials and asks for the next one, so no two workers take the same enqueued trial and
the trial budget is never overrun: an fcntl lock on a file beside the journal or SQLite file,
a PostgreSQL advisory lock for PostgreSQL.  `Store.heartbeat` (autotune/heartbeat.py) keeps
the trials a worker holds marked alive and fails (and retries) those of dead workers.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import threading
import warnings
from dataclasses import dataclass, field

import optuna

from .heartbeat import Heartbeat, JournalHeartbeat, NullHeartbeat, RdbHeartbeat, retry_callback

DEFAULT_STORAGE = "autotune_studies.journal"
DEFAULT_SIMULATED_STORAGE = "autotune_simulated.journal"
DEFAULT_HEARTBEAT_S = 10.0
# longer than any stretch a worker's heartbeat thread can be starved: a DSL compile holds the
# GIL for long stretches of C++ (tens of seconds on a big kernel)
DEFAULT_GRACE_S = 120.0


class StorageError(ValueError):
    """A --storage value that cannot be used; the message says why."""


class _FcntlLock:
    """An inter-process lock on `path` (fcntl on Unix, through filelock), released by the kernel
    when its holder dies.  Also a journal-file lock (Optuna calls acquire/release)."""

    def __init__(self, path: str):
        import filelock

        self._lock = filelock.FileLock(path, thread_local=False)
        self._thread = threading.RLock()

    def acquire(self) -> bool:
        self._thread.acquire()
        self._lock.acquire()
        return True

    def release(self) -> None:
        self._lock.release()
        self._thread.release()

    @contextlib.contextmanager
    def held(self):
        self.acquire()
        try:
            yield
        finally:
            self.release()


@dataclass
class Store:
    spec: str | None  # what --storage said (None: in memory)
    kind: str  # "journal" | "postgresql" | "sqlite" | "memory"
    storage: object  # what optuna.create_study takes
    heartbeat: Heartbeat
    path: str | None = None  # the journal or SQLite file
    _claim: object = field(default=None, repr=False)

    @property
    def persistent(self) -> bool:
        return self.kind != "memory"

    def describe(self) -> str:
        if self.kind == "memory":
            return "memory (nothing written)"
        return f"{self.kind} {self.path or _redact(self.spec)}"

    @contextlib.contextmanager
    def claim(self):
        """Exclusive across all workers of this storage while the block runs."""
        if self.kind == "postgresql":
            with _pg_advisory_lock(self.storage.engine):
                yield
        else:
            with self._claim.held():
                yield


def _redact(url: str) -> str:
    """The URL without its password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        return f"{scheme}://{cred.split(':', 1)[0]}@{host}"
    return url


_PG_LOCK_KEY = int.from_bytes(hashlib.sha256(b"cute_kernels.autotune.claim").digest()[:8], "big", signed=True)


@contextlib.contextmanager
def _pg_advisory_lock(engine):
    """A session-level PostgreSQL advisory lock on its own connection; the server drops it when
    the connection goes (a killed worker's socket closes)."""
    import sqlalchemy

    with engine.connect() as conn:
        conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
            conn.commit()


def storage_kind(spec: str | None) -> str:
    if spec is None or spec == ":memory:":
        return "memory"
    if spec.startswith("journal:"):
        return "journal"
    if spec.startswith("sqlite:"):
        return "sqlite"
    if spec.startswith(("postgresql:", "postgresql+", "postgres:")):
        return "postgresql"
    if "://" in spec:
        raise StorageError(f"--storage {_redact(spec)!r}: unsupported URL scheme (use a journal file path, "
                           "postgresql://... or sqlite:///...)")
    return "journal"


PG_DRIVERS = (("psycopg", "psycopg"), ("psycopg2", "psycopg2"))  # (SQLAlchemy driver name, module), preferred first


def pg_driver_url(spec: str) -> str:
    """`spec` with a driver SQLAlchemy can load: a bare `postgresql://` or `postgres://` URL gets
    the first installed driver of PG_DRIVERS (`postgresql+DRIVER://` is kept as given)."""
    import importlib.util

    scheme, rest = spec.split("://", 1) if "://" in spec else (spec.rstrip(":"), "")
    if "+" in scheme:
        return spec
    for driver, module in PG_DRIVERS:
        if importlib.util.find_spec(module) is not None:
            return f"postgresql+{driver}://{rest}"
    raise StorageError(f"--storage {_redact(spec)!r} needs a PostgreSQL driver: pip install 'cute-kernels[postgres]' "
                       "(psycopg2-binary) or psycopg")


def open_store(spec: str | None, *, heartbeat_s: float = DEFAULT_HEARTBEAT_S,
               grace_s: float = DEFAULT_GRACE_S, max_retry: int = 1, create: bool = True) -> Store:
    """The Store for `spec`.  `create=False`: raise StorageError instead of creating a missing
    journal or SQLite file (for readers such as `autotune plot`)."""
    if heartbeat_s <= 0 or grace_s <= heartbeat_s:
        raise StorageError(f"need 0 < heartbeat ({heartbeat_s}) < grace period ({grace_s})")
    kind = storage_kind(spec)
    if kind == "memory":
        return Store(None, kind, optuna.storages.InMemoryStorage(), NullHeartbeat(), _claim=_FcntlLockless())
    if kind == "journal":
        path = os.path.abspath(spec[len("journal:"):] if spec.startswith("journal:") else spec)
        _check_file(path, spec, create)
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        backend = JournalFileBackend(path, lock_obj=_FcntlLock(path + ".lock"))
        storage = JournalStorage(backend)
        return Store(spec, kind, storage, JournalHeartbeat(heartbeat_s, grace_s, max_retry), path=path,
                     _claim=_FcntlLock(path + ".claim.lock"))
    retry = retry_callback(max_retry)
    hb_kwargs = dict(heartbeat_interval=max(1, int(math.ceil(heartbeat_s))),
                     grace_period=max(2, int(math.ceil(grace_s))), heartbeat_stale_trial_callback=retry)
    if kind == "sqlite":
        path = spec.split(":///", 1)[1] if ":///" in spec else None
        if not path:
            raise StorageError(f"--storage {spec!r}: expected sqlite:///PATH")
        path = os.path.abspath(path)
        _check_file(path, spec, create)
        storage = _rdb(spec, {"connect_args": {"timeout": 120}}, hb_kwargs)
        return Store(spec, kind, storage, RdbHeartbeat(storage, heartbeat_s, grace_s), path=path,
                     _claim=_FcntlLock(path + ".claim.lock"))
    url = pg_driver_url(spec)
    try:
        import sqlalchemy

        # several workers opening a new database at once would race creating Optuna's tables
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        try:
            with _pg_advisory_lock(engine):
                storage = _rdb(url, {"pool_pre_ping": True}, hb_kwargs)
        finally:
            engine.dispose()
    except ImportError as e:
        raise StorageError(f"--storage {_redact(spec)!r}: the driver {url.split('://')[0]} is not installed ({e}); "
                           "postgresql:// takes whichever of psycopg / psycopg2 is") from None
    except Exception as e:  # sqlalchemy.exc.OperationalError and friends: server down, bad credentials
        raise StorageError(f"--storage {_redact(spec)!r}: cannot connect: {type(e).__name__}: "
                           f"{str(e).splitlines()[0][:200]}") from None
    return Store(spec, kind, storage, RdbHeartbeat(storage, heartbeat_s, grace_s))


def _rdb(url: str, engine_kwargs: dict, hb_kwargs: dict):
    with warnings.catch_warnings():  # heartbeat_interval is an experimental argument
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **hb_kwargs)


def _check_file(path: str, spec: str, create: bool):
    if os.path.isdir(path):
        raise StorageError(f"--storage {spec!r}: {path} is a folder (name a file in it)")
    if not create and not os.path.exists(path):
        raise StorageError(f"no study storage at {path} (--storage {spec!r})")
    d = os.path.dirname(path)
    if create and d and not os.path.isdir(d):
        raise StorageError(f"--storage {spec!r}: folder {d} does not exist")


class _FcntlLockless:
    """The claim lock of an in-memory store: one process, threads only."""

    def __init__(self):
        self._lock = threading.RLock()

    @contextlib.contextmanager
    def held(self):
        with self._lock:
            yield
