"""The onnxruntime runner: providers that fail loudly, low-latency session options, the model's
own metadata read from the session.

Providers: `cpu`; `cuda` (CUDAExecutionProvider, or an error that names what is missing instead
of running on CPU in silence); `auto` (CUDA when it works, else CPU). onnxruntime can fall back
silently when CUDA libraries fail to load, so the provider that actually runs is read back from
the session. onnxruntime itself is imported inside the functions: the constants here are what the
command line's choices are built from, and `sedeploy --help` must not load a runtime.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ...core.errors import UserError
from ..model import ModelInfo, check_model_file, describe
from . import Runner

PROVIDERS = ("auto", "cpu", "cuda")
# --graph-opt name -> onnxruntime GraphOptimizationLevel member
GRAPH_LEVELS = {"none": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
                "all": "ORT_ENABLE_ALL"}
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def session_options(threads: Optional[int] = None, graph_opt: str = "all", spin: bool = True):
    """Low latency by default: all graph optimizations, sequential execution, intra-op threads =
    the number of CPUs unless `threads` is given. The count is always set explicitly: left at 0,
    onnxruntime pins its worker threads to cores, which on the shared 2-core VM measured slower
    (int8 at batch 64: 2.4-2.9 ms pinned vs 2.1 ms unpinned, docs/BENCHMARKS.md).
    spin=False stops the worker threads from spin-waiting between runs: slower for back-to-back
    runs, but it leaves the cores to other work (image decoding threads) in between.
    threads and graph_opt are checked by runtime.options before they reach here."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_LEVELS[graph_opt])
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
    assert provider in PROVIDERS and graph_opt in GRAPH_LEVELS, (provider, graph_opt)  # runtime.options checked
    path = Path(path)
    check_model_file(path)
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
        if ("protobuf" in text.lower() or "INVALID_PROTOBUF" in text or "Load model" in text
                or "ORT model verification failed" in text):           # a damaged .ort flatbuffer
            kind = "ORT-format" if path.suffix.lower() == ".ort" else "ONNX"
            raise UserError(f"{path} is not a valid {kind} model ({text[:120]}); export one with "
                            f"`sedeploy export`") from None
        raise UserError(f"onnxruntime cannot load {path}: {text[:200]}") from None
    running = sess.get_providers()[0]
    if provider == "cuda" and running != CUDA:
        raise UserError(f"--provider cuda: {_cuda_missing_reason(available)}")
    return sess, running


def session_info(sess, path: Path) -> ModelInfo:
    """The metadata and graph contract of a loaded session, checked (runtime.model.describe)."""
    return describe(sess.get_modelmeta().custom_metadata_map, [(t.name, t.shape) for t in sess.get_inputs()],
                    [(t.name, t.shape) for t in sess.get_outputs()], path)


class OrtRunner(Runner):
    """An .onnx or .ort file on an onnxruntime InferenceSession (`session`, for callers that need its
    own API). One runner for both: onnxruntime reads either file into the same session type, so the
    providers, session options and metadata (.ort keeps the ONNX metadata_props) are shared."""

    def __init__(self, path: Path, provider: str = "auto", threads: Optional[int] = None, graph_opt: str = "all",
                 spin: bool = True) -> None:
        self.path = Path(path)
        self.session, self.provider = create_session(self.path, provider, threads, graph_opt, spin)
        self.info = session_info(self.session, self.path)

    def _invoke(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        outs = self.session.run(None, {self.info.input_name: batch})
        return dict(zip(self.info.output_names, outs))
