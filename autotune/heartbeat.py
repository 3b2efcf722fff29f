"""Liveness of the trials a worker holds, and what happens to those of a dead worker.

A worker holding trials (the one it times and those it compiles ahead) beats for each of them
every `interval_s` on a background thread.  Any worker, before it claims a trial, reaps: a
RUNNING trial whose last beat is older than `grace_s` belonged to a worker that died (kill -9,
a lost host): it is set to FAIL and a copy is enqueued (Optuna's RetryFailedTrialCallback, at
most `max_retry` retries of one config), so the config is still timed and the trial budget,
which counts only COMPLETE, PRUNED and RUNNING trials, comes out exact.

- RDB storage (PostgreSQL, SQLite): Optuna's own heartbeat (`heartbeat_interval`,
  `grace_period`, `heartbeat_stale_trial_callback` on RDBStorage; beats are rows stamped
  with the database server's clock); we beat and reap through its public calls because the
  tuner drives trials with ask/tell, not `Study.optimize`.
- JournalStorage: Optuna 5.0 has no heartbeat for it (JournalStorage is not a BaseHeartbeat),
  so a beat is the trial system attribute HEARTBEAT_ATTR (time.time() of the worker; the
  journal file is on one host, one clock), and the reaper here does what Optuna's does.
  A trial killed before its first beat is judged by its start time.
"""
from __future__ import annotations

import logging
import threading
import time
import warnings

import optuna
from optuna.trial import TrialState

log = logging.getLogger("autotune")
HEARTBEAT_ATTR = "autotune:heartbeat"


def retry_callback(max_retry: int):
    """Optuna's callback that enqueues a copy of a stale trial (renamed in Optuna 4.9)."""
    cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return cls(max_retry=max_retry)


class Heartbeat:
    """Beats for held items on a daemon thread; `reap(study)` fails the stale trials of others."""

    def __init__(self, interval_s: float, grace_s: float):
        self.interval_s, self.grace_s = float(interval_s), float(grace_s)
        self._held: dict = {}  # key -> zero-argument beat callable
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- what the subclasses say a beat is
    def beat_trial(self, study, trial_id: int) -> None:
        raise NotImplementedError

    def reap(self, study) -> list[int]:
        """Fail the RUNNING trials of dead workers (and enqueue their retries); their numbers."""
        raise NotImplementedError

    # --- holding
    def hold_trial(self, study, trial_id: int) -> None:
        """Beat now (the caller holds the claim lock, so no reaper sees the trial unbeaten) and
        then every interval until `drop`."""
        self.beat_trial(study, trial_id)
        self.hold(("trial", trial_id), lambda: self.beat_trial(study, trial_id))

    def hold(self, key, beat) -> None:
        with self._lock:
            self._held[key] = beat
        self._ensure_thread()

    def drop(self, key) -> None:
        with self._lock:
            self._held.pop(key, None)

    def drop_trial(self, trial_id: int) -> None:
        self.drop(("trial", trial_id))

    def _ensure_thread(self):
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="autotune-heartbeat", daemon=True)
            self._thread.start()

    def _run(self):
        while not self._stop.wait(self.interval_s):
            with self._lock:
                beats = list(self._held.values())
            for beat in beats:
                try:
                    beat()
                except optuna.exceptions.UpdateFinishedTrialError:
                    pass  # told (or reaped) between the snapshot and the beat
                except Exception as e:  # a storage hiccup: the next beat may get through
                    log.warning("heartbeat failed: %s: %s", type(e).__name__, e)

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._thread = None


class NullHeartbeat(Heartbeat):
    """In-memory studies: one process, nothing to reap."""

    def __init__(self):
        super().__init__(1.0, 2.0)

    def beat_trial(self, study, trial_id):
        pass

    def hold(self, key, beat):
        pass

    def reap(self, study):
        return []


class RdbHeartbeat(Heartbeat):
    def __init__(self, rdb_storage, interval_s: float, grace_s: float):
        super().__init__(rdb_storage.heartbeat_interval, rdb_storage.grace_period)
        self._rdb = rdb_storage

    def beat_trial(self, study, trial_id):
        self._rdb.record_heartbeat(trial_id)

    def reap(self, study):
        running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        if not running:
            return []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        failed = sorted(t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                        if t.number in running)
        if failed:
            log.warning("trials %s of %s had no heartbeat for %ss: failed, retry enqueued", failed,
                        study.study_name, self.grace_s)
        return failed


class JournalHeartbeat(Heartbeat):
    def __init__(self, interval_s: float, grace_s: float, max_retry: int = 1):
        super().__init__(interval_s, grace_s)
        self._retry = retry_callback(max_retry)

    def beat_trial(self, study, trial_id):
        study._storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

    def reap(self, study):
        storage = study._storage
        now = time.time()
        failed = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            last = t.system_attrs.get(HEARTBEAT_ATTR)
            if last is None or (t.datetime_start is not None and last < t.datetime_start.timestamp()):
                # never beaten (a retry carries its failed original's last beat)
                last = t.datetime_start.timestamp() if t.datetime_start is not None else now
            if now - last <= self.grace_s:
                continue
            try:
                if not storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                    continue
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # finished meanwhile (its worker was only slow) or reaped by another
            failed.append(t.number)
            self._retry(study, storage.get_trial(t._trial_id))
        if failed:
            log.warning("trials %s of %s had no heartbeat for %ss: failed, retry enqueued", failed,
                        study.study_name, self.grace_s)
        return failed
