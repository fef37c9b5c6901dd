"""The Open Inference Protocol codec (serve/protocol.py) against bodies written here: every refusal with
its whole message and status (the message is what the client reads), and the accepted shapes of a
request and a response byte for byte. No socket, no model: fast enough to run for every mutant.
The codec against NVIDIA's own tritonclient encoder/decoder is in test_serve.py."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from sedeploy.serve import protocol as P

X1 = {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}


def req(*inputs, **top) -> bytes:
    return json.dumps({"inputs": list(inputs or [X1]), **top}).encode()


def refused(body: bytes, header=None) -> str:
    with pytest.raises(P.ProtocolError) as e:
        P.parse_infer_request(body, header)
    assert e.value.status == 400
    return str(e.value)


def binary(elements: int, declared, sent: int, dt="FP32"):
    head = json.dumps({"inputs": [{"name": "x", "shape": [elements], "datatype": dt,
                                   "parameters": {"binary_data_size": declared}}]}).encode()
    return head + b"\0" * sent, str(len(head))


@pytest.mark.parametrize("body, header, message", [
    (req(), "abc", "Inference-Header-Content-Length must be an integer, got 'abc'"),
    (req(), "-1", "Inference-Header-Content-Length -1 is outside the body of 74 bytes"),
    (req(), "75", "Inference-Header-Content-Length 75 is outside the body of 74 bytes"),
    (b"[1, 2]", None, "the request must be a JSON object with 'inputs'"),
    (b'{"inputs": [], "x": 1}', None, "the request needs a non-empty 'inputs' list"),
    (b'{"inputs": {"a": 1}}', None, "the request needs a non-empty 'inputs' list"),
    (b'{"x": 1}', None, "the request needs a non-empty 'inputs' list"),
    (req(parameters=[1]), None, "request: 'parameters' must be a JSON object"),
    (req([1]), None, "inputs[0] must be a JSON object"),
    (req(X1, {"shape": [1]}), None, "inputs[1] needs a 'name' string"),
    (req({**X1, "name": ""}), None, "inputs[0] needs a 'name' string"),
    (req(X1, X1), None, "input 'x' is given twice"),
    (req({**X1, "datatype": "FP99"}), None, "input 'x': unknown datatype 'FP99'; one of BOOL, UINT8, UINT16, "
     "UINT32, UINT64, INT8, INT16, INT32, INT64, FP16, FP32, FP64, BYTES"),
    (req({**X1, "shape": [-1]}), None, "input 'x': 'shape' must be a list of non-negative integers"),
    (req({**X1, "shape": [True]}), None, "input 'x': 'shape' must be a list of non-negative integers"),
    (req({**X1, "shape": [1.0]}), None, "input 'x': 'shape' must be a list of non-negative integers"),
    (req({**X1, "shape": 1}), None, "input 'x': 'shape' must be a list of non-negative integers"),
    (req({**X1, "parameters": 3}), None, "input 'x': 'parameters' must be a JSON object"),
    (req({**X1, "data": [1, 2]}), None, "input 'x': 2 values do not fill shape [1] (1 expected)"),
    (req({k: v for k, v in X1.items() if k != "data"}), None, "input 'x' has neither 'data' nor binary_data_size"),
    (*binary(2, 8, 4), "input 'x': binary_data_size 8 runs past the 4 bytes of binary data after the JSON header"),
    (*binary(2, 4, 4), "input 'x': binary data of 4 bytes does not match shape [2] of FP32 (8 bytes expected)"),
    (*binary(1, 4, 8), "4 bytes of binary data after the JSON header belong to no input; binary_data_size must "
     "add up to the body length minus Inference-Header-Content-Length"),
    (*binary(1, -4, 0), "input 'x': binary_data_size must be a non-negative integer"),
    (*binary(1, True, 1), "input 'x': binary_data_size must be a non-negative integer"),
    (*binary(1, 4.0, 4), "input 'x': binary_data_size must be a non-negative integer"),
    (req(parameters={"binary_data_output": 1}), None, "binary_data_output must be true or false"),
    (req(outputs={"name": "y"}), None, "'outputs' must be a list"),
    (req(outputs=[{"name": "y"}, "z"]), None, "outputs[1] needs a 'name' string"),
    (req(outputs=[{"name": 3}]), None, "outputs[0] needs a 'name' string"),
    (req(outputs=[{"name": "y"}, {"name": "y"}]), None, "output 'y' is requested twice"),
    (req(outputs=[{"name": "y", "parameters": []}]), None, "output 'y': 'parameters' must be a JSON object"),
    (req(outputs=[{"name": "y", "parameters": {"binary_data": "yes"}}]), None,
     "output 'y': binary_data must be true or false"),
    (req(outputs=[{"name": "y", "parameters": {"classification": -1}}]), None,
     "output 'y': classification must be a non-negative integer"),
    (req(outputs=[{"name": "y", "parameters": {"classification": True}}]), None,
     "output 'y': classification must be a non-negative integer"),
    (req(outputs=[{"name": "y", "parameters": {"classification": 1.5}}]), None,
     "output 'y': classification must be a non-negative integer"),
    (req(id=7), None, "'id' must be a string"),
])
def test_refusals_say_exactly_what_is_wrong(body, header, message):
    assert refused(body, header) == message


def test_both_data_and_binary_refused():
    head = json.dumps({"inputs": [{**X1, "parameters": {"binary_data_size": 4}}]}).encode()
    assert refused(head + b"\0" * 4, str(len(head))) == "input 'x' has both 'data' and binary_data_size"


def test_malformed_json_and_bad_values_name_the_fix():
    m = refused(b"{not json")
    assert m.startswith("malformed JSON in the request: Expecting property name")
    assert m.endswith("; send an Open Inference Protocol request body (binary tensors need the "
                      "Inference-Header-Content-Length header)")
    assert refused(b"\xff\xfe", None).startswith("malformed JSON in the request: ")
    m = refused(req({**X1, "shape": [2], "data": ["a", "b"]}))
    assert m.startswith("input 'x': data is not a (nested) array of FP32 values (could not convert")
    m = refused(req({**X1, "datatype": "UINT8", "data": [300]}))
    assert m.startswith("input 'x': data is not a (nested) array of UINT8 values (")
    assert refused(req({**X1, "data": [[1, 2], [3]]})).startswith("input 'x': data is not a (nested) array")


def test_error_status_is_settable():
    assert P.ProtocolError("m").status == 400 and P.ProtocolError("m", 503).status == 503


def test_json_request_fields():
    body = req({"name": "x", "shape": [2, 2], "datatype": "INT64", "data": [[1, 2], [3, 4]]},
               {"name": "s", "shape": [2], "datatype": "BYTES", "data": ["h\u00e9", "b"]},
               id="r1", parameters={"binary_data_output": True, "other": 1},
               outputs=[{"name": "a"}, {"name": "b", "parameters": {"binary_data": False, "classification": 3}}])
    r = P.parse_infer_request(body)
    assert r.id == "r1" and r.binary_default is True and r.parameters == {"binary_data_output": True, "other": 1}
    x, s = r.inputs
    assert (x.name, x.datatype, x.shape, x.array.dtype, x.array.tolist()) == ("x", "INT64", [2, 2], np.int64,
                                                                             [[1, 2], [3, 4]])
    assert s.array.dtype == object and s.array.tolist() == ["h\u00e9".encode(), b"b"]
    assert [(o.name, o.binary, o.classification) for o in r.outputs] == [("a", True, 0), ("b", False, 3)]
    plain = P.parse_infer_request(req(X1, {**X1, "name": "y", "shape": [], "data": 5}))
    assert plain.id is None and plain.binary_default is False and plain.outputs is None and plain.parameters == {}
    assert plain.inputs[1].array.shape == () and plain.inputs[1].array.item() == 5.0
    assert P.parse_infer_request(req(outputs=[])).outputs == []
    empty = P.parse_infer_request(req({**X1, "shape": [0, 3], "data": []}))
    assert empty.inputs[0].array.shape == (0, 3)


def test_binary_inputs_in_order_little_endian():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([1, -2], dtype=np.int16)
    s = P.encode_bytes(np.array([b"ab", b""], dtype=object))
    head = json.dumps({"inputs": [
        {"name": "a", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": 24}},
        {"name": "j", "shape": [1], "datatype": "FP32", "data": [9]},
        {"name": "b", "shape": [2], "datatype": "INT16", "parameters": {"binary_data_size": 4}},
        {"name": "s", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": len(s)}}]}).encode()
    body = head + a.astype("<f4").tobytes() + b.astype("<i2").tobytes() + s
    r = P.parse_infer_request(body, str(len(head)))
    got = {t.name: t.array for t in r.inputs}
    np.testing.assert_array_equal(got["a"], a)
    assert got["a"].dtype == np.float32 and got["b"].dtype == np.int16 and got["b"].tolist() == [1, -2]
    assert got["j"].tolist() == [9.0] and got["s"].tolist() == [b"ab", b""]
    # the header alone (no binary part) is a JSON body too
    assert P.parse_infer_request(req(), str(len(req()))).inputs[0].array.tolist() == [1.0]


def test_bytes_codec():
    a = np.array([b"ab", b"", "h\u00e9".encode(), 7], dtype=object)
    raw = P.encode_bytes(a)
    assert raw == b"\x02\0\0\0ab" + b"\0\0\0\0" + b"\x03\0\0\0h\xc3\xa9" + b"\x01\0\0\x007"
    assert P.decode_bytes(raw).tolist() == [b"ab", b"", "h\u00e9".encode(), b"7"]
    assert P.decode_bytes(b"").tolist() == []
    for cut, message in ((9, "BYTES tensor data ends inside an element's length prefix"),
                         (15, "BYTES tensor data ends inside an element")):
        with pytest.raises(P.ProtocolError) as e:
            P.decode_bytes(raw[:cut])
        assert str(e.value) == message
    assert P.decode_bytes(struct.pack("<I", 0)).tolist() == [b""]


def test_decode_tensor_directly():
    assert P.decode_tensor("x", "FP16", [2], data=[1.5, 2]).dtype == np.float16
    assert P.decode_tensor("x", "BOOL", [2], raw=b"\x01\x00").tolist() == [True, False]
    assert P.decode_tensor("x", "INT32", [], data=3).shape == ()
    big = P.decode_tensor("x", "UINT16", [1], raw=b"\x01\x02")
    assert big.tolist() == [0x0201] and big.dtype == np.uint16 and big.dtype.isnative


def test_classify_top_k_with_labels():
    a = np.array([[0.1, 0.7, 0.2], [0.5, 0.5, 0.0]], np.float32)
    out = P.classify(a, 2, ["a", "b", "c"])
    assert out.shape == (2, 2) and out.tolist() == [[b"0.700000:1:b", b"0.200000:2:c"],
                                                    [b"0.500000:0:a", b"0.500000:1:b"]]   # ties: index order
    assert P.classify(a, 5, None).tolist()[0] == [b"0.700000:1", b"0.200000:2", b"0.100000:0"]   # k capped at C
    assert P.classify(a, 2, ["a"]).tolist()[1] == [b"0.500000:0:a", b"0.500000:1"]   # labels shorter than C
    assert P.classify(np.array([3.0, 1.0, 2.0]), 2, None).tolist() == [b"3.000000:0", b"2.000000:2"]   # 1-D
    assert P.classify(np.zeros((1, 2, 2)), 1, None).shape == (1, 1)


def test_response_json_and_binary_byte_for_byte():
    body, hl = P.encode_infer_response("m", "1", None, [("y", np.array([[1.5, 2]], np.float32), False),
                                                        ("c", np.array([b"a:1", b"\xff"], dtype=object), False)])
    assert hl is None
    assert body == (b'{"model_name":"m","model_version":"1","outputs":['
                    b'{"name":"y","datatype":"FP32","shape":[1,2],"data":[1.5,2.0]},'
                    b'{"name":"c","datatype":"BYTES","shape":[2],"data":["a:1","\\ufffd"]}]}')
    y = np.array([1, 256], dtype=np.int32)
    s = np.array([b"ab"], dtype=object)
    body, hl = P.encode_infer_response("m", "2", "id9", [("y", y, True), ("s", s, True), ("z", y, False)])
    head = json.loads(body[:hl])
    assert head == {"model_name": "m", "model_version": "2", "id": "id9", "outputs": [
        {"name": "y", "datatype": "INT32", "shape": [2], "parameters": {"binary_data_size": 8}},
        {"name": "s", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}},
        {"name": "z", "datatype": "INT32", "shape": [2], "data": [1, 256]}]}
    assert body[hl:] == b"\x01\0\0\0\0\x01\0\0" + b"\x02\0\0\0ab"
    be = np.array([1.0], dtype=">f8")                                      # big-endian in, little-endian out
    body, hl = P.encode_infer_response("m", "1", None, [("d", be, True)])
    assert body[hl:] == np.array([1.0], "<f8").tobytes()
    assert (P.HEADER_LENGTH, P.JSON_TYPE, P.BINARY_TYPE) == ("Inference-Header-Content-Length", "application/json",
                                                             "application/octet-stream")


# ---------------------------------------------------------------- cases that killed surviving mutants
def test_limits_and_edges():
    long_header = "a" * 50                                            # quoted up to 40 characters
    assert refused(req(), long_header) == f"Inference-Header-Content-Length must be an integer, got {'a' * 40!r}"
    assert refused(req(), "0").startswith("malformed JSON in the request: ")   # 0 is a length: an empty header
    m = refused(req({**X1, "shape": [1], "data": ["x" * 200]}))
    assert m == f"input 'x': data is not a (nested) array of FP32 values ({('could not convert string to float: ' + repr('x' * 200))[:80]})"
    head = json.dumps({"inputs": [{"name": "x", "shape": [0], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 0}}]}).encode()
    r = P.parse_infer_request(head, str(len(head)))                  # an empty binary tensor is a tensor
    assert r.inputs[0].array.shape == (0,) and r.inputs[0].array.dtype == np.float32


def test_binary_input_is_not_copied():
    a = np.arange(4, dtype="<f4")
    head = json.dumps({"inputs": [{"name": "a", "shape": [4], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 16}}]}).encode()
    got = P.parse_infer_request(head + a.tobytes(), str(len(head))).inputs[0].array
    assert got.tolist() == [0, 1, 2, 3] and not got.flags.writeable    # a view on the body's bytes: no copy


def test_bytes_elements_stay_python_bytes():
    """An object array of bytes, not numpy's fixed-width 'S' type (which drops trailing NULs)."""
    raw = P.encode_bytes(np.array([b"a\0", b"bc"], dtype=object))
    got = P.decode_bytes(raw)
    assert got.dtype == object and got.tolist() == [b"a\0", b"bc"]
    assert P.decode_bytes(b"").dtype == object
    data = P.parse_infer_request(req({"name": "s", "shape": [1], "datatype": "BYTES", "data": [b"q".decode()]}))
    assert data.inputs[0].array.dtype == object and data.inputs[0].array.tolist() == [b"q"]


def test_classify_ties_keep_class_order_among_many_classes():
    a = np.zeros((1, 300), np.float32)
    a[0, ::7] = 1.0                                                   # 43 tied top scores: the lowest indices win
    assert P.classify(a, 4, None).tolist() == [[b"1.000000:0", b"1.000000:7", b"1.000000:14", b"1.000000:21"]]


def test_bytes_json_values_that_are_not_strings_pass_through():
    r = P.parse_infer_request(req({"name": "s", "shape": [2], "datatype": "BYTES", "data": ["a", 5]}))
    assert r.inputs[0].array.tolist() == [b"a", 5]
