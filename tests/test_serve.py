"""Serve without a socket: the protocol codec against tritonclient's own encoder/decoder, the dynamic
batcher's semantics, the app's error paths (starlette TestClient), the image endpoint vs `infer`, the
Triton repository checked with Triton's model_config protobuf, the CLI's errors."""
from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from conftest import assert_one_line_error
from sedeploy.core import tritonconfig as tc
from sedeploy.core.errors import UserError
from sedeploy.serve import protocol as P
from sedeploy.serve.batcher import DynamicBatcher, QueueFull, Stopped, take_batch

tritonclient_http = pytest.importorskip("tritonclient.http")
starlette_testclient = pytest.importorskip("starlette.testclient")


# ---------------------------------------------------------------- protocol codec vs tritonclient
def _inputs(x, binary=True):
    i = tritonclient_http.InferInput("input", list(x.shape), "FP32")
    i.set_data_from_numpy(x, binary_data=binary)
    return [i]


@pytest.mark.parametrize("binary", [True, False])
def test_protocol_parses_tritonclient_requests(binary):
    x = np.random.default_rng(0).normal(size=(3, 1, 32, 32)).astype(np.float32)
    outs = [tritonclient_http.InferRequestedOutput("se1", binary_data=False),
            tritonclient_http.InferRequestedOutput("logits", binary_data=True, class_count=2)]
    body, hl = tritonclient_http.InferenceServerClient.generate_request_body(_inputs(x, binary), outs, request_id="r7")
    req = P.parse_infer_request(body, None if hl is None else str(hl))
    assert req.id == "r7" and [t.name for t in req.inputs] == ["input"]
    np.testing.assert_array_equal(req.inputs[0].array, x)
    assert [(o.name, o.binary, o.classification) for o in req.outputs] == [("se1", False, 0), ("logits", True, 2)]
    # no outputs named: tritonclient asks for every output in binary
    body, hl = tritonclient_http.InferenceServerClient.generate_request_body(_inputs(x, binary))
    req = P.parse_infer_request(body, None if hl is None else str(hl))
    assert req.outputs is None and req.binary_default is True


def test_protocol_responses_decode_with_tritonclient():
    a = np.arange(20, dtype=np.float32).reshape(2, 10) / 7
    b = np.arange(6, dtype=np.int64).reshape(2, 3)
    cls = P.classify(a, 2, [f"c{i}" for i in range(10)])
    body, hl = P.encode_infer_response("m", "1", "id1", [("b", b, False), ("a", a, True), ("cls", cls, True)])
    res = tritonclient_http.InferResult.from_response_body(body, header_length=hl)
    assert res.get_response()["id"] == "id1"
    assert [o["name"] for o in res.get_response()["outputs"]] == ["b", "a", "cls"]   # request order kept
    np.testing.assert_array_equal(res.as_numpy("a"), a)
    np.testing.assert_array_equal(res.as_numpy("b"), b)
    assert res.as_numpy("cls")[0].tolist() == [b"1.285714:9:c9", b"1.142857:8:c8"]
    body, hl = P.encode_infer_response("m", "1", None, [("b", b, False)])
    assert hl is None and json.loads(body)["outputs"][0]["data"] == list(range(6))


def _binary(elements: int, declared: int, sent: int):
    """A binary FP32 request of `elements` values declaring `declared` bytes and carrying `sent`."""
    head = json.dumps({"inputs": [{"name": "x", "shape": [elements], "datatype": "FP32",
                                   "parameters": {"binary_data_size": declared}}]}).encode()
    return head + b"\0" * sent, str(len(head))


@pytest.mark.parametrize("body,header,needle", [
    (b"{not json", None, "malformed JSON"),
    (b"[1, 2]", None, "JSON object"),
    (b'{"inputs": []}', None, "non-empty 'inputs'"),
    (b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP99", "data": [1, 2]}]}', None, "unknown datatype"),
    (b'{"inputs": [{"name": "x", "shape": [-2], "datatype": "FP32", "data": [1]}]}', None, "non-negative"),
    (b'{"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2]}]}', None, "do not fill"),
    (b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": ["a", "b"]}]}', None, "not a (nested)"),
    (b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32"}]}', None, "neither 'data'"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]},'
     b' {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}', None, "given twice"),
    (*_binary(2, 8, 4), "runs past"),
    (*_binary(2, 4, 4), "does not match shape"),
    (*_binary(1, 4, 8), "belong to no input"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}', "abc", "must be an integer"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}', "9999", "outside the body"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}], "outputs": [{"name": "y"},'
     b' {"name": "y"}]}', None, "requested twice"),
])
def test_protocol_rejects_malformed_requests(body, header, needle):
    with pytest.raises(P.ProtocolError, match=re.escape(needle)) as e:
        P.parse_infer_request(body, header)
    assert e.value.status == 400


def test_protocol_bytes_tensors_round_trip():
    a = np.array([b"ab", b"", "h\u00e9".encode()], dtype=object)
    np.testing.assert_array_equal(P.decode_bytes(P.encode_bytes(a)), a)
    with pytest.raises(P.ProtocolError, match="inside an element"):
        P.decode_bytes(P.encode_bytes(a)[:-1])


# ---------------------------------------------------------------- dynamic batcher
class Recorder:
    """A model stand-in for the batcher's own logic: doubles its input, records each batch, optionally slow."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.batches, self.delay, self.fail = [], delay, fail
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, inputs):
        self.gate.wait(10)
        time.sleep(self.delay)
        self.batches.append(inputs["x"][:, 0].tolist())
        if self.fail:
            raise RuntimeError("boom")
        return {"y": inputs["x"] * 2, "n": np.full((len(inputs["x"]), 1), len(inputs["x"]))}


def _req(i: int, n: int = 1):
    return {"x": np.arange(i, i + n, dtype=np.float32)[:, None] * np.ones((n, 3), np.float32)}


def _run(coro):
    return asyncio.run(coro)


def test_batcher_fifo_max_batch_and_split():
    rec = Recorder()
    rec.gate.clear()          # hold the first batch so that the rest queue up behind it

    async def main():
        b = DynamicBatcher(rec, max_batch=4, max_delay_s=0.0, max_queue=100)
        b.start()
        sizes = [1, 2, 1, 3, 2, 1, 4]
        firsts = np.cumsum([0] + sizes[:-1]) * 10
        tasks = [asyncio.create_task(b.submit(_req(int(firsts[0]), 1), 1))]
        await asyncio.sleep(0.05)                      # the worker took it alone and waits on the gate
        tasks += [asyncio.create_task(b.submit(_req(int(f), n), n)) for f, n in zip(firsts[1:], sizes[1:])]
        await asyncio.sleep(0.05)
        rec.gate.set()
        outs = await asyncio.gather(*tasks)
        await b.stop()
        return sizes, firsts, outs, b
    sizes, firsts, outs, b = _run(main())
    for f, n, o in zip(firsts, sizes, outs):        # each request gets exactly its own rows back
        np.testing.assert_array_equal(o["y"][:, 0], 2 * np.arange(f, f + n))
    flat = [v for batch in rec.batches for v in batch]
    assert flat == [float(f + k) for f, n in zip(firsts, sizes) for k in range(n)]   # FIFO
    assert all(len(batch) <= 4 for batch in rec.batches)
    # the first request ran alone (nothing else was queued); then [2,1] (+3 does not fit), [3], [2,1], [4]
    assert [len(x) for x in rec.batches] == [1, 3, 3, 3, 4]
    assert b.stats.inference_count == sum(sizes) and b.stats.execution_count == 5


def test_batcher_delay_waits_for_a_batch_then_gives_up():
    """Checked by which requests ran together and by the batcher's own queue-time counters; wall time
    only bounds a wait that must not happen (10 s against a 1-hour delay), never a loaded machine's speed."""
    rec = Recorder()

    async def held():                                # max_delay 2 s: the second request, 0.05 s later, joins
        b = DynamicBatcher(rec, max_batch=8, max_delay_s=2.0, max_queue=100)
        b.start()
        first = asyncio.create_task(b.submit(_req(0), 1))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(b.submit(_req(1), 1))
        await asyncio.wait_for(asyncio.gather(first, second), 10)
        await b.stop()
        return b.stats
    st = _run(held())
    assert rec.batches == [[0.0, 1.0]] and st.execution_count == 1      # held for the second request
    assert st.queue.count == 2 and st.queue.ns >= 1.95e9     # the first waited max_delay (not for max_batch)

    async def alone():                               # nothing else comes: it gives up after max_delay, runs alone
        b = DynamicBatcher(rec, max_batch=8, max_delay_s=0.3, max_queue=100)
        b.start()
        out = await asyncio.wait_for(b.submit(_req(5), 1), 10)
        await b.stop()
        return out, b.stats
    out, st = _run(alone())
    assert rec.batches[1] == [5.0] and out["y"][0, 0] == 10.0
    assert st.queue.count == 1 and st.queue.ns >= 0.29e9

    async def full():                                # max_batch images queued: run at once, the delay is moot
        b = DynamicBatcher(rec, max_batch=8, max_delay_s=3600.0, max_queue=100)
        b.start()
        many = [asyncio.create_task(b.submit(_req(10 + i), 1)) for i in range(8)]
        await asyncio.wait_for(asyncio.gather(*many), 10)   # a batcher waiting for the delay times out here
        await b.stop()
        return b.stats
    st = _run(full())
    assert rec.batches[2] == [float(10 + i) for i in range(8)] and st.execution_count == 1


def test_batcher_zero_delay_and_no_batching():
    for batching, expect in ((True, [[0.0], [1.0, 2.0, 3.0]]), (False, [[0.0], [1.0], [2.0], [3.0]])):
        rec = Recorder()
        rec.gate.clear()

        async def main():
            b = DynamicBatcher(rec, max_batch=8, max_delay_s=0.0, max_queue=100, batching=batching)
            b.start()
            tasks = [asyncio.create_task(b.submit(_req(0), 1))]
            await asyncio.sleep(0.05)                  # taken alone; the rest queue while it runs
            tasks += [asyncio.create_task(b.submit(_req(i), 1)) for i in range(1, 4)]
            await asyncio.sleep(0.05)
            rec.gate.set()
            await asyncio.gather(*tasks)
            await b.stop()
        _run(main())
        assert rec.batches == expect, batching


def test_batcher_backpressure_cancellation_errors_and_drain():
    rec = Recorder()
    rec.gate.clear()

    async def main():
        b = DynamicBatcher(rec, max_batch=2, max_delay_s=0.0, max_queue=3)
        b.start()
        running = asyncio.create_task(b.submit(_req(0), 1))
        await asyncio.sleep(0.05)                       # taken by the worker, blocked on the gate
        queued = [asyncio.create_task(b.submit(_req(i), 1)) for i in (1, 2, 3)]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull, match="queue is full"):
            await b.submit(_req(4), 1)                   # refused at once, nothing else disturbed
        with pytest.raises(ValueError, match="exceeds"):
            await b.submit(_req(5, 3), 3)
        queued[0].cancel()                               # a client that went away: its work is skipped
        stopping = asyncio.create_task(b.stop())         # drain: finish everything accepted
        await asyncio.sleep(0.01)
        with pytest.raises(Stopped):
            await b.submit(_req(6), 1)
        rec.gate.set()
        await stopping
        return running.result(), [q.result() for q in queued[1:]]
    first, rest = _run(main())
    assert first["y"][0, 0] == 0 and [r["y"][0, 0] for r in rest] == [4.0, 6.0]
    assert [v for batch in rec.batches for v in batch] == [0.0, 2.0, 3.0]   # request 1 was cancelled
    failing = Recorder(fail=True)

    async def fails():
        b = DynamicBatcher(failing, max_batch=4, max_delay_s=0.0)
        b.start()
        with pytest.raises(RuntimeError, match="boom"):
            await b.submit(_req(0), 1)
        await b.stop()
    _run(fails())


def test_take_batch_keeps_order():
    from collections import deque
    from sedeploy.serve.batcher import _Request
    loop = asyncio.new_event_loop()
    q = deque(_Request({}, n, loop.create_future(), 0.0) for n in (3, 3, 1))
    assert [r.n for r in take_batch(q, 4)] == [3]      # 3 + 3 > 4: the batch closes, the 1 does not jump ahead
    assert [r.n for r in take_batch(q, 4)] == [3, 1]
    loop.close()


# ---------------------------------------------------------------- the app in-process (TestClient)
@pytest.fixture(scope="module")
def client(fm_onnx):
    from support.app import app_client
    with app_client(fm_onnx) as c:
        yield c


def _infer_json(shape=(1, 1, 32, 32), name="input", datatype="FP32", data=None):
    n = int(np.prod(shape))
    return {"inputs": [{"name": name, "shape": list(shape), "datatype": datatype,
                        "data": data if data is not None else [0.5] * n}]}


def _is_error(r, status, needle):
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and needle.lower() in body["error"].lower(), body
    assert "Traceback" not in r.text


@pytest.mark.parametrize("path,body,status,needle", [
    ("/v2/models/fm/infer", _infer_json(shape=(1, 3, 32, 32)), 400, "unexpected shape"),
    ("/v2/models/fm/infer", _infer_json(datatype="FP64"), 400, "data-type is 'FP64'"),
    ("/v2/models/fm/infer", _infer_json(name="image"), 400, "unexpected inference input 'image'"),
    ("/v2/models/fm/infer", _infer_json(shape=(5, 1, 32, 32)), 400, "batch-size must be <= 4"),
    ("/v2/models/fm/infer", {**_infer_json(), "outputs": [{"name": "probs"}]}, 400, "output 'probs'"),
    ("/v2/models/nope/infer", _infer_json(), 404, "unknown model 'nope'"),
    ("/v2/models/fm/versions/2/infer", _infer_json(), 404, "unknown version '2'"),
    ("/v3/models/fm/infer", _infer_json(), 404, "no route"),
])
def test_app_rejects_bad_requests(client, path, body, status, needle):
    _is_error(client.post(path, json=body), status, needle)
    r = client.post("/v2/models/fm/infer", json=_infer_json())     # and still serves correct answers
    assert r.status_code == 200 and r.json()["outputs"][0]["shape"][0] == 1


def test_app_errors_for_raw_bodies_methods_and_limits(client):
    _is_error(client.post("/v2/models/fm/infer", content=b"{oops"), 400, "malformed JSON")
    head = json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 32, 32], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 4096}}]}).encode()
    r = client.post("/v2/models/fm/infer", content=head + b"\0" * 4000,
                    headers={P.HEADER_LENGTH: str(len(head))})
    _is_error(r, 400, "runs past")
    _is_error(client.get("/v2/models/fm/infer"), 405, "not allowed")
    _is_error(client.delete("/v2/models/fm"), 405, "not allowed")
    _is_error(client.post("/v2/models/fm/infer", content=b"x" * ((1 << 20) + 1)), 413, "limit")

    def chunks():       # no Content-Length: counted as it arrives
        for _ in range(40):
            yield b"y" * 65536
    _is_error(client.post("/v2/models/fm/infer", content=chunks()), 413, "limit")
    _is_error(client.post("/v2/models/fm/infer", content=b"{}", headers={"content-encoding": "br"}), 415, "gzip")
    import gzip
    r = client.post("/v2/models/fm/infer", content=gzip.compress(json.dumps(_infer_json()).encode()),
                    headers={"content-encoding": "gzip"})
    assert r.status_code == 200
    bomb = gzip.compress(b" " * (3 << 20))             # 3 MiB of spaces: small on the wire, over the limit inflated
    _is_error(client.post("/v2/models/fm/infer", content=bomb, headers={"content-encoding": "gzip"}), 413, "limit")


def test_app_metadata_config_and_readiness(client, fm_onnx):
    from onnxruntime import InferenceSession
    sess = InferenceSession(str(fm_onnx), providers=["CPUExecutionProvider"])
    meta = client.get("/v2/models/fm").json()
    assert meta == client.get("/v2/models/fm/versions/1").json()
    assert meta["platform"] == "onnxruntime_onnx" and meta["versions"] == ["1"]
    assert [(t["name"], t["shape"]) for t in meta["outputs"]] == [
        (o.name, [-1, *o.shape[1:]]) for o in sess.get_outputs()]
    cfg = client.get("/v2/models/fm/config").json()
    assert cfg["max_batch_size"] == 4 and cfg["input"][0]["dims"] == list(sess.get_inputs()[0].shape[1:])
    assert client.get("/v2").json()["extensions"][0] == "binary_tensor_data"
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/models/fm/ready").status_code == 200
    assert client.post("/v2/repository/index").json()[0]["state"] == "READY"
    client.app_state.draining = True                 # as after SIGTERM: not ready, so balancers stop sending
    try:
        _is_error(client.get("/v2/health/ready"), 503, "shutting down")
        _is_error(client.get("/v2/models/fm/ready"), 503, "shutting down")
    finally:
        client.app_state.draining = False
    assert client.get("/v2/health/ready").status_code == 200


def test_app_not_ready_while_loading(fm_onnx):
    from sedeploy.serve.app import create_app
    from sedeploy.serve.model import ModelSpec, ServedModel
    gate = threading.Event()

    class SlowLoad(ServedModel):      # the real load, held back until the test has looked
        def load(self):
            gate.wait(10)
            super().load()
    app = create_app([SlowLoad(ModelSpec("fm", fm_onnx), "cpu")])
    with starlette_testclient.TestClient(app) as c:
        _is_error(c.get("/v2/health/ready"), 503, "not ready: fm")
        _is_error(c.post("/v2/models/fm/infer", json=_infer_json()), 503, "loading")
        assert c.get("/v2/health/live").status_code == 200
        gate.set()
        for _ in range(200):
            if c.get("/v2/health/ready").status_code == 200:
                break
            time.sleep(0.05)
        assert c.post("/v2/models/fm/infer", json=_infer_json()).status_code == 200


# ---------------------------------------------------------------- image endpoint == sedeploy infer
def test_image_endpoint_matches_infer(client, fm_onnx, tmp_path):
    from test_runtime import sample_images
    from sedeploy.runtime.predictor import Predictor
    files = sample_images(tmp_path)
    ref = Predictor(fm_onnx, "cpu").predict(files, topk=3)
    for f, want in zip(files, ref):
        raw = client.post("/v2/models/fm/classify?topk=3", content=f.read_bytes()).json()
        form = client.post("/v2/models/fm/classify?topk=3", files={"image": (f.name, f.read_bytes())}).json()
        for got in (raw, form):
            assert [t["label"] for t in got["top"]] == [t.label for t in want.top], f.name
            np.testing.assert_allclose([t["prob"] for t in got["top"]], [t.prob for t in want.top], atol=1e-5)
        assert form["image"] == f.name


def test_image_endpoint_heatmaps(client, tmp_path):
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(1).random((300, 400, 3)) * 255).astype(np.uint8)).save(buf, "JPEG")
    r = client.post("/v2/models/fm/classify?heatmaps=base64&channels=4", content=buf.getvalue()).json()
    assert set(r["heatmaps"]) == {"heatmap", "channels", "se"} and r["method"] == "head-cam"
    assert len(r["top_channels"]["se3"]) == 4
    for uri in r["heatmaps"].values():
        im = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
        assert im.format == "PNG" and im.size[0] > 100
    r = client.post("/v2/models/fm/classify?heatmaps=url", content=buf.getvalue()).json()
    png = client.get(r["heatmaps"]["se"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    _is_error(client.get("/heatmaps/0123/se.png"), 404, "expired")


@pytest.mark.parametrize("content,query,status,needle", [
    (b"hello, not an image", "", 400, "not an image"),
    (b"", "", 400, "0 bytes"),
    ("truncated", "", 400, "truncated"),
    (b"x", "?topk=0", 400, "between 1"),
    (b"x", "?heatmaps=svg", 400, "choose one of"),
])
def test_image_endpoint_rejects(client, content, query, status, needle):
    if content == "truncated":
        buf = io.BytesIO()
        Image.fromarray((np.random.default_rng(2).random((64, 64)) * 255).astype(np.uint8)).save(buf, "PNG")
        content = buf.getvalue()[:300]
    _is_error(client.post("/v2/models/fm/classify" + query, content=content), status, needle)


def test_image_endpoint_form_without_file(client):
    r = client.post("/v2/models/fm/classify", files={"note": (None, "no file here")})   # multipart, no file part
    _is_error(r, 400, "no file")


# ---------------------------------------------------------------- Triton repository
def test_triton_repository_matches_graph(fm_onnx, tmp_path):
    import onnx
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2
    from sedeploy.export.triton import onnx_tensors, write_triton_repository
    d = write_triton_repository(fm_onnx, tmp_path / "repo", name="fm", max_batch=16, max_delay_us=250, max_queue=64)
    text = (d / "config.pbtxt").read_text()
    cfg = text_format.Parse(text, model_config_pb2.ModelConfig())       # Triton's own schema
    model = onnx.load(str(d / "1" / "model.onnx"))
    inputs, outputs = onnx_tensors(model)
    assert cfg.name == "fm" and cfg.platform == "onnxruntime_onnx" and cfg.backend == "onnxruntime"
    assert cfg.max_batch_size == 16 and cfg.default_model_filename == "model.onnx"
    graph_in = [(i.name, list(i.type.tensor_type.shape.dim)) for i in model.graph.input]
    assert [i.name for i in cfg.input] == [n for n, _ in graph_in]
    for c, (name, dims) in zip(cfg.input, graph_in):
        assert list(c.dims) == [d.dim_value for d in dims[1:]] and dims[0].dim_param   # batch axis left out
        assert c.data_type == model_config_pb2.TYPE_FP32
    assert [(o.name, list(o.dims)) for o in cfg.output] == [
        (o.name, [d.dim_value for d in o.type.tensor_type.shape.dim[1:]]) for o in model.graph.output]
    assert cfg.output[0].label_filename == "labels.txt"
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 250
    assert cfg.dynamic_batching.default_queue_policy.max_queue_size == 64
    assert [(g.kind, g.count) for g in cfg.instance_group] == [(model_config_pb2.ModelInstanceGroup.KIND_CPU, 1)]
    meta = {p.key: p.value for p in model.metadata_props}
    assert (d / "labels.txt").read_text().splitlines() == json.loads(meta["sedeploy.classes"])
    assert (d / "1" / "model.onnx").read_bytes() == fm_onnx.read_bytes()          # metadata and all
    assert len(inputs) == 1 and outputs[0].name == "logits"
    # our schema-free reader agrees with protobuf's parse
    pb = json_format.MessageToDict(cfg, preserving_proto_field_name=True)
    ours = tc.parse_pbtxt(text)
    assert _same_config(pb, ours)
    gpu = write_triton_repository(fm_onnx, tmp_path / "repo", name="fm-gpu", instance_kind="gpu", count=2)
    g = text_format.Parse((gpu / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()).instance_group[0]
    assert (g.kind, g.count) == (model_config_pb2.ModelInstanceGroup.KIND_GPU, 2)


def _same_config(pb: dict, ours: dict) -> bool:
    """protobuf's JSON writes int64 as strings; compare with every number as a string."""
    norm = lambda v: {k: norm(x) for k, x in v.items()} if isinstance(v, dict) else \
        [norm(x) for x in v] if isinstance(v, list) else str(v)  # noqa: E731
    return norm(pb) == norm(ours)


def test_triton_repo_cli(run_cli, fm_onnx, tmp_path):
    res = run_cli("triton-repo", fm_onnx, "--out", tmp_path / "r")
    assert res.code == 0 and "serve --model-repository" in res.out
    assert (tmp_path / "r" / "model" / "config.pbtxt").exists()
    assert_one_line_error(run_cli("triton-repo", fm_onnx, "--out", tmp_path / "r"), "already exists", "--force")
    assert run_cli("triton-repo", fm_onnx, "--out", tmp_path / "r", "--force", "--max-batch", "4").code == 0
    assert "max_batch_size: 4" in (tmp_path / "r" / "model" / "config.pbtxt").read_text()
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["model"]    # no temporary folders left
    assert_one_line_error(run_cli("triton-repo", tmp_path / "none.onnx", "--out", tmp_path / "r"), "does not exist")
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    assert_one_line_error(run_cli("triton-repo", tmp_path / "bad.onnx", "--out", tmp_path / "r2"), "not a valid ONNX")
    assert not (tmp_path / "r2").exists() or not any((tmp_path / "r2").iterdir())
    assert_one_line_error(run_cli("triton-repo", fm_onnx, "--out", tmp_path / "r", "--name", "a/b"), "model name")
    assert_one_line_error(run_cli("triton-repo", fm_onnx, "--out", tmp_path / "r", "--instance", "tpu"), "cpu, gpu")
    assert "Examples" in run_cli("triton-repo", "--help").out


def test_repository_reader_errors(fm_onnx, tmp_path):
    from sedeploy.export.triton import write_triton_repository
    from sedeploy.serve.repository import read_repository
    with pytest.raises(UserError, match="not a directory"):
        read_repository(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no model folders"):
        read_repository(tmp_path / "empty")
    d = write_triton_repository(fm_onnx, tmp_path / "repo", name="fm")
    (d / "2").mkdir()        # an empty newer version is not a version
    specs = read_repository(tmp_path / "repo")
    assert [(s.name, s.version, s.config["max_batch_size"]) for s in specs] == [("fm", "1", 8)]
    (d / "config.pbtxt").write_text('name: "other"\n')
    with pytest.raises(UserError, match="differs from its folder"):
        read_repository(tmp_path / "repo")
    (d / "config.pbtxt").write_text('platform: "tensorflow_savedmodel"\n')
    with pytest.raises(UserError, match="ONNX models only"):
        read_repository(tmp_path / "repo")
    (d / "config.pbtxt").write_text("max_batch_size: {")
    with pytest.raises(UserError, match="not a readable model config"):
        read_repository(tmp_path / "repo")


def test_config_must_match_the_model(fm_onnx, tmp_path):
    from sedeploy.export.triton import write_triton_repository
    from sedeploy.serve.model import ServedModel
    from sedeploy.serve.repository import read_repository
    d = write_triton_repository(fm_onnx, tmp_path / "repo", name="fm")
    text = (d / "config.pbtxt").read_text()
    (d / "config.pbtxt").write_text(text.replace("dims: [ 10 ]", "dims: [ 12 ]"))
    m = ServedModel(read_repository(tmp_path / "repo")[0], "cpu")
    with pytest.raises(UserError, match=r"'logits' is TYPE_FP32 \[12\]"):
        m.load()


# ---------------------------------------------------------------- CLI and torch-freedom
def test_serve_cli_errors(run_cli, fm_onnx, tmp_path):
    assert_one_line_error(run_cli("serve", "--model", tmp_path / "x.onnx"), "does not exist")
    assert_one_line_error(run_cli("serve", "--model", fm_onnx, "--model-repository", tmp_path), "not both")
    assert_one_line_error(run_cli("serve", "--model", f"a={fm_onnx}", "--model", f"a={fm_onnx}"), "two models")
    assert_one_line_error(run_cli("serve", "--model", f"a b={fm_onnx}"), "model name")
    assert_one_line_error(run_cli("serve", "--model", fm_onnx, "--max-batch", "0"), "--max-batch")
    assert_one_line_error(run_cli("serve", "--model", fm_onnx, "--port", "70000"), "--port")
    assert_one_line_error(run_cli("serve", "--model", fm_onnx, "--provider", "tpu"), "--provider", "'auto', 'cpu', 'cuda'")
    assert_one_line_error(run_cli("serve", "--model", fm_onnx, "--precision", "int4"), "--precision", "'fp32'")
    assert_one_line_error(run_cli("serve", "--model-repository", tmp_path / "nope"), "not a directory")
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        assert_one_line_error(run_cli("serve", "--model", fm_onnx, "--port", s.getsockname()[1]), "in use")
    assert "Examples" in run_cli("serve", "--help").out


def test_serve_package_is_torch_free(fm_onnx, tmp_path):
    code = ("import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n"
            "import sedeploy.serve.app, sedeploy.serve.server, sedeploy.serve.repository\n"
            "from sedeploy.export.triton import write_triton_repository\n"
            f"print(write_triton_repository({str(fm_onnx)!r}, {str(tmp_path / 'r')!r}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "r" / "model" / "1" / "model.onnx").exists()


def test_fixed_batch_model(trained_fm, tmp_path):
    """A model exported with a fixed batch: max_batch_size 0 and full dims, as Triton requires; served unbatched."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2
    from sedeploy.export.exporter import ExportOptions, export_checkpoint
    from sedeploy.export.triton import write_triton_repository
    from sedeploy.serve.app import create_app
    from sedeploy.serve.model import ServedModel
    from sedeploy.serve.repository import read_repository
    export_checkpoint(str(trained_fm / "best.pt"), str(tmp_path), ExportOptions(formats=("onnx",), batch=2,
                                                                                 simplify=False), log=lambda s: None)
    d = write_triton_repository(tmp_path / "model.onnx", tmp_path / "repo", name="fixed")
    cfg = text_format.Parse((d / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert cfg.max_batch_size == 0 and list(cfg.input[0].dims) == [2, 1, 32, 32]
    assert not cfg.HasField("dynamic_batching")
    app = create_app([ServedModel(read_repository(tmp_path / "repo")[0], "cpu")])
    with starlette_testclient.TestClient(app) as c:
        for _ in range(200):
            if c.get("/v2/health/ready").status_code == 200:
                break
            time.sleep(0.05)
        assert c.get("/v2/models/fixed").json()["inputs"][0]["shape"] == [2, 1, 32, 32]
        r = c.post("/v2/models/fixed/infer", json=_infer_json(shape=(2, 1, 32, 32)))
        assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [2, 10]
        _is_error(c.post("/v2/models/fixed/infer", json=_infer_json()), 400, "Expected [2, 1, 32, 32]")
        buf = io.BytesIO()
        Image.new("L", (28, 28), 128).save(buf, "PNG")
        assert len(c.post("/v2/models/fixed/classify?topk=2", content=buf.getvalue()).json()["top"]) == 2
