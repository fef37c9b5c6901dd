"""Latency measurement: warm-up, then repeated timed runs; percentiles. numpy only (no torch).

Timings on a shared, noisy machine are compared as ratios taken in one run; `interleaved` runs
the candidates in alternating rounds so that a burst of load hits all of them alike.
"""
from __future__ import annotations

import time
from typing import Callable, Dict

import numpy as np


def summarize(samples_s) -> Dict[str, float]:
    a = np.asarray(samples_s, dtype=np.float64) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "runs": int(a.size)}


def measure(fn: Callable[[], object], warmup: int = 5, min_time: float = 1.0, min_runs: int = 10,
            max_runs: int = 100_000) -> Dict[str, float]:
    """Call fn `warmup` times, then until min_time seconds and min_runs calls have passed."""
    for _ in range(warmup):
        fn()
    samples = []
    start = time.perf_counter()
    while len(samples) < max_runs and (len(samples) < min_runs or time.perf_counter() - start < min_time):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return summarize(samples)


def interleaved(fns: Dict[str, Callable[[], object]], warmup: int = 5, rounds: int = 20,
                per_round: int = 5) -> Dict[str, Dict[str, float]]:
    """Alternate between candidates: `rounds` x (each candidate `per_round` calls)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            for _ in range(per_round):
                t = time.perf_counter()
                fn()
                samples[k].append(time.perf_counter() - t)
    return {k: summarize(v) for k, v in samples.items()}
