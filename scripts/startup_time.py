"""End-to-end time of `sedeploy infer one.png` (process start to exit) vs the same job in a process
that imports torch first, interleaved, N runs each.

    .venv/bin/python scripts/startup_time.py --model runs/fm/model.onnx --image img.png [--runs 10]
"""
import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--image", required=True)
ap.add_argument("--runs", type=int, default=10)
a = ap.parse_args()
exe = Path(sys.executable).parent / "sedeploy"
plain = [str(exe), "infer", a.image, "--model", a.model]
with_torch = [sys.executable, "-c", "import torch, sys; from sedeploy.cli import main; main(sys.argv[1:])",
              "infer", a.image, "--model", a.model]
times = {"sedeploy infer": [], "same + import torch": []}
for _ in range(a.runs):
    for name, cmd in (("sedeploy infer", plain), ("same + import torch", with_torch)):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times[name].append(time.perf_counter() - t)
for name, ts in times.items():
    print(f"{name:<22} median {statistics.median(ts):.3f} s  min {min(ts):.3f} s  max {max(ts):.3f} s  ({a.runs} runs)")
r = statistics.median(times["same + import torch"]) / statistics.median(times["sedeploy infer"])
print(f"torch-importing path / sedeploy infer: x{r:.2f}")
