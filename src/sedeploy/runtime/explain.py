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
- Head maps (`head_gradcam`, `head_cam`): the classifier's own evidence for the predicted class k, from
  the metadata key `head_linear` (written at export): G = W2 @ W1, the head's two linear layers
  multiplied (dropout is the identity at inference, the ReLU between them is left out: a
  linearization), as (classes, C, s, s) over the pooled last-block features. d logit_k / d F, the
  gradient at the feature map through the max-pool, is G_k on each pool window's maximum and 0
  elsewhere. `head_gradcam` is Grad-CAM (Selvaraju et al. 2017) with that gradient: channel weights
  alpha_c = its spatial mean, map max(sum_c alpha_c F_c, 0). `head_cam` keeps the gradient's position:
  max(sum_c grad_c * F_c, 0) (gradient x activation at the feature map). Both are numpy only, one
  function each, so any runtime (and the browser page) can port them.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from ..core.errors import UserError
from .model import ModelInfo

TOP_MEAN_CHANNELS = 3   # the reference overlays its three strongest channels
KINDS = ("se", "spatial-mean", "head-gradcam", "head-cam")   # map kinds `infer --heatmap-kind` offers


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


def head_weights(meta: dict) -> Optional[Tuple[np.ndarray, int]]:
    """The metadata's `head_linear` -> ((classes, C, s, s) float32 weights, pool size), or None."""
    h = meta.get("head_linear") if meta else None
    if not h:
        return None
    return np.asarray(h["weights"], np.float32).reshape([-1, *h["shape"]]), int(h["pool"])


def pool_gradient(fmap: np.ndarray, g: np.ndarray, pool: int) -> np.ndarray:
    """(C, H, W) map, (C, s, s) gradient at the pooled features -> (C, H, W) gradient at the map: each
    pool window's value goes to its first maximum (as max-pooling routes it), rows/columns past
    s * pool get 0."""
    c, s = g.shape[0], g.shape[1]
    win = fmap[:, :s * pool, :s * pool].reshape(c, s, pool, s, pool).transpose(0, 1, 3, 2, 4).reshape(c, s, s, -1)
    onehot = np.arange(pool * pool) == win.argmax(-1)[..., None]              # (C, s, s, pool*pool)
    grad = (onehot * g[..., None]).reshape(c, s, s, pool, pool).transpose(0, 1, 3, 2, 4).reshape(c, s * pool, -1)
    out = np.zeros(fmap.shape, np.float32)
    out[:, :s * pool, :s * pool] = grad
    return out


def head_gradcam_attention(fmap: np.ndarray, g: np.ndarray, pool: int) -> np.ndarray:
    """Grad-CAM from the head's weights: (C, H, W), class weights (C, s, s) -> (h, w) in [0, 1]."""
    alpha = pool_gradient(fmap, g, pool).mean((1, 2))                         # (C,)
    return se_attention(fmap, alpha)


def head_cam_attention(fmap: np.ndarray, g: np.ndarray, pool: int) -> np.ndarray:
    """Gradient x activation from the head's weights: (C, H, W), (C, s, s) -> (h, w) in [0, 1]."""
    a = np.maximum((pool_gradient(fmap, g, pool) * fmap.astype(np.float32)).sum(0), 0)
    m = float(a.max())
    return a / m if m > 0 else a


def attention(kind: str, outputs: Dict[str, np.ndarray], info: ModelInfo) -> np.ndarray:
    """One image's outputs (batch axis removed) -> the (h, w) map of `kind` (one of KINDS)."""
    check_kind(kind, info)
    fmap = outputs[info.feature_map]
    if kind == "se":
        return se_attention(fmap, outputs[info.se_outputs[-1]])
    if kind == "spatial-mean":
        return spatial_mean_attention(fmap)
    g, pool = head_weights(info.meta)
    k = int(np.argmax(outputs["logits"]))
    fn = {"head-gradcam": head_gradcam_attention, "head-cam": head_cam_attention}[kind]
    return fn(fmap, g[k], pool)


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


def check_kind(kind: Optional[str], info: ModelInfo) -> None:
    """The model can draw maps of `kind` (None: the default, always): UserError naming the fix otherwise.
    Checked before any image runs or any folder is made, and again per map."""
    if kind == "se" and not info.se_outputs:
        raise UserError(f"{info.path} has no SE outputs; use --heatmap-kind spatial-mean")
    if kind in ("head-cam", "head-gradcam") and head_weights(info.meta) is None:
        raise UserError(f"{info.path} has no head_linear metadata; re-export it with this sedeploy "
                        f"or use --heatmap-kind {'se' if info.se_outputs else 'spatial-mean'}")


def require_feature_map(info: ModelInfo) -> None:
    """A model explains only with its feature map: UserError naming the fix otherwise."""
    if info.feature_map is None:
        raise UserError(f"{info.path} has no feature_map output; re-export without --logits-only for heatmaps")


DEFAULT_KIND = "head-cam"   # chosen by `sedeploy faithfulness` (docs/BENCHMARKS.md): best on all three metrics


def default_kind(info: ModelInfo) -> str:
    """head-cam when the model carries head_linear, else the SE-weighted map, else spatial-mean."""
    if head_weights(info.meta) is not None:
        return DEFAULT_KIND
    return "se" if info.se_outputs else "spatial-mean"


def explain(outputs: Dict[str, np.ndarray], info: ModelInfo, top: int = 6, kind: Optional[str] = None) -> dict:
    """One image's outputs (batch axis removed) -> {"method", "attention" (h, w), "ranked": [(channel,
    score)], "label", "se": {name: weights}}. `kind` (one of KINDS; None: default_kind) picks the map;
    the ranked channels are the last SE block's weights, or the spatial means without SE outputs."""
    require_feature_map(info)
    kind = kind or default_kind(info)
    if kind not in KINDS:
        raise UserError(f"unknown heatmap kind {kind!r}; choose from {', '.join(KINDS)}")
    fmap = outputs[info.feature_map]
    attention_map = attention(kind, outputs, info)
    se = {n: outputs[n] for n in info.se_outputs}
    if se:
        return {"method": kind, "attention": attention_map, "ranked": top_channels(se[info.se_outputs[-1]], top),
                "label": "w", "se": se}
    return {"method": kind, "attention": attention_map, "ranked": top_channels(spatial_mean_scores(fmap), top),
            "label": "mean", "se": {}}


def report(ex: dict, top: int = 6) -> dict:
    """The JSON view of an explanation: {"method", "top_channels"} per SE block (or by spatial mean)."""
    top_by_block = {n: top_channels(w, top) for n, w in ex["se"].items()}
    return {"method": ex["method"],
            "top_channels": {n: [{"channel": c, "weight": round(v, 4)} for c, v in lst]
                             for n, lst in top_by_block.items()} or
            {"spatial_mean": [{"channel": c, "score": round(v, 4)} for c, v in ex["ranked"]]}}
