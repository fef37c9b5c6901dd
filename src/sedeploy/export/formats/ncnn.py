"""The `ncnn` format: <stem>.ncnn.param + <stem>.ncnn.bin for Tencent's ncnn, converted from the verified
ONNX file by pnnx, plus the sidecar <stem>.ncnn.json the runner reads (runtime.runners.ncnn).

pnnx is installed without its dependencies (`pip install --no-deps pnnx`): its console script imports
torch, the converter itself is the binary inside the package, called directly here. It converts to
fp16 weights by default (2e-3 off): `fp16=0` keeps fp32. NCNN blobs have no batch dimension, so the
graph is converted at batch 1 and the runner loops over images. pnnx also writes its own .pnnx.*
files and python scripts into the staging folder; only the .param, .bin and sidecar are in the set.
The sidecar records the metadata (NCNN keeps none), the output blob -> name mapping by position
(pnnx names them out0..out4 in the ONNX output order) and the sha256 of the .param and .bin.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path
from typing import Dict, List

import numpy as np

from ...core.errors import UserError
from ...core.io import file_sha256
from . import BuildContext

INPUT_BLOB = "in0"


def pnnx_binary() -> Path:
    """The converter binary inside the pnnx package (its console script would import torch)."""
    spec = importlib.util.find_spec("pnnx")
    exe = Path(list(spec.submodule_search_locations)[0]) / "pnnx" if spec else None
    if exe is None or not exe.is_file():
        raise UserError("format ncnn needs the pnnx converter binary: pip install --no-deps pnnx")
    return exe


def onnx_output_shapes(onnx_path: Path) -> Dict[str, List[int]]:
    """Output name -> per-image shape (batch axis dropped), read from the ONNX graph."""
    import onnx
    g = onnx.load(str(onnx_path), load_external_data=False).graph
    return {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim][1:] for o in g.output}


def build(ctx: BuildContext) -> List[Path]:
    onnx_path = ctx.built["onnx"][0]
    c, h, w = (int(s) for s in ctx.example.shape[1:])
    src = ctx.tmp / f"{ctx.stem}.pnnx-src.onnx"      # pnnx names its outputs after its input's stem
    src.write_bytes(onnx_path.read_bytes())
    work = ctx.tmp / f"{ctx.stem}.pnnx-src"
    cmd = [str(pnnx_binary()), src.name, f"inputshape=[1,{c},{h},{w}]", "fp16=0",
           f"ncnnparam={ctx.stem}.ncnn.param", f"ncnnbin={ctx.stem}.ncnn.bin",
           f"pnnxparam={work.name}.pnnx.param", f"pnnxbin={work.name}.pnnx.bin", f"pnnxpy={work.name}_pnnx.py",
           f"pnnxonnx={work.name}.pnnx.onnx", f"ncnnpy={work.name}_ncnn.py"]
    r = subprocess.run(cmd, cwd=ctx.tmp, capture_output=True, text=True)
    param, weights = ctx.tmp / f"{ctx.stem}.ncnn.param", ctx.tmp / f"{ctx.stem}.ncnn.bin"
    if r.returncode != 0 or not param.is_file() or not weights.is_file():
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"pnnx could not convert the model to ncnn ({tail[0][:160]})")
    for p in ctx.tmp.glob(f"{work.name}*"):         # pnnx's own files and the copy: not part of the set
        p.unlink()
    shapes = onnx_output_shapes(onnx_path)
    side = ctx.tmp / f"{ctx.stem}.ncnn.json"
    doc = {"sidecar_version": 1, "format": "ncnn", "input_blob": INPUT_BLOB, "input_shape": [c, h, w],
           "outputs": [{"blob": f"out{i}", "name": n, "shape": shapes[n]} for i, n in enumerate(ctx.names)],
           "metadata": ctx.metadata(None),
           "files": {".param": file_sha256(param), ".bin": file_sha256(weights)}}
    side.write_text(json.dumps(doc, indent=1))
    ctx.facts["ncnn"] = {"converter": f"pnnx ({pnnx_binary().name} binary, fp16=0)", "precision": "fp32",
                         "batch": "none (the runner loops per image)", "sidecar": side.name}
    return [param, weights, side]


def outputs(ctx: BuildContext, paths: List[Path], x: np.ndarray) -> Dict[str, Dict[str, np.ndarray]]:
    """The .param/.bin on the ncnn runner (fp32), loaded as `sedeploy infer --model` loads it."""
    from ...runtime.runners import load_runner
    return {"ncnn": load_runner("ncnn", paths[0], provider="cpu").run(x)}
