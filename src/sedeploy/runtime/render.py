"""Explanations as pictures: runtime.explain's arrays drawn over the image with Pillow, and the
PNG files `infer --heatmaps` writes (atomically, each whole or absent).

- heatmap: the original beside the colormapped attention blended over it, with a caption.
- channels: the reference's view, the top channels each upsampled and overlaid, labelled with
  index and weight (or spatial-mean score).
- se: every SE block's channel-weight profile as a bar chart.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..core.io import atomic_write
from .explain import colormap, normalize01, top_channels, upsample


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


def render_explanation(image: Image.Image, fmap: np.ndarray, ex: dict, caption: str) -> Dict[str, Image.Image]:
    """An explanation (runtime.explain.explain) -> {"heatmap", "channels"(, "se")}: PIL images."""
    how = {"se": "SE-weighted", "spatial-mean": "spatial-mean", "head-cam": "head-CAM",
           "head-gradcam": "head Grad-CAM"}.get(ex["method"], ex["method"])
    images = {"heatmap": render_heatmap(image, ex["attention"], f"{caption}  ({how} attention)"),
              "channels": render_channels(image, fmap, ex["ranked"], ex["label"])}
    if ex["se"]:
        images["se"] = render_se_profile(ex["se"])
    return images


def write_pngs(images: Dict[str, Image.Image], outdir: Path, stem: str) -> Dict[str, str]:
    """Write <stem>_<kind>.png for each image atomically -> {kind: path}."""
    files = {}
    for kind, im in images.items():
        dest = Path(outdir) / f"{stem}_{kind}.png"
        atomic_write(dest, lambda tmp, im=im: im.save(tmp, format="PNG"))
        files[kind] = str(dest)
    return files
