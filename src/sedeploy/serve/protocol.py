"""Open Inference Protocol (KServe v2) REST bodies with Triton's binary tensor data extension.

Plain functions, no HTTP: bytes in, dataclasses out, and back. Follows
- KServe's "Open Inference Protocol" REST spec: $inference_request / $inference_response, tensor
  data as flat (or nested) JSON arrays in row-major order, datatypes BOOL..FP64 and BYTES;
- Triton's binary tensor data extension: the JSON header is the first Inference-Header-Content-Length
  bytes of the body, followed by each binary input's raw little-endian bytes in input order
  (parameters.binary_data_size each); outputs are sent binary when the request says so, per
  output (`binary_data`) or for all (`binary_data_output`), with the same header on the response;
- Triton's classification extension (`classification: k` on a requested output): top-k as BYTES
  "value:index[:label]".
Every malformed request raises ProtocolError with a message for the client (HTTP 400).
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..core.tritonconfig import DATATYPES, numpy_type

HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"


class ProtocolError(Exception):
    """A request the server cannot take; `status` is the HTTP status that says so."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class InputTensor:
    name: str
    datatype: str
    shape: List[int]
    array: np.ndarray


@dataclass
class RequestedOutput:
    name: str
    binary: bool
    classification: int = 0      # > 0: Triton's classification extension, top-k as BYTES


@dataclass
class InferRequest:
    id: Optional[str]
    inputs: List[InputTensor]
    outputs: Optional[List[RequestedOutput]]   # None: every output, binary if binary_default
    binary_default: bool
    parameters: Dict[str, Any] = field(default_factory=dict)


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ProtocolError(message)


def decode_bytes(raw: bytes, max_items: Optional[int] = None) -> np.ndarray:
    """BYTES tensor bytes (4-byte little-endian length + the bytes, per element) -> object array.
    `max_items`: the elements the shape declares; more is an error found before they are all made (a
    64 MB body of empty elements would be 16 M Python objects and seconds of work on the event loop)."""
    items, pos = [], 0
    while pos < len(raw):
        _require(max_items is None or len(items) < max_items,
                 f"BYTES tensor data holds more than the {max_items} elements its shape declares")
        _require(pos + 4 <= len(raw), "BYTES tensor data ends inside an element's length prefix")
        (n,) = struct.unpack_from("<I", raw, pos)
        _require(pos + 4 + n <= len(raw), "BYTES tensor data ends inside an element")
        items.append(raw[pos + 4:pos + 4 + n])
        pos += 4 + n
    return np.array(items, dtype=object)


def encode_bytes(a: np.ndarray) -> bytes:
    parts = []
    for v in a.ravel():
        b = v if isinstance(v, bytes) else str(v).encode()
        parts.append(struct.pack("<I", len(b)) + b)
    return b"".join(parts)


MAX_DIMS = 32     # numpy's limit is 64; no model input here has more than 4


def element_count(shape: List[int]) -> int:
    """The number of elements of a shape, in Python integers: exact however large (np.prod wraps around
    in int64, so [2**32, 2**32] would count 0 and pass a size check)."""
    return math.prod(shape)


def decode_tensor(name: str, datatype: str, shape: List[int], data: Any = None, raw: Optional[bytes] = None
                  ) -> np.ndarray:
    """One input's JSON `data` or binary bytes -> an array of `shape` (ProtocolError when they disagree)."""
    dtype = np.dtype(DATATYPES[datatype])
    count = element_count(shape)
    if raw is not None:
        if datatype == "BYTES":
            _require(len(raw) >= 4 * count, f"input '{name}': binary data of {len(raw)} bytes cannot hold the {count} "
                     f"BYTES elements of shape {str(shape)[:80]} (4 bytes each at least)")
            a = decode_bytes(raw, count)
        else:
            _require(len(raw) == count * dtype.itemsize,
                     f"input '{name}': binary data of {len(raw)} bytes does not match shape {shape} of {datatype} "
                     f"({count * dtype.itemsize} bytes expected)")
            a = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)
    else:
        try:
            a = np.asarray(data, dtype=dtype)
        except (ValueError, TypeError, OverflowError, RecursionError) as e:
            raise ProtocolError(f"input '{name}': data is not a (nested) array of {datatype} values "
                                f"({str(e).splitlines()[0][:80]})") from None
        if datatype == "BYTES":
            a = np.array([v.encode() if isinstance(v, str) else v for v in a.ravel()], dtype=object)
    _require(a.size == count, f"input '{name}': {a.size} values do not fill shape {shape} ({count} expected)")
    return a.reshape(shape)


def _params(obj: Dict[str, Any], where: str) -> Dict[str, Any]:
    p = obj.get("parameters", {})
    _require(isinstance(p, dict), f"{where}: 'parameters' must be a JSON object")
    return p


CheckInput = Callable[[str, str, List[int]], None]


def parse_infer_request(body: bytes, header_length: Optional[str] = None, max_header: Optional[int] = None,
                        check_input: Optional[CheckInput] = None) -> InferRequest:
    """A POST .../infer body (+ its Inference-Header-Content-Length header, if any) -> InferRequest.

    Bounds checked before the work they bound (the server's memory and its event loop): `max_header`,
    the most bytes the JSON part may have (413 above: parsing JSON numbers takes ~10x their bytes in
    Python objects); `check_input(name, datatype, shape)`, called for each input before its data is
    decoded, raises ProtocolError for a tensor the model cannot take (so a BYTES tensor or a huge shape
    is refused before it is built)."""
    if header_length is None:
        head, rest = body, b""
    else:
        try:
            n = int(header_length)
        except ValueError:
            raise ProtocolError(f"{HEADER_LENGTH} must be an integer, got {header_length[:40]!r}") from None
        _require(0 <= n <= len(body), f"{HEADER_LENGTH} {n} is outside the body of {len(body)} bytes")
        head, rest = body[:n], body[n:]
    if max_header is not None and len(head) > max_header:
        raise ProtocolError(f"the request's JSON is {len(head):,} bytes; this model's largest request needs at most "
                            f"{max_header:,} in JSON; send fewer or binary tensors (binary_data_size)", 413)
    try:
        req = json.loads(head)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ProtocolError(f"malformed JSON in the request: {str(e)[:120]}; send an Open Inference Protocol "
                            f"request body (binary tensors need the {HEADER_LENGTH} header)") from None
    _require(isinstance(req, dict), "the request must be a JSON object with 'inputs'")
    params = _params(req, "request")
    inputs_json = req.get("inputs")
    _require(isinstance(inputs_json, list) and len(inputs_json) > 0, "the request needs a non-empty 'inputs' list")
    inputs, offset, seen = [], 0, set()
    for i, t in enumerate(inputs_json):
        _require(isinstance(t, dict), f"inputs[{i}] must be a JSON object")
        name, dt, shape = t.get("name"), t.get("datatype"), t.get("shape")
        _require(isinstance(name, str) and name != "", f"inputs[{i}] needs a 'name' string")
        _require(name not in seen, f"input '{name}' is given twice")
        seen.add(name)
        _require(dt in DATATYPES, f"input '{name}': unknown datatype {dt!r}; one of {', '.join(DATATYPES)}")
        _require(isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                 for d in shape),
                 f"input '{name}': 'shape' must be a list of non-negative integers")
        _require(len(shape) <= MAX_DIMS, f"input '{name}': shape has {len(shape)} dimensions; at most {MAX_DIMS}")
        _require(math.prod(d for d in shape if d) < 2**63, f"input '{name}': shape {str(shape)[:80]} is larger than "
                 f"any tensor can be (more than 2**63 elements even without its zero dimensions)")
        if check_input is not None:
            check_input(name, dt, shape)
        size = _params(t, f"input '{name}'").get("binary_data_size")
        if size is not None:
            _require(isinstance(size, int) and not isinstance(size, bool) and size >= 0,
                     f"input '{name}': binary_data_size must be a non-negative integer")
            _require(offset + size <= len(rest), f"input '{name}': binary_data_size {size} runs past the "
                     f"{len(rest)} bytes of binary data after the JSON header")
            _require("data" not in t, f"input '{name}' has both 'data' and binary_data_size")
            arr = decode_tensor(name, dt, shape, raw=rest[offset:offset + size])
            offset += size
        else:
            _require("data" in t, f"input '{name}' has neither 'data' nor binary_data_size")
            arr = decode_tensor(name, dt, shape, data=t["data"])
        inputs.append(InputTensor(name, dt, shape, arr))
    _require(offset == len(rest), f"{len(rest) - offset} bytes of binary data after the JSON header belong to no "
             f"input; binary_data_size must add up to the body length minus {HEADER_LENGTH}")
    binary_default = params.get("binary_data_output", False)
    _require(isinstance(binary_default, bool), "binary_data_output must be true or false")
    outputs = None
    if "outputs" in req:
        _require(isinstance(req["outputs"], list), "'outputs' must be a list")
        outputs, names = [], set()
        for i, o in enumerate(req["outputs"]):
            _require(isinstance(o, dict) and isinstance(o.get("name"), str), f"outputs[{i}] needs a 'name' string")
            _require(o["name"] not in names, f"output '{o['name']}' is requested twice")
            names.add(o["name"])
            p = _params(o, f"output '{o['name']}'")
            binary, cls = p.get("binary_data", binary_default), p.get("classification", 0)
            _require(isinstance(binary, bool), f"output '{o['name']}': binary_data must be true or false")
            _require(isinstance(cls, int) and not isinstance(cls, bool) and cls >= 0,
                     f"output '{o['name']}': classification must be a non-negative integer")
            outputs.append(RequestedOutput(o["name"], binary, cls))
    rid = req.get("id")
    _require(rid is None or isinstance(rid, str), "'id' must be a string")
    return InferRequest(rid, inputs, outputs, binary_default, params)


def classify(a: np.ndarray, k: int, labels: Optional[Sequence[str]]) -> np.ndarray:
    """(B, C) scores -> (B, k) BYTES "value:index[:label]", highest first (Triton's classification extension)."""
    a2 = a.reshape(a.shape[0], -1) if a.ndim > 1 else a[None]
    k = min(k, a2.shape[1])
    idx = np.argsort(-a2, axis=1, kind="stable")[:, :k]
    out = np.empty(idx.shape, dtype=object)
    for b, row in enumerate(idx):
        for j, c in enumerate(row):
            label = f":{labels[c]}" if labels is not None and c < len(labels) else ""
            out[b, j] = f"{float(a2[b, c]):f}:{int(c)}{label}".encode()
    return out if a.ndim > 1 else out[0]


def encode_infer_response(model_name: str, model_version: str, request_id: Optional[str],
                          outputs: Sequence[Tuple[str, np.ndarray, bool]],
                          parameters: Optional[Dict[str, Any]] = None) -> Tuple[bytes, Optional[int]]:
    """[(name, array, binary)] -> (body, JSON header length or None when the body is all JSON);
    `parameters`: the response's parameters (e.g. unsure / ood_score, one per batch item)."""
    out_json, blobs = [], []
    for name, a, binary in outputs:
        dt = numpy_type(a.dtype)
        o: Dict[str, Any] = {"name": name, "datatype": dt, "shape": [int(d) for d in a.shape]}
        if binary:
            raw = encode_bytes(a) if dt == "BYTES" else np.ascontiguousarray(a, a.dtype.newbyteorder("<")).tobytes()
            o["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            o["data"] = [v.decode(errors="replace") if isinstance(v, bytes) else v for v in a.ravel().tolist()]
        out_json.append(o)
    resp: Dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        resp["id"] = request_id
    if parameters:
        resp["parameters"] = parameters
    resp["outputs"] = out_json
    head = json.dumps(resp, separators=(",", ":")).encode()
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)
