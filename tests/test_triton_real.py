"""sedeploy against the real Triton Inference Server (tritonserver 2.51 from the `nvidia-pytriton` wheel, its
Python backend; tests/support/triton.py), on the same model repository:
- the repository `triton-repo` writes for the onnxruntime backend: Triton's parser accepts its config (the only
  error is the onnxruntime backend library, absent from the wheel);
- the one `triton-repo --backend python` writes: Triton serves it, and the same tritonclient calls (HTTP
  binary and JSON, sync and asyncio, all or some outputs) get the same metadata, the same outputs and, where
  sedeploy decided so (README "Triton's answers"), the same status codes.
Skips, saying why, where the wheel cannot be installed. Marked slow: the first run builds the environment.
"""
from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from support import triton
from support.launch import ServerProcess

pytestmark = pytest.mark.slow
hc = pytest.importorskip("tritonclient.http", reason="tritonclient is not installed: pip install 'sedeploy[dev]'")


@pytest.fixture(scope="module")
def ready_env():
    why = triton.ensure_venv()
    if why:
        pytest.skip(why)


@pytest.fixture(scope="module")
def repos(fm_onnx, tmp_path_factory, ready_env):
    from sedeploy.export.triton import write_triton_repository
    d = tmp_path_factory.mktemp("triton")
    write_triton_repository(fm_onnx, d / "ort", name="fm", max_batch=8)
    write_triton_repository(fm_onnx, d / "py", name="fm", max_batch=8, backend="python")
    return d


@pytest.fixture(scope="module")
def servers(repos):
    with triton.Triton(repos / "py") as t, ServerProcess(["--model-repository", str(repos / "py")]) as s:
        yield {"triton": t.url, "sedeploy": s.address}


def test_triton_parses_the_onnxruntime_repository(repos):
    with triton.Triton(repos / "ort", wait_ready=False) as t:
        with urllib.request.urlopen(urllib.request.Request(f"http://{t.url}/v2/repository/index", method="POST"),
                                    timeout=10) as r:
            index = json.load(r)
        log = t.log()
    assert index and index[0]["name"] == "fm" and index[0]["state"] == "UNAVAILABLE"
    assert "unable to find backend library for backend 'onnxruntime'" in index[0]["reason"], index
    # the backend library is the only complaint: no text-format parse error, no config field refused
    assert index[0]["reason"].startswith("Invalid argument: unable to find backend library"), index
    assert "parse" not in log.lower() and "unexpected" not in log.lower(), log[-2000:]


def _infer(url, x, outputs=None, binary=True):
    c = hc.InferenceServerClient(url)
    i = hc.InferInput("input", list(x.shape), "FP32")
    i.set_data_from_numpy(x, binary_data=binary)
    outs = [hc.InferRequestedOutput(n, binary_data=binary) for n in outputs] if outputs else None
    r = c.infer("fm", [i], outputs=outs)
    got = {o["name"]: r.as_numpy(o["name"]) for o in r.get_response()["outputs"]}
    c.close()
    return got


def test_same_metadata_and_outputs_as_triton(servers):
    x = np.random.default_rng(0).normal(0, 1, (3, 1, 32, 32)).astype(np.float32)
    meta = {k: hc.InferenceServerClient(u).get_model_metadata("fm") for k, u in servers.items()}
    assert meta["sedeploy"] == meta["triton"]
    for outputs in (None, ["logits", "se3"]):
        for binary in (True, False):
            a, b = (_infer(servers[k], x, outputs, binary) for k in ("triton", "sedeploy"))
            assert sorted(a) == sorted(b) == sorted(outputs or ["logits", "se1", "se2", "se3", "feature_map"])
            for k in a:
                assert a[k].shape == b[k].shape and float(np.abs(a[k] - b[k]).max()) < 1e-5, k


def test_same_outputs_through_asyncio_clients(servers):
    import tritonclient.http.aio as aio
    x = np.random.default_rng(1).normal(0, 1, (2, 1, 32, 32)).astype(np.float32)

    async def one(url):
        c = aio.InferenceServerClient(url)
        i = aio.InferInput("input", list(x.shape), "FP32")
        i.set_data_from_numpy(x)
        r = await c.infer("fm", [i], outputs=[aio.InferRequestedOutput("logits")])
        await c.close()
        return r.as_numpy("logits")
    async def both():
        return await asyncio.wait_for(asyncio.gather(one(servers["triton"]), one(servers["sedeploy"])), 60)
    a, b = asyncio.run(both())
    assert float(np.abs(a - b).max()) < 1e-5


def _status(url, method, path, body=None, headers=None):
    req = urllib.request.Request(f"http://{url}{path}", data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


# (what, method, path, body, headers, sedeploy's status when it differs from Triton's on purpose)
CASES = [
    ("ready", "GET", "/v2/health/ready", None, None, None),
    ("live", "GET", "/v2/health/live", None, None, None),
    ("model ready", "GET", "/v2/models/fm/ready", None, None, None),
    ("unknown model metadata", "GET", "/v2/models/nope", None, None, None),
    ("unknown model infer", "POST", "/v2/models/nope/infer", b'{"inputs": []}', None, None),
    ("wrong input name", "POST", "/v2/models/fm/infer",
     json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1, 32, 32], "data": [0.0] * 1024}]}).encode(),
     None, None),
    ("wrong shape", "POST", "/v2/models/fm/infer",
     json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 32, 31], "data": [0.0] * 992}]}).encode(),
     None, None),
    ("wrong datatype", "POST", "/v2/models/fm/infer",
     json.dumps({"inputs": [{"name": "input", "datatype": "INT32", "shape": [1, 1, 32, 32], "data": [0] * 1024}]}).encode(),
     None, None),
    ("batch over max_batch_size", "POST", "/v2/models/fm/infer",
     json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [9, 1, 32, 32], "data": [0.0] * 9216}]}).encode(),
     None, None),
    ("unknown output", "POST", "/v2/models/fm/infer",
     json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 32, 32], "data": [0.0] * 1024}],
                 "outputs": [{"name": "nope"}]}).encode(), None, None),
    # decided difference (README): a client's malformed body is a 4xx, not Triton's 500
    ("malformed JSON", "POST", "/v2/models/fm/infer", b"{not json", None, 400),
    ("binary body without its header length", "POST", "/v2/models/fm/infer",
     json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 32, 32],
                             "parameters": {"binary_data_size": 4096}}]}).encode() + bytes(4096), None, None),
    # an unknown model's readiness: 404 Not Found (Triton: 400)
    ("unknown model ready", "GET", "/v2/models/nope/ready", None, None, 404),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_status_codes_as_decided(servers, case):
    what, method, path, body, headers, ours = case
    t = _status(servers["triton"], method, path, body, headers)
    s = _status(servers["sedeploy"], method, path, body, headers)
    if ours is None:
        assert s == t, (what, s, t)
    else:
        assert s == ours and t != ours, (what, s, t)
