"""A sweep worker: the trials of shared studies claimed under the storage's lock, each shape
finished (re-measured, its YAML entry written) once, by whichever worker gets there first.

Every worker of a sweep (one process per GPU, on one host or many) runs `Worker.run` over the
same shapes against the same storage.  For each shape's study:

- claim (under `Store.claim()`): reap dead workers' trials (autotune/heartbeat.py), count the
  COMPLETE + PRUNED + RUNNING trials, and `ask` only while that count is below the budget
  (`--trials`; with --grid, or a --trials at least the space's size, every config is enqueued
  and the study ends when its distinct configs cover the space); `ask` pops enqueued trials (the default, `--try`
  points, grid points, retries of dead workers' trials) before sampling new ones.  The lock
  makes count-then-ask atomic: no trial is timed by two workers, the budget is never overrun,
  and FAIL trials (retried) do not count, so the study ends with exactly `budget` COMPLETE +
  PRUNED trials.
- when the budget is spent a worker moves on to the next shape rather than idling on the last
  trials of others; once a study has no RUNNING trial left the first worker to see it claims
  its finish (a study attribute, kept alive by the heartbeat), re-measures the winner on its
  GPU, writes the YAML entry (tuned_store.merge_write: file lock, atomic rename) and records
  the result in the study attribute RESULT_ATTR, which every other worker and the launching
  process read.  A worker leaves only when every shape is finished, so the trials of a worker
  that died are reaped, retried and finished by the survivors; a rerun resumes the same way.
"""
from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from dataclasses import dataclass, field

import optuna
from optuna.trial import TrialState

from . import tuner
from .problem import Problem

log = logging.getLogger("autotune")
RESULT_ATTR = "autotune:result"
FINISHING_ATTR = "autotune:finishing"


def worker_id() -> str:
    """host:pid of this process (computed per call: a forked child is its own worker)."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class SweepSpec:
    """What every worker of one sweep agrees on."""

    arch: str
    trials: int
    grid: bool = False
    seed: int = 0
    tries: list = field(default_factory=list)
    simulated: bool = False
    write: bool = True
    root: str | None = None
    device: str = ""
    dsl_version: str = ""
    compile_workers: int = 1
    progress: bool = False
    constant_liar: bool = False
    candidates: int = 0  # FP8 kernels: also enqueue this many of the fixed candidates (tuner.candidate_tries)

    def tries_of(self, prob: Problem) -> list:
        """The overrides enqueued after `prob`'s default: --try's, then its fixed candidates."""
        return list(self.tries) + (tuner.candidate_tries(prob, self.candidates, self.arch) if self.candidates else [])

    def budget(self, prob: Problem) -> int:
        """Trials a finished study of `prob` holds (its space's size when --trials covers it)."""
        return tuner.study_budget(self.trials, self.grid, space_kw=prob.space_kw)

    def spent(self, trials, prob: Problem) -> bool:
        return tuner.budget_spent(trials, self.trials, self.grid, space_kw=prob.space_kw)


def _count(trials, *states) -> int:
    return sum(1 for t in trials if t.state in states)


class Worker:
    def __init__(self, store, spec: SweepSpec, runner_factory, timer, *, index: int = 0, poll_s: float = 0.5):
        self.store, self.spec = store, spec
        self.runner_factory, self.timer = runner_factory, timer
        self.index, self.poll_s = index, poll_s
        self._studies: dict = {}
        self._runner = (None, None)  # (problem, runner): one shape's inputs at a time
        self.told = 0

    # --- storage side, all under the claim lock
    def study(self, prob: Problem):
        if prob not in self._studies:
            with self.store.claim():  # creating the study and enqueuing its first trials happen once
                self._studies[prob] = tuner.open_study(
                    prob, self.spec.arch, self.store, grid=self.spec.grid, seed=self.spec.seed + self.index,
                    tries=self.spec.tries_of(prob), simulated=self.spec.simulated, constant_liar=self.spec.constant_liar,
                    n_trials=self.spec.trials)
        return self._studies[prob]

    def claim_trial(self, study, prob: Problem):
        """The next trial of `study` for this worker, or None when its budget is spent."""
        with self.store.claim():
            self.store.heartbeat.reap(study)
            trials = study.get_trials(deepcopy=False)
            if self.spec.spent(trials, prob):
                return None
            with warnings.catch_warnings():  # "heartbeat ... used with Study.optimize": we beat ourselves
                warnings.simplefilter("ignore", UserWarning)
                trial = study.ask()
            self.store.heartbeat.hold_trial(study, trial._trial_id)
            trial.set_user_attr("worker", worker_id())
            trial.set_user_attr("gpu", os.environ.get("CUDA_VISIBLE_DEVICES", ""))
        return trial

    def next_step(self, study, prob: Problem) -> str:
        """"more" (trials to claim), "wait" (others' trials running, or another worker
        finishing), "done" (finished for its current trials) or "finish" (this worker's now)."""
        with self.store.claim():
            self.store.heartbeat.reap(study)
            trials = study.get_trials(deepcopy=False)
            done = _count(trials, TrialState.COMPLETE, TrialState.PRUNED)
            running = _count(trials, TrialState.RUNNING)
            if not self.spec.spent(trials, prob):
                return "more"
            if running:
                return "wait"
            attrs = study.user_attrs
            result = attrs.get(RESULT_ATTR)
            if result is not None and result.get("trials") == done:
                return "done"
            claim = attrs.get(FINISHING_ATTR)
            if (claim and claim.get("trials") == done and claim.get("worker") != worker_id()
                    and time.time() - claim.get("beat", 0) <= self.store.heartbeat.grace_s):
                return "wait"
            study.set_user_attr(FINISHING_ATTR, {"worker": worker_id(), "beat": time.time(), "trials": done})
            return "finish"

    # --- GPU side
    def runner(self, prob: Problem):
        if self._runner[0] != prob:
            self._runner = (None, None)  # free the previous shape's inputs first
            self._runner = (prob, self.runner_factory(prob))
        return self._runner[1]

    def run_shape(self, prob: Problem) -> int:
        study = self.study(prob)
        hb = self.store.heartbeat
        first = self.claim_trial(study, prob)
        if first is None:
            return 0
        queue = [first]

        def claim():
            return queue.pop() if queue else self.claim_trial(study, prob)

        told = tuner.run_trials(study, prob, self.runner(prob), self.timer, 0, arch=self.spec.arch,
                                progress=self.spec.progress, compile_workers=self.spec.compile_workers,
                                claim=claim, release=lambda t: hb.drop_trial(t._trial_id), budget=self.spec.budget(prob))
        self.told += told
        return told

    def finish(self, prob: Problem) -> tuner.SweepResult:
        study = self.study(prob)
        key = ("finish", study.study_name)
        done = _count(study.get_trials(deepcopy=False), TrialState.COMPLETE, TrialState.PRUNED)

        def beat():
            study.set_user_attr(FINISHING_ATTR, {"worker": worker_id(), "beat": time.time(), "trials": done})

        self.store.heartbeat.hold(key, beat)
        try:
            starts = [t.datetime_start for t in study.get_trials(deepcopy=False) if t.datetime_start is not None]
            wall = (time.time() - min(starts).timestamp()) if starts else 0.0
            res = tuner.finish(study, prob, self.runner(prob), self.timer, arch=self.spec.arch,
                               write=self.spec.write and not self.spec.simulated, root=self.spec.root,
                               device=self.spec.device, dsl_version=self.spec.dsl_version, wall_s=wall,
                               skip_reason="simulated" if self.spec.simulated else "--no-write")
            study.set_user_attr(RESULT_ATTR, tuner.result_to_dict(res))
        finally:
            self.store.heartbeat.drop(key)
        return res

    def run(self, problems: list[Problem], on_result=None) -> dict:
        """Work every shape until all are finished; {problem: SweepResult}."""
        results: dict = {}
        pending = list(dict.fromkeys(problems))
        try:
            while pending:
                progressed = False
                for prob in list(pending):
                    progressed |= self.run_shape(prob) > 0
                    step = self.next_step(self.study(prob), prob)
                    if step == "more":
                        progressed = True
                        continue
                    if step == "wait":
                        continue
                    res = self.finish(prob) if step == "finish" else self.result(prob)
                    results[prob] = res
                    pending.remove(prob)
                    progressed = True
                    if on_result is not None:
                        on_result(res, finished_here=step == "finish")
                if pending and not progressed:
                    time.sleep(self.poll_s)
        finally:
            self.store.heartbeat.stop()
            self._runner = (None, None)
        return results

    def result(self, prob: Problem) -> tuner.SweepResult | None:
        return read_result(self.study(prob), prob, self.spec.arch)


def read_result(study, prob: Problem, arch: str) -> tuner.SweepResult | None:
    d = study.user_attrs.get(RESULT_ATTR)
    return None if d is None else tuner.result_from_dict(prob, arch, d)


def load_result(store, prob: Problem, spec: SweepSpec) -> tuner.SweepResult | None:
    """The recorded result of `prob`'s study in `store` (None: no such study or unfinished)."""
    name = tuner.study_name(prob, spec.arch, grid=spec.grid, simulated=spec.simulated)
    try:
        study = optuna.load_study(study_name=name, storage=store.storage)
    except KeyError:
        return None
    return read_result(study, prob, spec.arch)
