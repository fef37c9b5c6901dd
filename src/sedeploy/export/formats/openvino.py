"""The `openvino` format: an OpenVINO IR pair <stem>.openvino.xml + <stem>.openvino.bin, converted from the
verified ONNX file by OpenVINO's own converter (`ov.convert_model`, the ONNX frontend), run by
runtime.runners.openvino.

Named .openvino.xml/.bin, as ncnn's files are .ncnn.param/.bin, so that the weights are not one more
model.bin beside the others. `ov.save_model` compresses the weights to fp16 by default (1.5e-3 off on
the demo model): `compress_to_fp16=False` keeps fp32. The metadata goes into the IR's rt_info under
a `sedeploy` section (the ONNX frontend also copies the ONNX metadata under `framework`; the runner
reads only the `sedeploy` section), and the output names survive as tensor names, so no sidecar.
The batch axis stays dynamic when the ONNX one is (OpenVINO compiles a dynamic shape and reshapes
per call); `--batch N` gives a static IR, padded by the runner base class.
OpenVINO is imported through the runner's `import_openvino`, which keeps its telemetry off.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np

from ...core import contract
from ...core.errors import UserError
from ...runtime.runners.openvino import RT_SECTION, import_openvino, weights_of
from . import BuildContext


def build(ctx: BuildContext) -> List[Path]:
    ov = import_openvino()
    onnx_path = ctx.built["onnx"][0]
    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as e:  # noqa: BLE001 - the converter raises its own error types
        text = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"OpenVINO could not convert {onnx_path.name} ({text[:160]})") from None
    for key, value in ctx.metadata(None).items():          # "sedeploy.classes" -> <sedeploy><classes .../>
        model.set_rt_info(value, [RT_SECTION, key[len(contract.META_PREFIX):]])
    xml = ctx.tmp / f"{ctx.stem}.openvino.xml"
    ov.save_model(model, str(xml), compress_to_fp16=False)   # the default would store fp16 weights
    batch = model.inputs[0].get_partial_shape()[0]
    ctx.facts["openvino"] = {"converter": f"openvino {ov.get_version()} convert_model (ONNX frontend)",
                             "weights": "fp32 (save_model compress_to_fp16=False)",
                             "inference_precision": "f32 (INFERENCE_PRECISION_HINT, forced by the runner)",
                             "batch": "dynamic" if batch.is_dynamic else batch.get_length(),
                             "metadata": f"rt_info section '{RT_SECTION}'"}
    return [xml, weights_of(xml)]


def outputs(ctx: BuildContext, paths: List[Path], x: np.ndarray) -> Dict[str, Dict[str, np.ndarray]]:
    """The .xml/.bin on the OpenVINO runner (CPU, fp32), loaded as `sedeploy infer --model` loads it."""
    from ...runtime.runners import load_runner
    return {"openvino": load_runner("openvino", paths[0], provider="cpu").run(x)}
