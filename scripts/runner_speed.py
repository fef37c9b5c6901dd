"""Time per batch of an export set's artifacts on their runners against onnxruntime (model.onnx), interleaved
in one process on the same threads (core.timing.interleaved: a burst of load hits every candidate alike), with
each candidate's max abs difference from onnxruntime per output on the same batch.

    PYTHONPATH=src .venv/bin/python scripts/runner_speed.py --set s --files model.openvino.xml \
        [--batch-sizes 1,64] [--threads 2] [--rounds 30] [--openvino-default]

--openvino-default adds OpenVINO as compiled without sedeploy's f32 hint (bf16 on AVX512-BF16/AMX CPUs), to
show what the hint costs; it is a measurement, never a runner option.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

from sedeploy.core.hardware import cpu_name
from sedeploy.core.timing import interleaved
from sedeploy.runtime.runners import load_runner, supported_suffixes

ap = argparse.ArgumentParser()
ap.add_argument("--set", required=True, help="export folder holding model.onnx and the other artifacts")
ap.add_argument("--files", required=True, help="comma-separated artifact file names in the set")
ap.add_argument("--batch-sizes", default="1,64")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--rounds", type=int, default=30)
ap.add_argument("--openvino-default", action="store_true")
a = ap.parse_args()
d = Path(a.set)


def load(name: str):
    return load_runner(supported_suffixes()[Path(name).suffix], d / name, provider="cpu", threads=a.threads)


runners = {"onnxruntime": load("model.onnx")}
runners.update({f: load(f) for f in a.files.split(",")})
if a.openvino_default:
    import sedeploy.runtime.runners.openvino as rn
    rn.FP32_CONFIG = {}
    xml = next(f for f in a.files.split(",") if f.endswith(".xml"))
    runners["openvino, default precision"] = load(xml)
    print(f"openvino default precision here: {runners['openvino, default precision'].inference_precision}")
print(f"{cpu_name()}, {a.threads} threads, python {sys.version.split()[0]}")
for b in (int(s) for s in a.batch_sizes.split(",")):
    x = np.random.default_rng(b).standard_normal((b, *runners["onnxruntime"].info.input_size)).astype(np.float32)
    ref = runners["onnxruntime"].run(x)
    per_round = max(1, 64 // b)
    res = interleaved({k: (lambda r=r: r.run(x)) for k, r in runners.items()}, rounds=a.rounds, per_round=per_round)
    base = res["onnxruntime"]["p50_ms"]
    for k, r in runners.items():
        out = r.run(x)
        diff = ", ".join(f"{n} {float(np.abs(out[n] - ref[n]).max()):.2g}" for n in ref)
        print(f"b{b:<3} {k:<30} p50 {res[k]['p50_ms']:8.3f} ms  {b / res[k]['p50_ms'] * 1e3:8,.0f} img/s  "
              f"time x{res[k]['p50_ms'] / base:.2f}  |diff vs ort| {diff}")
