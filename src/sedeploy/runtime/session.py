"""onnxruntime sessions: providers that fail loudly, low-latency options, the model's own metadata.

Providers: `cpu`; `cuda` (CUDAExecutionProvider, or an error that names what is missing instead
of running on CPU in silence); `auto` (CUDA when it works, else CPU). onnxruntime can fall back
silently when CUDA libraries fail to load, so the provider that actually runs is read back from
the session. Everything the runtime needs comes from the file's metadata (sedeploy.core.contract).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..core import contract
from ..core.errors import UserError

PROVIDERS = ("auto", "cpu", "cuda")
# --graph-opt name -> onnxruntime GraphOptimizationLevel member
GRAPH_LEVELS = {"none": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
                "all": "ORT_ENABLE_ALL"}
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


@dataclass
class ModelInfo:
    path: Path
    meta: Dict[str, Any]
    classes: List[str]
    mean: List[float]
    std: List[float]
    input_size: List[int]          # [C, H, W]
    input_name: str
    output_names: List[str]        # as the graph has them, in order
    se_outputs: List[str]          # SE weight outputs, model order
    feature_map: Optional[str]     # feature map output name, if any
    fixed_batch: Optional[int]     # None for a dynamic batch axis


def session_options(threads: Optional[int] = None, graph_opt: str = "all", spin: bool = True):
    """Low latency by default: all graph optimizations, sequential execution, intra-op threads =
    the number of CPUs unless `threads` is given. The count is always set explicitly: left at 0,
    onnxruntime pins its worker threads to cores, which on the shared 2-core VM measured slower
    (int8 at batch 64: 2.4-2.9 ms pinned vs 2.1 ms unpinned, docs/BENCHMARKS.md).
    spin=False stops the worker threads from spin-waiting between runs: slower for back-to-back
    runs, but it leaves the cores to other work (image decoding threads) in between."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if graph_opt not in GRAPH_LEVELS:
        raise UserError(f"unknown graph optimization level {graph_opt!r}; choose one of: {', '.join(GRAPH_LEVELS)}")
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_LEVELS[graph_opt])
    if threads is not None and threads <= 0:
        raise UserError(f"--threads must be positive, got {threads}")
    so.intra_op_num_threads = threads or os.cpu_count() or 1
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def _cuda_missing_reason(available: List[str]) -> str:
    if CUDA not in available:
        return (f"this onnxruntime build has no CUDAExecutionProvider (it has {', '.join(available)}); "
                f"install the GPU build: pip uninstall onnxruntime && pip install onnxruntime-gpu")
    return ("CUDAExecutionProvider is installed but could not start (CUDA or cuDNN libraries missing or not "
            "matching this onnxruntime-gpu, or no GPU visible); check `nvidia-smi` and the CUDA/cuDNN versions "
            "onnxruntime-gpu requires")


def create_session(path: Path, provider: str = "auto", threads: Optional[int] = None, graph_opt: str = "all",
                   spin: bool = True):
    """-> (InferenceSession, provider actually running). Errors are UserError naming the fix."""
    import onnxruntime as ort
    if provider not in PROVIDERS:
        raise UserError(f"unknown provider {provider!r}; choose one of: {', '.join(PROVIDERS)}")
    path = Path(path)
    if not path.exists():
        raise UserError(f"model {path} does not exist; export one with `sedeploy export --ckpt best.pt`")
    if path.is_dir():
        raise UserError(f"model {path} is a directory; pass the model.onnx file inside it")
    available = ort.get_available_providers()
    so = session_options(threads, graph_opt, spin)
    wants_cuda = provider == "cuda" or (provider == "auto" and CUDA in available)
    if provider == "cuda" and CUDA not in available:
        raise UserError(f"--provider cuda: {_cuda_missing_reason(available)}")
    chain = [CUDA, CPU] if wants_cuda else [CPU]
    try:
        sess = ort.InferenceSession(str(path), so, providers=chain)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "protobuf" in text.lower() or "INVALID_PROTOBUF" in text or "Load model" in text:
            raise UserError(f"{path} is not a valid ONNX model ({text[:120]}); export one with "
                            f"`sedeploy export`") from None
        raise UserError(f"onnxruntime cannot load {path}: {text[:200]}") from None
    running = sess.get_providers()[0]
    if provider == "cuda" and running != CUDA:
        raise UserError(f"--provider cuda: {_cuda_missing_reason(available)}")
    return sess, running


def read_metadata(props: Dict[str, str], path: Path) -> Dict[str, Any]:
    """A model file's metadata properties -> the sedeploy metadata, checked (UserError naming the fix)."""
    try:
        meta = contract.decode_metadata(props)
    except ValueError as e:
        raise UserError(f"{path}: {e}; re-export it with `sedeploy export`") from None
    missing = contract.missing_keys(meta)
    if missing:
        raise UserError(f"{path} has no sedeploy metadata ({', '.join(missing)} missing); "
                        f"export the model with `sedeploy export` so it carries classes and normalization")
    return meta


def model_info(sess, path: Path) -> ModelInfo:
    """Read and check the graph contract and metadata; a foreign model raises UserError."""
    meta = read_metadata(sess.get_modelmeta().custom_metadata_map, path)
    graph_outputs = [o.name for o in sess.get_outputs()]
    if contract.LOGITS not in graph_outputs:
        raise UserError(f"{path} has no '{contract.LOGITS}' output (it has {', '.join(graph_outputs)}); "
                        f"re-export it with `sedeploy export`")
    declared = meta["output_names"]
    absent = [n for n in declared if n not in graph_outputs]
    if absent:
        raise UserError(f"{path}: outputs {', '.join(absent)} named in its metadata are missing from the graph; "
                        f"re-export it with `sedeploy export`")
    inp = sess.get_inputs()[0]
    b = inp.shape[0]
    c, h, w = meta["input_size"]
    if len(inp.shape) != 4 or list(inp.shape[1:]) != [c, h, w]:
        raise UserError(f"{path}: input shape {inp.shape} does not match its metadata input_size {[c, h, w]}")
    if len(meta["classes"]) != (sess.get_outputs()[graph_outputs.index(contract.LOGITS)].shape[-1]):
        raise UserError(f"{path}: {len(meta['classes'])} class names but the logits have another width")
    return ModelInfo(path=path, meta=meta, classes=list(meta["classes"]), mean=list(meta["mean"]),
                     std=list(meta["std"]), input_size=[c, h, w], input_name=inp.name, output_names=graph_outputs,
                     se_outputs=[n for n in meta.get("se_outputs", []) if n in graph_outputs],
                     feature_map=meta.get("feature_map") if meta.get("feature_map") in graph_outputs else None,
                     fixed_batch=b if isinstance(b, int) else None)


MODEL_SEARCH = ("runs", "demo", "exports")


def find_model(explicit: Optional[str] = None) -> Path:
    """--model, else $SEDEPLOY_MODEL, else ./model.onnx, else the newest model.onnx under ./runs,
    ./demo or ./exports (three levels deep)."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("SEDEPLOY_MODEL")
    if env:
        return Path(env)
    here = Path("model.onnx")
    if here.exists():
        return here
    found = []
    for root in MODEL_SEARCH:
        for pattern in ("model.onnx", "*/model.onnx", "*/*/model.onnx", "*/*/*/model.onnx"):
            found += list(Path(root).glob(pattern))
    if not found:
        raise UserError("no model found: pass --model model.onnx, set SEDEPLOY_MODEL, or run in the directory "
                        "where `sedeploy export` wrote model.onnx")
    return max(found, key=lambda p: p.stat().st_mtime)
