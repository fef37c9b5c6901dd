"""The server keeps answering when its parts fail and its memory under hostile requests: a batching loop that
dies turns readiness false and fails every waiting and later request at once (503), instead of leaving them
to hang; bodies, decodes, JSON parts and tensors are bounded before the work they cost is done."""
from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from sedeploy.serve import batcher as bt


def test_a_dead_batching_loop_fails_waiting_and_later_requests_at_once(monkeypatch):
    told = []

    def broken(*a, **k):
        raise RuntimeError("planted failure in the loop")

    async def main():
        b = bt.DynamicBatcher(lambda x: x, max_batch=4, max_delay_s=0.05)
        b.on_death = told.append
        monkeypatch.setattr(bt, "take_batch", broken)
        b.start()
        t0 = time.monotonic()
        with pytest.raises(bt.Stopped, match="batching loop stopped"):
            await asyncio.wait_for(b.submit({"x": np.zeros((1, 2))}, 1), 5)
        waited = time.monotonic() - t0
        with pytest.raises(bt.Stopped, match="not serving"):
            await b.submit({"x": np.zeros((1, 2))}, 1)
        await asyncio.wait_for(b.stop(), 5)                 # stop() of a dead batcher returns too
        return waited
    assert asyncio.run(main()) < 1.0
    assert len(told) == 1 and "planted failure" in told[0]


def test_a_stopped_batcher_is_not_dead():
    async def main():
        b = bt.DynamicBatcher(lambda x: x, max_batch=4)
        b.on_death = lambda why: pytest.fail(f"told of a death on a clean stop: {why}")
        b.start()
        out = await b.submit({"x": np.ones((1, 2))}, 1)
        await b.stop()
        return b.dead, out
    dead, out = asyncio.run(main())
    assert dead is None and out["x"].shape == (1, 2)


def test_the_app_turns_not_ready_and_answers_503_when_the_loop_dies(fm_onnx):
    pytest.importorskip("starlette.testclient", reason="the serve extra is not installed")
    from support.app import app_client
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 32, 32], "data": [0.0] * 1024}]}
    with app_client(fm_onnx) as c:
        m = c.model
        assert c.post("/v2/models/fm/infer", json=body).status_code == 200
        c.portal.call(lambda: m.batcher._task.cancel())       # the loop ends unasked
        for _ in range(100):
            if c.get("/v2/health/ready").status_code == 503:
                break
            time.sleep(0.02)
        assert c.get("/v2/health/ready").status_code == 503
        assert c.get("/v2/models/fm/ready").status_code == 503
        t0 = time.monotonic()
        r = c.post("/v2/models/fm/infer", json=body)
        assert r.status_code == 503 and time.monotonic() - t0 < 2, r.text


def _peak_rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def flood(fm_onnx, extra_args, n_bodies=24, n_huge=8):
    """A server (8 MB bodies) under many large image bodies and huge-in-pixels images at once: statuses
    and the server's peak resident memory above its idle level (MB)."""
    import http.client
    import io
    import threading
    from PIL import Image
    from support.launch import ServerProcess
    noise = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1500, 1500, 3), dtype=np.uint8)).save(noise, "PNG")
    huge = io.BytesIO()
    Image.new("RGB", (6300, 6300), (90, 120, 200)).save(huge, "PNG")       # 39.7 MP: 119 MB decoded, 0.1 MB sent
    bodies = [noise.getvalue()] * n_bodies + [huge.getvalue()] * n_huge
    statuses = []
    with ServerProcess(["--model", f"fm={fm_onnx}", "--max-body-mb", "8", *extra_args]) as srv:
        idle = _peak_rss_mb(srv.proc.pid)
        host, port = srv.address.rsplit(":", 1)
        go = threading.Barrier(len(bodies))

        def post(body):
            c = http.client.HTTPConnection(host, int(port), timeout=120)
            go.wait()
            try:
                c.request("POST", "/v2/models/fm/classify?heatmaps=base64", body, {"Content-Type": "image/png"})
                statuses.append(c.getresponse().status)
            except (ConnectionError, http.client.HTTPException):
                statuses.append("reset")
            finally:
                c.close()
        threads = [threading.Thread(target=post, args=(b,)) for b in bodies]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        peak = _peak_rss_mb(srv.proc.pid) - idle
        c = http.client.HTTPConnection(host, int(port), timeout=30)       # and it still answers
        c.request("POST", "/v2/models/fm/classify", huge.getvalue(), {"Content-Type": "image/png"})
        after = c.getresponse().status
        c.close()
    return statuses, peak, after


CEILING_MB = 1000   # above idle: 32 MB of bodies + 2 decodes of a 119 MB image and their copies, with room


@pytest.mark.slow
def test_many_large_bodies_and_huge_images_keep_memory_bounded(fm_onnx):
    statuses, peak, after = flood(fm_onnx, ["--max-inflight-mb", "32", "--max-decodes", "2"])
    print(f"\nbounded: peak RSS +{peak:.0f} MB over idle; answers {sorted(set(statuses), key=str)}: "
          f"{ {s: statuses.count(s) for s in set(statuses)} }")
    assert set(statuses) <= {200, 413, 503} and 200 in statuses and 503 in statuses, statuses
    assert peak < CEILING_MB, peak
    assert after == 200


def test_the_model_loading_thread_does_not_outlive_shutdown(fm_onnx):
    """(from the harden branch) A shutdown during a slow load waits for the loading thread."""
    import threading
    starlette_testclient = pytest.importorskip("starlette.testclient")
    from sedeploy.serve.app import create_app
    from sedeploy.serve.model import ModelSpec, ServedModel

    class SlowModel(ServedModel):
        def load(self):
            self.started.set()
            time.sleep(1.0)
            self.loaded_by = threading.current_thread()
            self.finished = True

    m = SlowModel(ModelSpec("fm", fm_onnx), "cpu")
    m.finished, m.started = False, threading.Event()
    with starlette_testclient.TestClient(create_app([m])):
        assert m.started.wait(10)          # the load is under way on its thread
    assert m.finished and not m.loaded_by.is_alive()


# ---------------------------------------------------------------- work bounded before it is done
def test_the_json_part_is_bounded_before_it_is_parsed():
    """JSON numbers cost ~10x their bytes as Python objects and hold the event loop while parsed: a JSON
    part over max_header is refused (413) before json.loads sees it, in both body forms."""
    from sedeploy.serve.protocol import ProtocolError, parse_infer_request
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [4], "data": [0.5] * 4}]}).encode()
    assert parse_infer_request(body, max_header=len(body)).inputs[0].array.shape == (4,)
    for header, json_bytes in ((None, len(body) + 100), (str(len(body)), len(body))):
        with pytest.raises(ProtocolError, match=f"JSON is {json_bytes} bytes.*at most {len(body) - 1} in JSON") as e:
            parse_infer_request(body + b"[" * 100, header, max_header=len(body) - 1)   # not even valid JSON
        assert e.value.status == 413


def test_each_input_is_checked_against_the_model_before_its_data_is_decoded():
    from sedeploy.serve.protocol import ProtocolError, parse_infer_request
    seen = []

    def model_check(name, datatype, shape):
        seen.append((name, datatype, shape))
        if datatype != "FP32":
            raise ProtocolError(f"model takes FP32, not {datatype}")
    # BYTES of 16 M empty elements: the check refuses it before one element is made (it took seconds)
    head = json.dumps({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [2**24],
                                   "parameters": {"binary_data_size": 2**26}}]}).encode()
    t0 = time.perf_counter()
    with pytest.raises(ProtocolError, match="model takes FP32, not BYTES"):
        parse_infer_request(head + bytes(2**26), str(len(head)), check_input=model_check)
    assert time.perf_counter() - t0 < 0.5 and seen == [("x", "BYTES", [2**24])]
    # JSON data that does not parse as numbers is never looked at for a tensor the model refuses
    with pytest.raises(ProtocolError, match="not INT8"):
        parse_infer_request(b'{"inputs": [{"name": "x", "datatype": "INT8", "shape": [1], "data": "oops"}]}',
                            check_input=model_check)


def test_bytes_tensors_stop_at_the_declared_count():
    import struct
    from sedeploy.serve.protocol import ProtocolError, decode_bytes, decode_tensor
    raw = struct.pack("<I", 0) * 10
    assert decode_bytes(raw, 10).tolist() == [b""] * 10
    with pytest.raises(ProtocolError, match="more than the 3 elements"):
        decode_bytes(raw, 3)
    with pytest.raises(ProtocolError, match="cannot hold the 11 BYTES elements"):
        decode_tensor("x", "BYTES", [11], raw=raw)
    with pytest.raises(ProtocolError, match="more than the 2 elements"):
        decode_tensor("x", "BYTES", [2], raw=raw)


def test_the_model_bounds_requests_by_its_own_inputs(fm_onnx):
    pytest.importorskip("starlette.testclient", reason="the serve extra is not installed")
    from support.app import app_client
    from sedeploy.serve.model import JSON_BYTES_PER_VALUE, JSON_SLACK
    with app_client(fm_onnx, max_batch=4) as c:
        cap = c.model.max_json_bytes(1 << 20)
        assert cap == JSON_SLACK + JSON_BYTES_PER_VALUE * 4 * 32 * 32
        assert c.model.max_json_bytes(1000) == 1000
        full = {"name": "input", "datatype": "FP32", "shape": [4, 1, 32, 32],
                "data": [-1.2345678901234567e-05] * 4096}          # the largest request, long numbers, indented
        assert len(json.dumps({"inputs": [full]}, indent=8)) < cap
        r = c.post("/v2/models/fm/infer", content=json.dumps({"inputs": [full]}, indent=8))
        assert r.status_code == 200, r.text
        r = c.post("/v2/models/fm/infer", content=b'{"inputs": []' + b" " * cap + b"}")
        assert r.status_code == 413 and "send fewer or binary tensors" in r.json()["error"]
        head = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [2**40, 1, 32, 32],
                                       "parameters": {"binary_data_size": 4096}}]}).encode()
        r = c.post("/v2/models/fm/infer", content=head + bytes(4096), headers={"Inference-Header-Content-Length":
                                                                                str(len(head))})
        assert r.status_code == 400 and "batch-size must be <= 4" in r.json()["error"]


def test_hostile_bodies_neither_stall_the_event_loop_nor_swell_memory(fm_onnx):
    """20 MB bodies of JSON numbers and of empty BYTES elements at once: before the bounds, each held the event
    loop for 1-25 s (health answers waited that long) and took ~10x its size in Python objects."""
    import http.client
    import threading
    from support.launch import ServerProcess
    n = 20 << 20
    floats = b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,1,32,32],"data":[' + b"0.5," * (n // 4) + b"0]}]}"
    head = json.dumps({"inputs": [{"name": "input", "datatype": "BYTES", "shape": [n // 4],
                                   "parameters": {"binary_data_size": n}}]}).encode()
    bodies = [(floats, {})] * 3 + [(head + bytes(n), {"Inference-Header-Content-Length": str(len(head))})] * 3
    statuses, waits = [], []
    with ServerProcess(["--model", f"fm={fm_onnx}", "--max-body-mb", "24", "--max-inflight-mb", "150"]) as srv:
        idle = _peak_rss_mb(srv.proc.pid)
        host, port = srv.address.rsplit(":", 1)
        sending = threading.Event()

        def post(body, headers):
            c = http.client.HTTPConnection(host, int(port), timeout=120)
            try:
                sending.set()
                c.request("POST", "/v2/models/fm/infer", body, headers)
                statuses.append(c.getresponse().status)
            finally:
                c.close()

        def probe():
            sending.wait(10)
            for _ in range(30):
                c = http.client.HTTPConnection(host, int(port), timeout=120)
                t0 = time.perf_counter()
                c.request("GET", "/v2/health/live")
                c.getresponse().read()
                waits.append(time.perf_counter() - t0)
                c.close()
                time.sleep(0.05)
        threads = [threading.Thread(target=post, args=b) for b in bodies] + [threading.Thread(target=probe)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        peak = _peak_rss_mb(srv.proc.pid) - idle
    print(f"\nhostile bodies: answers {sorted(statuses)}, longest health wait {max(waits) * 1000:.0f} ms, "
          f"peak RSS +{peak:.0f} MB")
    assert sorted(statuses) == [400] * 3 + [413] * 3, statuses
    assert max(waits) < 1.5, waits
    assert peak < 300, peak
