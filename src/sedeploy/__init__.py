"""sedeploy: train, export, verify, explain and measure small SE-attention image classifiers.

The top-level package imports nothing heavy: `sedeploy.runtime` runs on onnxruntime, numpy and
Pillow alone; `sedeploy.models`, `.training` and `.export` need torch.

No usage data leaves the machine. onnxruntime >= 1.32 builds for Linux and macOS collect telemetry
by default (a device id and an event cache under ~/.cache/Microsoft/DeveloperTools/.onnxruntime,
uploads to Microsoft); it reads its opt-out once, when it first starts, so it is set here, before
any part of sedeploy can import onnxruntime (a value the user set is kept). OpenVINO's telemetry is
kept off by runtime.runners.openvino.import_openvino.
"""
import os as _os

for _var in ("ORT_DISABLE_TELEMETRY", "ORT_TELEMETRY_DISABLED"):   # 1.32's name; the later releases' name
    _os.environ.setdefault(_var, "1")

__version__ = "0.1.0"
