"""The `tflite` format: <stem>.tflite for LiteRT (TensorFlow Lite), converted from the PyTorch module by
litert-torch (not from ONNX); with --int8 also <stem>.int8.tflite, static int8 through PyTorch's PT2E
quantizer (litert-torch's PT2EQuantizer, symmetric per-channel weights, calibrated on training images).

Batch: litert-torch cannot trace the SE block's flatten with a symbolic batch ("Shapes must be 1D
sequences of concrete values of integer type"), and a batch-1 file cannot be resized to 64 (XNNPACK
fails to reshape). So one file holds one signature per batch size (`b1`, `b64`: --batch-sizes, or the
--batch N of a fixed-batch export), sharing the weights; the runner picks the signature per call.
Outputs: the module is wrapped to return a dict, so each signature's outputs keep the contract names
(a tuple comes out as output_0..4); the key -> name mapping is still recorded per signature, and the
runner reads only the record. The record (contract metadata, input size, signatures, mapping,
precision) is the flatbuffer metadata entry "sedeploy" inside the .tflite (runtime.runners.litert):
no sidecar. litert-torch brings transformers, kagglehub and huggingface_hub: they are told to stay
offline (nothing of theirs is used), and its progress output is switched off.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
from torch import nn

from ...core.errors import UserError
from ...runtime.runners.litert import RECORD_VERSION, embed_record
from . import BuildContext

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
           "KAGGLE_DISABLE_TELEMETRY": "1", "LITERT_TORCH_SHOW_PROGRESS": "n"}
CALIB_CHUNK = 64                  # images per calibration forward pass


class NamedOutputs(nn.Module):
    """The contract's output tuple as a dict, so that LiteRT's signature outputs carry the names."""

    def __init__(self, wrapper: nn.Module, names: List[str]) -> None:
        super().__init__()
        self.wrapper, self.names = wrapper, list(names)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return dict(zip(self.names, self.wrapper(x)))


def litert_torch():
    """litert-torch, imported offline and quiet (its hub dependencies are never needed here)."""
    for k, v in OFFLINE.items():
        os.environ.setdefault(k, v)
    import litert_torch as lt
    return lt


def batch_sizes(ctx: BuildContext) -> Tuple[int, ...]:
    """One signature per size: the fixed --batch alone, else --batch-sizes."""
    return (ctx.batch,) if ctx.batch else tuple(sorted(set(ctx.batch_sizes)))


def signature_key(b: int) -> str:
    return f"b{b}"


def convert(ctx: BuildContext, module: nn.Module, path: Path, precision: str, **convert_kw: Any) -> Path:
    """Every signature of `module` converted into one .tflite at `path`, with sedeploy's record inside."""
    lt = litert_torch()
    c, h, w = (int(s) for s in ctx.example.shape[1:])
    converter = lt
    for b in batch_sizes(ctx):
        x = ctx.example[:1].repeat(b, 1, 1, 1)                     # (b, C, H, W): traced at this batch
        converter = converter.signature(signature_key(b), module, (x,))
    try:
        buf = converter.convert(**convert_kw).model_content()
    except Exception as e:  # noqa: BLE001 - the converter's own errors: one line for the user
        raise UserError(f"litert-torch could not convert the model to LiteRT ({str(e).strip()[:160]})") from None
    record = {"record_version": RECORD_VERSION, "format": "tflite", "precision": precision,
              "input_shape": [c, h, w], "signatures": signatures(buf, ctx.names), "metadata": ctx.metadata(None)}
    path.write_bytes(embed_record(buf, record))
    return path


def signatures(buf: bytes, names: List[str]) -> List[Dict[str, Any]]:
    """Each signature's batch, input key and output key -> contract name, read from the converted model.
    The dict outputs keep their names; should litert-torch number them (output_0..) they are mapped by
    position, the order the module returns them in. Anything else is refused, never guessed."""
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_content=buf)
    out = []
    for key, sig in it.get_signature_list().items():
        keys = list(sig["outputs"])
        numbered = [f"output_{i}" for i in range(len(names))]
        if sorted(keys) == sorted(names):
            mapping = [(n, n) for n in names]
        elif sorted(keys) == sorted(numbered):
            mapping = list(zip(numbered, names))
        else:
            raise UserError(f"litert-torch named the outputs of signature {key} {keys}, not {names}")
        (inp,) = sig["inputs"]
        batch = int(it.get_signature_runner(key).get_input_details()[inp]["shape"][0])
        out.append({"key": key, "batch": batch, "input": inp,
                    "outputs": [{"key": k, "name": n} for k, n in mapping]})
    return sorted(out, key=lambda s: s["batch"])


def build(ctx: BuildContext) -> List[Path]:
    path = convert(ctx, NamedOutputs(ctx.wrapper, ctx.names).eval(), ctx.tmp / f"{ctx.stem}.tflite", "fp32")
    _facts(ctx, path)
    return [path]


def restamp(ctx: BuildContext, paths: List[Path]) -> List[Path]:
    """The .tflite with its record's metadata replaced by ctx.metadata's (a variant's own 'unsure'
    threshold): the graph is untouched."""
    from ...runtime.runners.litert import embed_record, read_record
    for path in paths:
        buf = path.read_bytes()
        record = read_record(buf, path)
        record["metadata"] = ctx.metadata(None)
        path.write_bytes(embed_record(buf, record))
    return paths


def build_int8(ctx: BuildContext, calib: np.ndarray) -> List[Path]:
    """Static int8 (PT2E): the module exported with a dynamic batch, observers inserted by litert-torch's
    PT2EQuantizer (per-channel symmetric weights, int8 activations), calibrated on `calib`
    (N, C, H, W normalized training images), converted to quantize/dequantize pairs, then to LiteRT
    with the same signatures; int8 input and outputs (the runner quantizes and dequantizes)."""
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import move_exported_model_to_eval, quantize_pt2e
    from . import FORMATS, int8_file
    litert_torch()
    module = NamedOutputs(ctx.wrapper, ctx.names).eval()
    x = ctx.example[:1].repeat(2, 1, 1, 1)
    batch = torch.export.Dim("batch", min=1, max=max(CALIB_CHUNK, *batch_sizes(ctx)))
    graph = torch.export.export(module, (x,), dynamic_shapes=({0: batch},)).module()   # (B, C, H, W)
    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True))
    observed = quantize_pt2e.prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for i in range(0, len(calib), CALIB_CHUNK):                  # observers record activation ranges
            observed(torch.from_numpy(np.ascontiguousarray(calib[i:i + CALIB_CHUNK], dtype=np.float32)))
    quantized = move_exported_model_to_eval(quantize_pt2e.convert_pt2e(observed, fold_quantize=False))
    for m in quantized.modules():        # the graph is already in eval form; the flag is what litert-torch reads
        m.training = False
    path = ctx.tmp / int8_file(FORMATS["tflite"], ctx.stem)
    convert(ctx, quantized, path, "int8", quant_config=QuantConfig(pt2e_quantizer=quantizer))
    ctx.facts.setdefault("tflite", {})["int8_recipe"] = (
        "PT2E static int8: PT2EQuantizer(symmetric, per-channel weights), calibrated, convert_pt2e(fold_quantize="
        "False), litert-torch; int8 input and outputs")
    return [path]


def _facts(ctx: BuildContext, path: Path) -> None:
    from ...runtime.runners.litert import read_record
    rec = read_record(path.read_bytes(), path)
    ctx.facts["tflite"] = {
        "converter": f"litert-torch {_version('litert-torch')} (from the PyTorch module)",
        "runtime": f"ai-edge-litert {_version('ai-edge-litert')} Interpreter (XNNPACK, fp32)",
        "precision": "fp32", "batch": "fixed per signature (litert-torch traces no symbolic batch here)",
        "batch_sizes": [s["batch"] for s in rec["signatures"]],
        "signatures": {s["key"]: s["batch"] for s in rec["signatures"]},
        "outputs": {s["key"]: {o["key"]: o["name"] for o in s["outputs"]} for s in rec["signatures"]},
        "metadata": "inside the .tflite: flatbuffer metadata entry 'sedeploy'"}


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def outputs(ctx: BuildContext, paths: List[Path], x: np.ndarray) -> Dict[str, Dict[str, np.ndarray]]:
    """The .tflite on the LiteRT runner, loaded as `sedeploy infer --model` loads it (fp32 or int8)."""
    from ...runtime.runners import load_runner
    label = "tflite-int8" if ".int8." in paths[0].name else "tflite"
    return {label: load_runner("litert", paths[0], provider="cpu").run(x)}
