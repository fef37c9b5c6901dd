"""Property-based fuzzing of the Open Inference Protocol parser (hypothesis): random JSON headers, shapes
(huge, overflowing, many dimensions), datatypes, data, binary lengths and parameters, in the JSON and the
binary (Inference-Header-Content-Length) forms. Every case is answered by a correct result (each input an
array of its declared shape and datatype, the binary bytes used exactly) or a ProtocolError with a 4xx
status and a one-line message, never another exception; through the ASGI app, never a 500.
Deterministic (derandomize) so that `make test` is repeatable; the case counts are printed with -s.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed: pip install 'sedeploy[dev]'")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sedeploy.serve.protocol import (DATATYPES, HEADER_LENGTH, InferRequest, ProtocolError,  # noqa: E402
                                     element_count, parse_infer_request)

SEEN = {"parser": 0, "accepted": 0, "app": 0, "bounded": 0}
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                      st.text(max_size=6))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=5), inner, max_size=4)),
                          max_leaves=12)
dim = st.one_of(st.integers(0, 4), st.sampled_from([2**31, 2**32, 2**63, 2**64, 10**30]), st.integers(-3, -1),
                json_leaf)
shape = st.one_of(st.lists(dim, max_size=5), st.lists(st.integers(1, 2), min_size=30, max_size=70), json_leaf)
datatype = st.one_of(st.sampled_from(sorted(DATATYPES)), st.text(max_size=5), json_leaf)


@st.composite
def tensor(draw):
    t = {}
    if draw(st.booleans()) or draw(st.booleans()):
        t["name"] = draw(st.one_of(st.sampled_from(["input", "x", ""]), json_leaf))
    if draw(st.integers(0, 9)):
        t["datatype"] = draw(datatype)
    if draw(st.integers(0, 9)):
        t["shape"] = draw(shape)
    kind = draw(st.sampled_from(["data", "binary", "both", "none", "match"]))
    if kind in ("data", "both"):
        t["data"] = draw(json_value)
    if kind in ("binary", "both"):
        t["parameters"] = {"binary_data_size": draw(st.one_of(st.integers(-2, 64), json_leaf))}
    if kind == "match" and t.get("datatype") in DATATYPES and isinstance(t.get("shape"), list) \
            and all(isinstance(d, int) and 0 <= d <= 4 for d in t["shape"]) and t["datatype"] != "BYTES" \
            and element_count(t["shape"]) <= 64:
        n = element_count(t["shape"])
        t["data"] = draw(st.lists(st.integers(0, 1) if t["datatype"] != "BOOL" else st.booleans(),
                                  min_size=n, max_size=n))
    if draw(st.integers(0, 4)) == 0:
        t["parameters"] = draw(json_value)
    return t


@st.composite
def request(draw):
    """(body bytes, Inference-Header-Content-Length or None)."""
    req = {}
    if draw(st.integers(0, 9)):
        req["inputs"] = draw(st.one_of(st.lists(tensor(), min_size=1, max_size=3), json_value))
    for key in ("outputs", "parameters", "id"):
        if draw(st.integers(0, 3)) == 0:
            req[key] = draw(json_value)
    if draw(st.integers(0, 5)) == 0:
        head = draw(st.binary(max_size=40))                  # not JSON at all
    else:
        head = json.dumps(req).encode()
    binary = draw(st.binary(max_size=80))
    form = draw(st.sampled_from(["json", "binary", "bad-length"]))
    if form == "json":
        return head, None
    if form == "binary":
        return head + binary, str(len(head))
    return head + binary, draw(st.one_of(st.integers(-5, 10**6).map(str),
                                         st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=4)))


@st.composite
def valid_request(draw):
    """A well-formed request (JSON data or binary tensors, mixed), with random outputs/parameters."""
    n = draw(st.integers(1, 3))
    names = draw(st.lists(st.text(min_size=1, max_size=4), min_size=n, max_size=n, unique=True))
    inputs, blob = [], b""
    for name in names:
        dt = draw(st.sampled_from(sorted(set(DATATYPES) - {"BYTES"})))
        shp = draw(st.lists(st.integers(0, 3), max_size=3))
        count = element_count(shp)
        values = np.array(draw(st.lists(st.integers(0, 1), min_size=count, max_size=count)), dtype=DATATYPES[dt])
        if draw(st.booleans()):
            raw = values.astype(np.dtype(DATATYPES[dt]).newbyteorder("<")).tobytes()
            inputs.append({"name": name, "datatype": dt, "shape": shp, "parameters": {"binary_data_size": len(raw)}})
            blob += raw
        else:
            inputs.append({"name": name, "datatype": dt, "shape": shp, "data": values.tolist()})
    req = {"inputs": inputs}
    if draw(st.booleans()):
        req["outputs"] = [{"name": "logits", "parameters": {"binary_data": draw(st.booleans())}}]
    head = json.dumps(req).encode()
    return (head + blob, str(len(head))) if blob or draw(st.booleans()) else (head, None)


def check_parse(body: bytes, header):
    SEEN["parser"] += 1
    try:
        r = parse_infer_request(body, header)
    except ProtocolError as e:
        assert 400 <= e.status < 500 and str(e) and "\n" not in str(e)
        return
    SEEN["accepted"] += 1
    assert isinstance(r, InferRequest) and r.inputs
    for t in r.inputs:
        assert list(t.array.shape) == t.shape and t.array.size == math.prod(t.shape)
        assert t.array.dtype == np.dtype(DATATYPES[t.datatype])


@settings(max_examples=1000, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(st.one_of(request(), valid_request()))
def test_parser_answers_every_request(case):
    check_parse(*case)


def _json_part(body: bytes, header) -> int:
    """The JSON part's length as the parser finds it (-1: the header length itself is refused)."""
    if header is None:
        return len(body)
    try:
        n = int(header)
    except ValueError:
        return -1
    return n if 0 <= n <= len(body) else -1


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(st.one_of(request(), valid_request()), st.integers(0, 400), st.integers(0, 8))
def test_parser_bounds_hold_before_the_work(case, max_header, max_count):
    """With the server's bounds (a JSON-part limit, a model check per input): every accepted input passed the
    check, every refusal is a 4xx, and a JSON part over the limit is always 413."""
    body, header = case
    checked = []

    def model_check(name, datatype, shape):
        checked.append(name)
        if datatype == "BYTES" or element_count(shape) > max_count:
            raise ProtocolError(f"input '{name}' is not what the model takes")
    SEEN["bounded"] += 1
    try:
        r = parse_infer_request(body, header, max_header, model_check)
    except ProtocolError as e:
        assert 400 <= e.status < 500 and "\n" not in str(e)
        if _json_part(body, header) > max_header:
            assert e.status == 413, str(e)
        return
    assert all(t.name in checked and t.datatype != "BYTES" and t.array.size <= max_count for t in r.inputs)


@pytest.mark.parametrize("shape", [[2**32, 2**32], [2**63, 2], [2**64], [10**30, 0, 5], [1] * 65, [3, -1]])
def test_overflowing_and_impossible_shapes_are_400(shape):
    """Empty data too: np.prod([2**32, 2**32]) wraps to 0, which an empty tensor would 'fill'."""
    for n in (0, 4):
        body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": shape, "data": [0.0] * n}]})
        with pytest.raises(ProtocolError) as e:
            parse_infer_request(body.encode())
        assert e.value.status == 400
        head = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": shape,
                                       "parameters": {"binary_data_size": 4 * n}}]}).encode()
        with pytest.raises(ProtocolError) as e:
            parse_infer_request(head + bytes(4 * n), str(len(head)))
        assert e.value.status == 400


def test_deep_nesting_is_a_400_not_a_crash():
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(ProtocolError):
        parse_infer_request(('{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1], "data": ' + deep + "}]}")
                            .encode())


@pytest.fixture(scope="module")
def client(fm_onnx):
    pytest.importorskip("starlette.testclient", reason="the serve extra is not installed")
    from support.app import app_client
    with app_client(fm_onnx) as c:
        yield c


@settings(max_examples=250, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(request())
def test_the_app_never_answers_500(client, case):
    body, header = case
    SEEN["app"] += 1
    headers = {} if header is None else {HEADER_LENGTH: header}
    r = client.post("/v2/models/fm/infer", content=body, headers=headers)
    assert r.status_code in (200, 400, 404, 413, 415, 422, 503), (r.status_code, r.text[:200])
    if r.status_code != 200:
        assert "error" in r.json()


def test_report_case_counts(capsys):
    with capsys.disabled():
        print(f"\nprotocol fuzzing: {SEEN['parser']} parser cases ({SEEN['accepted']} accepted), "
              f"{SEEN['bounded']} with the server's bounds, {SEEN['app']} requests through the app")
    assert SEEN["parser"] >= 1000 and SEEN["accepted"] >= 100
