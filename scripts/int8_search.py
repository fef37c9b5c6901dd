"""Which int8 recipe gets onnxruntime past 2x fp32 on this CPU? Measures every variant in one run.

    .venv/bin/python scripts/int8_search.py runs/fm/model.onnx [--calib 512] [--rounds 15]

For each variant: ops in the graph, top-1 accuracy on the model's test set, top-1 agreement with
fp32, and p50 latency at batch 1 and 64 interleaved with fp32 (ratio = fp32 / variant).
"""
import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from sedeploy.datasets import load_arrays, normalize_batch
from sedeploy.export.quantize import calibration_images, op_histogram, quantize_int8
from sedeploy.runtime.session import create_session, model_info
from sedeploy.timing import interleaved

HEAVY = ("Conv", "Relu", "MaxPool", "GlobalAveragePool", "Gemm")
VARIANTS = {  # name: quantize_int8 kwargs
    "qdq, every op (plain)": dict(op_types=None, float_first_block=False),
    "qoperator, every op": dict(op_types=None, fmt="qop", float_first_block=False),
    "qdq conv+gemm only": dict(op_types=("Conv", "Gemm"), float_first_block=False),
    "qdq heavy ops, SE in float": dict(op_types=HEAVY, float_first_block=False),
    "qdq heavy ops, SE + block 1 float (sedeploy)": dict(op_types=HEAVY),
    "  ... qoperator format": dict(op_types=HEAVY, fmt="qop"),
    "  ... per-tensor weights": dict(op_types=HEAVY, per_channel=False),
    "  ... s8 activations": dict(op_types=HEAVY, activation="s8"),
    "  ... + SE Mul in int8": dict(op_types=HEAVY + ("Mul",)),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--calib", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    sess, _ = create_session(Path(a.model), "cpu", a.threads)
    info = model_info(sess, Path(a.model))
    calib = calibration_images(info.meta, a.calib)
    _, xt, yt = load_arrays(info.meta["dataset"], None, "test")
    xt = normalize_batch(xt, info.mean, info.std)

    def predict(s):
        return np.concatenate([s.run(["logits"], {"input": xt[i:i + 500]})[0] for i in range(0, len(xt), 500)])

    ref = predict(sess)
    print(f"fp32: top-1 {100 * (ref.argmax(1) == yt).mean():.2f}%  ops {op_histogram(Path(a.model))}")
    sessions = {"fp32": sess}
    with tempfile.TemporaryDirectory() as d:
        for name, kw in VARIANTS.items():
            dst = Path(d) / f"v{len(sessions)}.onnx"
            try:
                quantize_int8(Path(a.model), dst, calib, **kw)
                s, _ = create_session(dst, "cpu", a.threads)
            except Exception as e:  # noqa: BLE001
                print(f"{name}: failed: {str(e).splitlines()[0][:150]}")
                continue
            lg = predict(s)
            print(f"{name}: top-1 {100 * (lg.argmax(1) == yt).mean():.2f}%  agreement "
                  f"{100 * (lg.argmax(1) == ref.argmax(1)).mean():.2f}%  ops {op_histogram(dst)}")
            sessions[name] = s
        for b in (1, 64):
            x = xt[:b]
            t = interleaved({k: (lambda s=s: s.run(None, {"input": x})) for k, s in sessions.items()},
                            rounds=a.rounds, per_round=3 if b > 8 else 10)
            print(f"\nbatch {b}: p50 ms (speed-up vs fp32)")
            for k, v in t.items():
                print(f"  {k:<36} {v['p50_ms']:8.3f}  x{t['fp32']['p50_ms'] / v['p50_ms']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
