"""A stand-in runner and timer for trying the tuner without a GPU (`--simulate`).

Times come from a fixed synthetic cost model of the config, not from hardware; the
CLI names their studies "simulated/..." (in memory, or autotune_simulated.journal with
--workers) and never writes their winners to tuned_configs/.  `--simulate-delay S` makes each
timed trial sleep, so worker faults can be staged (kill -9 mid-trial).  Used by the CPU tests
of the CLI and of the multi-worker path.
"""
from __future__ import annotations

import time


def simulated_cost_ms(cfg) -> float:
    t = 1.0 + {128: 0.3, 192: 0.1, 256: 0.0}.get(cfg.tile_n, 0.5)
    t += 0.2 if cfg.schedule == "pingpong" else 0.0
    t += {(1, 1): 0.15, (1, 2): 0.05, (2, 1): 0.0}.get((cfg.cluster_m, cfg.cluster_n), 0.3)
    t += abs(cfg.swizzle - 4) * 0.01 + (0.02 if cfg.raster == "m" else 0.0) + (cfg.epi_stages - 2) * 0.005
    return t


class SimulatedRunner:
    def __init__(self, problem):
        self.problem = problem

    def prepare(self, cfg):
        pass

    def check(self, cfg) -> float:
        return 0.0

    def timed(self, cfg):
        return cfg


def simulated_timer(fn) -> float:
    return simulated_cost_ms(fn)


def make_simulated_timer(delay_s: float = 0.0):
    """The cost-model timer; each call sleeps `delay_s` first (a trial that takes time)."""
    if not delay_s:
        return simulated_timer

    def timer(fn) -> float:
        time.sleep(delay_s)
        return simulated_cost_ms(fn)

    return timer
