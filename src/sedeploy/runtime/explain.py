"""Explanations as numbers: which pixels and channels the prediction leaned on, computed from the
graph's own outputs with numpy (no gradients, no torch). runtime.render draws them.

- SE-weighted map: A = sum_c w_c * F_c over the last block, with w the last SE output and F the
  `feature_map` output. For the registry's models F >= 0 (it follows a ReLU) and w is in (0, 1), so
  A >= 0 already; the clamp at 0 only guards graphs of other shapes. A is scaled by its maximum;
  `upsample` takes it bicubically to an image's size and `colormap` to jet-like colours (red high,
  blue low).
- The reference's view: top channels (here ranked by their real SE weights).
- Models without SE outputs fall back to the reference's ranking by spatial mean: channel scores
  are the spatial means and the map is the mean of the top-3 channels.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

from ..core.errors import UserError
from .model import ModelInfo

TOP_MEAN_CHANNELS = 3   # the reference overlays its three strongest channels


def normalize01(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32)
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def se_attention(fmap: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(C, h, w), (C,) -> (h, w) in [0, 1]: max(sum_c w_c F_c, 0), scaled by its maximum."""
    a = np.maximum(np.tensordot(weights.astype(np.float32), fmap.astype(np.float32), axes=(0, 0)), 0)
    m = float(a.max())
    return a / m if m > 0 else a


def spatial_mean_scores(fmap: np.ndarray) -> np.ndarray:
    """The reference's channel ranking: spatial mean per channel, (C,)."""
    return fmap.reshape(fmap.shape[0], -1).mean(1)


def spatial_mean_attention(fmap: np.ndarray, top: int = TOP_MEAN_CHANNELS) -> np.ndarray:
    idx = np.argsort(-spatial_mean_scores(fmap))[:top]
    return normalize01(fmap[idx].mean(0))


def top_channels(scores: np.ndarray, k: int) -> List[Tuple[int, float]]:
    idx = np.argsort(-scores, kind="stable")[:k]
    return [(int(i), float(scores[i])) for i in idx]


def upsample(a: np.ndarray, size_wh: Tuple[int, int]) -> np.ndarray:
    """Smooth (bicubic) upsampling of a 2-D map to (W, H), clipped to [0, 1]."""
    im = Image.fromarray(a.astype(np.float32), mode="F").resize(size_wh, Image.BICUBIC)
    return np.clip(np.asarray(im), 0, 1)


def colormap(a: np.ndarray) -> np.ndarray:
    """[0, 1] -> jet-like uint8 RGB (blue low, red high)."""
    a = np.clip(a, 0, 1)[..., None]
    r = np.clip(1.5 - np.abs(4 * a - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * a - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * a - 1), 0, 1)
    return (np.concatenate([r, g, b], -1) * 255).astype(np.uint8)


def require_feature_map(info: ModelInfo) -> None:
    """A model explains only with its feature map: UserError naming the fix otherwise."""
    if info.feature_map is None:
        raise UserError(f"{info.path} has no feature_map output; re-export without --logits-only for heatmaps")


def explain(outputs: Dict[str, np.ndarray], info: ModelInfo, top: int = 6) -> dict:
    """One image's outputs (batch axis removed) -> {"method", "attention" (h, w), "ranked": [(channel,
    score)], "label", "se": {name: weights}}: the SE-weighted map, else the spatial-mean fallback."""
    require_feature_map(info)
    fmap = outputs[info.feature_map]
    se = {n: outputs[n] for n in info.se_outputs}
    if se:
        w = se[info.se_outputs[-1]]
        return {"method": "se", "attention": se_attention(fmap, w), "ranked": top_channels(w, top),
                "label": "w", "se": se}
    scores = spatial_mean_scores(fmap)
    return {"method": "spatial-mean", "attention": spatial_mean_attention(fmap),
            "ranked": top_channels(scores, top), "label": "mean", "se": {}}


def report(ex: dict, top: int = 6) -> dict:
    """The JSON view of an explanation: {"method", "top_channels"} per SE block (or by spatial mean)."""
    top_by_block = {n: top_channels(w, top) for n, w in ex["se"].items()}
    return {"method": ex["method"],
            "top_channels": {n: [{"channel": c, "weight": round(v, 4)} for c, v in lst]
                             for n, lst in top_by_block.items()} or
            {"spatial_mean": [{"channel": c, "score": round(v, 4)} for c, v in ex["ranked"]]}}
