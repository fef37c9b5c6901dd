"""The server keeps answering when its parts fail: a batching loop that dies turns readiness false and
fails every waiting and later request at once (503), instead of leaving them to hang."""
from __future__ import annotations

import asyncio
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
