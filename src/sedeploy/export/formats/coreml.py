"""The `coreml` format: <stem>.mlpackage, an ML Program for Apple's Core ML (iOS, macOS), converted by
coremltools from the traced model in fp32, with the sedeploy metadata as Core ML user metadata.

After coremltools' PyTorch guide (ct.convert of a TorchScript trace, convert_to="mlprogram"). What
shapes it (shared/EDGE.md, measured with coremltools 9.0):
- precision: an ML Program computes in fp16 by default (casts inserted, weights stored fp16);
  compute_precision=FLOAT32 keeps every tensor fp32, and the check below refuses a program with any
  fp16 tensor, so the default cannot come back silently.
- batch: a RangeDim(1, MAX_BATCH) on the input (a fixed size with --batch).
- an ML Program is saved as a package, a folder (model.mlpackage: Manifest.json, the program, its
  weights blob); coremltools saves no single-file ML Program (.mlmodel holds only the older
  neuralnetwork type). The export commit moves the folder as one entry (core.commit) and export.json
  hashes it file by file (core.io.path_sha256).
- predictions need Core ML itself, i.e. macOS. Elsewhere the saved package is reloaded
  (skip_model_load), its program re-read into MIL and validated, and the spec checked (input name
  and batch range, output names and order, metadata, fp32); outputs() returns {} and the format is
  recorded as not verified. On macOS the package is also run (CPU only: the GPU and the Neural
  Engine compute in fp16) and compared on every output like every other format. That path is written
  but was never run here (no macOS); `sedeploy infer` has no Core ML runner (runtime.runners).
- coremltools logs lines at import that mean nothing for this export (torch 2.14 "has not been
  tested", ...): exactly those messages are filtered (NOISE); its progress bars are turned off.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import platform
from pathlib import Path
from typing import Any, Dict, Iterator, List

import numpy as np

from ...core.contract import INPUT_NAME, decode_metadata
from ...core.errors import UserError
from ...core.io import share_tree
from . import BuildContext

MAX_BATCH = 256                 # the input's batch range is 1..MAX_BATCH (Core ML wants a bounded range)
NOT_VERIFIED = "needs macOS for predictions; program reloaded and validated by coremltools {version}"
# (logger, start of the message): lines coremltools causes that say nothing about this export
NOISE = (
    ("coremltools", "Torch version "),        # "... has not been tested with coremltools" (2.7 is its newest)
    ("coremltools", "scikit-learn version "),  # its scikit-learn converter, unused here
    ("coremltools", "Failed to load _ML"),     # Core ML's own bindings: macOS only (hence not_verified)
    ("coremltools", "Tuple detected at graph output"),   # the five outputs, named below
    ("torch.utils._pytree", "<enum 'KernelPreference'>"),  # torchao (imported by coremltools) registering an Enum
)


class _Quiet(logging.Filter):
    def __init__(self, starts: List[str]) -> None:
        super().__init__()
        self.starts = tuple(starts)

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.starts)


def coremltools() -> Any:
    """coremltools, imported with its NOISE lines filtered (the filters stay for its later calls)."""
    for name in dict.fromkeys(n for n, _ in NOISE):
        log = logging.getLogger(name)
        if not any(isinstance(f, _Quiet) for f in log.filters):
            log.addFilter(_Quiet([s for n, s in NOISE if n == name]))
    import coremltools as ct
    return ct


@contextlib.contextmanager
def no_progress_bars() -> Iterator[None]:
    """coremltools' tqdm bars off (torch frontend and MIL pass pipelines) for the conversion only."""
    from coremltools.converters.mil.frontend.torch import ops
    from coremltools.converters.mil.mil.passes import pass_pipeline
    patched = [(m, a, getattr(m, a)) for m, a in ((ops, "_tqdm"), (pass_pipeline, "tqdm")) if hasattr(m, a)]
    for m, a, bar in patched:
        setattr(m, a, functools.partial(bar, disable=True))
    try:
        yield
    finally:
        for m, a, bar in patched:
            setattr(m, a, bar)


def precision() -> Any:
    """The compute precision asked of the converter (a function, so a test can ask for fp16 instead)."""
    return coremltools().precision.FLOAT32


def build(ctx: BuildContext) -> List[Path]:
    from ..torchscript import trace
    ct = coremltools()
    c, h, w = (int(s) for s in ctx.example.shape[1:])
    batch = ctx.batch if ctx.batch else ct.RangeDim(1, MAX_BATCH)
    try:
        with no_progress_bars():
            mlmodel = ct.convert(trace(ctx.wrapper, ctx.example), convert_to="mlprogram",
                                 compute_precision=precision(),
                                 inputs=[ct.TensorType(name=INPUT_NAME, shape=(batch, c, h, w))],
                                 outputs=[ct.TensorType(name=n) for n in ctx.names])
    except Exception as e:  # noqa: BLE001 - any converter failure is the user's one line
        raise UserError(f"coremltools could not convert the model to Core ML ({str(e).splitlines()[0][:160]})") \
            from None
    for k, v in ctx.metadata(None).items():
        mlmodel.user_defined_metadata[k] = v
    path = ctx.tmp / f"{ctx.stem}.mlpackage"
    mlmodel.save(str(path))
    share_tree(path)                    # its program file is written 0600: give the set's files one mode
    ctx.facts["coreml"] = {"converter": f"coremltools {ct.__version__} (ct.convert, mlprogram, compute_precision "
                                        f"FLOAT32)", "precision": "fp32",
                           "batch": f"fixed {ctx.batch}" if ctx.batch else f"1..{MAX_BATCH}",
                           "package": "a folder (Manifest.json, program, weights)"}
    return [path]


def outputs(ctx: BuildContext, paths: List[Path], x: np.ndarray) -> Dict[str, Dict[str, np.ndarray]]:
    """The saved package reloaded and checked everywhere; run by Core ML on macOS (CPU, fp32), else {}
    with the reason in ctx.facts (recorded as not verified)."""
    ct = coremltools()
    spec = check_package(paths[0], ctx)
    ctx.facts.setdefault("coreml", {})["spec_version"] = spec.specificationVersion
    if platform.system() != "Darwin":
        ctx.facts["coreml"]["not_verified"] = NOT_VERIFIED.format(version=ct.__version__)
        return {}
    return {"coreml": predict(paths[0], x, ctx.batch)}          # macOS: not run here (no macOS machine)


def predict(path: Path, x: np.ndarray, fixed: Any) -> Dict[str, np.ndarray]:
    """Every output of the package on Core ML, CPU only (fp32), in chunks the input range accepts (a
    fixed batch: padded chunks)."""
    ct = coremltools()
    model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.CPU_ONLY)
    step = fixed or MAX_BATCH
    parts: List[Dict[str, np.ndarray]] = []
    for i in range(0, len(x), step):
        chunk = x[i:i + step]
        n = len(chunk)
        if fixed and n < fixed:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - n, axis=0)])
        got = model.predict({INPUT_NAME: np.ascontiguousarray(chunk, np.float32)})
        parts.append({k: np.asarray(v)[:n] for k, v in got.items()})
    names = [o.name for o in model.get_spec().description.output]
    return {k: np.concatenate([p[k] for p in parts]) for k in names}


def check_package(path: Path, ctx: BuildContext) -> Any:
    """Reload the saved package without Core ML and check it: an ML Program that re-reads into a valid
    MIL program, the input's name and shape range, the outputs by name in order, every metadata key,
    no fp16 tensor. -> its spec. UserError (nothing is written) on any mismatch."""
    ct = coremltools()
    from coremltools.converters.mil.frontend.milproto.load import load as load_program
    try:
        model = ct.models.MLModel(str(path), skip_model_load=True)
        spec = model.get_spec()
        load_program(spec, spec.specificationVersion, model.weights_dir).validate()
    except Exception as e:  # noqa: BLE001 - a package coremltools cannot read back
        raise UserError(f"the Core ML package {path.name} does not reload in coremltools "
                        f"({str(e).splitlines()[0][:160]}); nothing was written") from None
    d = spec.description
    c, h, w = (int(s) for s in ctx.example.shape[1:])
    want = [(ctx.batch, ctx.batch) if ctx.batch else (1, MAX_BATCH), (c, c), (h, h), (w, w)]
    problems = []
    if spec.WhichOneof("Type") != "mlProgram":
        problems.append(f"it is a {spec.WhichOneof('Type')}, not an mlProgram")
    if [i.name for i in d.input] != [INPUT_NAME] or input_range(d.input[0]) != want:
        problems.append(f"input {[i.name for i in d.input]} {input_range(d.input[0])} is not {INPUT_NAME} {want}")
    if [o.name for o in d.output] != list(ctx.names):
        problems.append(f"outputs {[o.name for o in d.output]} are not {ctx.names}")
    meta = dict(d.metadata.userDefined)
    missing = [k for k in ctx.metadata(None) if k not in meta]     # keys: exported_at differs call to call
    if missing or decode_metadata(meta).get("output_names") != list(ctx.names):
        problems.append(f"sedeploy metadata {', '.join(missing) or 'output_names'} missing or wrong")
    half = fp16_tensors(spec)
    if half:
        problems.append(f"{len(half)} tensors are fp16 ({', '.join(half[:3])}), the export is fp32")
    if problems:
        raise UserError(f"the Core ML package {path.name} is not what was exported: {'; '.join(problems)}; "
                        f"nothing was written")
    return spec


def input_range(feature: Any) -> List[tuple]:
    """(low, high) of each input dimension: the shape ranges of a flexible input, else the fixed shape."""
    arr = feature.type.multiArrayType
    ranges = list(arr.shapeRange.sizeRanges)
    if ranges:
        return [(int(r.lowerBound), int(r.upperBound)) for r in ranges]
    return [(int(s), int(s)) for s in arr.shape]


def fp16_tensors(spec: Any) -> List[str]:
    """Names of the program's fp16 tensors (function inputs and op outputs, nested blocks included)."""
    from coremltools.proto import MIL_pb2
    fp16 = MIL_pb2.DataType.Value("FLOAT16")
    found: List[str] = []

    def block(b: Any) -> None:
        for op in b.operations:
            found.extend(o.name for o in op.outputs if o.type.tensorType.dataType == fp16)
            for inner in op.blocks:
                block(inner)
    for f in spec.mlProgram.functions.values():
        found.extend(i.name for i in f.inputs if i.type.tensorType.dataType == fp16)
        for b in f.block_specializations.values():
            block(b)
    return found
