"""sedeploy serve against the real Triton under the same load: requests/s, p50/p99, errors, CPU per request.

    PYTHONPATH=src python scripts/triton_load.py --model demo/run/model.onnx [--rounds 3 --duration 4 --json F]

One run, three servers side by side on 127.0.0.1, on the same model repository (`triton-repo --backend
python`, max batch and delay as sedeploy's defaults): real tritonserver 2.51 (the `nvidia-pytriton` wheel,
Python backend, dynamic batching; tests/support/triton.py builds its environment once), `sedeploy serve
--model-repository` (dynamic batching) and `sedeploy serve --no-batching` (batch 1). 32 closed-loop clients
(asyncio, this process, on the same cores) send 1-image binary FP32 requests for `logits`, every answer
checked against offline onnxruntime; the servers alternate in rounds (scripts/serve_load.py's load_rows),
so the machine's load swings hit all alike. onnxruntime threads are the same for all (--threads).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.dirname(__file__))

from serve_load import NAME, load_rows  # noqa: E402
from sedeploy.core.arrays import load_arrays  # noqa: E402
from sedeploy.core.datasets import normalize_batch  # noqa: E402
from sedeploy.core.hardware import cpu_name  # noqa: E402
from sedeploy.core.tritonconfig import BATCHING  # noqa: E402
from sedeploy.export.triton import write_triton_repository  # noqa: E402
from sedeploy.runtime.predictor import Predictor  # noqa: E402
from support import triton  # noqa: E402
from support.launch import ServerProcess, infer_body  # noqa: E402


class _TritonView:
    """What load_rows reads of a server: url and proc."""

    def __init__(self, t: triton.Triton) -> None:
        self.url, self.proc = f"http://{t.url}", t.proc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--concurrency", default="32")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime threads in every server")
    ap.add_argument("--max-batch", type=int, default=BATCHING.max_batch)
    ap.add_argument("--max-delay-ms", type=float, default=BATCHING.max_delay_us / 1000)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    why = triton.ensure_venv()
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    levels = [int(c) for c in a.concurrency.split(",")]
    p = Predictor(a.model, "cpu", a.threads)
    raw = load_arrays(p.info.meta.get("dataset", "fashion-mnist"), split="test")[1][:a.images]
    x = normalize_batch(raw, p.info.mean, p.info.std).astype(np.float32)
    expected = np.concatenate([p.run(x[i:i + 1])["logits"] for i in range(len(x))])
    bodies = [infer_body(x[i:i + 1], ["logits"]) for i in range(len(x))]
    repo = Path(tempfile.mkdtemp(prefix="sedeploy-triton-load-"))
    write_triton_repository(a.model, repo, name=NAME, max_batch=a.max_batch, backend="python",
                            max_delay_us=int(a.max_delay_ms * 1000))
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; {a.rounds} rounds x "
          f"{a.duration:.0f} s; onnxruntime threads {a.threads}; max batch {a.max_batch}, delay {a.max_delay_ms} ms",
          flush=True)
    common = ["--provider", "cpu", "--threads", str(a.threads)]
    with triton.Triton(repo, threads=a.threads) as t, \
            ServerProcess(["--model-repository", str(repo), *common]) as on, \
            ServerProcess(["--model", f"{NAME}={a.model}", *common, "--no-batching"]) as off:
        servers = {"triton (python backend, dynamic batching)": _TritonView(t), "sedeploy (dynamic batching)": on,
                   "sedeploy (batch 1)": off}
        rows = load_rows(servers, bodies, expected, levels, a)
    res = {"cpu": cpu_name(), "args": vars(a), "rows": rows}
    print("\n| server | clients | req/s (rounds) | p50 ms | p99 ms | mean batch | server CPU ms/request | errors |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|")
    for mode, rs in rows.items():
        for r in rs:
            print(f"| {mode} | {r['concurrency']} | {r['req_s']:.0f} ({', '.join(map(str, r['req_s_rounds']))}) | "
                  f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['mean_batch']:.1f} | {r['server_cpu_ms']:.2f} | "
                  f"{r['errors']} |")
    names = list(rows)
    for i, c in enumerate(levels):
        tr, sb, s1 = (rows[n][i] for n in names)
        res.setdefault("ratios", {})[c] = {"sedeploy_vs_triton": sb["req_s"] / tr["req_s"],
                                           "p99_sedeploy_vs_triton": sb["p99_ms"] / tr["p99_ms"],
                                           "batching_vs_batch1": sb["req_s"] / s1["req_s"]}
        print(f"clients {c}: sedeploy / Triton = {sb['req_s'] / tr['req_s']:.2f}x requests/s, p99 "
              f"{sb['p99_ms']:.1f} vs {tr['p99_ms']:.1f} ms; dynamic batching / batch 1 = "
              f"{sb['req_s'] / s1['req_s']:.2f}x")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
