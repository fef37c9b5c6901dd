"""What machine is this: CPU name, the instruction-set features that decide int8 and fp32 speed,
the GPU, and the fp32 peak (nominal from the clock, measured with a short SGEMM). numpy only.

Why these features: fp32 convolutions and GEMMs run on FMA units whose width is AVX2 (8 lanes)
or AVX-512 (16); int8 runs 4x the multiply-adds per instruction only with VNNI (AVX512-VNNI or
AVX-VNNI: one vpdpbusd), about 2x without it (vpmaddubsw + vpmaddwd + vpaddd on AVX2), and more
with AMX tiles. So the same int8 model is 2x fp32 on one server and no faster on another
(docs/NOTES-int8.md). Flags come from /proc/cpuinfo (Linux); elsewhere the features read unknown.
"""
from __future__ import annotations

import os
import platform
import time
from typing import Dict, Optional, Set

# display name -> /proc/cpuinfo flags (any of them)
ISA_FEATURES = {
    "AVX2": ("avx2",),
    "AVX-512F": ("avx512f",),
    "AVX512-VNNI": ("avx512_vnni", "avx512vnni"),
    "AVX-VNNI": ("avx_vnni",),
    "AMX": ("amx_tile", "amx_int8"),
}


def _cpuinfo_field(name: str) -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_name() -> str:
    return _cpuinfo_field("model name") or platform.processor() or "unknown CPU"


def cpu_flags() -> Set[str]:
    """The first CPU's flags from /proc/cpuinfo (empty set where there is none)."""
    return set(_cpuinfo_field("flags").split())


def isa_features(flags: Optional[Set[str]] = None) -> Dict[str, Optional[bool]]:
    """{"AVX2": True, "AVX-512F": False, ...}; None for every feature when flags cannot be read."""
    flags = cpu_flags() if flags is None else flags
    return {k: (any(f in flags for f in v) if flags else None) for k, v in ISA_FEATURES.items()}


def isa_summary(flags: Optional[Set[str]] = None) -> str:
    """'AVX2 yes, AVX-512F no, AVX512-VNNI no, AVX-VNNI no, AMX no'."""
    word = {True: "yes", False: "no", None: "unknown"}
    return ", ".join(f"{k} {word[v]}" for k, v in isa_features(flags).items())


def has_vnni(flags: Optional[Set[str]] = None) -> bool:
    f = isa_features(flags)
    return bool(f["AVX512-VNNI"] or f["AVX-VNNI"] or f["AMX"])


def has_bf16(flags: Optional[Set[str]] = None) -> bool:
    """bf16 dot products in hardware (AVX512-BF16 or AMX-BF16); elsewhere torch emulates bf16 in fp32, slower."""
    flags = cpu_flags() if flags is None else flags
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def ort_device() -> Optional[str]:
    """onnxruntime's own view of its devices ('CPUExecutionProvider on CPU AMD'), where it has one."""
    try:
        import onnxruntime as ort
        devs = ort.get_ep_devices()
    except Exception:  # noqa: BLE001 - older onnxruntime: no device API
        return None
    return "; ".join(f"{d.ep_name} on {str(d.device.type).split('.')[-1]} {d.device.vendor}" for d in devs) or None


def gpu_name() -> Optional[str]:
    """The CUDA GPU's name via torch when torch is already imported (bench), else None."""
    import sys
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001
        pass
    return None


def cpu_peak_flops(cores: Optional[int] = None) -> Dict[str, object]:
    """Nominal fp32 peak = cores x clock x FMA units x SIMD lanes x 2 (an FMA is 2 FLOPs).

    Clock: /proc/cpuinfo's "cpu MHz", which a VM reports as the hypervisor gives it (often the
    base clock); it is not measured, so the real peak may be higher (boost) or lower (throttled):
    `sgemm_flops` gives a measured lower bound. Lanes: 16 with AVX-512F, 8 with AVX2, else 4.
    FMA units: 2 per core (Zen 3/4/5 and Intel server cores issue two vector FMAs per cycle), an
    assumption stated with the figure.
    """
    cores = cores or os.cpu_count() or 1
    try:
        mhz = float(_cpuinfo_field("cpu MHz") or 0)
    except ValueError:
        mhz = 0.0
    flags = cpu_flags()
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    fma_units = 2
    peak = cores * mhz * 1e6 * fma_units * lanes * 2
    return {"cores": cores, "ghz": mhz / 1e3, "fma_units": fma_units, "lanes": lanes, "peak_flops": peak,
            "formula": f"{cores} cores x {mhz / 1e3:.2f} GHz (cpuinfo, not measured) x {fma_units} FMA units x "
                       f"{lanes} fp32 lanes x 2"}


def sgemm_flops(threads: Optional[int] = None, n: int = 1024, min_time: float = 0.3) -> Dict[str, object]:
    """Measured fp32 rate: the best of repeated n x n SGEMMs by numpy's BLAS and by torch (when
    torch is already imported), in FLOP/s, on `threads` threads (default: all cores). A tuned SGEMM
    runs at 85-95 % of the FMA peak, so this is a lower bound of the real peak that means the
    same on every CPU (and shows a clock above the one /proc/cpuinfo states, when it runs faster).

    numpy's BLAS reads its thread count from the environment once, at start-up, so its SGEMM runs
    in a short child process with OPENBLAS/OMP/MKL_NUM_THREADS set; torch honours set_num_threads.
    """
    import sys
    threads = threads or os.cpu_count() or 1
    results = {}
    rate = _numpy_rate_in_child(threads, n, min_time)
    if rate:
        results["numpy"] = rate
    torch = sys.modules.get("torch")
    if torch is not None:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            a, b = torch.randn(n, n), torch.randn(n, n)
            results["torch"] = _best_rate(lambda: a @ b, 2.0 * n ** 3, min_time)
        finally:
            torch.set_num_threads(before)
    if not results:
        raise RuntimeError("no SGEMM could be measured (numpy's child process failed and torch is not loaded)")
    best = max(results, key=results.get)
    return {"flops": results[best], "library": best, "by_library": results, "n": n, "threads": threads}


_NUMPY_SGEMM = """
import sys, time
import numpy as np
n, min_time = int(sys.argv[1]), float(sys.argv[2])
rng = np.random.default_rng(0)
a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
a @ b
best, runs, start = 0.0, 0, time.perf_counter()
while runs < 5 or time.perf_counter() - start < min_time:
    t = time.perf_counter()
    a @ b
    best = max(best, 2.0 * n ** 3 / (time.perf_counter() - t))
    runs += 1
print(best)
"""


def _numpy_rate_in_child(threads: int, n: int, min_time: float) -> Optional[float]:
    import subprocess
    import sys
    env = {**os.environ, **{k: str(threads) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                                      "MKL_NUM_THREADS")}}
    try:
        out = subprocess.run([sys.executable, "-c", _NUMPY_SGEMM, str(n), str(min_time)], env=env,
                             capture_output=True, text=True, timeout=120)
        return float(out.stdout.strip()) if out.returncode == 0 else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def _best_rate(fn, flop: float, min_time: float, min_runs: int = 5) -> float:
    fn()                                                         # warm-up: threads, caches
    best, runs, start = 0.0, 0, time.perf_counter()
    while runs < min_runs or time.perf_counter() - start < min_time:
        t = time.perf_counter()
        fn()
        best = max(best, flop / (time.perf_counter() - t))
        runs += 1
    return best
