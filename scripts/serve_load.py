"""Load test of `sedeploy serve` on loopback: requests/s and p50/p99 latency, dynamic batching on vs off.

    PYTHONPATH=src python scripts/serve_load.py --model /tmp/serve-run/model.onnx

Starts two `sedeploy serve` (torch blocked) on free ports, dynamic batching on and off (every request
run alone), and drives them with closed-loop clients at each concurrency (asyncio + aiohttp, one
process). Both servers run side by side and the modes alternate in rounds, so that the shared
machine's load swings hit both alike. Every request is one 1-image FP32 tensor, binary, asking for
`logits` only, a real Fashion-MNIST test image; every answer is decoded with tritonclient's own
InferResult and checked against offline onnxruntime logits (a differing answer counts as an error).
The batch each row reached comes from the server's statistics endpoint; serving efficiency is
requests/s over offline onnxruntime images/s at that batch (same threads, same run). Then the image
endpoint: JPEG uploads (multipart) of the same images, at 28x28 and 640x480. Ends with SIGTERM.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))  # tests/support: the server launcher

from sedeploy.core.datasets import normalize_batch
from sedeploy.core.arrays import load_arrays  # noqa: E402
from sedeploy.runtime.predictor import Predictor  # noqa: E402
from support.launch import ServerProcess, infer_body  # noqa: E402
from sedeploy.serve.model import default_threads  # noqa: E402
from sedeploy.core.tritonconfig import BATCHING  # noqa: E402
from sedeploy.core.hardware import cpu_name
from sedeploy.core.timing import interleaved, summarize  # noqa: E402

NAME = "m"


async def closed_loop(url: str, bodies, expected: np.ndarray, concurrency: int, duration: float, warmup: float):
    import aiohttp
    from tritonclient.http import InferResult
    lat, errors, stop_at = [], [], None
    t_start = time.perf_counter() + warmup

    async def worker(k: int, session) -> None:
        i = k
        while True:
            now = time.perf_counter()
            if stop_at is not None and now >= stop_at:
                return
            body, hl = bodies[i % len(bodies)]
            t = time.perf_counter()
            try:
                async with session.post(f"{url}/v2/models/{NAME}/infer", data=body,
                                        headers={"Inference-Header-Content-Length": str(hl)}) as r:
                    data = await r.read()
                    ok = r.status == 200
                    if ok:
                        res = InferResult.from_response_body(data, header_length=int(r.headers[
                            "Inference-Header-Content-Length"]))
                        ok = np.allclose(res.as_numpy("logits")[0], expected[i % len(bodies)], atol=1e-4, rtol=1e-4)
            except aiohttp.ClientError as e:
                ok, data = False, str(e).encode()
            done = time.perf_counter()
            if done >= t_start:
                lat.append(done - t)
                if not ok:
                    errors.append(data[:200])
            i += concurrency

    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:
        tasks = [asyncio.create_task(worker(k, session)) for k in range(concurrency)]
        await asyncio.sleep(warmup + duration)
        stop_at = time.perf_counter()
        await asyncio.gather(*tasks)
    return {"req_s": len(lat) / (stop_at - t_start), "lat": lat, "errors": len(errors), "error_samples": errors[:3]}


async def image_loop(url: str, files, concurrency: int, duration: float, heatmaps: str) -> dict:
    import aiohttp
    lat, errors = [], 0
    stop = time.perf_counter() + duration

    async def worker(k: int, session) -> None:
        nonlocal errors
        i = k
        while time.perf_counter() < stop:
            form = aiohttp.FormData()
            form.add_field("image", files[i % len(files)], filename="x.jpg", content_type="image/jpeg")
            t = time.perf_counter()
            async with session.post(f"{url}/v2/models/{NAME}/classify?topk=3&heatmaps={heatmaps}", data=form) as r:
                body = await r.json()
                errors += r.status != 200 or not body.get("top")
            lat.append(time.perf_counter() - t)
            i += concurrency

    t0 = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*[worker(k, session) for k in range(concurrency)])
    return {"images_s": len(lat) / (time.perf_counter() - t0), "errors": errors,
            **{k: v for k, v in summarize(lat).items() if k in ("p50_ms", "p99_ms")}}


def stats(srv) -> dict:
    import urllib.request
    with urllib.request.urlopen(f"{srv.url}/v2/models/{NAME}/stats") as r:
        s = json.load(r)["model_stats"][0]
    return {"images": s["inference_count"], "batches": s["execution_count"]}


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (Linux /proc)."""
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def jpegs(images: np.ndarray, size) -> list:
    from PIL import Image
    out = []
    for a in images:
        im = Image.fromarray(a.squeeze().astype(np.uint8))
        if size:
            im = im.resize(size, Image.BILINEAR)
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def load_rows(servers: dict, bodies, expected, levels, a) -> dict:
    """Rounds of (level x mode), the modes alternating so that the machine's load swings hit them alike;
    per mode and level: the median req/s over rounds, p50/p99 over every request, the mean batch."""
    acc = {(m, c): {"req_s": [], "lat": [], "errors": 0, "images": 0, "batches": 0, "samples": [], "server_cpu": 0.0,
                    "client_cpu": 0.0} for m in servers for c in levels}
    for rnd in range(a.rounds):
        for c in levels:
            for mode, srv in servers.items():
                before, cpu0, client0 = stats(srv), process_cpu(srv.proc.pid), time.process_time()
                r = asyncio.run(closed_loop(srv.url, bodies, expected, c, a.duration, a.warmup))
                after = stats(srv)
                d = acc[(mode, c)]
                d["server_cpu"] += process_cpu(srv.proc.pid) - cpu0     # warm-up requests included: per request
                d["client_cpu"] += time.process_time() - client0         # these are upper bounds
                d["req_s"].append(r["req_s"])
                d["lat"] += r["lat"]
                d["errors"] += r["errors"]
                d["samples"] += r["error_samples"]
                d["images"] += after["images"] - before["images"]
                d["batches"] += after["batches"] - before["batches"]
                print(f"  round {rnd + 1} {mode:11s} clients {c:3d}: {r['req_s']:6.0f} req/s", flush=True)
    rows = {}
    for (mode, c), d in acc.items():
        pct = summarize(d["lat"])
        rows.setdefault(mode, []).append({
            "concurrency": c, "req_s": float(np.median(d["req_s"])), "req_s_rounds": [round(v) for v in d["req_s"]],
            "p50_ms": pct["p50_ms"], "p99_ms": pct["p99_ms"], "requests": len(d["lat"]), "errors": d["errors"],
            "error_samples": d["samples"][:3], "mean_batch": d["images"] / max(1, d["batches"]),
            "server_cpu_ms": 1e3 * d["server_cpu"] / max(1, d["images"]), "client_cpu_ms": 1e3 * d["client_cpu"] /
            max(1, d["images"])})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--duration", type=float, default=4.0, help="seconds measured per row and round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; the median req/s is reported")
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--max-batch", type=int, default=BATCHING.max_batch)
    ap.add_argument("--max-delay-ms", type=float, default=BATCHING.max_delay_us / 1000)
    ap.add_argument("--threads", type=int, default=default_threads(), help="onnxruntime threads, server and offline")
    ap.add_argument("--images", type=int, default=64, help="distinct test images cycled through")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args()
    levels = [int(c) for c in a.concurrency.split(",")]
    p = Predictor(a.model, "cpu", a.threads)
    dataset = p.info.meta.get("dataset", "fashion-mnist")
    raw = load_arrays(dataset, split="test")[1][:a.images]                     # (N, C, H, W) uint8, model size
    native = load_arrays(dataset, split="test", native=True)[1][:32]           # the files' own size, for JPEGs
    x = normalize_batch(raw, p.info.mean, p.info.std).astype(np.float32)       # (N, C, H, W)
    expected = np.concatenate([p.run(x[i:i + 1])["logits"] for i in range(len(x))])
    bodies = [infer_body(x[i:i + 1], ["logits"]) for i in range(len(x))]
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; model {a.model}; "
          f"onnxruntime threads {a.threads}; {a.rounds} rounds x {a.duration:.0f} s per row", flush=True)
    results = {"cpu": cpu_name(), "loadavg_start": os.getloadavg()[0], "args": vars(a)}
    common = ["--provider", "cpu", "--threads", str(a.threads), "--max-batch", str(a.max_batch)]
    with ServerProcess(["--model", f"{NAME}={a.model}", *common, "--max-delay-ms", str(a.max_delay_ms)]) as on, \
            ServerProcess(["--model", f"{NAME}={a.model}", *common, "--no-batching"]) as off:
        servers = {"batching": on, "no batching": off}
        results["modes"] = load_rows(servers, bodies, expected, levels, a)
        for size_name, size in (("28x28", None), ("640x480", (640, 480))):
            files = jpegs(native, size)
            for hm in ("none", "base64"):
                r = asyncio.run(image_loop(on.url, files, 8, a.duration, hm))
                results.setdefault("image_endpoint", []).append({"jpeg": size_name, "heatmaps": hm, **r})
                print(f"image endpoint, JPEG {size_name}, heatmaps {hm:6s}, 8 clients: {r['images_s']:6.0f} images/s"
                      f"  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  errors {r['errors']}", flush=True)
        for srv in servers.values():
            srv.terminate()
        results["exit_status"] = {m: srv.stop() for m, srv in servers.items()}
    results["loadavg_end"] = os.getloadavg()[0]
    # offline onnxruntime at the batch each row reached: same model, same threads, in this same run
    reached = sorted({max(1, round(r["mean_batch"])) for rows in results["modes"].values() for r in rows})
    fns = {b: (lambda xb=np.repeat(x[:1], b, axis=0): p.session.run(["logits"], {"input": xb})) for b in reached}
    timed = interleaved(fns, warmup=20, rounds=40, per_round=10)       # alternating, so load swings hit all
    offline = {b: b / (t["p50_ms"] / 1e3) for b, t in timed.items()}
    results["offline_img_s"] = offline
    print("\n| mode | clients | req/s (rounds) | p50 ms | p99 ms | mean batch | offline ORT img/s at that batch | "
          "efficiency | CPU ms/request server, client | errors |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode, rows in results["modes"].items():
        for r in rows:
            b = max(1, round(r["mean_batch"]))
            r["efficiency"] = r["req_s"] / offline[b]
            rounds = ", ".join(str(v) for v in r["req_s_rounds"])
            print(f"| {mode} | {r['concurrency']} | {r['req_s']:.0f} ({rounds}) | {r['p50_ms']:.1f} | "
                  f"{r['p99_ms']:.1f} | {r['mean_batch']:.1f} | {offline[b]:.0f} (batch {b}) | "
                  f"{100 * r['efficiency']:.0f} % | {r['server_cpu_ms']:.2f}, {r['client_cpu_ms']:.2f} | {r['errors']} |")
    on_rows = {r["concurrency"]: r for r in results["modes"]["batching"]}
    off_rows = {r["concurrency"]: r for r in results["modes"]["no batching"]}
    for c in levels:
        print(f"clients {c:3d}: batching / no batching = {on_rows[c]['req_s'] / off_rows[c]['req_s']:.2f}x req/s")
    print(f"exit status after SIGTERM: {results['exit_status']}; load average at the end "
          f"{results['loadavg_end']:.1f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2, default=str)


if __name__ == "__main__":
    main()
