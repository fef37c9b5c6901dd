"""The per-format table of docs/BENCHMARKS.md (issue 15) from an export set and a bench of it.

    sedeploy export --ckpt demo/run/best.pt --formats all --int8 --out demo/edge --force
    sedeploy bench --model demo/edge --batch-sizes 1,64 --save-json demo/edge-bench.json
    python scripts/edge_table.py demo/edge demo/edge-bench.json

Per format: parity with eager PyTorch per output (max |diff| from export.json's verification rows,
or "not verified" with the reason), the file's bytes, the install size of its runtime (the files its
distributions installed, from their RECORD), and from the bench: images/s at each batch size, as a
ratio to onnxruntime fp32 and to the best PyTorch row of the same run. Prints Markdown.
"""
from __future__ import annotations

import json
import sys
from importlib import metadata
from pathlib import Path

# The runtime's distributions per format (what its sedeploy extra installs to run, not to convert)
RUNTIME_DISTS = {"onnx": ["onnxruntime"], "ort": ["onnxruntime"], "torchscript": ["torch"],
                 "ncnn": ["ncnn"], "openvino": ["openvino", "openvino-telemetry"], "tflite": ["ai-edge-litert"],
                 "executorch": ["executorch", "torch"], "coreml": ["coremltools"]}
BENCH_ROW = {"onnx": "ort-cpu", "ort": "ort-format", "torchscript": "torchscript", "int8": "ort-cpu-int8",
             "ort-int8": "ort-format-int8"}
PYTORCH = ("pytorch", "pytorch-cl", "torch-compile", "torchscript")


def dist_mb(names) -> str:
    total = 0
    for n in names:
        try:
            files = metadata.distribution(n).files or []
        except metadata.PackageNotFoundError:
            return "not installed"
        total += sum((f.size or 0) for f in files)
    return f"{total / 1e6:.0f} MB"


def main(export_dir: str, bench_json: str) -> None:
    man = json.loads((Path(export_dir) / "export.json").read_text())
    bench = json.loads(Path(bench_json).read_text())
    rows = {(r["backend"], r["batch"]): r for r in bench["rows"]}
    batches = sorted({r["batch"] for r in bench["rows"]})
    parity = {}
    for r in man["verification"]["rows"]:
        label = r["backend"].split(" ")[0]
        parity.setdefault(label, {})[r["output"]] = r["max_abs"]
    print(f"CPU: {bench['header']['machine']}; ISA: {bench['header']['isa']}\n")
    head = ["format", "file", "MB (all its files)", "runtime install", "parity (max abs, per output)"]
    for b in batches:
        head += [f"img/s b{b}", f"vs ORT fp32 b{b}", f"vs best PyTorch b{b}"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    kinds, total = {}, {}
    for f in man["files"]:
        kinds.setdefault(f["format"], f)            # the artifact is the first file of its format
        total[f["format"]] = total.get(f["format"], 0) + f["bytes"]     # its size: every file of it
    for kind, f in kinds.items():
        base = "onnx" if kind in ("int8", "fp16") else kind.replace("-int8", "")
        facts = man["formats"].get(base, {})
        if kind in ("int8",) or kind.endswith("-int8"):
            gate = man.get("int8_gate") if kind == "int8" else facts.get("int8_gate")
            par = (f"int8 gate: agreement {gate['agreement']:.1f} %, drop {gate.get('drop', float('nan')):+.2f} pt, "
                   f"SE {gate['se_max_abs']:.3f}") if gate else "int8 (derived, checked against model.int8.onnx)"
        elif kind == "fp16":
            par = "fp16 (GPU variant)"
        elif facts.get("verified") is False:
            par = f"not verified: {facts.get('not_verified')}"
        else:
            p = parity.get(kind, {})
            par = ", ".join(f"{o} {v:.1e}" for o, v in p.items()) or "-"
        cells = [kind, f["path"], f"{total[kind] / 1e6:.2f}", dist_mb(RUNTIME_DISTS.get(base, [])), par]
        row = BENCH_ROW.get(kind, kind)
        for b in batches:
            r = rows.get((row, b))
            ort = rows.get(("ort-cpu", b), {}).get("images_per_s")
            best = max((rows[(n, b)]["images_per_s"] for n in PYTORCH
                        if (n, b) in rows and rows[(n, b)].get("images_per_s")), default=None)
            ips = r.get("images_per_s") if r else None
            cells += [f"{ips:,.0f}" if ips else (r["status"][:40] if r else "-"),
                      f"{ips / ort:.2f}" if ips and ort else "-", f"{ips / best:.2f}" if ips and best else "-"]
        print("| " + " | ".join(cells) + " |")
    s = bench.get("summary", {})
    for b in batches:
        x = s.get(str(b), {})
        if x.get("fastest_artifact"):
            print(f"\nbatch {b}: fastest file {x['fastest_artifact']} ({x['fastest_artifact_ips']:,.0f} img/s), "
                  f"{x.get('fastest_vs_best_pytorch') or 0:.2f}x the best PyTorch row ({x.get('best_pytorch_backend')}), "
                  f"{x.get('fastest_vs_ort_fp32') or 0:.2f}x onnxruntime fp32")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python scripts/edge_table.py EXPORT_DIR BENCH_JSON")
    main(sys.argv[1], sys.argv[2])
