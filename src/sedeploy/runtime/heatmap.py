"""Attention heatmaps from the graph's own outputs, with numpy and Pillow only (no gradients, no torch).

- SE-weighted map: A = sum_c w_c * F_c over the last block, with w the last SE output and F the
  `feature_map` output. For the registry's models F >= 0 (it follows a ReLU) and w is in (0, 1), so
  A >= 0 already; the clamp at 0 only guards graphs of other shapes. A is scaled by its maximum,
  upsampled bicubically to the original image size and blended with a jet-like colormap (red high,
  blue low) over the image.
- The reference's view: top channels (here ranked by their real SE weights) each upsampled and
  overlaid, labelled with index and weight.
- Models without SE outputs fall back to the reference's ranking by spatial mean: channel scores
  are the spatial means and the map is the mean of the top-3 channels.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

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


def overlay(image: Image.Image, heat: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """Blend the colormapped heat (H, W) over an image of the same size."""
    base = image.convert("RGB")
    col = Image.fromarray(colormap(upsample(heat, base.size)))
    return Image.blend(base, col, alpha)


def _display(image: Image.Image, min_side: int = 192) -> Image.Image:
    """Small images (32x32) are enlarged for viewing, nearest-neighbour to keep their pixels."""
    w, h = image.size
    s = max(1, int(np.ceil(min_side / min(w, h))))
    return image.convert("RGB").resize((w * s, h * s), Image.NEAREST) if s > 1 else image.convert("RGB")


def _font():
    try:
        return ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def render_heatmap(image: Image.Image, attention: np.ndarray, title: str) -> Image.Image:
    """Original | overlay, with a caption."""
    img = _display(image)
    over = overlay(img, attention)
    w, h = img.size
    canvas = Image.new("RGB", (2 * w + 30, h + 26), "white")
    canvas.paste(img, (10, 22))
    canvas.paste(over, (w + 20, 22))
    ImageDraw.Draw(canvas).text((10, 4), title, fill="black", font=_font())
    return canvas


def render_channels(image: Image.Image, fmap: np.ndarray, ranked: Sequence[Tuple[int, float]], label: str,
                    ) -> Image.Image:
    """One tile per ranked channel: the channel (normalized) upsampled and overlaid on the image."""
    img = _display(image, 128)
    w, h = img.size
    n = len(ranked) + 1
    canvas = Image.new("RGB", (n * (w + 8) + 8, h + 30), "white")
    draw = ImageDraw.Draw(canvas)
    font = _font()
    canvas.paste(img, (8, 24))
    draw.text((8, 4), "input", fill="black", font=font)
    for j, (c, score) in enumerate(ranked, 1):
        x0 = 8 + j * (w + 8)
        canvas.paste(overlay(img, normalize01(fmap[c])), (x0, 24))
        draw.text((x0, 4), f"ch {c}  {label}={score:.2f}", fill="black", font=font)
    return canvas


def render_se_profile(se: Dict[str, np.ndarray], top: int = 5) -> Image.Image:
    """Bar chart of each SE block's channel weights; the `top` strongest in red, labelled."""
    width, row_h, pad = 640, 120, 36
    canvas = Image.new("RGB", (width, pad + len(se) * (row_h + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    font = _font()
    draw.text((8, 6), "SE channel weights per block (0..1; top channels red)", fill="black", font=font)
    for r, (name, w) in enumerate(se.items()):
        y0 = pad + r * (row_h + pad)
        x0, plot_w = 40, width - 56
        draw.text((8, y0 - 16), f"{name}: {len(w)} channels, mean {float(w.mean()):.2f}", fill="black", font=font)
        draw.line([(x0, y0 + row_h), (x0 + plot_w, y0 + row_h)], fill="black")
        draw.line([(x0, y0), (x0, y0 + row_h)], fill="black")
        draw.text((8, y0 - 2), "1", fill="black", font=font)
        draw.text((8, y0 + row_h - 12), "0", fill="black", font=font)
        best = {c for c, _ in top_channels(w, top)}
        bw = plot_w / len(w)
        for c, v in enumerate(w):
            x = x0 + c * bw
            draw.rectangle([x + 0.15 * bw, y0 + row_h * (1 - float(v)), x + 0.85 * bw, y0 + row_h],
                           fill=(220, 40, 40) if c in best else (70, 110, 200))
        for c, v in top_channels(w, top):
            draw.text((x0 + c * bw, y0 + row_h * (1 - v) - 13), str(c), fill=(160, 0, 0), font=font)
    return canvas
