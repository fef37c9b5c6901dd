"""Load test of `sedeploy serve` on loopback: requests/s and p50/p99 latency, dynamic batching on vs off.

    PYTHONPATH=src python scripts/serve_load.py --model /tmp/serve-run/model.onnx --duration 5

For each server mode (dynamic batching on, then off: every request run alone) it starts a fresh
`sedeploy serve` (torch blocked) on a free port and runs closed-loop clients at each concurrency
(asyncio + aiohttp, one process): every request is one 1-image FP32 tensor, binary, asking for
`logits` only, a real Fashion-MNIST test image; every answer is decoded with tritonclient's own
InferResult and checked against offline onnxruntime logits (an answer that differs counts as an
error). The batch the server reached comes from its statistics endpoint; serving efficiency is
requests/s over offline onnxruntime images/s at that batch. Then the image endpoint: JPEG uploads
(multipart) of the same images, at 28x28 and at 640x480. Ends with SIGTERM and checks exit 0.
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

from sedeploy.datasets import load_arrays, normalize_batch  # noqa: E402
from sedeploy.runtime.predictor import Predictor  # noqa: E402
from sedeploy.serve.launch import ServerProcess, infer_body  # noqa: E402
from sedeploy.timing import cpu_name, measure, summarize  # noqa: E402

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
    elapsed = stop_at - t_start
    return {"concurrency": concurrency, "requests": len(lat), "req_s": len(lat) / elapsed, "errors": len(errors),
            **{k: v for k, v in summarize(lat).items() if k in ("p50_ms", "p99_ms")}, "error_samples": errors[:3]}


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds measured per row")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-delay-ms", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=None)
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
    threads = ["--threads", str(a.threads)] if a.threads else []
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; model {a.model}; {a.duration:.0f} s per row", flush=True)
    results = {"cpu": cpu_name(), "args": vars(a), "modes": {}}
    for mode, flags in (("batching", ["--max-batch", str(a.max_batch), "--max-delay-ms", str(a.max_delay_ms)]),
                        ("no batching", ["--no-batching", "--max-batch", str(a.max_batch)])):
        with ServerProcess(["--model", f"{NAME}={a.model}", "--provider", "cpu", *flags, *threads]) as srv:
            rows = []
            for c in levels:
                before = stats(srv)
                r = asyncio.run(closed_loop(srv.url, bodies, expected, c, a.duration, a.warmup))
                after = stats(srv)
                r["mean_batch"] = (after["images"] - before["images"]) / max(1, after["batches"] - before["batches"])
                rows.append(r)
                print(f"{mode:12s} clients {c:3d}: {r['req_s']:7.0f} req/s  p50 {r['p50_ms']:6.2f} ms  "
                      f"p99 {r['p99_ms']:6.2f} ms  mean batch {r['mean_batch']:5.2f}  errors {r['errors']}", flush=True)
            if mode == "batching":
                for size_name, size in (("28x28", None), ("640x480", (640, 480))):
                    files = jpegs(native, size)
                    for hm in ("none", "base64"):
                        r = asyncio.run(image_loop(srv.url, files, 8, a.duration, hm))
                        results.setdefault("image_endpoint", []).append({"jpeg": size_name, "heatmaps": hm, **r})
                        print(f"image endpoint, JPEG {size_name}, heatmaps {hm:6s}, 8 clients: "
                              f"{r['images_s']:6.0f} images/s  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  "
                              f"errors {r['errors']}", flush=True)
            srv.terminate()
            code = srv.stop()
            print(f"SIGTERM -> exit status {code}", flush=True)
            results["modes"][mode] = {"rows": rows, "exit_status": code}
    # offline onnxruntime at the batches the server reached, same threads, same process as the figures above
    reached = sorted({max(1, int(round(r["mean_batch"]))) for m in results["modes"].values() for r in m["rows"]})
    offline = {}
    for b in reached:
        xb = np.repeat(x[:1], b, axis=0)
        t = measure(lambda: p.session.run(["logits"], {"input": xb}), warmup=20, min_time=2.0)
        offline[b] = b / (t["p50_ms"] / 1e3)
        print(f"offline onnxruntime batch {b:3d}: {offline[b]:7.0f} images/s", flush=True)
    for mode, m in results["modes"].items():
        for r in m["rows"]:
            r["offline_img_s"] = offline[max(1, int(round(r["mean_batch"])))]
            r["efficiency"] = r["req_s"] / r["offline_img_s"]
            print(f"{mode:12s} clients {r['concurrency']:3d}: efficiency {100 * r['efficiency']:5.1f} % of offline "
                  f"onnxruntime at batch {max(1, int(round(r['mean_batch'])))}")
    on = {r["concurrency"]: r for r in results["modes"]["batching"]["rows"]}
    off = {r["concurrency"]: r for r in results["modes"]["no batching"]["rows"]}
    for c in levels:
        print(f"clients {c:3d}: batching / no batching = {on[c]['req_s'] / off[c]['req_s']:.2f}x req/s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2, default=str)


if __name__ == "__main__":
    main()
