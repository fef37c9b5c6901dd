"""Predictor: images -> top-K classes (+ SE weights, feature map, heatmaps), without torch.

    from sedeploy.runtime.predictor import Predictor
    p = Predictor("model.onnx", provider="cpu")
    for r in p.predict(["frog.png", "cat.jpg"], topk=3):
        print(r.image, r.top[0].label, r.top[0].prob)

It composes the runtime's parts, each findable by name: runners (one loaded model: a batch in,
named outputs out), preprocess (image -> input), pipeline (decoding threads, batches in input
order), explain (the SE map as numbers) and render (those numbers as PNGs). Its options are
checked once, by runtime.options.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from ..core import contract
from ..core.decode import BACKGROUNDS, ImageError
from . import explain as ex
from . import render
from .model import ModelInfo, find_model
from .options import ModelOptions, check_run
from .pipeline import available_cores, ordered_batches
from .backend import BackendChoice, choose_backend
from .precision import PrecisionChoice, choose_precision
from .preprocess import ImageLike, Preprocessor
from .unsure import unsure
from .runners import Runner, check_runnable, load_runner, supported_suffixes


@dataclass
class TopClass:
    label: str
    index: int
    prob: float


@dataclass
class Prediction:
    image: str                            # path (or "<image k>" for in-memory images)
    top: List[TopClass]
    probs: np.ndarray                     # (classes,)
    outputs: Dict[str, np.ndarray]        # every graph output for this image (batch axis removed)
    original: Optional[Image.Image] = field(default=None, repr=False)  # decoded image, for heatmaps
    unsure: Optional[bool] = None         # out-of-distribution flag (runtime/unsure.py); None: model not calibrated
    ood_score: Optional[float] = None     # its score (higher = more like the training data)

    def to_dict(self) -> dict:
        d = {"image": self.image, "top": [{"label": t.label, "index": t.index,      # JSON has no NaN: null
                                           "prob": round(t.prob, 6) if np.isfinite(t.prob) else None}
                                          for t in self.top]}
        if self.unsure is not None:
            d["unsure"] = self.unsure
            d["ood_score"] = round(self.ood_score, 6) if np.isfinite(self.ood_score) else None   # JSON has no NaN
        return d


@dataclass
class _Prepared:
    """One decoded, preprocessed image on its way to the model."""
    name: str
    x: np.ndarray                         # (C, H, W) float32 model input
    original: Optional[Image.Image]       # the decoded image, only while heatmaps need it


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


class Predictor:
    """One model, its preprocessing, and folder inference on every core.

    fast_decode: decode JPEGs at reduced size (core.decode.load_image); workers: decoding threads
    (default: the cores; 0 decodes inline); precision: None loads `model` as given, else
    "fp32" / "int8" / "auto" as runtime.precision chooses (self.choice says what and why);
    runner: the runtime.runners name that loads the file.
    """

    def __init__(self, model: Optional[Union[str, os.PathLike]] = None, provider: str = "auto",
                 threads: Optional[int] = None, graph_opt: str = "all", background: str = "black",
                 fast_decode: bool = False, workers: Optional[int] = None, precision: Optional[str] = None,
                 precision_batch: int = 32, runner: str = "onnxruntime", backend: str = "file") -> None:
        ModelOptions(None if model is None else str(model), provider, threads, graph_opt, background, fast_decode,
                     workers, precision, precision_batch, runner, backend).validate()
        self.path = find_model(None if model is None else str(model))
        check_runnable(self.path)            # a Core ML package: one line before precision looks beside it
        self.choice: Optional[PrecisionChoice] = None
        self.backend: Optional[BackendChoice] = None
        if backend != "file":           # a file of the export set, measured (auto) or named (runtime.backend)
            self.backend = choose_backend(self.path, backend, precision, provider, threads, precision_batch)
            self.path, runner = self.backend.path, self.backend.runner
            self.choice = PrecisionChoice(self.backend.precision, self.path, self.backend.reason)
        elif precision is not None:
            self.choice = choose_precision(self.path, precision, provider, threads, precision_batch)
            self.path = self.choice.path
        self.workers = available_cores() if workers is None else workers
        if runner == "onnxruntime":      # the default: a file another runner loads goes to it (model.ncnn.param)
            runner = supported_suffixes().get(self.path.suffix.lower(), runner)
        # With decoding threads on every core, onnxruntime's workers must not spin-wait for the next
        # run between batches: that would take the cores from the decoders.
        self.runner: Runner = load_runner(runner, self.path, provider=provider, threads=threads,
                                          graph_opt=graph_opt, spin=self.workers == 0)
        self.provider = self.runner.provider
        self.info: ModelInfo = self.runner.info
        self.background = BACKGROUNDS[background]
        self.fast_decode = fast_decode
        self.prep = Preprocessor(self.info.input_size, self.info.mean, self.info.std, self.background, fast_decode)
        self.model_seconds = 0.0            # time spent in the runner (the model's share of a run)

    @classmethod
    def from_options(cls, options: ModelOptions) -> "Predictor":
        """The path `infer` and `serve` load their models by."""
        return cls(**asdict(options))

    @property
    def session(self):
        """The onnxruntime InferenceSession (the onnxruntime runner's own, for callers that need its API)."""
        return self.runner.session

    # -- preprocessing (runtime.preprocess)
    def load(self, image: ImageLike) -> Image.Image:
        return self.prep.load(image)

    def decode(self, data: bytes, name: str = "upload") -> Image.Image:
        """`load` for an image file's bytes in memory (an upload); raises ImageError."""
        return self.prep.decode(data, name)

    def to_input(self, im: Image.Image) -> np.ndarray:
        return self.prep.to_input(im)

    # -- inference
    def run(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        """Raw graph outputs for a preprocessed float32 batch (B, C, H, W)."""
        start = time.perf_counter()
        try:
            return self.runner.run(batch)
        finally:
            self.model_seconds += time.perf_counter() - start

    def _results(self, prepared: Sequence[_Prepared], topk: int) -> List[Prediction]:
        outs = self.run(np.stack([p.x for p in prepared]))
        return self.predictions([p.name for p in prepared], [p.original for p in prepared], outs, topk)

    def predictions(self, names: Sequence[str], originals: Sequence[Optional[Image.Image]],
                    outs: Dict[str, np.ndarray], topk: int) -> List[Prediction]:
        """Graph outputs of a batch (as `run` returns them) -> one Prediction per image, top-k by softmax."""
        probs = softmax(outs[contract.LOGITS].astype(np.float64))
        k = min(topk, len(self.info.classes))
        scores, flags = unsure(outs, self.info.meta.get("unsure"))     # never changes the top-k
        res = []
        for i, name in enumerate(names):
            order = np.argsort(-probs[i], kind="stable")[:k]
            top = [TopClass(self.info.classes[j], int(j), float(probs[i, j])) for j in order]
            # copies: a view would keep the whole batch's outputs alive as long as one Prediction
            res.append(Prediction(name, top, probs[i].copy(), {n: o[i].copy() for n, o in outs.items()},
                                  originals[i], None if flags is None else bool(flags[i]),
                                  None if scores is None else float(scores[i])))
        return res

    def _prepare(self, job: Tuple[int, ImageLike], keep_original: bool) -> Union[_Prepared, ImageError]:
        """Decode + preprocess one image (runs on a decoding thread)."""
        j, image = job
        name = str(image) if not isinstance(image, Image.Image) else f"<image {j}>"
        try:
            im = self.load(image)
            return _Prepared(name, self.to_input(im), im if keep_original else None)
        except ImageError as e:
            e.path = e.path or name
            return e

    def predict_iter(self, images: Iterable[ImageLike], topk: int = 5, batch_size: int = 32,
                     keep_originals: bool = True, window: Optional[int] = None
                     ) -> Iterator[Union[Prediction, ImageError]]:
        """Yield a Prediction, or the ImageError of an unreadable image, per input, in input order.

        Images are decoded on `self.workers` threads while the model runs; at most `window`
        (default: batch_size + 2 x workers) decoded images wait beyond the batch being filled, so
        memory stays bounded on any folder. keep_originals=False drops each full-size decoded image
        as soon as it is preprocessed (Prediction.original is then None: no heatmaps).
        """
        check_run(topk, batch_size)
        return ordered_batches(lambda job: self._prepare(job, keep_originals),
                               lambda batch: self._results(batch, topk), enumerate(images), batch_size,
                               self.workers, window or batch_size + 2 * self.workers)

    def predict(self, images: Sequence[ImageLike], topk: int = 5, batch_size: int = 32) -> List[Prediction]:
        """Predictions for every image; the first unreadable image raises its ImageError."""
        out = []
        for r in self.predict_iter(images, topk, batch_size):
            if isinstance(r, ImageError):
                raise r
            out.append(r)
        return out

    # -- explanations (runtime.explain: numbers; runtime.render: pictures and files)
    def explain(self, pred: Prediction, top: int = 6, kind: Optional[str] = None) -> dict:
        """-> {"method", "attention" (h, w), "ranked": [(channel, score)], "label", "se": {name: weights}}."""
        return ex.explain(pred.outputs, self.info, top, kind)

    def render_heatmaps(self, pred: Prediction, top: int = 6,
                        kind: Optional[str] = None) -> Tuple[Dict[str, Image.Image], dict]:
        """-> ({"heatmap", "channels"(, "se")}: PIL images, report {"method", "top_channels"})."""
        e = self.explain(pred, top, kind)
        t = pred.top[0]
        images = render.render_explanation(pred.original, pred.outputs[self.info.feature_map], e,
                                           f"{t.label} {100 * t.prob:.1f}%")
        return images, ex.report(e, top)

    def write_heatmaps(self, pred: Prediction, outdir: Path, stem: str, top: int = 6,
                       kind: Optional[str] = None) -> dict:
        """Write <stem>_heatmap.png, <stem>_channels.png (and <stem>_se.png) atomically."""
        images, report = self.render_heatmaps(pred, top, kind)
        return {"method": report["method"], "files": render.write_pngs(images, outdir, stem),
                "top_channels": report["top_channels"]}
