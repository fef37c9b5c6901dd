"""The `ort` format: ONNX Runtime's own format (<stem>.ort, a flatbuffer) for mobile and minimal
builds, derived from the verified ONNX file, plus the operators config a minimal build needs.

Follows onnxruntime.tools.convert_onnx_models_to_ort (its `_convert` with `--optimization_style
Fixed`): an InferenceSession on the ONNX file with every graph optimization, saving the optimized
graph in ORT format; then `create_config_from_models` lists the operators it uses
(<stem>.required_operators.config, kept in the set: `build.py --include_ops_by_config` takes it).
Two choices matter, and both are recorded in export.json:
- target platform: the tool filters out the x86 layout optimization (NchwcTransformer) unless told
  `--target_platform amd64`, which measured 1.3-1.5x slower here (shared/EDGE.md). The platform is
  chosen from the exporting machine: amd64 on x86-64 (the file then holds com.microsoft.nchwc
  operators, which only x86 builds have), arm on aarch64, neither elsewhere.
- Fixed style: the optimizations are applied at conversion, so the file runs as is; a Runtime-style
  file would need `session.enable_saved_runtime_optimizations=1` in every session that loads it.
The ONNX metadata_props survive the conversion (read back as custom_metadata_map), so the runtime's
facts stay inside the artifact and no sidecar JSON is written. Verification loads the file through
the runner registry (runtime.runners: the onnxruntime runner reads .ort files natively).
"""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from . import BuildContext

NCHWC_DOMAIN = "com.microsoft.nchwc"   # the x86 layout optimization's operators


def target_platform(machine: Optional[str] = None) -> Optional[str]:
    """convert_onnx_models_to_ort's --target_platform for a machine (default: this one)."""
    m = (machine or platform.machine()).lower()
    if m in ("x86_64", "amd64", "x64"):
        return "amd64"
    if m in ("aarch64", "arm64") or m.startswith("arm"):
        return "arm"
    return None


def convert(onnx_path: Path, ort_path: Path, target: Optional[str]) -> Path:
    """The ONNX file -> an ORT-format file with every optimization applied (Fixed style)."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3                   # the "hardware specific" warning is what amd64 asks for
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(ort_path)
    so.add_session_config_entry("session.save_model_format", "ORT")
    # as the tool does: QDQ int8 kernels are kept only for arm targets
    so.add_session_config_entry("session.qdqisint8allowed", "1" if target == "arm" else "0")
    disabled = None if target == "amd64" else ["NchwcTransformer"]
    ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
    return ort_path


def operators_config(ort_paths: List[Path], config: Path) -> Path:
    """<stem>.required_operators.config: the operators of the files (model.ort, and model.int8.ort
    with --int8: a minimal build that is to run either needs both), for a minimal onnxruntime build."""
    import logging
    from onnxruntime.tools.ort_format_model import create_config_from_models
    logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)   # its "Created config in" line
    create_config_from_models(ort_paths, config, False)
    # the tool names the converted files by their paths, here the staging folder's: name them as installed
    text = config.read_text()
    for p in ort_paths:
        text = text.replace(str(p), p.name)
    config.write_text(text)
    return config


def build(ctx: BuildContext) -> List[Path]:
    import onnxruntime as ort
    target = target_platform()
    path = convert(ctx.built["onnx"][0], ctx.tmp / f"{ctx.stem}.ort", target)
    config = operators_config([path], ctx.tmp / f"{ctx.stem}.required_operators.config")
    ctx.facts["ort"] = {
        "converter": f"onnxruntime {ort.__version__} (convert_onnx_models_to_ort's conversion, Fixed style)",
        "target_platform": target or "generic", "machine": platform.machine(),
        "optimization_style": "Fixed", "optimization_level": "all",
        "nchwc_layout": NCHWC_DOMAIN in config.read_text(),   # the x86 layout optimization is in the file
        "operators_config": config.name,
    }
    return [path, config]


def build_int8(ctx: BuildContext, int8_onnx: Path) -> List[Path]:
    """<stem>.int8.ort from the gated <stem>.int8.onnx (export --int8), converted the same way; the
    operators config is rewritten to cover both files."""
    path = convert(int8_onnx, ctx.tmp / f"{ctx.stem}.int8.ort", target_platform())
    operators_config([ctx.built["ort"][0], path], ctx.tmp / f"{ctx.stem}.required_operators.config")
    ctx.facts["ort"]["int8"] = path.name
    return [path]


def outputs(ctx: BuildContext, paths: List[Path], x: np.ndarray) -> Dict[str, Dict[str, np.ndarray]]:
    """The .ort file on the onnxruntime runner (CPU), loaded as `sedeploy infer --model` loads it:
    the metadata and graph contract are checked on the way (runtime.model.describe)."""
    from ...runtime.runners import load_runner
    runner = load_runner("onnxruntime", paths[0], provider="cpu")
    return {"ort": runner.run(x)}
