"""Runners: one module per runtime. A runner loads one artifact and runs a batch through it,
returning the graph's outputs by name; everything above (preprocessing, explanation, the folder
pipeline, the server) sees only this small interface.

The registry follows fsspec's `known_implementations`: a name -> (module:class, package it needs,
install hint, file extensions it loads) table, imported lazily, so that naming a runtime whose
package is absent is a one-line error with the install command, and `sedeploy --help` imports no
runtime at all. As Pillow's plugins register their extensions, each runner names the file
suffixes it loads; a model file with another suffix is a one-line error listing the supported ones.
"""
from __future__ import annotations

import abc
import contextlib
import importlib
import os
import sys
import tempfile
import threading
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Sequence, Tuple, Type

import numpy as np

from ...core.errors import UserError
from ...core.versions import installed
from ..model import ModelInfo, check_model_file


@contextlib.contextmanager
def native_stderr_filtered(drop: Sequence[str]) -> Iterator[None]:
    """Lines a runtime's native code writes to file descriptor 2 while the block runs, replayed on
    sys.stderr without those containing one of `drop` (LiteRT's "INFO: Created TensorFlow Lite
    XNNPACK delegate" on every load): what a user reads stays sedeploy's lines and real warnings.
    File descriptor 2 belongs to the whole process, so this is done only on the main thread (infer):
    a model loaded on another thread (serve's loader) leaves the server's log lines alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode("utf-8", "replace").splitlines():
                if line.strip() and not any(d in line for d in drop):
                    print(line, file=sys.stderr)


class Runner(abc.ABC):
    """One loaded model. Subclasses set `path`, `info` (metadata and graph contract, checked by
    runtime.model.describe) and `provider` (where it runs), and implement `_invoke`."""

    path: Path
    info: ModelInfo
    provider: str

    @property
    def input_name(self) -> str:
        return self.info.input_name

    @property
    def output_names(self) -> List[str]:
        return list(self.info.output_names)

    @abc.abstractmethod
    def _invoke(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        """Every output for a batch the graph accepts as it is (its fixed batch size, if it has one)."""

    def run(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        """Every output, by name, for a preprocessed float32 batch (B, C, H, W) of any B >= 1."""
        if len(batch) == 0:
            raise UserError("an empty batch (0 images) cannot be run; pass at least one image")
        fb = self.info.fixed_batch
        if fb is None:
            return self._invoke(batch)
        parts: Dict[str, List[np.ndarray]] = {n: [] for n in self.info.output_names}
        for i in range(0, len(batch), fb):          # fixed-batch model: pad the last chunk
            chunk = batch[i:i + fb]
            n = len(chunk)
            if n < fb:
                chunk = np.concatenate([chunk, np.zeros((fb - n, *chunk.shape[1:]), np.float32)])
            for name, o in self._invoke(chunk).items():
                parts[name].append(o[:n])
        return {k: np.concatenate(v) for k, v in parts.items()}


@dataclass(frozen=True)
class Implementation:
    target: str      # "module:Class", the module relative to this package
    requires: str    # the package it imports
    hint: str        # how to install it
    suffixes: Tuple[str, ...] = (".onnx",)   # the model files it loads


# name -> implementation; the next runtimes (LiteRT, OpenVINO, ExecuTorch, NCNN) add a row each.
# onnxruntime loads ONNX Runtime's own format (.ort) natively, with the same session options.
RUNNERS: Dict[str, Implementation] = {
    "onnxruntime": Implementation("ort:OrtRunner", "onnxruntime", "pip install 'sedeploy[runtime]' (onnxruntime)",
                                  (".onnx", ".ort")),
    "ncnn": Implementation("ncnn:NcnnRunner", "ncnn", "pip install 'sedeploy[ncnn]'", (".param",)),
    "openvino": Implementation("openvino:OpenvinoRunner", "openvino", "pip install 'sedeploy[openvino]'", (".xml",)),
    # executorch.runtime imports torch (its Python runtime links libtorch): its runner lives outside the
    # device-side runtime, in sedeploy.torch_runners, named by its full module path
    "executorch": Implementation("sedeploy.torch_runners.executorch:ExecutorchRunner", "executorch.runtime",
                                 "pip install 'sedeploy[executorch]' (brings torch)", (".pte",)),
    "litert": Implementation("litert:LiteRtRunner", "ai_edge_litert", "pip install 'sedeploy[litert]'", (".tflite",)),
}


# Artifacts sedeploy exports that no runner here loads: suffix -> why, and what to run instead.
# A Core ML package runs only in Core ML (macOS, iOS): export validates it there and records it unverified.
NO_RUNNER: Dict[str, str] = {
    ".mlpackage": "a Core ML package: Core ML runs it on macOS and iOS only, and sedeploy has no Core ML runner; "
                  "run the export's model.onnx here (--model model.onnx)",
    ".web": "a web bundle: it runs in a browser (host the folder with any static file server, e.g. "
            "`python3 -m http.server -d model.web`, and open index.html); run model.onnx here (--model model.onnx)",
}


def check_runnable(path: Path) -> None:
    """UserError for a model file that no runner loads (a Core ML package), before anything reads it."""
    why = NO_RUNNER.get(Path(path).suffix.lower())
    if why:
        raise UserError(f"{path} is {why}")


def check_runner(name: str) -> None:
    if name not in RUNNERS:
        raise UserError(f"unknown runner {name!r}; choose one of: {', '.join(RUNNERS)}")


def runner_class(name: str) -> Type[Runner]:
    """The runner class for a name; UserError for an unknown name or a runtime that is not installed."""
    check_runner(name)
    impl = RUNNERS[name]
    # Found, not imported: each runner imports its runtime itself, its own way (openvino must be
    # imported with its telemetry off, runners.openvino.import_openvino), and lookups stay cheap.
    if not installed(impl.requires):
        raise UserError(f"the {name} runner needs the {impl.requires} package, which is not installed: "
                        f"{impl.hint}") from None
    module, cls = impl.target.split(":")
    full = module if module.startswith("sedeploy.") else f"{__name__}.{module}"   # torch_runners: full path
    return getattr(importlib.import_module(full), cls)


def supported_suffixes() -> Dict[str, str]:
    """Model file suffix -> the runner that loads it."""
    return {s: name for name, impl in RUNNERS.items() for s in impl.suffixes}


def check_suffix(name: str, path: Path) -> None:
    """A file the named runner loads, by its extension: UserError listing the supported ones."""
    if path.suffix.lower() in RUNNERS[name].suffixes:
        return
    known = supported_suffixes()
    other = known.get(path.suffix.lower())
    fix = (f"load it with the {other} runner" if other else
           f"pass a model file ending in {', '.join(known)} (sedeploy export writes them)")
    raise UserError(f"{path}: the {name} runner does not load {path.suffix or 'extension-less'} files; {fix}")


def load_runner(name: str, path: Path, **options: Any) -> Runner:
    """Load the artifact at `path` with the named runtime; options are the runner's own
    (onnxruntime: provider, threads, graph_opt, spin)."""
    cls = runner_class(name)
    check_runnable(Path(path))
    check_model_file(Path(path))
    check_suffix(name, Path(path))
    return cls(Path(path), **options)

