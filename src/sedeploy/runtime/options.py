"""The options of loading a model and of running `infer`, and every check of them, in one place.

`sedeploy infer`, `sedeploy serve`, Predictor and the server's model loader all build these
dataclasses and call `validate()`; the code below them (runners, session options, the pipeline)
takes the values as checked. Two library functions that are called directly as well reuse the
same checks rather than copies: choose_precision (precision.check_precision) and
Predictor.predict_iter (check_run). Messages spell each option as the command line does and name
the valid choices, so the same UserError (exit 2) reads right from the CLI and from Python.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ..core.decode import BACKGROUNDS
from ..core.errors import UserError
from ..core.io import ensure_writable_dir
from .explain import check_kind, require_feature_map
from .model import ModelInfo
from .precision import check_precision
from .runners import runner_class
from .runners.ort import GRAPH_LEVELS, PROVIDERS


def check_backend(backend: str) -> None:
    """--backend: file, auto, or a format name (checked against the set when it is read)."""
    if not backend or not backend.replace("-", "").replace("_", "").isalnum():
        raise UserError(f"--backend {backend!r}: choose file, auto, or a format of the export set (onnx, ort, "
                        f"tflite, ...)")


def check_choice(what: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise UserError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")


def check_positive(option: str, value: int) -> None:
    if value <= 0:
        raise UserError(f"{option} must be positive, got {value}")


def check_threads(threads: Optional[int]) -> None:
    """--threads of every command that runs a model: None (every core) or a positive count."""
    if threads is not None:
        check_positive("--threads", threads)


@dataclass
class ModelOptions:
    """How one model is loaded and fed: what Predictor, `infer` and `serve` share."""
    model: Optional[str] = None        # the model file; None: runtime.model.find_model's search
    provider: str = "auto"             # onnxruntime provider: auto, cpu, cuda
    threads: Optional[int] = None      # the runtime's intra-op threads; None: every core
    graph_opt: str = "all"             # onnxruntime graph optimization level
    background: str = "black"          # colour transparent pixels are composited on
    fast_decode: bool = False          # decode JPEGs at reduced size (core.decode.load_image)
    workers: Optional[int] = None      # decoding threads; None: every core, 0: inline
    precision: Optional[str] = None    # None: the file as given; auto / fp32 / int8: runtime.precision
    precision_batch: int = 32          # the batch size `auto` times both precisions on
    runner: str = "onnxruntime"        # runtime.runners name
    backend: str = "file"              # file: the model file as given; auto / a format: runtime.backend's choice

    def validate(self) -> "ModelOptions":
        runner_class(self.runner)      # a known name whose runtime is installed (else the install hint)
        check_backend(self.backend)
        check_choice("provider", self.provider, PROVIDERS)
        check_choice("graph optimization level", self.graph_opt, tuple(GRAPH_LEVELS))
        check_choice("background", self.background, tuple(BACKGROUNDS))
        if self.precision is not None:
            check_precision(self.precision)
        check_positive("--batch-size", self.precision_batch)
        check_threads(self.threads)
        if self.workers is not None and self.workers < 0:
            raise UserError(f"--workers must be 0 or more, got {self.workers}")
        return self


@dataclass
class InferOptions:
    """`sedeploy infer`'s options (the CLI's defaults; see `sedeploy infer --help`)."""
    model: Optional[str] = None
    provider: str = "auto"
    precision: Optional[str] = "auto"
    topk: int = 5                      # classes reported per image
    heatmaps: Optional[str] = None     # folder for heatmap PNGs; None: no heatmaps
    channels: int = 6                  # top channels shown and reported per image
    heatmap_kind: Optional[str] = None # runtime.explain.KINDS; None: explain.default_kind (head-cam when it can)
    batch_size: int = 32
    threads: Optional[int] = None
    workers: Optional[int] = None
    fast_decode: bool = False
    graph_opt: str = "all"
    background: str = "black"
    backend: str = "file"

    def model_options(self) -> ModelOptions:
        return ModelOptions(self.model, self.provider, self.threads, self.graph_opt, self.background,
                            self.fast_decode, self.workers, self.precision, precision_batch=self.batch_size,
                            backend=self.backend)

    def validate(self) -> "InferOptions":
        """Every check that needs no model: before anything is loaded."""
        for option, v in (("--channels", self.channels), ("--topk", self.topk), ("--batch-size", self.batch_size)):
            check_positive(option, v)
        self.model_options().validate()
        return self

    def heatmap_dir(self, info: ModelInfo) -> Optional[Path]:
        """The checks that need the loaded model: the heatmap folder (created, writable) and a
        model that can explain (a feature_map output)."""
        if not self.heatmaps:
            return None
        require_feature_map(info)
        check_kind(self.heatmap_kind, info)              # before the folder is made: a refusal leaves none
        return ensure_writable_dir(self.heatmaps, "heatmap directory", option="--heatmaps")


def check_run(topk: int, batch_size: int) -> None:
    """Predictor.predict_iter's own arguments, for callers that skip InferOptions."""
    check_positive("--topk", topk)
    check_positive("--batch-size", batch_size)
