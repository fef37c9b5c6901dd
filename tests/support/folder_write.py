"""Write a built-in dataset (Fashion-MNIST, CIFAR-10) out as a folder of PNG files.

    OUT/train/<class>/<index>.png, OUT/test/<class>/<index>.png   (native size, lossless)

The official test set stays the test set, so a model trained from the folder can be compared with
one trained by the built-in loader (docs/BENCHMARKS.md). The folder appears complete or not at all:
files are written into a hidden sibling folder, which is renamed to OUT at the end.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from sedeploy.core.errors import UserError
from sedeploy.core.folder.cache import cpu_count
from sedeploy.core.folder.index import pmap


def class_folder_name(name: str) -> str:
    """'T-shirt/top' -> 'T-shirt-top': a class name as a portable folder name."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name).strip("-.") or "class"


def write_image_folder(name: str, out: Path, data_dir: Optional[str] = None, limit: Optional[int] = None,
                       workers: int = 0, progress: bool = True) -> Dict[str, int]:
    """-> {split: files written}; `limit` keeps the first N images of each split."""
    from PIL import Image
    from sedeploy.core.arrays import load_arrays
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not empty; choose another output folder")
    if limit is not None and limit <= 0:
        raise UserError(f"--limit must be positive, got {limit}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    counts: Dict[str, int] = {}
    try:
        for split in ("train", "test"):
            info, x, y = load_arrays(name, data_dir, split, native=True)       # (N, C, H, W) uint8
            n = len(y) if limit is None else min(limit, len(y))
            names = [class_folder_name(c) for c in info.classes]
            for c in names:
                (tmp / split / c).mkdir(parents=True, exist_ok=True)

            def save(i: int) -> None:
                a = x[i]
                im = Image.fromarray(a[0]) if a.shape[0] == 1 else Image.fromarray(np.ascontiguousarray(
                    a.transpose(1, 2, 0)))
                im.save(tmp / split / names[int(y[i])] / f"{i:05d}.png", format="PNG")
            for _ in pmap(save, list(range(n)), workers or cpu_count(), f"writing {split}", progress):
                pass
            counts[split] = n
        if out.exists():
            out.rmdir()  # empty, checked above
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return counts
