"""Sanity check of the CPU fp32 peak used for "% of peak": the best SGEMM rate torch reaches here.

    .venv/bin/python scripts/gemm_peak.py

A tuned SGEMM runs at 85-95 % of a core's FMA peak, so its rate bounds the real peak from below;
compare it with sedeploy.timing.cpu_peak_flops() (clock x cores x FMA units x lanes x 2).
"""
import time

import torch

from sedeploy.timing import cpu_peak_flops

n = 2048
a, b = torch.randn(n, n), torch.randn(n, n)
for _ in range(3):
    a @ b
best = 0.0
for _ in range(10):
    t = time.perf_counter()
    a @ b
    best = max(best, 2 * n ** 3 / (time.perf_counter() - t))
peak = cpu_peak_flops(torch.get_num_threads())
print(f"torch SGEMM {n}x{n}, {torch.get_num_threads()} threads: best {best / 1e9:.0f} GFLOP/s")
an, bn = a.numpy(), b.numpy()
best_np = 0.0
for _ in range(10):
    t = time.perf_counter()
    an @ bn
    best_np = max(best_np, 2 * n ** 3 / (time.perf_counter() - t))
print(f"numpy SGEMM {n}x{n}: best {best_np / 1e9:.0f} GFLOP/s")
best = max(best, best_np)
print(f"estimated peak: {peak['peak_flops'] / 1e9:.0f} GFLOP/s ({peak['formula']}); "
      f"SGEMM reaches {100 * best / peak['peak_flops']:.0f} % of it")
