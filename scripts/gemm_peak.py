"""The CPU's fp32 peak two ways: nominal (clock x cores x FMA units x lanes x 2) and measured (the best
SGEMM rate numpy's BLAS and torch's reach here), as `sedeploy bench` reports them.

    .venv/bin/python scripts/gemm_peak.py [--n 2048] [--threads 2]

A tuned SGEMM runs at 85-95 % of a core's FMA peak, so its rate bounds the real peak from below;
the nominal figure rests on the clock /proc/cpuinfo reports, which a VM may not run at.
"""
import argparse
import sys

import torch  # noqa: F401 - imported so that sgemm_flops measures torch's SGEMM as well

from sedeploy.core.hardware import cpu_name, cpu_peak_flops, isa_summary, sgemm_flops


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--min-time", type=float, default=1.0)
    a = ap.parse_args()
    peak = cpu_peak_flops(a.threads)
    s = sgemm_flops(a.threads, n=a.n, min_time=a.min_time)
    print(f"{cpu_name()}; {isa_summary()}")
    for lib, flops in s["by_library"].items():
        print(f"{lib} SGEMM {a.n}x{a.n}: best {flops / 1e9:.0f} GFLOP/s")
    print(f"nominal peak: {peak['peak_flops'] / 1e9:.0f} GFLOP/s ({peak['formula']}); the best SGEMM reaches "
          f"{100 * s['flops'] / peak['peak_flops']:.0f} % of it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
