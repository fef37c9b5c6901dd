"""Predictor: images -> top-K classes (+ SE weights, feature map, heatmaps) with onnxruntime alone.

    from sedeploy.runtime.predictor import Predictor
    p = Predictor("model.onnx", provider="cpu")
    for r in p.predict(["frog.png", "cat.jpg"], topk=3):
        print(r.image, r.top[0].label, r.top[0].prob)
"""
from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from ..core import contract
from ..core.errors import UserError
from ..core.io import atomic_write
from . import heatmap as hm
from .pipeline import available_cores, ordered_map
from .precision import PrecisionChoice, choose_precision
from ..core.decode import BACKGROUNDS, ImageError, decode_image, load_image, to_model_mode
from .preprocess import preprocess
from .session import ModelInfo, create_session, find_model, model_info

ImageLike = Union[str, os.PathLike, Image.Image]


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

    def to_dict(self) -> dict:
        return {"image": self.image, "top": [{"label": t.label, "index": t.index, "prob": round(t.prob, 6)}
                                             for t in self.top]}


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

    fast_decode: decode JPEGs at reduced size (preprocess.load_image); workers: decoding threads
    (default: the cores; 0 decodes inline); precision: None loads `model` as given, else
    "fp32" / "int8" / "auto" as runtime.precision chooses (self.choice says what and why).
    """

    def __init__(self, model: Optional[Union[str, os.PathLike]] = None, provider: str = "auto",
                 threads: Optional[int] = None, graph_opt: str = "all", background: str = "black",
                 fast_decode: bool = False, workers: Optional[int] = None, precision: Optional[str] = None,
                 precision_batch: int = 32) -> None:
        if background not in BACKGROUNDS:
            raise UserError(f"unknown background {background!r}; choose one of: {', '.join(BACKGROUNDS)}")
        if workers is not None and workers < 0:
            raise UserError(f"--workers must be 0 or more, got {workers}")
        self.path = find_model(None if model is None else str(model))
        self.choice: Optional[PrecisionChoice] = None
        if precision is not None:
            self.choice = choose_precision(self.path, precision, provider, threads, precision_batch)
            self.path = self.choice.path
        self.workers = available_cores() if workers is None else workers
        # With decoding threads on every core, onnxruntime's workers must not spin-wait for the next
        # run between batches: that would take the cores from the decoders.
        self.session, self.provider = create_session(self.path, provider, threads, graph_opt,
                                                     spin=self.workers == 0)
        self.info: ModelInfo = model_info(self.session, self.path)
        self.background = BACKGROUNDS[background]
        self.fast_decode = fast_decode
        self.model_seconds = 0.0            # time spent in session.run (the model's share of a run)

    # -- preprocessing
    def load(self, image: ImageLike) -> Image.Image:
        if isinstance(image, Image.Image):
            return to_model_mode(image, self.info.input_size[0], self.background)
        c, h, w = self.info.input_size
        return load_image(image, c, self.background, fast_size=(w, h) if self.fast_decode else None)

    def decode(self, data: bytes, name: str = "upload") -> Image.Image:
        """`load` for an image file's bytes in memory (an upload); raises ImageError."""
        return decode_image(data, name, self.info.input_size[0], self.background)

    def to_input(self, im: Image.Image) -> np.ndarray:
        return preprocess(im, self.info.input_size, self.info.mean, self.info.std)

    # -- inference
    def run(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        """Raw graph outputs for a preprocessed float32 batch (B, C, H, W)."""
        start = time.perf_counter()
        try:
            return self._run(batch)
        finally:
            self.model_seconds += time.perf_counter() - start

    def _run(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        fb = self.info.fixed_batch
        if fb is None:
            outs = self.session.run(None, {self.info.input_name: batch})
            return dict(zip(self.info.output_names, outs))
        parts: Dict[str, List[np.ndarray]] = {n: [] for n in self.info.output_names}
        for i in range(0, len(batch), fb):          # fixed-batch model: pad the last chunk
            chunk = batch[i:i + fb]
            n = len(chunk)
            if n < fb:
                chunk = np.concatenate([chunk, np.zeros((fb - n, *chunk.shape[1:]), np.float32)])
            for name, o in zip(self.info.output_names, self.session.run(None, {self.info.input_name: chunk})):
                parts[name].append(o[:n])
        return {k: np.concatenate(v) for k, v in parts.items()}

    def _results(self, prepared: Sequence[_Prepared], topk: int) -> List[Prediction]:
        outs = self.run(np.stack([p.x for p in prepared]))
        return self.predictions([p.name for p in prepared], [p.original for p in prepared], outs, topk)

    def predictions(self, names: Sequence[str], originals: Sequence[Optional[Image.Image]],
                    outs: Dict[str, np.ndarray], topk: int) -> List[Prediction]:
        """Graph outputs of a batch (as `run` returns them) -> one Prediction per image, top-k by softmax."""
        probs = softmax(outs[contract.LOGITS].astype(np.float64))
        k = min(topk, len(self.info.classes))
        res = []
        for i, name in enumerate(names):
            order = np.argsort(-probs[i], kind="stable")[:k]
            top = [TopClass(self.info.classes[j], int(j), float(probs[i, j])) for j in order]
            # copies: a view would keep the whole batch's outputs alive as long as one Prediction
            res.append(Prediction(name, top, probs[i].copy(), {n: o[i].copy() for n, o in outs.items()},
                                  originals[i]))
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
        if topk <= 0:
            raise UserError(f"--topk must be positive, got {topk}")
        if batch_size <= 0:
            raise UserError(f"--batch-size must be positive, got {batch_size}")
        window = window or batch_size + 2 * self.workers
        # queue: one slot per input not yet yielded, in order; a slot is filled with its ImageError at
        # once, with its Prediction when its batch has run. Only the batch being filled is unresolved.
        queue: Deque[List[Union[Prediction, ImageError, None]]] = deque()
        batch: List[Tuple[list, _Prepared]] = []

        def run_batch() -> None:
            for (slot, _), pred in zip(batch, self._results([p for _, p in batch], topk)):
                slot[0] = pred
            batch.clear()

        jobs = enumerate(images)
        for prepared in ordered_map(lambda job: self._prepare(job, keep_originals), jobs, self.workers, window):
            slot: list = [prepared if isinstance(prepared, ImageError) else None]
            queue.append(slot)
            if slot[0] is None:
                batch.append((slot, prepared))
                if len(batch) >= batch_size:
                    run_batch()
            while queue and queue[0][0] is not None:
                yield queue.popleft()[0]
        if batch:
            run_batch()
        while queue:
            yield queue.popleft()[0]

    def predict(self, images: Sequence[ImageLike], topk: int = 5, batch_size: int = 32) -> List[Prediction]:
        """Predictions for every image; the first unreadable image raises its ImageError."""
        out = []
        for r in self.predict_iter(images, topk, batch_size):
            if isinstance(r, ImageError):
                raise r
            out.append(r)
        return out

    # -- explanations
    def explain(self, pred: Prediction, top: int = 6) -> dict:
        """-> {"method", "attention" (h, w), "ranked": [(channel, score)], "label", "se": {name: weights}}."""
        if self.info.feature_map is None:
            raise UserError(f"{self.path} has no feature_map output; re-export without --logits-only for heatmaps")
        fmap = pred.outputs[self.info.feature_map]
        se = {n: pred.outputs[n] for n in self.info.se_outputs}
        if se:
            w = se[self.info.se_outputs[-1]]
            return {"method": "se", "attention": hm.se_attention(fmap, w), "ranked": hm.top_channels(w, top),
                    "label": "w", "se": se}
        scores = hm.spatial_mean_scores(fmap)
        return {"method": "spatial-mean", "attention": hm.spatial_mean_attention(fmap),
                "ranked": hm.top_channels(scores, top), "label": "mean", "se": {}}

    def render_heatmaps(self, pred: Prediction, top: int = 6) -> Tuple[Dict[str, Image.Image], dict]:
        """-> ({"heatmap", "channels"(, "se")}: PIL images, report {"method", "top_channels"})."""
        ex = self.explain(pred, top)
        t = pred.top[0]
        how = "SE-weighted" if ex["method"] == "se" else "spatial-mean (no SE outputs)"
        images = {"heatmap": hm.render_heatmap(pred.original, ex["attention"],
                                               f"{t.label} {100 * t.prob:.1f}%  ({how} attention)"),
                  "channels": hm.render_channels(pred.original, pred.outputs[self.info.feature_map], ex["ranked"],
                                                 ex["label"])}
        if ex["se"]:
            images["se"] = hm.render_se_profile(ex["se"])
        top_by_block = {n: hm.top_channels(w, top) for n, w in ex["se"].items()}
        return images, {"method": ex["method"],
                        "top_channels": {n: [{"channel": c, "weight": round(v, 4)} for c, v in lst]
                                         for n, lst in top_by_block.items()} or
                        {"spatial_mean": [{"channel": c, "score": round(v, 4)} for c, v in ex["ranked"]]}}

    def write_heatmaps(self, pred: Prediction, outdir: Path, stem: str, top: int = 6) -> dict:
        """Write <stem>_heatmap.png, <stem>_channels.png (and <stem>_se.png) atomically."""
        images, report = self.render_heatmaps(pred, top)
        files = {}
        for kind, im in images.items():
            dest = Path(outdir) / f"{stem}_{kind}.png"
            atomic_write(dest, lambda tmp, im=im: im.save(tmp, format="PNG"))
            files[kind] = str(dest)
        return {"method": report["method"], "files": files, "top_channels": report["top_channels"]}
