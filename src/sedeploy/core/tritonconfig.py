"""Triton's model configuration, shared by export (writes config.pbtxt) and serve (reads it, answers /config).

A leaf like contract.py: no torch, no protobuf schema, numpy only when converting dtypes. It follows NVIDIA Triton Inference
Server's model_config.proto (the `ModelConfig` message, as `tritonclient[grpc]` ships it in
`model_config_pb2`) and its documented layout of a model repository:

    <repository>/<name>/config.pbtxt          this module's `to_pbtxt(model_config(...))`
    <repository>/<name>/labels.txt            class names, one per line (label_filename of `logits`)
    <repository>/<name>/<version>/model.onnx  the exported model, metadata and all

The dict form uses the proto's field names, which is also the JSON form Triton answers on
`GET /v2/models/<name>/config`. `parse_pbtxt` reads the protobuf text format back without the
schema (the fields that repeat are listed in REPEATED); the tests check both directions against
Triton's own protobuf parser.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

# Open Inference Protocol datatypes -> numpy dtype names (KServe v2 "Tensor Data Types"; BYTES are
# length-prefixed strings). Names, not dtypes: this module stays importable without numpy (the CLI's start-up).
DATATYPES: Dict[str, str] = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64", "BYTES": "object",
}
# onnxruntime's type strings (NodeArg.type) -> protocol datatypes.
ORT_TYPES = {"tensor(bool)": "BOOL", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16",
             "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64", "tensor(int8)": "INT8",
             "tensor(int16)": "INT16", "tensor(int32)": "INT32", "tensor(int64)": "INT64",
             "tensor(float16)": "FP16", "tensor(float)": "FP32", "tensor(double)": "FP64",
             "tensor(string)": "BYTES"}
PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
PYTHON_BACKEND = "python"          # `triton-repo --backend python`: model.py runs model.onnx with onnxruntime
PYTHON_MODEL_FILE = "model.py"
INSTANCE_KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
LABELS_FILE = "labels.txt"
MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.pbtxt"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")  # safe in a URL path segment and a folder name
# Fields of ModelConfig (and nested messages) that are `repeated` in model_config.proto.
REPEATED = frozenset({"input", "output", "batch_input", "batch_output", "instance_group", "dims", "gpus",
                      "preferred_batch_size", "model_warmup", "cc_model_filenames", "metric_tags",
                      "secondary_devices", "profile", "parameters", "source_input", "versions"})
ENUM_FIELDS = frozenset({"data_type", "kind", "format", "timeout_action", "kind_type"})


def config_type(datatype: str) -> str:
    """Protocol datatype -> model-config enum: FP32 -> TYPE_FP32 (BYTES is TYPE_STRING in the config)."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


_BY_NUMPY_NAME = {v: k for k, v in DATATYPES.items()}


def numpy_type(dtype: Any) -> str:
    """numpy dtype -> protocol datatype (ValueError for a type the protocol has no name for)."""
    import numpy as np
    found = _BY_NUMPY_NAME.get(np.dtype(dtype).name)    # once per output of every response: keep it a lookup
    if found is None:
        raise ValueError(f"numpy dtype {dtype} has no Open Inference Protocol datatype")
    return found


@dataclass(frozen=True)
class BatchingDefaults:
    """The one place for the dynamic batcher's defaults (serve's options, triton-repo's config.pbtxt)."""
    max_batch: int = 8          # images run together at most (max_batch_size)
    max_delay_us: int = 500     # how long the oldest request may wait for a batch to fill
    max_queue: int = 128        # requests that may wait; the next one is refused at once (503)


BATCHING = BatchingDefaults()


@dataclass
class TensorSpec:
    name: str
    datatype: str          # protocol datatype, e.g. "FP32"
    shape: List[int]       # full shape, batch axis first; -1 for a dynamic axis


def default_name(path: Union[str, os.PathLike]) -> str:
    """A model's served name unless one is given: its file name without .onnx (model.int8.onnx -> model.int8),
    made safe for a URL path segment and a folder name."""
    stem = Path(path).name
    stem = stem[:-len(".onnx")] if stem.endswith(".onnx") else Path(path).stem
    return (re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-.") or "model")[:128]


def batchable(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> bool:
    """Triton batches a model (max_batch_size > 0) only when every tensor's first axis is the batch."""
    return all(t.shape and t.shape[0] == -1 for t in [*inputs, *outputs])


def model_config(name: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                 max_batch: int = BATCHING.max_batch, max_delay_us: int = BATCHING.max_delay_us,
                 max_queue: int = BATCHING.max_queue, instance_kind: str = "cpu", count: int = 1,
                 labels_for: Optional[str] = None, batching: bool = True, backend: str = "onnxruntime"
                 ) -> Dict[str, Any]:
    """The ModelConfig (dict, proto field names) for an ONNX model with these tensors.

    A dynamic batch axis gives max_batch_size = max_batch and dims without that axis, plus
    dynamic_batching (delay, bounded queue); a fixed batch gives max_batch_size 0 and full dims,
    as Triton requires. `labels_for` names the output that gets label_filename (the logits).
    """
    dyn = max_batch > 0 and batchable(inputs, outputs)

    def tensor(t: TensorSpec, kind: str) -> Dict[str, Any]:
        d: Dict[str, Any] = {"name": t.name, "data_type": config_type(t.datatype),
                             "dims": list(t.shape[1:] if dyn else t.shape)}
        if kind == "output" and t.name == labels_for:
            d["label_filename"] = LABELS_FILE
        return d

    cfg: Dict[str, Any] = {"name": name, "platform": PLATFORM, "backend": BACKEND} if backend == BACKEND else \
        {"name": name, "backend": backend}
    cfg.update({"max_batch_size": max_batch if dyn else 0, "input": [tensor(t, "input") for t in inputs],
                "output": [tensor(t, "output") for t in outputs]})
    if dyn and batching:
        cfg["dynamic_batching"] = {"max_queue_delay_microseconds": int(max_delay_us),
                                   "default_queue_policy": {"max_queue_size": int(max_queue)}}
    cfg["instance_group"] = [{"count": int(count), "kind": INSTANCE_KINDS[instance_kind]}]
    if backend == BACKEND:             # the Python backend takes no model file name but model.py
        cfg["default_model_filename"] = MODEL_FILE
    return cfg


# ---------------------------------------------------------------- protobuf text format
def _scalar(key: str, v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if key in ENUM_FIELDS:
        return str(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_pbtxt(cfg: Dict[str, Any], indent: int = 0) -> str:
    """Dict in ModelConfig field names -> protobuf text format, in Triton's documented style."""
    pad = "  " * indent
    lines = []
    for key, v in cfg.items():
        if isinstance(v, dict):
            lines += [f"{pad}{key} {{", to_pbtxt(v, indent + 1), f"{pad}}}"]
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            blocks = [f"{pad}  {{\n{to_pbtxt(x, indent + 2)}\n{pad}  }}" for x in v]
            lines.append(f"{pad}{key} [\n" + ",\n".join(blocks) + f"\n{pad}]")
        elif isinstance(v, list):
            lines.append(f"{pad}{key}: [ " + ", ".join(_scalar(key, x) for x in v) + " ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(key, v)}")
    return "\n".join(ln for ln in lines if ln)


_TOKEN = re.compile(r'\s+|#[^\n]*|("(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\')|([{}\[\]:,;<>])|([^\s{}\[\]:,;<>"\'#]+)')


def _tokens(text: str) -> List[str]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise ValueError(f"unexpected character {text[pos]!r} at offset {pos}")
        pos = m.end()
        tok = m.group(1) or m.group(2) or m.group(3)
        if tok:
            out.append(tok)
    return out


def _value(tok: str) -> Any:
    if tok[0] in "\"'":
        return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), tok[1:-1])
    if tok in ("true", "True"):
        return True
    if tok in ("false", "False"):
        return False
    try:
        return int(tok, 0)
    except ValueError:
        pass
    try:
        return float(tok)
    except ValueError:
        return tok  # an enum name


def parse_pbtxt(text: str) -> Dict[str, Any]:
    """Protobuf text format -> dict (ValueError naming the problem). Fields in REPEATED are always lists."""
    toks = _tokens(text)
    pos = 0

    def message(end: Optional[str]) -> Dict[str, Any]:
        nonlocal pos
        msg: Dict[str, Any] = {}
        while pos < len(toks) and toks[pos] != end:
            key = toks[pos]
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
                raise ValueError(f"expected a field name, got {key!r}")
            pos += 1
            if pos < len(toks) and toks[pos] == ":":
                pos += 1
            vals = values()
            if key in REPEATED:
                msg.setdefault(key, []).extend(vals)
            elif key in msg:
                raise ValueError(f"field {key!r} given twice")
            else:
                msg[key] = vals[0] if len(vals) == 1 else vals
            if pos < len(toks) and toks[pos] in (",", ";"):
                pos += 1
        if end is not None:
            if pos >= len(toks):
                raise ValueError(f"missing {end!r} at the end")
            pos += 1
        return msg

    def values() -> List[Any]:
        nonlocal pos
        if pos >= len(toks):
            raise ValueError("missing value at the end")
        tok = toks[pos]
        if tok in ("{", "<"):
            pos += 1
            return [message("}" if tok == "{" else ">")]
        if tok == "[":
            pos += 1
            items: List[Any] = []
            while pos < len(toks) and toks[pos] != "]":
                items += values()
                if pos < len(toks) and toks[pos] == ",":
                    pos += 1
            if pos >= len(toks):
                raise ValueError("missing ']' at the end")
            pos += 1
            return items
        if tok in "}]>:,;":
            raise ValueError(f"unexpected {tok!r}")
        pos += 1
        return [_value(tok)]

    return message(None)
