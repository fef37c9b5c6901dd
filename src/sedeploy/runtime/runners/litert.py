"""The LiteRT runner: model.tflite (and model.int8.tflite) on ai-edge-litert's Interpreter, CPU (XNNPACK).

ai-edge-litert alone (136 MB) runs it: no torch, no TensorFlow. litert-torch cannot convert the SE
block with a symbolic batch, so export writes one signature per batch size in one file (b1, b64);
this runner picks per call the smallest signature that holds the batch (exact when one matches,
else the rest padded with zeros), and runs batches larger than the largest signature in chunks of it.

sedeploy's record (the contract metadata, the input size, each signature's batch, input key and
output key -> contract name mapping, the precision) travels inside the .tflite as the flatbuffer
`metadata` entry "sedeploy" (TFLite schema: Model.metadata -> a named buffer), read here with the
flatbuffers schema that ai-edge-litert ships. The runner uses only that mapping, never shapes.

fp32 stays fp32: XNNPACK (the default delegate) computes in fp32 unless its fp16 flag is set, which the
Python Interpreter never sets; "latest features" is kept off explicitly (`FP32_OPTIONS`; measured: the
same outputs either way with ai-edge-litert 2.3), and a test holds the runner to LiteRT's reference
kernels within 1e-5. A static int8 model has int8 input and
outputs: the input is quantized with its scale and zero point, each output dequantized to float32.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ...core.errors import UserError
from ..model import ModelInfo, check_model_file, describe
from . import Runner, native_stderr_filtered

RECORD_NAME = "sedeploy"          # the flatbuffer metadata entry export writes (export.formats.tflite)
RECORD_VERSION = 1
FILE_ID = b"TFL3"                 # the TFLite flatbuffer identifier, bytes 4..8
# Interpreter options kept at their fp32 values: "latest features" may let the default XNNPACK delegate
# use flag-protected features (reduced precision among them); AUTO = the built-in kernels + XNNPACK.
FP32_OPTIONS: Dict[str, Any] = {"experimental_default_delegate_latest_features": False}
FIX = "export it again with `sedeploy export --formats tflite`"


def read_record(buf: bytes, path: Path) -> Dict[str, Any]:
    """The sedeploy record inside a .tflite's bytes; UserError for a damaged, truncated or foreign file."""
    from ai_edge_litert import schema_py_generated as schema
    if len(buf) < 8 or buf[4:8] != FILE_ID:
        raise UserError(f"{path} is not a LiteRT (.tflite) model (no TFL3 identifier); {FIX}")
    try:
        model = schema.Model.GetRootAs(buf, 0)
        entries = {model.Metadata(i).Name(): model.Metadata(i).Buffer() for i in range(model.MetadataLength())}
        data = _buffer_bytes(model.Buffers(entries[RECORD_NAME.encode()]), buf) if RECORD_NAME.encode() in entries \
            else None
    except Exception:  # noqa: BLE001 - any offset past the end: the flatbuffer is cut or damaged
        raise UserError(f"{path} is truncated or damaged (its flatbuffer tables point past the end); {FIX}") from None
    if data is None:
        raise UserError(f"{path} has no sedeploy metadata (no '{RECORD_NAME}' entry): it was not written by "
                        f"sedeploy; {FIX}")
    try:
        rec = json.loads(data.rstrip(b"\0").decode())
        sigs = rec["signatures"]
        ok = (rec.get("record_version") == RECORD_VERSION and isinstance(rec.get("metadata"), dict) and sigs
              and all({"key", "batch", "input", "outputs"} <= set(s) and isinstance(s["outputs"], list) for s in sigs))
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        ok = False
    if not ok:                          # checked input, not an invariant: no assert (python -O drops them)
        raise UserError(f"{path}: its '{RECORD_NAME}' metadata is not a sedeploy LiteRT record; {FIX}")
    return rec


def _buffer_bytes(b, buf: bytes) -> bytes:
    """A flatbuffer Buffer's bytes: inline data, or (files over 2 GB) an offset/size into the file."""
    if b.Offset() > 1:
        if b.Offset() + b.Size() > len(buf):
            raise IndexError("buffer past the end")
        return buf[b.Offset():b.Offset() + b.Size()]
    return b.DataAsNumpy().tobytes() if b.DataLength() else b""


def embed_record(buf: bytes, record: Dict[str, Any]) -> bytes:
    """The .tflite bytes with `record` added as the metadata entry "sedeploy" (replacing an earlier one).
    Used by export; here so that the writer and the reader of the entry are one module."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema
    model = schema.ModelT.InitFromPackedBuf(buf, 0)
    if any(b.offset and b.offset > 1 for b in model.buffers or []):
        raise UserError("the LiteRT model keeps its weights outside the flatbuffer (over 2 GB): cannot embed "
                        "sedeploy's metadata")
    entry = schema.BufferT()
    entry.data = np.frombuffer(json.dumps(record).encode(), np.uint8)
    earlier = [m for m in (model.metadata or []) if m.name == RECORD_NAME.encode()]
    md = schema.MetadataT()
    md.name = RECORD_NAME
    if earlier:                                   # the earlier record's buffer is reused: no orphaned bytes
        md.buffer = earlier[0].buffer
        model.buffers[md.buffer] = entry
    else:
        model.buffers.append(entry)
        md.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != RECORD_NAME.encode()] + [md]
    b = flatbuffers.Builder(len(buf) + 4096)
    b.Finish(model.Pack(b), file_identifier=FILE_ID)
    return bytes(b.Output())


def chunks(n: int, sizes: List[int]) -> List[Tuple[int, int, int]]:
    """A batch of n images as (start, count, signature batch) runs: the largest signature while more than
    it remains, then the smallest signature that holds the rest (padded when it is not exact)."""
    out, i, top = [], 0, max(sizes)
    while n - i > top:
        out.append((i, top, top))
        i += top
    out.append((i, n - i, min(s for s in sizes if s >= n - i)))
    return out


class LiteRtRunner(Runner):
    """A .tflite on ai_edge_litert.interpreter.Interpreter (XNNPACK, fp32 or static int8), CPU.
    `provider` and `threads` as the other runners take them; onnxruntime's other options are ignored."""

    def __init__(self, path: Path, provider: str = "cpu", threads: Optional[int] = None, **_: Any) -> None:
        from ai_edge_litert.interpreter import Interpreter
        self.path = Path(path)
        check_model_file(self.path)
        if provider == "cuda":
            raise UserError("--provider cuda: the LiteRT runner runs on the CPU here; pass --provider cpu")
        buf = self.path.read_bytes()
        self.record = read_record(buf, self.path)
        self.provider = "litert-cpu"
        try:
            self.interpreter = Interpreter(model_content=buf, num_threads=threads or os.cpu_count() or 1, **FP32_OPTIONS)
            self.sigs = {int(s["batch"]): (s, self.interpreter.get_signature_runner(s["key"]))
                         for s in self.record["signatures"]}
        except (ValueError, RuntimeError) as e:
            raise UserError(f"LiteRT cannot load {self.path} ({str(e).strip().splitlines()[0][:120]}); {FIX}") \
                from None
        sig, runner = next(iter(self.sigs.values()))
        details = runner.get_output_details()
        shapes = {o["name"]: [int(d) for d in details[o["key"]]["shape"][1:]] for o in sig["outputs"]}
        c, h, w = self.record["input_shape"]
        self.info: ModelInfo = describe(self.record["metadata"], [(sig["input"], ["batch", c, h, w])],
                                        [(o["name"], ["batch", *shapes[o["name"]]]) for o in sig["outputs"]],
                                        self.path)          # the record lists the outputs in contract order
        with native_stderr_filtered(("Created TensorFlow Lite XNNPACK delegate",)):
            for size in self.sigs:                          # XNNPACK is applied on a signature's first run
                self._run_signature(size, np.zeros((size, c, h, w), np.float32))

    @property
    def batch_sizes(self) -> List[int]:
        return sorted(self.sigs)

    def _invoke(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        parts: Dict[str, List[np.ndarray]] = {n: [] for n in self.output_names}
        for start, n, size in chunks(len(batch), self.batch_sizes):
            x = batch[start:start + n]
            if n < size:                                  # the smallest signature that holds the rest: pad
                x = np.concatenate([x, np.zeros((size - n, *x.shape[1:]), np.float32)])
            for name, o in self._run_signature(size, x).items():
                parts[name].append(o[:n])
        return {k: np.concatenate(v) for k, v in parts.items()}

    def _run_signature(self, size: int, x: np.ndarray) -> Dict[str, np.ndarray]:
        sig, runner = self.sigs[size]
        (inp,) = runner.get_input_details().values()
        got = runner(**{sig["input"]: quantize(x, inp)})
        details = runner.get_output_details()
        return {o["name"]: dequantize(got[o["key"]], details[o["key"]]) for o in sig["outputs"]}


def quantize(x: np.ndarray, detail: Dict[str, Any]) -> np.ndarray:
    """float32 -> the input tensor's type (int8/uint8 with its scale and zero point; float32 as it is)."""
    dtype = np.dtype(detail["dtype"])
    if dtype == np.float32:
        return x
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)


def dequantize(y: np.ndarray, detail: Dict[str, Any]) -> np.ndarray:
    """An output tensor -> float32 (int8/uint8 through its scale and zero point)."""
    if y.dtype == np.float32:
        return y
    scale, zero = detail["quantization"]
    return ((y.astype(np.float32) - zero) * np.float32(scale)).astype(np.float32)
