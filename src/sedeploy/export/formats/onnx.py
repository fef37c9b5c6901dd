"""The `onnx` format: <stem>.onnx traced with the TorchScript-based exporter, contract names and
metadata, then simplified by onnxsim (export.onnx_export, export.simplify), run by onnxruntime.

Both the raw and the simplified graph are checked (onnx.checker, full) and run, so that a
difference introduced by onnxsim shows as its own row of the parity table.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List

import numpy as np

from . import BuildContext


def build(ctx: BuildContext) -> List[Path]:
    from ..onnx_export import export_onnx, node_count
    from ..simplify import simplify_onnx
    from ..verify import check_onnx
    t = time.perf_counter()
    raw = export_onnx(ctx.wrapper, ctx.example, ctx.tmp / "raw.onnx", ctx.names, ctx.opset, ctx.batch is None,
                      ctx.metadata(ctx.opset))
    ctx.timings["onnx_export"] = time.perf_counter() - t
    check_onnx(raw, "raw")
    final = ctx.tmp / f"{ctx.stem}.onnx"
    if ctx.simplify:
        t = time.perf_counter()
        ctx.nodes["raw"], ctx.nodes["simplified"] = simplify_onnx(raw, final)
        ctx.timings["simplify"] = time.perf_counter() - t
        check_onnx(final, "simplified")
        return [final]                                  # raw.onnx stays behind in the staging folder
    import onnx
    ctx.nodes["raw"] = node_count(onnx.load(str(raw)))
    raw.replace(final)
    return [final]


def outputs(ctx: BuildContext, paths: List[Path], x: np.ndarray) -> Dict[str, Dict[str, np.ndarray]]:
    """onnxruntime on the raw graph (when simplified) and on the artifact."""
    from ..verify import run_onnx
    if ctx.simplify:
        return {"onnx raw": run_onnx(ctx.tmp / "raw.onnx", x), "onnx simplified": run_onnx(paths[0], x)}
    return {"onnx raw": run_onnx(paths[0], x)}
