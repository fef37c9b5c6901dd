"""Preprocessing for the edge runtime: a decoded image -> the model's normalized float32 input,
and the command line's inputs (files, folders, globs) -> image paths. Pillow and numpy only, no torch.

Decoding (EXIF, modes, transparency, resize) is sedeploy.core.decode, shared with the folder reader
and the server; this module adds step 5: scale to [0, 1], normalize with the metadata's mean/std,
lay out as float32 (C, H, W).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..core.decode import IMAGE_SUFFIXES, ImageError, resize, to_chw, to_model_mode


def normalize(im: Image.Image, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """PIL 'L'/'RGB' -> float32 (C, H, W), (x/255 - mean) / std."""
    a = to_chw(im).astype(np.float32) / 255.0                        # (C, H, W)
    m = np.asarray(mean, dtype=np.float32)[:, None, None]
    s = np.asarray(std, dtype=np.float32)[:, None, None]
    return np.ascontiguousarray((a - m) / s, dtype=np.float32)


def preprocess(im: Image.Image, input_size: Sequence[int], mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A decoded image -> the model's float32 (C, H, W) input."""
    c, h, w = input_size
    return normalize(resize(to_model_mode(im, c), (h, w)), mean, std)


def expand_inputs(items: Sequence[str]):
    """Files, directories (their images, sorted) and globs -> (paths, errors as ImageError)."""
    import glob
    paths, errors = [], []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                errors.append(ImageError(f"{p}: directory has no images ({', '.join(IMAGE_SUFFIXES[:4])}, ...)", p))
            paths += found
        elif any(ch in item for ch in "*?[") and not p.exists():
            found = sorted(Path(q) for q in glob.glob(item, recursive=True) if Path(q).is_file())
            if not found:
                errors.append(ImageError(f"{item}: pattern matches no files", item))
            paths += found
        else:
            paths.append(p)  # missing files are reported when loaded
    return paths, errors
