"""The bench's backends: for each row kind, a runner `x (B, C, H, W) float32 -> logits` on one file.

What a user would run instead of onnxruntime on a CPU, on the same exported model: PyTorch eager
(NCHW and channels-last), torch.compile (inductor), TorchScript, the ORT-format file of the set
(`ort-format`: model.ort on onnxruntime, timed exactly as `ort-cpu` times model.onnx;
`ort-format-int8`: model.int8.ort), a row per file of every other format of the set on its own runner
(OpenVINO IR, NCNN, LiteRT, ExecuTorch: ARTIFACT_ROWS, loaded as `infer --model FILE` loads it), and on
CUDA PyTorch and onnxruntime fp32/fp16 with IO binding. A backend that cannot run here raises Skip with
the reason; torch and the other runtimes are imported only when their rows are asked for.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from ..core.versions import installed
from ..export.formats import FORMATS, Format, int8_file
from ..runtime.runners import RUNNERS

PYTORCH_CPU = ("pytorch", "pytorch-cl", "torch-compile", "torchscript")   # the PyTorch rows to compare against
ORT_CPU = ("ort-cpu", "ort-format", "ort-cpu-int8", "ort-format-int8")
CUDA = ("pytorch-cuda", "ort-cuda", "ort-cuda-fp16")
# A row per artifact of every registered format that a runner of runtime.runners runs (ncnn, ...), read
# from the set by the file name the format writes: "<format>" for <stem><suffix>, "<format>-int8" for
# its native int8 file. Formats run by onnxruntime or torch have the rows above; a format no runner
# here runs (coreml: Core ML predicts only on macOS) has none.
ARTIFACT_ROWS: Dict[str, Tuple[Format, bool]] = {}
for _f in FORMATS.values():
    if _f.runtime in RUNNERS and _f.runtime != "onnxruntime" and _f.name not in ORT_CPU:
        ARTIFACT_ROWS[_f.name] = (_f, False)
        if _f.int8 == "native":
            ARTIFACT_ROWS[f"{_f.name}-int8"] = (_f, True)
BACKENDS = PYTORCH_CPU + ORT_CPU + tuple(ARTIFACT_ROWS) + CUDA
FP32_CPU = PYTORCH_CPU + ("ort-cpu", "ort-format") + tuple(n for n, (_, q) in ARTIFACT_ROWS.items()
                                                                      if not q)   # rows with a share of the fp32 peak
Runner = Callable[[np.ndarray], np.ndarray]


class Skip(Exception):
    """The backend cannot run on this machine; the message says why."""


def first_line(e: Exception, n: int = 160) -> str:
    """An exception as one short line for a table cell or a log line."""
    return str(e).strip().splitlines()[0][:n] if str(e).strip() else type(e).__name__


# ---------------------------------------------------------------- onnxruntime
def _ort_session(path: Path, providers: List[str], threads: Optional[int]):
    import onnxruntime as ort
    from ..runtime.runners.ort import session_options
    return ort.InferenceSession(str(path), session_options(threads), providers=providers)


def ort_cpu(path: Path, threads: Optional[int]) -> Runner:
    s = _ort_session(path, ["CPUExecutionProvider"], threads)
    name = s.get_inputs()[0].name
    return lambda x: s.run(None, {name: x})[0]


def ort_cuda(path: Path) -> Runner:
    import onnxruntime as ort
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise Skip("onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
    s = _ort_session(path, ["CUDAExecutionProvider"], None)
    if s.get_providers()[0] != "CUDAExecutionProvider":
        raise Skip("CUDAExecutionProvider did not start (CUDA/cuDNN libraries or GPU missing)")
    inp = s.get_inputs()[0].name
    outs = [o.name for o in s.get_outputs()]
    state: Dict[str, object] = {}

    def run(x: np.ndarray):
        # IO binding: input copied to the GPU once per array, outputs stay on the device; only
        # logits come back to the host for parity/accuracy.
        if state.get("host") is not x:
            b = s.io_binding()
            b.bind_ortvalue_input(inp, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
            for o in outs:
                b.bind_output(o, "cuda")
            state.update(host=x, binding=b)
        b = state["binding"]
        s.run_with_iobinding(b)
        return b.get_outputs()[0]

    def run_host(x: np.ndarray) -> np.ndarray:
        return run(x).numpy()
    run_host.device_run = run  # timing uses the device-resident path
    return run_host


# ---------------------------------------------------------------- PyTorch
def torch_runner(model, device: str, threads: Optional[int], channels_last: bool = False) -> Runner:
    import torch
    if threads:
        torch.set_num_threads(threads)
    model = model.to(device).eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        model = model.to(memory_format=fmt)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = model(torch.from_numpy(x).to(device).contiguous(memory_format=fmt))
            out = out[0] if isinstance(out, (tuple, list)) else out
            if device == "cuda":
                torch.cuda.synchronize()
            return out.float().cpu().numpy()
    return run


def compiled_runner(model, threads: Optional[int], probe: np.ndarray) -> Runner:
    """torch.compile (inductor, channels-last: its best CPU layout here), compiled now on `probe`."""
    import torch
    if not any(shutil.which(c) for c in ("cc", "gcc", "clang", "g++")):
        raise Skip("torch.compile needs a C/C++ compiler for inductor's CPU kernels (none on PATH)")
    try:
        compiled = torch.compile(model.eval().to(memory_format=torch.channels_last), backend="inductor")
        run = torch_runner(compiled, "cpu", threads, channels_last=True)
        run(probe)                         # the first call compiles
    except Exception as e:  # noqa: BLE001 - inductor raises many kinds (compiler, codegen, dynamo)
        # with a compiler present, a compile error is a broken backend: a "failed" row, never a skip
        raise RuntimeError(f"torch.compile failed: {first_line(e)}") from None
    return run


def _pytorch(name: str, model: Path, ckpt: Optional[Path], threads: Optional[int], probe: np.ndarray
             ) -> Tuple[Runner, Optional[Path]]:
    try:
        import torch
    except ImportError:
        raise Skip("torch is not installed (pip install sedeploy[full])") from None
    if name == "pytorch-cuda" and not torch.cuda.is_available():
        raise Skip("no CUDA GPU (torch.cuda.is_available() is False)")
    if name == "torchscript":
        ts = sibling(model, model.stem + ".ts")
        if not ts.exists():
            raise Skip(f"no {ts.name} beside the model (export with --formats onnx,torchscript)")
        from ..export.torchscript import load_torchscript
        m, _ = load_torchscript(ts, ())
        return torch_runner(m, "cpu", threads), ts
    if ckpt is None:
        raise Skip("no checkpoint (pass --ckpt)")
    from ..checkpoint import build_model, load_checkpoint
    m = build_model(load_checkpoint(ckpt), str(ckpt))
    if name == "torch-compile":
        return compiled_runner(m, threads, probe), ckpt
    device = "cuda" if name.endswith("cuda") else "cpu"
    return torch_runner(m, device, threads, channels_last=name == "pytorch-cl"), ckpt


# ---------------------------------------------------------------- files
def artifact_runner(row: str, model: Path, threads: Optional[int]) -> Tuple[Runner, Path, List[Path]]:
    """The row's artifact of the set beside the model on its format's runner (runtime.runners), as
    `sedeploy infer --model` loads it; -> (logits runner, the artifact, every file of it (its size))."""
    from ..runtime.runners import load_runner
    fmt, int8 = ARTIFACT_ROWS[row]
    path = sibling(model, int8_file(fmt, model.stem) if int8 else model.stem + fmt.suffix)
    if not path.exists():
        raise Skip(f"no {path.name} (run sedeploy export --formats {fmt.name}{' --int8' if int8 else ''})")
    impl = RUNNERS[fmt.runtime]                  # ARTIFACT_ROWS holds only formats with a runner
    if not installed(impl.requires):
        raise Skip(f"{impl.requires} is not installed ({impl.hint})")
    r = load_runner(fmt.runtime, path, threads=threads)
    logits = r.output_names[0]
    files = [path] + [p for p in (sibling(model, model.stem + s) for s in fmt.side_files)
                      if p.is_file() and (".int8" in p.name) == int8 and p != path]
    return (lambda x: r.run(x)[logits]), path, files




def sibling(model: Path, name: str) -> Path:
    return model.parent / name


def resolve_set(model: Optional[str]) -> Optional[str]:
    """--model as given, or for an export folder or its export.json the set's fp32 model (the file of
    format onnx, else ort): every other row then finds its artifact of the set beside it."""
    from ..core.errors import UserError
    from ..runtime.runners import check_runnable
    if model:
        check_runnable(Path(model))                  # a Core ML package is a folder, but no export set
    if not model or not (Path(model).is_dir() or model.endswith(".json")):
        return model
    manifest = Path(model) / "export.json" if Path(model).is_dir() else Path(model)
    try:
        files = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"--model {model}: cannot read the export set's {manifest.name} ({first_line(e)}); "
                        f"pass a model file or a folder `sedeploy export` wrote") from None
    for fmt in ("onnx", "ort"):
        for f in files:
            if isinstance(f, dict) and f.get("format") == fmt and (manifest.parent / f.get("path", "")).is_file():
                return str(manifest.parent / f["path"])
    raise UserError(f"--model {model}: {manifest} lists no model.onnx or model.ort that is there; "
                    f"re-export with `sedeploy export --formats onnx,ort`")


def resolve_ckpt(model: Path, ckpt: Optional[str]) -> Optional[Path]:
    """--ckpt, else the checkpoint recorded in export.json beside the model, else best.pt beside it."""
    if ckpt:
        return Path(ckpt)
    manifest = sibling(model, "export.json")
    if manifest.exists():
        try:
            p = Path(json.loads(manifest.read_text()).get("checkpoint", ""))
            if p.is_file():
                return p
        except (json.JSONDecodeError, OSError):
            pass
    best = sibling(model, "best.pt")
    return best if best.exists() else None


def make_backend(name: str, model: Path, ckpt: Optional[Path], threads: Optional[int], probe: np.ndarray
                 ) -> Tuple[Runner, Optional[Path], List[Path]]:
    """-> (runner, file, the files whose bytes are its size). Raises Skip with the reason when the backend
    cannot run here."""
    if name in ARTIFACT_ROWS:
        return artifact_runner(name, model, threads)
    run, path = _make_backend(name, model, ckpt, threads, probe)
    return run, path, [path] if path else []


def _make_backend(name: str, model: Path, ckpt: Optional[Path], threads: Optional[int], probe: np.ndarray
                  ) -> Tuple[Runner, Optional[Path]]:
    if name in PYTORCH_CPU or name == "pytorch-cuda":
        return _pytorch(name, model, ckpt, threads, probe)
    files = {"ort-cpu": model.name, "ort-format": model.stem + ".ort", "ort-cpu-int8": model.stem + ".int8.onnx",
             "ort-format-int8": model.stem + ".int8.ort", "ort-cuda": model.name,
             "ort-cuda-fp16": model.stem + ".fp16.onnx"}
    path = sibling(model, files[name])
    if not path.exists():
        flag = {"ort-cpu-int8": "--int8", "ort-cuda-fp16": "--half", "ort-format": "--formats onnx,ort",
                "ort-format-int8": "--formats onnx,ort --int8"}.get(name, "")
        raise Skip(f"no {path.name} (run sedeploy export {flag})".replace("  ", " "))
    if name.startswith("ort-cuda"):
        return ort_cuda(path), path
    return ort_cpu(path, threads), path
