"""ONNX export with the TorchScript-based exporter, contract names, dynamic batch and metadata.

Why `dynamo=False`: the dynamo exporter (torch 2.14's default) needs onnxscript and re-decomposes
ops; for this small static CNN the TorchScript-based exporter gives the same graph with fewer
dependencies, supports `dynamic_axes` directly, and exports in well under a second.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Dict, List, Optional

import onnx
import torch
from torch import nn

from ..core import contract
from ..core.errors import UserError

MIN_OPSET, MAX_OPSET = 11, 20   # the opsets export accepts (--opset)


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path, output_names: List[str], opset: int,
                dynamic_batch: bool, metadata: Optional[Dict[str, str]] = None) -> Path:
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), (example,), str(path), dynamo=False, opset_version=opset,
                              input_names=[contract.INPUT_NAME], output_names=output_names,
                              dynamic_axes=contract.dynamic_axes(output_names) if dynamic_batch else None,
                              do_constant_folding=True)
    except (torch.onnx.errors.OnnxExporterError, onnx.shape_inference.InferenceError) as e:
        # an op this opset cannot express, or a graph ONNX shape inference rejects: the opset is the knob
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        raise UserError(f"the ONNX exporter failed at opset {opset} ({(lines or [type(e).__name__])[0][:200]}); "
                        f"try another --opset ({MIN_OPSET}..{MAX_OPSET}); nothing was written") from None
    if metadata:
        m = onnx.load(str(path))
        set_metadata(m, metadata)
        onnx.save(m, str(path))
    return path


def set_metadata(model: onnx.ModelProto, metadata: Dict[str, str]) -> None:
    """Replace the sedeploy.* metadata_props entries of `model`."""
    keep = [p for p in model.metadata_props if p.key not in metadata]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for k, v in metadata.items():
        model.metadata_props.add(key=k, value=v)
    model.producer_name = "sedeploy"


def node_count(model: onnx.ModelProto) -> int:
    return len(model.graph.node)
