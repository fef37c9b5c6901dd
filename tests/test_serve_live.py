"""Serve over a real socket: `sedeploy serve` in a child process (torch made unimportable), spoken to by
tritonclient itself (sync and asyncio, binary and JSON), by raw sockets for the faults (disconnects,
slow clients, overload), and stopped with SIGTERM under load."""
from __future__ import annotations

import asyncio
import os
import socket
import signal
import sys
import subprocess
import threading
import time

from pathlib import Path

import numpy as np
import pytest

from support.launch import (ServerProcess, exchange, infer_body, infer_request, post_bytes, read_reply,
                                  reply_json, reply_status)

httpclient = pytest.importorskip("tritonclient.http")
aioclient = pytest.importorskip("tritonclient.http.aio")
pytest.importorskip("uvicorn")


@pytest.fixture(scope="module")
def reference(fm_onnx):
    """Offline onnxruntime outputs for a fixed batch: what every answer must equal."""
    from sedeploy.runtime.predictor import Predictor
    p = Predictor(fm_onnx, "cpu")
    x = np.random.default_rng(0).normal(size=(8, *p.info.input_size)).astype(np.float32)
    return x, p.run(x), p.info


@pytest.fixture(scope="module")
def server(fm_onnx):
    with ServerProcess(["--model", f"fm={fm_onnx}", "--max-batch", "8", "--max-delay-ms", "2",
                        "--max-body-mb", "1"]) as srv:
        yield srv
    assert srv.returncode == 0, srv.lines          # stopped with SIGTERM: a clean drain


def _close(got, want):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _check_answers(srv, reference):
    """The server still answers correctly: the tail of every fault test."""
    x, want, _ = reference
    c = httpclient.InferenceServerClient(srv.address)
    i = httpclient.InferInput("input", [1, *x.shape[1:]], "FP32")
    i.set_data_from_numpy(x[1:2])
    _close(c.infer("fm", [i]).as_numpy("logits"), want["logits"][1:2])
    c.close()


def test_tritonclient_sync_binary_default_and_json(server, reference):
    x, want, info = reference
    c = httpclient.InferenceServerClient(server.address)
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("fm") and c.is_model_ready("fm", "1")
    assert not c.is_model_ready("fm", "7")
    assert c.get_model_metadata("fm")["inputs"][0]["shape"] == [-1, *info.input_size]
    assert c.get_model_config("fm", "1")["max_batch_size"] == 8
    # the simplest client code: set_data_from_numpy (binary), no outputs named -> all outputs back, binary
    i = httpclient.InferInput("input", list(x.shape[:1]) + list(x.shape[1:]), "FP32")
    i.set_data_from_numpy(x)
    r = c.infer("fm", [i])
    outs = r.get_response()["outputs"]
    assert [o["name"] for o in outs] == info.output_names
    assert all("binary_data_size" in o["parameters"] for o in outs)
    for name in info.output_names:
        _close(r.as_numpy(name), want[name])
    # JSON both ways, a subset of the outputs in the request's order, and the classification extension
    j = httpclient.InferInput("input", list(x[:3].shape), "FP32")
    j.set_data_from_numpy(x[:3], binary_data=False)
    req = [httpclient.InferRequestedOutput("se2", binary_data=False),
           httpclient.InferRequestedOutput("logits", binary_data=False),
           httpclient.InferRequestedOutput("se1", binary_data=True)]
    r = c.infer("fm", [j], outputs=req, request_id="abc")
    body = r.get_response()
    assert body["id"] == "abc" and [o["name"] for o in body["outputs"]] == ["se2", "logits", "se1"]
    assert "data" in body["outputs"][0] and "parameters" in body["outputs"][2]
    for name in ("se2", "logits", "se1"):
        _close(r.as_numpy(name), want[name][:3])
    r = c.infer("fm", [j], outputs=[httpclient.InferRequestedOutput("logits", class_count=3)])
    top = [s.decode().split(":") for s in r.as_numpy("logits")[0]]
    assert [int(t[1]) for t in top] == list(np.argsort(-want["logits"][0])[:3])
    assert [t[2] for t in top] == [info.classes[int(t[1])] for t in top]
    stats = c.get_inference_statistics("fm")["model_stats"][0]
    assert stats["inference_count"] >= 14 and stats["inference_stats"]["success"]["count"] >= 3
    c.close()


def test_tritonclient_asyncio_concurrent_requests_are_batched(server, reference):
    x, want, _ = reference

    async def main():
        c = aioclient.InferenceServerClient(server.address)
        before = (await c.get_inference_statistics("fm"))["model_stats"][0]

        async def one(k, binary):
            i = aioclient.InferInput("input", [1, *x.shape[1:]], "FP32")
            i.set_data_from_numpy(x[k % 8:k % 8 + 1], binary_data=binary)
            r = await c.infer("fm", [i], outputs=[aioclient.InferRequestedOutput("logits", binary_data=binary)])
            return k, r.as_numpy("logits")
        results = await asyncio.gather(*[one(k, k % 2 == 0) for k in range(48)])
        after = (await c.get_inference_statistics("fm"))["model_stats"][0]
        assert await c.is_server_ready()
        await c.close()
        return results, before, after
    results, before, after = asyncio.run(main())
    for k, logits in results:                      # every request got its own row back
        _close(logits[0], want["logits"][k % 8])
    images = after["inference_count"] - before["inference_count"]
    runs = after["execution_count"] - before["execution_count"]
    assert images == 48 and runs < 48, (images, runs)          # some requests ran together


def _headers_only(request: bytes) -> bytes:
    return request[:request.index(b"\r\n\r\n") + 4]


def test_faults_leave_the_server_answering(server, reference):
    x, _, _ = reference
    one = np.ascontiguousarray(x[:1])
    good = infer_request("fm", one)
    body, n = infer_body(one)
    cases = {
        "malformed JSON": (post_bytes("/v2/models/fm/infer", b'{"inputs": [}'), 400),
        "binary size != header": (post_bytes("/v2/models/fm/infer", body[:-8],
                                             [f"Inference-Header-Content-Length: {n}"]), 400),
        # headers only: the 413 comes before a byte of the body is read, and a client still sending
        # 2 MB when the server closes would see a reset (RST) instead of the answer, by TCP's rules
        "body over the limit": (_headers_only(post_bytes("/v2/models/fm/infer", b"0" * (2 << 20))), 413),
        "non-image upload": (post_bytes("/v2/models/fm/classify", b"GIF89a but not really"), 400),
        "unknown model": (post_bytes("/v2/models/nope/infer", b"{}"), 404),
        "unknown route": (b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404),
        "wrong method": (b"PUT /v2/models/fm/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n", 405),
    }
    for name, (request, status) in cases.items():
        reply = exchange(server.address, request)
        assert reply_status(reply) == status, (name, reply[:300])
        assert b'{"error":' in reply and b"Traceback" not in reply, (name, reply[-300:])
    # clients that go away: in the middle of the body, right after the headers, before the answer
    for partial in (good[:-2000], good[:good.index(b"\r\n\r\n") + 4], good):
        exchange(server.address, partial, read=False)
    _check_answers(server, reference)


def test_slow_client_does_not_hold_up_others(server, reference):
    x, want, _ = reference
    one = np.ascontiguousarray(x[:1])
    request = infer_request("fm", one, ["logits"], binary_outputs=False)
    host, port = server.address.rsplit(":", 1)
    slow = socket.create_connection((host, int(port)), timeout=10)
    answer = {}

    def trickle():       # the whole request over ~1.5 s, in 30 pieces
        step = len(request) // 30 + 1
        for k in range(0, len(request), step):
            slow.sendall(request[k:k + step])
            time.sleep(0.05)
        answer["reply"] = read_reply(slow)
    t = threading.Thread(target=trickle)
    t.start()
    c = httpclient.InferenceServerClient(server.address)
    i = httpclient.InferInput("input", list(one.shape), "FP32")
    i.set_data_from_numpy(one)
    lat = []
    while t.is_alive() and len(lat) < 200:
        t0 = time.perf_counter()
        _close(c.infer("fm", [i]).as_numpy("logits"), want["logits"][:1])
        lat.append(time.perf_counter() - t0)
    t.join()
    slow.close()
    c.close()
    assert len(lat) >= 5 and float(np.median(lat)) < 0.5, lat       # others were served meanwhile
    assert reply_status(answer["reply"]) == 200, answer["reply"][:200]
    _close(np.array(reply_json(answer["reply"])["outputs"][0]["data"]), want["logits"][0])


def test_full_queue_answers_503_at_once_then_recovers(fm_onnx, reference):
    x, want, _ = reference
    with ServerProcess(["--model", f"fm={fm_onnx}", "--max-batch", "1", "--max-queue", "2",
                        "--no-batching"]) as srv:
        async def burst():
            c = aioclient.InferenceServerClient(srv.address, conn_limit=64)
            i = aioclient.InferInput("input", [1, *x.shape[1:]], "FP32")
            i.set_data_from_numpy(x[:1])

            async def one():
                t0 = time.perf_counter()
                try:
                    await c.infer("fm", [i], outputs=[aioclient.InferRequestedOutput("logits")])
                    return 200, time.perf_counter() - t0
                except Exception as e:  # noqa: BLE001 - InferenceServerException carries the status
                    return int(e.status() or 0), time.perf_counter() - t0
            res = await asyncio.gather(*[one() for _ in range(64)])
            await c.close()
            return res
        res = asyncio.run(burst())
        codes = [r[0] for r in res]
        assert set(codes) <= {200, 503} and codes.count(503) > 0 and codes.count(200) >= 2, codes   # the queue (2) always takes the first two
        _check_answers(srv, reference)
        srv.terminate()
        assert srv.stop() == 0


def test_sigterm_under_load_answers_every_accepted_request(fm_onnx, reference):
    x, want, _ = reference
    # a long batching delay keeps the requests queued when SIGTERM arrives
    with ServerProcess(["--model", f"fm={fm_onnx}", "--max-batch", "64", "--max-delay-ms", "400"]) as srv:
        request = infer_request("fm", np.ascontiguousarray(x[:1]), ["logits"], binary_outputs=False)
        host, port = srv.address.rsplit(":", 1)
        socks = [socket.create_connection((host, int(port)), timeout=20) for _ in range(24)]
        for s in socks:
            s.sendall(request)
        time.sleep(0.1)
        srv.terminate()
        replies = [read_reply(s) for s in socks]
        for s in socks:
            s.close()
        assert srv.stop() == 0, srv.lines
        assert any("stopped" in ln for ln in srv.lines)
    for r in replies:                             # nothing lost: every accepted request got its answer
        assert reply_status(r) == 200, r[:200]
        _close(np.array(reply_json(r)["outputs"][0]["data"]), want["logits"][0])
    with pytest.raises(OSError):                  # and the listener is gone
        socket.create_connection((host, int(port)), timeout=2).close()


UVICORN_FLOOR = "0.29.0"      # setup.cfg's serve extra: uvicorn>=0.29


def _uvicorn_floor() -> Path:
    """uvicorn at the serve extra's floor, installed once (without dependencies) under ~/.cache."""
    d = Path.home() / ".cache" / "sedeploy-uvicorn" / UVICORN_FLOOR
    if not (d / "uvicorn" / "__init__.py").is_file():
        r = subprocess.run([sys.executable, "-m", "pip", "install", "-qq", "--no-deps", "--target", str(d),
                            f"uvicorn=={UVICORN_FLOOR}"], capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            pytest.skip(f"uvicorn {UVICORN_FLOOR} cannot be installed here: {r.stderr.strip()[-200:]}")
    return d


@pytest.mark.slow
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_drain_on_the_uvicorn_floor(fm_onnx, reference, signame):
    """The drain uses uvicorn's public API only, so the oldest uvicorn the extra admits drains the same way
    (the test above runs the newest installed)."""
    x, want, _ = reference
    floor = _uvicorn_floor()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(floor), os.environ.get("PYTHONPATH")) if p))
    got = subprocess.run([sys.executable, "-c", "import uvicorn; print(uvicorn.__version__)"], env=env,
                         capture_output=True, text=True).stdout.strip()
    assert got == UVICORN_FLOOR
    with ServerProcess(["--model", f"fm={fm_onnx}", "--max-batch", "64", "--max-delay-ms", "400"], env=env) as srv:
        request = infer_request("fm", np.ascontiguousarray(x[:1]), ["logits"], binary_outputs=False)
        host, port = srv.address.rsplit(":", 1)
        socks = [socket.create_connection((host, int(port)), timeout=20) for _ in range(8)]
        for s in socks:
            s.sendall(request)
        time.sleep(0.1)
        srv.proc.send_signal(getattr(signal, signame))
        replies = [read_reply(s) for s in socks]
        for s in socks:
            s.close()
        assert srv.stop() == 0, srv.lines
    assert all(reply_status(r) == 200 for r in replies)


def test_model_repository_serves_what_triton_repo_wrote(fm_onnx, reference, tmp_path, run_cli):
    x, want, _ = reference
    assert run_cli("triton-repo", fm_onnx, "--out", tmp_path / "repo", "--name", "fm", "--max-batch", "4").code == 0
    with ServerProcess(["--model-repository", str(tmp_path / "repo")]) as srv:
        c = httpclient.InferenceServerClient(srv.address)
        assert c.get_model_config("fm")["max_batch_size"] == 4
        assert c.get_model_repository_index()[0]["name"] == "fm"
        i = httpclient.InferInput("input", [4, *x.shape[1:]], "FP32")
        i.set_data_from_numpy(x[:4])
        _close(c.infer("fm", [i]).as_numpy("feature_map"), want["feature_map"][:4])
        c.close()


def test_model_that_fails_to_load_stops_the_server(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a model")
    srv = ServerProcess(["--model", str(bad)], timeout=30)
    with pytest.raises(RuntimeError, match="did not become ready"):
        srv.start()
    assert srv.proc.wait(10) == 2
    errors = [ln for ln in srv.lines if ln.startswith("error:")]
    assert len(errors) == 1 and "not a valid ONNX model" in errors[0], srv.lines
    assert not any("Traceback" in ln for ln in srv.lines)
