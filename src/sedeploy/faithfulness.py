"""Is the heatmap faithful? The deletion test of explanation libraries, on the exported ONNX model.

For each test image: predict class k with probability p; rank the input pixels by a heatmap
(upsampled to the input size as the runtime draws it), set the top `fraction` of pixel positions
to black (all channels), and measure the drop p - p'(k). Rankings compared: the SE-weighted map,
the reference's spatial-mean map, and random pixels (the baseline a faithful map must beat).
Data comes from sedeploy.core.arrays and the model runs on onnxruntime: no torch anywhere.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import numpy as np

from .core.errors import UserError
from .runtime import explain
from .runtime.predictor import Predictor, softmax


def _rank_mask(scores: np.ndarray, fraction: float) -> np.ndarray:
    """(H, W) scores -> boolean mask of the top `fraction` positions."""
    flat = scores.ravel()
    k = int(round(fraction * flat.size))
    mask = np.zeros(flat.size, dtype=bool)
    mask[np.argsort(-flat, kind="stable")[:k]] = True
    return mask.reshape(scores.shape)


def deletion_eval(model: Optional[str] = None, dataset: Optional[str] = None, data_dir: Optional[str] = None,
                  n: int = 1000, fraction: float = 0.2, seed: int = 0, batch_size: int = 250,
                  log: Callable[[str], None] = print) -> Dict:
    if n <= 0 or not 0 < fraction < 1:
        raise UserError("--n must be positive and --fraction in (0, 1)")
    from .core.datasets import normalize_batch
    from .core.arrays import load_arrays
    pred = Predictor(model, "cpu")
    info = pred.info
    if info.feature_map is None:
        raise UserError(f"{pred.path} has no feature_map output; export it without --logits-only")
    ds_name = dataset or info.meta.get("dataset")
    _, images, _ = load_arrays(ds_name, data_dir, "test", ref=info.meta.get("data"))
    images = images[np.random.default_rng(seed).permutation(len(images))[:n]]
    mean = np.asarray(info.mean, np.float32)[:, None, None]
    std = np.asarray(info.std, np.float32)[:, None, None]
    x_all = normalize_batch(images, info.mean, info.std)                        # (N, C, H, W)
    black = (0 - mean) / std                                                    # (C, 1, 1)
    c, h, w = info.input_size
    rng = np.random.default_rng(seed)
    methods = ["se", "spatial_mean", "random"] if info.se_outputs else ["spatial_mean", "random"]
    drops: Dict[str, list] = {m: [] for m in methods}
    p0_all = []
    for i in range(0, len(x_all), batch_size):
        x = x_all[i:i + batch_size]
        outs = pred.run(x)
        probs = softmax(outs["logits"].astype(np.float64))
        k = probs.argmax(1)
        p0 = probs[np.arange(len(x)), k]
        p0_all += p0.tolist()
        fmap = outs[info.feature_map]
        for m in methods:
            masked = x.copy()
            for j in range(len(x)):
                if m == "se":
                    a = explain.se_attention(fmap[j], outs[info.se_outputs[-1]][j])
                elif m == "spatial_mean":
                    a = explain.spatial_mean_attention(fmap[j])
                else:
                    a = rng.random((h, w))
                scores = explain.upsample(a, (w, h)) if a.shape != (h, w) else a
                if m != "random":  # ties (flat regions) broken randomly, not by position
                    scores = scores + rng.random(scores.shape) * 1e-6
                masked[j][:, _rank_mask(scores, fraction)] = black[:, :, 0]
            p1 = softmax(pred.run(masked)["logits"].astype(np.float64))[np.arange(len(x)), k]
            drops[m] += (p0 - p1).tolist()
    res = {"model": str(pred.path), "dataset": ds_name, "images": len(x_all), "fraction": fraction,
           "mean_confidence": float(np.mean(p0_all)), "methods": {}}
    for m in methods:
        d = np.asarray(drops[m])
        res["methods"][m] = {"mean_drop": float(d.mean()), "sem": float(d.std(ddof=1) / np.sqrt(len(d)))}
        log(f"{m:>13}: mean drop of the predicted class's probability {d.mean():.4f} "
            f"(+- {res['methods'][m]['sem']:.4f} s.e.) over {len(d)} images, {100 * fraction:.0f}% pixels masked")
    return res
