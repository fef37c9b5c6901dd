"""The `executorch` format: <stem>.pte for PyTorch's on-device runtime ExecuTorch, lowered to XNNPACK,
and its native int8 variant <stem>.int8.pte (XNNPACK's PT2E quantizer), both run by
torch_runners.executorch.

Follows ExecuTorch's own export flow (docs "Exporting to ExecuTorch", XNNPACK backend tutorial):
torch.export -> to_edge_transform_and_lower(partitioner=[XnnpackPartitioner()]) -> to_executorch().
Facts measured with executorch 1.5.1 / torch 2.14.1 (../shared/EDGE.md):
- Dynamic batch is a bounded range, Dim("batch", min=1, max=MAX_BATCH). The example batch must have at
  least 16 rows: a batch-1 example specializes the batch, and a small one lets XNNPACK plan memory for
  fewer rows than the range ("Attempted to resize a bounded tensor" at run time). The runner splits
  larger batches. `--batch N` gives a static export of exactly N rows (the runner pads, as for ONNX).
- ExecuTorch outputs are positional. The .pte carries its own description: a constant method
  `sedeploy` (to_edge's `constant_methods`, the mechanism ExecuTorch's LLM exports use for their config)
  returns one JSON string - the sedeploy metadata, the output names by position, the input shape and
  the batch range - which executorch.runtime reads back with load_method("sedeploy").execute([]).
  No sidecar is needed, so none can go missing or belong to another export.
- fp32 stays fp32: XNNPACK runs fp32 graphs in fp32 (5.7e-6 here); there is no fp16 variant.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from . import BuildContext, int8_file

MAX_BATCH = 256           # dynamic export: batches of 1..MAX_BATCH run in one call; the runner splits larger
EXAMPLE_BATCH = 16        # the smallest example batch for which XNNPACK plans memory for MAX_BATCH rows
METHOD = "sedeploy"       # the constant method that returns the description (torch_runners.executorch)
DESCRIPTION_VERSION = 1


def description(ctx: BuildContext, precision: str) -> Dict[str, Any]:
    """What the runner needs beside the graph, stored inside the .pte as the `sedeploy` method's string."""
    c, h, w = (int(s) for s in ctx.example.shape[1:])
    batch = {"fixed": ctx.batch} if ctx.batch else {"min": 1, "max": MAX_BATCH}
    return {"version": DESCRIPTION_VERSION, "metadata": ctx.metadata(None), "outputs": list(ctx.names),
            "input_shape": [c, h, w], "batch": batch, "precision": precision}


def _export(ctx: BuildContext, module: Any):
    """torch.export of `module` with the batch the options ask for: (exported program, example)."""
    import torch
    from torch.export import Dim, export
    x = ctx.example
    if ctx.batch:                                   # static: exactly the fixed batch
        return export(module, (x,)), x
    reps = -(-EXAMPLE_BATCH // len(x))              # ceil: at least EXAMPLE_BATCH rows (see the docstring)
    x16 = torch.cat([x] * reps)[:max(EXAMPLE_BATCH, len(x))]
    return export(module, (x16,), dynamic_shapes=({0: Dim("batch", min=1, max=MAX_BATCH)},)), x16


def _lower(ctx: BuildContext, program: Any, path: Path, precision: str) -> Path:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    desc = json.dumps(description(ctx, precision), sort_keys=True)
    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()], constant_methods={METHOD: desc})
    path.write_bytes(edge.to_executorch().buffer)
    return path


def _facts(ctx: BuildContext) -> Dict[str, Any]:
    import executorch  # noqa: F401 - installed: the version is what export.json records
    from importlib.metadata import version
    return {"converter": f"executorch {version('executorch')} (torch.export -> XNNPACK)",
            "batch": f"fixed {ctx.batch}" if ctx.batch else f"dynamic 1..{MAX_BATCH} (larger batches are split)",
            "metadata": f"inside the .pte (constant method {METHOD!r})", "outputs": "positional, names recorded"}


def build(ctx: BuildContext) -> List[Path]:
    program, _ = _export(ctx, ctx.wrapper.eval())
    pte = _lower(ctx, program, ctx.tmp / f"{ctx.stem}.pte", "fp32")
    ctx.facts["executorch"] = {**_facts(ctx), "precision": "fp32"}
    return [pte]


def build_int8(ctx: BuildContext, calib: np.ndarray) -> List[Path]:
    """Static int8 by XNNPACK's quantizer (symmetric, per-channel weights), calibrated on `calib`
    (N, C, H, W normalized training images), then exported and lowered again."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                          get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    program, example = _export(ctx, ctx.wrapper.eval())
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(program.module(), quantizer)
    step = len(example) if ctx.batch else 64
    with torch.no_grad():
        for i in range(0, len(calib), step):        # observers see every calibration image
            chunk = calib[i:i + step]
            if ctx.batch and len(chunk) < step:     # a static graph takes exactly its batch: repeat images
                chunk = np.resize(chunk, (step, *chunk.shape[1:]))
            prepared(torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32)))
    converted = convert_pt2e(prepared)
    program8, _ = _export(ctx, converted)
    from . import FORMATS
    pte = _lower(ctx, program8, ctx.tmp / int8_file(FORMATS["executorch"], ctx.stem), "int8")
    return [pte]


def outputs(ctx: BuildContext, paths: List[Path], x: np.ndarray) -> Dict[str, Dict[str, np.ndarray]]:
    """The .pte on the executorch runner (XNNPACK, CPU), loaded as `sedeploy infer --model` loads it."""
    from ...runtime.runners import load_runner
    label = "executorch-int8" if paths[0].name.endswith(".int8.pte") else "executorch"
    return {label: load_runner("executorch", paths[0], provider="cpu").run(x)}

