"""Faults against a live `sedeploy serve` (loopback): what each one gets back, and whether the server still
serves correct answers right after it.

    PYTHONPATH=src python scripts/serve_faults.py --model /tmp/serve-run/model.onnx

Every fault is followed by a correct request whose logits are compared with offline onnxruntime
(rtol 1e-4). Then: a burst against a tiny queue (503 at once, recovery), and SIGTERM with requests
in flight (each one answered correctly, exit status 0). Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import socket
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))  # tests/support: the server launcher

from sedeploy.runtime.predictor import Predictor  # noqa: E402
from support.launch import (ServerProcess, exchange, infer_body, infer_request, post_bytes,  # noqa: E402
                                   read_reply, reply_json, reply_status)
from sedeploy.core.hardware import cpu_name  # noqa: E402

ROWS = []


def correct(srv, x, want) -> bool:
    """One good binary request; its logits must match offline onnxruntime."""
    reply = exchange(srv.address, infer_request("m", x[:1], ["logits"], binary_outputs=False))
    return reply_status(reply) == 200 and np.allclose(reply_json(reply)["outputs"][0]["data"], want[0],
                                                      rtol=1e-4, atol=1e-5)


def row(fault: str, got: str, srv, x, want, t0: float) -> None:
    ms = (time.perf_counter() - t0) * 1e3
    ok = correct(srv, x, want)
    ROWS.append((fault, got, f"{ms:.0f} ms", "yes" if ok else "NO"))
    print(f"| {fault} | {got} | {ms:.0f} ms | {'yes' if ok else 'NO'} |", flush=True)


def status_line(reply: bytes) -> str:
    msg = reply_json(reply).get("error", "") if b"{" in reply else ""
    return f"{reply_status(reply)} `{msg[:70]}`" if msg else str(reply_status(reply))


def simple_faults(srv, x, want, jpeg: bytes) -> None:
    body, n = infer_body(x[:1])
    hl = [f"Inference-Header-Content-Length: {n}"]
    wrong = {"malformed JSON": post_bytes("/v2/models/m/infer", b'{"inputs": [}'),
             "wrong shape": infer_request("m", np.zeros((1, 3, 32, 32), np.float32)),
             "wrong dtype": post_bytes("/v2/models/m/infer", json.dumps({"inputs": [{
                 "name": "input", "shape": list(x[:1].shape), "datatype": "FP64",
                 "data": x[:1].ravel().tolist()}]}).encode()),
             "wrong input name": post_bytes("/v2/models/m/infer", body.replace(b'"input"', b'"image"'), hl),
             "binary size != header": post_bytes("/v2/models/m/infer", body[:-8], hl),
             "body over the limit (2 MiB > 1 MiB)": post_bytes("/v2/models/m/infer", b"0" * (2 << 20)),
             "truncated JPEG upload": post_bytes("/v2/models/m/classify", jpeg[:len(jpeg) // 2]),
             "non-image upload": post_bytes("/v2/models/m/classify", b"%PDF-1.4 not an image"),
             "unknown model": post_bytes("/v2/models/nope/infer", body, hl),
             "unknown route": b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"}
    for fault, request in wrong.items():
        t0 = time.perf_counter()
        row(fault, status_line(exchange(srv.address, request)), srv, x, want, t0)
    good = infer_request("m", x[:1])
    t0 = time.perf_counter()
    for _ in range(50):      # 50 clients that leave mid-body, after the headers, before the answer
        for partial in (good[:-2000], good[:good.index(b"\r\n\r\n") + 4], good):
            exchange(srv.address, partial, read=False)
    row("150 clients disconnecting mid-request", "(no one to answer)", srv, x, want, t0)


def slow_client(srv, x, want) -> None:
    """A client trickling its request over 3 s while another client keeps asking."""
    request = infer_request("m", x[:1], ["logits"], binary_outputs=False)
    host, port = srv.address.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    reply = {}

    def trickle():
        step = len(request) // 60 + 1
        for k in range(0, len(request), step):
            s.sendall(request[k:k + step])
            time.sleep(0.05)
        reply["r"] = read_reply(s)
    t0 = time.perf_counter()
    th = threading.Thread(target=trickle)
    th.start()
    lat = []
    while th.is_alive():
        t = time.perf_counter()
        assert correct(srv, x, want)
        lat.append(time.perf_counter() - t)
    s.close()
    ok = reply_status(reply["r"]) == 200 and np.allclose(reply_json(reply["r"])["outputs"][0]["data"], want[0],
                                                          rtol=1e-4, atol=1e-5)
    row("slow client (request over 3 s)", f"{'200, correct' if ok else 'WRONG'}; meanwhile {len(lat)} other "
        f"requests, p50 {1e3 * np.median(lat):.1f} ms", srv, x, want, t0)


def queue_full(model: str, x, want) -> None:
    """A full queue: 4 requests held by a long batching delay fill --max-queue 4; the next ones get 503 at once."""
    with ServerProcess(["--model", f"m={model}", "--max-batch", "64", "--max-delay-ms", "1500",
                        "--max-queue", "4"]) as srv:
        request = infer_request("m", x[:1], ["logits"], binary_outputs=False)
        host, port = srv.address.rsplit(":", 1)
        held = [socket.create_connection((host, int(port)), timeout=30) for _ in range(4)]
        for s in held:
            s.sendall(request)
        time.sleep(0.2)
        t0 = time.perf_counter()
        refused = []
        for _ in range(20):
            t = time.perf_counter()
            refused.append((reply_status(exchange(srv.address, request)), time.perf_counter() - t))
        answered = [reply_status(read_reply(s)) for s in held]
        got = (f"next {len(refused)}: {sum(c == 503 for c, _ in refused)} x 503 in p50 "
               f"{1e3 * np.median([t for _, t in refused]):.1f} ms; the 4 queued: {answered.count(200)} x 200")
        row("full queue (--max-queue 4)", got, srv, x, want, t0)
        srv.terminate()
        srv.stop()


def sigterm(model: str, x, want, n: int = 64) -> None:
    with ServerProcess(["--model", f"m={model}", "--max-batch", "64", "--max-delay-ms", "300"]) as srv:
        request = infer_request("m", x[:1], ["logits"], binary_outputs=False)
        host, port = srv.address.rsplit(":", 1)
        socks = [socket.create_connection((host, int(port)), timeout=30) for _ in range(n)]
        for s in socks:
            s.sendall(request)
        time.sleep(0.1)
        t0 = time.perf_counter()
        srv.terminate()
        replies = [read_reply(s) for s in socks]
        code = srv.stop()
        good = sum(reply_status(r) == 200 and np.allclose(reply_json(r)["outputs"][0]["data"], want[0], rtol=1e-4,
                                                           atol=1e-5) for r in replies)
        ms = (time.perf_counter() - t0) * 1e3
    ROWS.append(("SIGTERM with requests in flight", f"{good}/{n} answered 200 and correct; exit status {code}",
                 f"{ms:.0f} ms", "(stopped)"))
    print(f"| SIGTERM with {n} requests in flight | {good}/{n} answered 200 and correct; exit status {code} | "
          f"{ms:.0f} ms to drain | (stopped) |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    a = ap.parse_args()
    from PIL import Image
    p = Predictor(a.model, "cpu")
    x = np.random.default_rng(0).normal(size=(1, *p.info.input_size)).astype(np.float32)
    want = p.run(x)["logits"]
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(1).random((240, 320, 3)) * 255).astype(np.uint8)).save(buf, "JPEG")
    print(f"CPU: {cpu_name()}; model {a.model}\n")
    print("| fault | answer | time | correct answers right after |\n|---|---|---|---|")
    with ServerProcess(["--model", f"m={a.model}", "--max-body-mb", "1"]) as srv:
        simple_faults(srv, x, want, buf.getvalue())
        slow_client(srv, x, want)
        srv.terminate()
        code = srv.stop()
    print(f"| (that server, SIGTERM at the end) | exit status {code} | | |")
    queue_full(a.model, x, want)
    sigterm(a.model, x, want)


if __name__ == "__main__":
    main()
