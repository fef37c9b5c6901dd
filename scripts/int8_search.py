"""Why is int8 fast on one CPU and not on another? Quantize the same model several ways, try
onnxruntime's session options, profile per operator, all timed against fp32 in one run.

    .venv/bin/python scripts/int8_search.py runs/fm/model.onnx [--calib 512] [--rounds 15] [--threads 2]
        [--only recipes,options,profile] [--profile-batch 64]

recipes:  every quantization variant (format, which ops, which layers stay fp32): ops in the graph,
          top-1 on the model's test set, agreement with fp32, p50 latency at batch 1 and 64
          interleaved with fp32 (ratio = fp32 / variant).
options:  the sedeploy int8 model (model.int8.onnx beside the model, else made here) under session
          options that change int8 kernels or layout (NHWC transformer off, x64quantprecision, spinning
          off, 1 thread), each with fp32 under the same options.
profile:  onnxruntime's profiler on fp32 and int8 at --profile-batch: median ms per run by operator
          type, and the operators of the optimized graph (layout transposes, NHWC kernels).
Findings and history: docs/NOTES-int8.md.
"""
import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort

from sedeploy.core.datasets import normalize_batch
from sedeploy.core.arrays import load_arrays
from sedeploy.export.quantize import INT8_OP_TYPES, calibration_images, op_histogram, quantize_int8
from sedeploy.core.hardware import cpu_name, isa_summary
from sedeploy.runtime.runners.ort import create_session, session_info, session_options
from sedeploy.core.timing import interleaved

HEAVY = INT8_OP_TYPES
RECIPES = {  # name: quantize_int8 kwargs
    "qdq, every op incl. block 1 and SE (whole graph NHWC)": dict(op_types=None, float_first_block=False),
    "qoperator, every op": dict(op_types=None, fmt="qop", float_first_block=False),
    "qdq conv+gemm only": dict(op_types=("Conv", "Gemm"), float_first_block=False),
    "qdq heavy ops, SE in float": dict(op_types=HEAVY, float_first_block=False),
    "qdq heavy ops, SE + block 1 float (sedeploy)": dict(op_types=HEAVY),
    "  ... qoperator format": dict(op_types=HEAVY, fmt="qop"),
    "  ... per-tensor weights": dict(op_types=HEAVY, per_channel=False),
    "  ... s8 activations": dict(op_types=HEAVY, activation="s8"),
    "  ... + SE Mul in int8": dict(op_types=HEAVY + ("Mul",)),
    "  ... classifier Gemm in fp32 (convs int8)": dict(op_types=("Conv", "Relu", "MaxPool", "GlobalAveragePool")),
    "  ... only the classifier Gemm int8": dict(op_types=("Gemm",)),
}
OPTIONS = {  # name: (session config entries, threads override or None)
    "default (all optimizations)": ({}, None),
    "NHWC transformer off": ({"optimization.disable_specified_optimizers": "NhwcTransformer"}, None),
    "x64quantprecision=1 (u8u8, no saturation)": ({"session.x64quantprecision": "1"}, None),
    "spinning off": ({"session.intra_op.allow_spinning": "0"}, None),
    "1 thread": ({}, 1),
}


def session(path: Path, threads, config=None, profile_prefix=None):
    so = session_options(threads)
    for k, v in (config or {}).items():
        so.add_session_config_entry(k, v)
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def speed_table(sessions: dict, xt: np.ndarray, rounds: int, batches=(1, 64)) -> None:
    for b in batches:
        x = xt[:b]
        t = interleaved({k: (lambda s=s: s.run(None, {"input": x})) for k, s in sessions.items()},
                        rounds=rounds, per_round=3 if b > 8 else 10)
        print(f"\nbatch {b}: p50 ms (speed-up vs fp32)")
        for k, v in t.items():
            print(f"  {k:<56} {v['p50_ms']:8.3f}  x{t['fp32']['p50_ms'] / v['p50_ms']:.2f}")


def recipes(model: Path, calib, xt, yt, ref, a, d: str) -> None:
    sessions = {"fp32": create_session(model, "cpu", a.threads)[0]}
    for name, kw in RECIPES.items():
        dst = Path(d) / f"v{len(sessions)}.onnx"
        try:
            quantize_int8(model, dst, calib, **kw)
            s = create_session(dst, "cpu", a.threads)[0]
        except Exception as e:  # noqa: BLE001
            print(f"{name}: failed: {str(e).splitlines()[0][:150]}")
            continue
        lg = predict(s, xt)
        print(f"{name}: top-1 {100 * (lg.argmax(1) == yt).mean():.2f}%  agreement "
              f"{100 * (lg.argmax(1) == ref.argmax(1)).mean():.2f}%  ops {op_histogram(dst)}")
        sessions[name] = s
    speed_table(sessions, xt, a.rounds)


def options(model: Path, int8: Path, xt, a) -> None:
    for b in (1, 64):
        fns, x = {}, xt[:b]
        for name, (config, threads) in OPTIONS.items():
            for prec, path in (("fp32", model), ("int8", int8)):
                s = session(path, threads or a.threads, config)
                fns[f"{prec} {name}"] = lambda s=s: s.run(None, {"input": x})
        t = interleaved(fns, rounds=a.rounds, per_round=3 if b > 8 else 10)
        print(f"\nbatch {b}: p50 ms; int8 speed-up over fp32 under the same options")
        for name in OPTIONS:
            f, i = t[f"fp32 {name}"]["p50_ms"], t[f"int8 {name}"]["p50_ms"]
            print(f"  {name:<44} fp32 {f:8.3f}  int8 {i:8.3f}  x{f / i:.2f}")


def op_profile(path: Path, x: np.ndarray, threads, d: str, runs: int = 30):
    """-> ({op type: ms}, {node: ms}, total ms, optimized graph's op histogram); ms: median per run."""
    so_path = str(Path(d) / (path.stem + ".opt.onnx"))
    so = session_options(threads)
    so.optimized_model_filepath = so_path
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    s = session(path, threads, profile_prefix=str(Path(d) / path.stem))
    for _ in range(runs):
        s.run(None, {"input": x})
    events = json.loads(Path(s.end_profiling()).read_text())
    per_node = defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_node[(e["args"].get("op_name", "?"), e["name"])].append(e["dur"] / 1e3)
    by_op, by_node = defaultdict(float), {}
    for (op, node), durs in per_node.items():
        ms = float(np.median(durs[5:] or durs))                   # skip the first runs (warm-up)
        by_op[op] += ms
        by_node[f"{op} {node[:-len('_kernel_time')]}"] = ms
    runs_ms = [e["dur"] / 1e3 for e in events if e.get("name") == "model_run"][5:]
    return (dict(sorted(by_op.items(), key=lambda kv: -kv[1])), dict(sorted(by_node.items(), key=lambda kv: -kv[1])),
            float(np.median(runs_ms)), op_histogram(Path(so_path)))


def profile(model: Path, int8: Path, xt, a, d: str) -> None:
    x = xt[:a.profile_batch]
    for prec, path in (("fp32", model), ("int8", int8)):
        by_op, by_node, total, ops = op_profile(path, x, a.threads, d)
        print(f"\n{prec} at batch {a.profile_batch}: {total:.3f} ms per run (profiled), kernels by op type:")
        for op, ms in by_op.items():
            print(f"  {op:<28} {ms:8.3f} ms  {100 * ms / total:5.1f} %")
        print("  the slowest nodes:")
        for node, ms in list(by_node.items())[:8]:
            print(f"    {node[:60]:<60} {ms:8.3f} ms")
        print(f"  optimized graph: {ops}")


def predict(s, xt):
    return np.concatenate([s.run(["logits"], {"input": xt[i:i + 500]})[0] for i in range(0, len(xt), 500)])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--calib", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--only", default="recipes,options,profile")
    ap.add_argument("--profile-batch", type=int, default=64)
    a = ap.parse_args()
    model = Path(a.model)
    sess, _ = create_session(model, "cpu", a.threads)
    info = session_info(sess, model)
    _, xt, yt = load_arrays(info.meta["dataset"], None, "test")
    xt = normalize_batch(xt, info.mean, info.std)
    ref = predict(sess, xt)
    print(f"{cpu_name()}; {isa_summary()}; onnxruntime {ort.__version__}; threads {a.threads or 'all'}")
    print(f"fp32: top-1 {100 * (ref.argmax(1) == yt).mean():.2f}%  ops {op_histogram(model)}")
    parts = set(a.only.split(","))
    with tempfile.TemporaryDirectory() as d:
        calib = calibration_images(info.meta, a.calib)
        int8 = model.with_name(model.stem + ".int8.onnx")
        if not int8.exists() and parts & {"options", "profile"}:
            int8 = quantize_int8(model, Path(d) / "sedeploy.int8.onnx", calib)
        if "recipes" in parts:
            recipes(model, calib, xt, yt, ref, a, d)
        if "options" in parts:
            options(model, int8, xt, a)
        if "profile" in parts:
            profile(model, int8, xt, a, d)
    return 0


if __name__ == "__main__":
    sys.exit(main())
