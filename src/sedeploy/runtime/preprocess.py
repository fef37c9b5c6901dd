"""Preprocessing for the edge runtime: an image (file, bytes or PIL image) -> the model's normalized
float32 input, as the model's metadata says. Pillow and numpy only, no torch.

Decoding (EXIF, modes, transparency, resize) is sedeploy.core.decode, shared with the folder reader
and the server; this module adds step 5: scale to [0, 1], normalize with the metadata's mean/std,
lay out as float32 (C, H, W). `Preprocessor` holds one model's settings for both steps.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from ..core.decode import decode_image, load_image, resize, to_chw, to_model_mode

ImageLike = Union[str, os.PathLike, Image.Image]


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


@dataclass
class Preprocessor:
    """One model's way from an image to its input (the fields come from the model's metadata)."""
    input_size: List[int]              # [C, H, W]
    mean: List[float]
    std: List[float]
    background: Tuple[int, int, int]   # RGB that transparent pixels are composited on
    fast_decode: bool = False          # JPEGs decoded at reduced size (core.decode.load_image)

    def load(self, image: ImageLike) -> Image.Image:
        """A file or PIL image -> the decoded image in the model's mode; raises ImageError."""
        if isinstance(image, Image.Image):
            return to_model_mode(image, self.input_size[0], self.background)
        c, h, w = self.input_size
        return load_image(image, c, self.background, fast_size=(w, h) if self.fast_decode else None)

    def decode(self, data: bytes, name: str = "upload") -> Image.Image:
        """`load` for an image file's bytes in memory (an upload); raises ImageError."""
        return decode_image(data, name, self.input_size[0], self.background)

    def to_input(self, im: Image.Image) -> np.ndarray:
        return preprocess(im, self.input_size, self.mean, self.std)
