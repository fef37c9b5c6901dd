"""Latency measurement: warm-up, then repeated timed runs; percentiles. numpy only (no torch).

Timings on a shared, noisy machine are compared as ratios taken in one run; `interleaved` runs
the candidates in alternating rounds so that a burst of load hits all of them alike.
"""
from __future__ import annotations

import os
import platform
import time
from typing import Callable, Dict, Optional

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


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_peak_flops(cores: Optional[int] = None) -> Dict[str, object]:
    """fp32 peak = cores x clock x FMA units x SIMD lanes x 2 (an FMA is 2 FLOPs).

    Clock: /proc/cpuinfo's current MHz (the sustained all-core clock on these VMs). Lanes: 16 with
    AVX-512F, 8 with AVX2, else 4. FMA units: 2 per core (Zen 4/5 and Intel server cores issue two
    vector FMAs per cycle); an assumption stated with the figure.
    """
    cores = cores or os.cpu_count() or 1
    mhz, flags = 0.0, ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz") and not mhz:
                    mhz = float(line.split(":", 1)[1])
                elif line.startswith("flags") and not flags:
                    flags = line
    except OSError:
        pass
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    fma_units = 2
    peak = cores * mhz * 1e6 * fma_units * lanes * 2
    return {"cores": cores, "ghz": mhz / 1e3, "fma_units": fma_units, "lanes": lanes, "peak_flops": peak,
            "formula": f"{cores} cores x {mhz / 1e3:.2f} GHz x {fma_units} FMA units x {lanes} fp32 lanes x 2"}
