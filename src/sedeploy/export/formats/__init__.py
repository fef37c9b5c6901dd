"""Export formats as plug-ins: a name -> format table, each format one module of the same shape.

After fsspec's `known_implementations` (a name -> module table, imported lazily, with the install
hint for a missing package) and Pillow's image plugins (one module per format; the core names
none of them): the exporter iterates a plan of names and never branches on one. Nothing heavy is
imported here, so `sedeploy formats` and `sedeploy --help` load no converter.

Every format module defines
    build(ctx: BuildContext) -> List[Path]     the files it wrote into ctx.tmp, the artifact first
    outputs(ctx, paths, x) -> {label: {output name: array}}
                                               the artifact run in its own runtime on the
                                               verification batch, for export's parity table
and may record facts for export.json in ctx.facts[name] (how it was converted).

A format whose runtime cannot run on this machine (Core ML predicts only on macOS) returns {} from
outputs() and says why in ctx.facts[name]["not_verified"] (e.g. "needs macOS; program validated by
coremltools"): export.json records it as built but not verified, and nothing picks it to run.

int8 (--int8), by the row's `int8` kind:
    "onnx"    derived from the gated <stem>.int8.onnx: build_int8(ctx, int8_onnx) -> [its int8 files],
              checked against that graph within the fp32 tolerance (model.int8.ort);
    "native"  the format's own quantizer: build_int8(ctx, calib) -> [its int8 files], calibrated on
              `calib` (N, C, H, W normalized training images), run by outputs() like the fp32 files
              and gated against the format's own fp32 artifact exactly as the ONNX int8 graph is
              (agreement, accuracy drop, SE weights; export.int8_gate); files <stem>.int8<suffix>.
"""
from __future__ import annotations

import importlib
import importlib.util
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ...core.errors import UserError
from ...core.versions import installed


@dataclass(frozen=True)
class Format:
    name: str                        # the --formats name
    module: str                      # module in this package that builds and runs it
    suffix: str                      # the artifact's file suffix after the stem: model<suffix>
    converter: Tuple[str, ...]       # import names the converter needs
    extra: str                       # the sedeploy extra that brings them
    runtime: str                     # what runs the artifact: a runtime.runners name, or "torch"
    runtime_package: str             # import name of that runtime
    int8: str                        # --int8 variant: "" none, "onnx" (derived from the ONNX int8 graph), "native"
    needs: Tuple[str, ...] = ()      # formats built first because this one is derived from them
    side_files: Tuple[str, ...] = ()  # suffixes of files written beside the artifact, part of the set
    platforms: Optional[Tuple[str, ...]] = None   # platform.system() values its runtime runs on; None: any
    what: str = ""                   # one line for `sedeploy formats`
    tools: Tuple[str, ...] = ()      # programs on PATH `--formats all` requires (web: npm fetches onnxruntime-web;
                                     # asked for by name, the plug-in says what is missing)


# The registered (implemented) formats, in build order. Issue 15 plans more, each a module and a row:
PLANNED: Tuple[str, ...] = ()
FORMATS: Dict[str, Format] = {
    "onnx": Format("onnx", "onnx", ".onnx", ("torch", "onnx", "onnxsim"), "full", "onnxruntime", "onnxruntime",
                   int8="onnx", what="ONNX, simplified by onnxsim (onnxruntime)"),
    "torchscript": Format("torchscript", "torchscript", ".ts", ("torch",), "full", "torch", "torch",
                          int8="", what="TorchScript, traced (PyTorch / libtorch)"),
    "ort": Format("ort", "ort", ".ort", ("onnxruntime", "flatbuffers"), "full", "onnxruntime", "onnxruntime",
                  int8="onnx", needs=("onnx",), side_files=(".required_operators.config", ".int8.ort"),
                  what="ONNX Runtime format for mobile and minimal builds"),
    "ncnn": Format("ncnn", "ncnn", ".ncnn.param", ("pnnx",), "ncnn", "ncnn", "ncnn", int8="", needs=("onnx",),
                   side_files=(".ncnn.bin", ".ncnn.json"), what="NCNN .param/.bin (pnnx, fp32) + sidecar JSON"),
    "openvino": Format("openvino", "openvino", ".openvino.xml", ("openvino",), "openvino", "openvino", "openvino",
                       int8="", needs=("onnx",), side_files=(".openvino.bin",),
                       what="OpenVINO IR .xml/.bin (fp32 weights, metadata in rt_info)"),
    # a package folder; Core ML predicts only on macOS (no runner: `infer` says so)
    "coreml": Format("coreml", "coreml", ".mlpackage", ("torch", "coremltools"), "coreml", "coreml", "coremltools",
                     int8="", platforms=("Darwin",),
                     what="Core ML ML Program package (coremltools, fp32): validated on Linux, verified only on macOS"),
    "executorch": Format("executorch", "executorch", ".pte", ("torch", "executorch"), "executorch", "executorch",
                         "executorch", int8="native", side_files=(".int8.pte",),
                         what="ExecuTorch .pte, XNNPACK, metadata inside; its Python runtime brings torch"),
    "tflite": Format("tflite", "tflite", ".tflite", ("litert_torch",), "tflite", "litert", "ai_edge_litert",
                     int8="native", side_files=(".int8.tflite",),
                     what="LiteRT (TFLite), one signature per batch size (litert-torch; ai-edge-litert runs it)"),
    # a static folder; its runtime is the browser (onnxruntime-web, fetched by npm at export), verified in Chromium
    "web": Format("web", "web", ".web", (), "runtime", "browser", "selenium", int8="",
                  needs=("onnx",), tools=("npm",),
                  what="static web page running the model in the browser (onnxruntime-web wasm, fetched by npm)"),
}
DEFAULT = ("onnx", "torchscript")    # what `sedeploy export` writes without --formats


def converter_installed(fmt: Format) -> bool:
    return all(installed(p) for p in fmt.converter) and all(shutil.which(t) for t in fmt.tools)


def runtime_installed(fmt: Format) -> bool:
    return installed(fmt.runtime_package)


def runs_here(fmt: Format) -> bool:
    """The artifact can run on this machine: its runtime is installed and supports this OS."""
    return runtime_installed(fmt) and (fmt.platforms is None or platform.system() in fmt.platforms)


def install_hint(fmt: Format) -> str:
    return f"pip install 'sedeploy[{fmt.extra}]'"


def parse_formats(names: Sequence[str]) -> Tuple[str, ...]:
    """--formats as given -> registered names in build order; `all` = every format whose converter is
    installed. An unknown name or a missing converter is a UserError naming the fix."""
    names = [n.strip().lower() for n in names if n.strip()]
    if "all" in names:
        return tuple(n for n, f in FORMATS.items() if converter_installed(f))
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        planned = [n for n in unknown if n in PLANNED]
        why = f" ({', '.join(planned)}: planned, not implemented yet)" if planned else ""
        raise UserError(f"unknown format {', '.join(unknown) or '(none)'}{why}; "
                        f"choose from: {', '.join(FORMATS)}, all")
    for n in names:
        fmt = FORMATS[n]
        missing = [p for p in fmt.converter if not installed(p)]   # tools: the plug-in says what is missing
        if missing:
            raise UserError(f"format {n} needs {', '.join(missing)}, which is not installed: {install_hint(fmt)}")
    return tuple(n for n in FORMATS if n in names)       # registry order: what a format needs comes first


def build_order(requested: Sequence[str]) -> Tuple[str, ...]:
    """The requested formats plus those they are derived from (built and verified, installed only if
    requested), in registry order."""
    want = set(requested)
    for n in requested:
        want.update(FORMATS[n].needs)
    return tuple(n for n in FORMATS if n in want)


def format_module(name: str) -> ModuleType:
    """The plug-in module of a registered format, imported now (it imports its converter)."""
    return importlib.import_module(f"{__name__}.{FORMATS[name].module}")


def format_for_suffix(filename: str) -> Optional[Format]:
    """The format whose artifact a file name is (model.ort -> ort), longest suffix first."""
    for fmt in sorted(FORMATS.values(), key=lambda f: -len(f.suffix)):
        if filename.endswith(fmt.suffix):
            return fmt
    return None


def int8_file(fmt: Format, stem: str) -> str:
    """The file name of a format's int8 artifact: <stem>.int8<suffix> (model.int8.onnx, model.int8.tflite)."""
    return f"{stem}.int8{fmt.suffix}"


def table() -> List[Dict[str, Any]]:
    """One row per registered format: what `sedeploy formats` prints."""
    return [{"format": f.name, "file": f"model{f.suffix}", "converter_installed": converter_installed(f),
             "runtime": f.runtime, "runtime_installed": runtime_installed(f), "runs_here": runs_here(f),
             "int8": bool(f.int8), "extra": f.extra, "what": f.what} for f in FORMATS.values()]


@dataclass
class BuildContext:
    """What every format's build and outputs functions get: the model to trace, where to write, the
    options that shape the graph, and what earlier formats of the plan wrote."""
    wrapper: Any                      # torch module returning the contract's outputs (export.wrappers)
    example: Any                      # torch tensor traced on: (batch or 2, C, H, W)
    tmp: Path                         # the staging folder: every file is written here
    stem: str                         # output file stem: <stem>.onnx, <stem>.ort, ...
    names: List[str]                  # output names in graph order (core.contract.output_names)
    metadata: Callable[[Optional[int]], Dict[str, str]]   # opset (None: not ONNX) -> encoded metadata
    opset: int = 17
    batch: Optional[int] = None       # None: dynamic batch axis
    simplify: bool = True
    batch_sizes: Tuple[int, ...] = (1, 64)   # formats without a dynamic batch (tflite): one signature per size
    web_runtime: Optional[str] = None  # web: onnxruntime-web's tarball or dist/ folder (None: cache, else npm)
    web_webgpu: bool = False          # web: also ship WebGPU's runtime files
    built: Dict[str, List[Path]] = field(default_factory=dict)    # format -> files it wrote
    facts: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # format -> facts for export.json
    timings: Dict[str, float] = field(default_factory=dict)   # finer steps (onnx_export, simplify); the
                                                                # exporter times each build as a whole
    nodes: Dict[str, int] = field(default_factory=dict)
