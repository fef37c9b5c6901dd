"""Image decoding shared by the runtime, the server and the folder reader: Pillow and numpy only.

Any image Pillow reads becomes the model's pixels as the model's own metadata says:
1. decode, refusing decompression bombs (more than MAX_PIXELS) and truncated files;
2. apply the EXIF orientation;
3. bring the mode to the model's channels: 16/32-bit and float images are scaled to 8 bits;
   palette, CMYK, YCbCr, LAB, 1-bit images are converted; transparency (RGBA, LA, palette with
   transparency) is composited on a background (black by default: the zero signal these models
   saw around objects); then 'L' for 1-channel models, 'RGB' for 3-channel ones;
4. resize the whole image to the model's H x W with PIL bilinear (aspect not kept, exactly as
   torchvision's Resize((H, W)) on a PIL image, and as sedeploy resized Fashion-MNIST for training).
Normalization (step 5) is the runtime's: sedeploy.runtime.preprocess.
"""
from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO, Iterator, Optional, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import UserError

MAX_PIXELS = 40_000_000  # refuse larger images: a decompression bomb, or not something to classify
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
_ORIENTATION = 0x0112  # EXIF tag
BACKGROUNDS = {"black": (0, 0, 0), "white": (255, 255, 255), "grey": (128, 128, 128)}
# Pillow warns from 89 M pixels; MAX_PIXELS refuses (with a message) well below that, so the warning says nothing
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageError(UserError):
    """One image could not be used; in a batch the others still run. `path` names the input."""

    def __init__(self, message: str, path: Union[str, os.PathLike, None] = None) -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float images -> 'L' (8 bits)."""
    a = np.asarray(im)
    if im.mode == "F":
        a = a.astype(np.float64)
        a = a * 255.0 if a.size and np.nanmax(a) <= 1.0 else a
    else:  # I;16*, I: treat as 16-bit range
        a = a.astype(np.float64) / 257.0
    return Image.fromarray(np.clip(np.nan_to_num(a), 0, 255).round().astype(np.uint8), "L")


def to_model_mode(im: Image.Image, channels: int, background: Tuple[int, int, int] = (0, 0, 0)) -> Image.Image:
    """Bring any Pillow mode to 'L' (channels=1) or 'RGB' (channels=3)."""
    if im.mode.startswith("I") or im.mode == "F":
        im = _to_8bit(im)
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, background + (255,))
        im = Image.alpha_composite(bg, rgba).convert("RGB")
    if im.mode not in ("L", "RGB"):
        im = im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, 1
    target = "L" if channels == 1 else "RGB"
    return im if im.mode == target else im.convert(target)


def _checked_file(path: Union[str, os.PathLike]) -> Path:
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file", path)
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not an image", path)
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: empty file (0 bytes), not an image", path)
    return path


@contextlib.contextmanager
def _open_checked(source: Union[Path, BinaryIO], name: str, max_pixels: int) -> Iterator[Image.Image]:
    """Image.open with the size limit; every Pillow failure, also one raised in the caller's block
    (decoding is lazy: a truncated file fails at im.load()), becomes an ImageError naming `name`."""
    try:
        with Image.open(source) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ImageError(f"{name}: {w}x{h} pixels exceeds the {max_pixels:,}-pixel limit "
                                 f"(decompression bomb?); downscale it first", name)
            yield im
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError(f"{name}: image is too large (decompression bomb); downscale it first", name) from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image Pillow can read", name) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name}: corrupt or truncated image ({str(e).splitlines()[0][:100]})", name) from None


def opened(path: Union[str, os.PathLike], max_pixels: int = MAX_PIXELS):
    """Open `path` lazily (header read, pixels not decoded) with the checks every reader needs:
    missing, empty, non-image, oversized and corrupt files raise ImageError (a context manager)."""
    path = _checked_file(path)
    return _open_checked(path, str(path), max_pixels)


def load_image(path: Union[str, os.PathLike], channels: int, background: Tuple[int, int, int] = (0, 0, 0),
               max_pixels: int = MAX_PIXELS, fast_size: Optional[Tuple[int, int]] = None) -> Image.Image:
    """Decode `path` into an 'L' or 'RGB' PIL image, EXIF orientation applied. Raises ImageError.

    fast_size=(W, H), the model's input size, asks for the fast path: a JPEG is decoded at reduced
    size by DCT scaling (Pillow's draft mode: 1/2, 1/4 or 1/8, never below W x H), and straight to
    grey for a 1-channel model; other formats are box-reduced to about twice W x H. The result then
    differs slightly from the exact path's (docs/BENCHMARKS.md gives the measured drift)."""
    path = _checked_file(path)
    return _decode(path, str(path), channels, background, max_pixels, fast_size)


def decode_image(data: bytes, name: str, channels: int, background: Tuple[int, int, int] = (0, 0, 0),
                 max_pixels: int = MAX_PIXELS, fast_size: Optional[Tuple[int, int]] = None) -> Image.Image:
    """`load_image` for bytes in memory (an upload): the same checks and conversions. Raises ImageError."""
    if not data:
        raise ImageError(f"{name}: empty file (0 bytes), not an image", name)
    return _decode(io.BytesIO(data), name, channels, background, max_pixels, fast_size)


def _decode(source: Union[Path, BinaryIO], name: str, channels: int, background: Tuple[int, int, int],
            max_pixels: int, fast_size: Optional[Tuple[int, int]] = None) -> Image.Image:
    with _open_checked(source, name, max_pixels) as im:
        if fast_size is not None:
            _draft(im, channels, fast_size)
        im.load()
        if im.getexif().get(_ORIENTATION, 1) != 1:      # exif_transpose copies even when upright
            im = ImageOps.exif_transpose(im)
        if fast_size is not None:
            im = _reduce(im, fast_size)
        return to_model_mode(im, channels, background)


def _draft(im: Image.Image, channels: int, size_wh: Tuple[int, int]) -> None:
    """JPEG only: decode at the smallest DCT scale that keeps both sides >= the model's larger side
    (square, since the EXIF rotation is applied after decoding); grey straight from the luma
    channel for a 1-channel model."""
    if im.format != "JPEG":
        return
    side = max(size_wh)
    mode = "L" if channels == 1 and im.mode == "RGB" else im.mode
    im.draft(mode, (side, side))


def _reduce(im: Image.Image, size_wh: Tuple[int, int]) -> Image.Image:
    """Box-reduce by an integer factor that leaves at least 2x the model's size, so the final
    bilinear resize still averages over every pixel."""
    factor = min(im.size[0] // (2 * size_wh[0]), im.size[1] // (2 * size_wh[1]))
    return im.reduce(factor) if factor >= 2 else im


def resize(im: Image.Image, size_hw: Tuple[int, int]) -> Image.Image:
    h, w = size_hw
    return im if im.size == (w, h) else im.resize((w, h), Image.BILINEAR)


def to_chw(im: Image.Image) -> np.ndarray:
    """PIL 'L'/'RGB' -> uint8 (C, H, W): the pixels a model sees before normalization."""
    a = np.asarray(im, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def load_chw(path: Union[str, os.PathLike], channels: int, size_hw: Tuple[int, int],
             background: Tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """A file -> uint8 (C, H, W) at the model's size, through exactly the runtime's decode and resize.

    Training on a folder decodes its images with this, so a model trains on the pixels that
    `sedeploy infer` will give it. Raises ImageError."""
    return np.ascontiguousarray(to_chw(resize(load_image(path, channels, background), size_hw)))
