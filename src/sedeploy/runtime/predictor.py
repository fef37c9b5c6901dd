"""Predictor: images -> top-K classes (+ SE weights, feature map, heatmaps) with onnxruntime alone.

    from sedeploy.runtime.predictor import Predictor
    p = Predictor("model.onnx", provider="cpu")
    for r in p.predict(["frog.png", "cat.jpg"], topk=3):
        print(r.image, r.top[0].label, r.top[0].prob)
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from .. import contract
from ..errors import UserError, atomic_write
from . import heatmap as hm
from .preprocess import BACKGROUNDS, ImageError, decode_image, load_image, preprocess, to_model_mode
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


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


class Predictor:
    def __init__(self, model: Optional[Union[str, os.PathLike]] = None, provider: str = "auto",
                 threads: Optional[int] = None, graph_opt: str = "all", background: str = "black") -> None:
        if background not in BACKGROUNDS:
            raise UserError(f"unknown background {background!r}; choose one of: {', '.join(BACKGROUNDS)}")
        self.path = find_model(None if model is None else str(model))
        self.session, self.provider = create_session(self.path, provider, threads, graph_opt)
        self.info: ModelInfo = model_info(self.session, self.path)
        self.background = BACKGROUNDS[background]

    # -- preprocessing
    def load(self, image: ImageLike) -> Image.Image:
        if isinstance(image, Image.Image):
            return to_model_mode(image, self.info.input_size[0], self.background)
        return load_image(image, self.info.input_size[0], self.background)

    def decode(self, data: bytes, name: str = "upload") -> Image.Image:
        """`load` for an image file's bytes in memory (an upload); raises ImageError."""
        return decode_image(data, name, self.info.input_size[0], self.background)

    def to_input(self, im: Image.Image) -> np.ndarray:
        return preprocess(im, self.info.input_size, self.info.mean, self.info.std)

    # -- inference
    def run(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        """Raw graph outputs for a preprocessed float32 batch (B, C, H, W)."""
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

    def _results(self, names: Sequence[str], originals: Sequence[Image.Image], batch: np.ndarray,
                 topk: int) -> List[Prediction]:
        return self.predictions(names, originals, self.run(batch), topk)

    def predictions(self, names: Sequence[str], originals: Sequence[Optional[Image.Image]],
                    outs: Dict[str, np.ndarray], topk: int) -> List[Prediction]:
        """Graph outputs of a batch (as `run` returns them) -> one Prediction per image, top-k by softmax."""
        probs = softmax(outs[contract.LOGITS].astype(np.float64))
        k = min(topk, len(self.info.classes))
        res = []
        for i, name in enumerate(names):
            order = np.argsort(-probs[i], kind="stable")[:k]
            top = [TopClass(self.info.classes[j], int(j), float(probs[i, j])) for j in order]
            res.append(Prediction(name, top, probs[i], {n: o[i] for n, o in outs.items()}, originals[i]))
        return res

    def predict_iter(self, images: Iterable[ImageLike], topk: int = 5, batch_size: int = 32
                     ) -> Iterator[Union[Prediction, ImageError]]:
        """Yield a Prediction, or the ImageError of an unreadable image, per input, in order."""
        if topk <= 0:
            raise UserError(f"--topk must be positive, got {topk}")
        if batch_size <= 0:
            raise UserError(f"--batch-size must be positive, got {batch_size}")
        pending: List[Tuple[int, str, Image.Image, np.ndarray]] = []
        slots: List[Union[Prediction, ImageError, None]] = []

        def flush():
            if pending:
                preds = self._results([p[1] for p in pending], [p[2] for p in pending],
                                      np.stack([p[3] for p in pending]), topk)
                for (slot, *_), pr in zip(pending, preds):
                    slots[slot] = pr
                pending.clear()

        emitted = 0
        for j, image in enumerate(images):
            name = str(image) if not isinstance(image, Image.Image) else f"<image {j}>"
            slots.append(None)
            try:
                im = self.load(image)
                pending.append((j, name, im, self.to_input(im)))
            except ImageError as e:
                e.path = e.path or name
                slots[j] = e
            if len(pending) >= batch_size:
                flush()
            while emitted < len(slots) and slots[emitted] is not None:
                yield slots[emitted]
                emitted += 1
        flush()
        while emitted < len(slots):
            yield slots[emitted]
            emitted += 1

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
