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
    starlette_testclient = pytest.importorskip("starlette.testclient", reason="the serve extra is not installed")
    from sedeploy.serve.app import create_app
    from sedeploy.serve.model import ModelSpec, ServedModel
    m = ServedModel(ModelSpec("fm", fm_onnx, max_batch=4), "cpu")
    app = create_app([m], max_body=1 << 20)
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 32, 32], "data": [0.0] * 1024}]}
    with starlette_testclient.TestClient(app, raise_server_exceptions=False) as c:
        for _ in range(200):
            if c.get("/v2/health/ready").status_code == 200:
                break
            time.sleep(0.05)
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
