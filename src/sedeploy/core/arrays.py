"""Labelled image arrays of any dataset by name, from files on disk (no download, no torch): the
built-in sets (core.datasets) and your own folders (core.folder). Bench's accuracy column, export
verification, int8 calibration, faithfulness and `sedeploy samples` read their images here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from .datasets import DatasetInfo, dataset_info, fmnist_dirs, read_cifar, read_fmnist
from .errors import UserError
from .folder import folder_arrays
from .io import atomic_write, ensure_writable_dir


def load_arrays(name: str, data_dir: Optional[str] = None, split: str = "test", native: bool = False,
                ref: Optional[Dict[str, Any]] = None) -> Tuple[DatasetInfo, np.ndarray, np.ndarray]:
    """-> (info, images (N, C, H, W) uint8, labels (N,) int64) from files on disk, no download.

    native=True keeps the files' own size (Fashion-MNIST 28x28) instead of the model input size.
    name "folder": the split a model was trained on, found through `ref` (the checkpoint's or the
    ONNX metadata's "data"); data_dir, when given, says where the folder is now."""
    if name == "folder":
        return folder_arrays(ref, data_dir, split)
    info = dataset_info(name)
    if name == "cifar10":
        x, y = read_cifar(Path(data_dir or "data"), split)
        info.source = str(Path(data_dir or "data") / "cifar-10-batches-py")
    else:
        x, y, src = read_fmnist(fmnist_dirs(Path(data_dir) if data_dir else None), split,
                                None if native else info.input_size[1])
        info.source = str(src)
    return info, x, y



def write_samples(name: str, out: Path, n: int = 8, data_dir: Optional[str] = None, seed: int = 0) -> List[Path]:
    """Write n test images as PNG files named <index>_<class>.png (native size), for trying `infer`."""
    if n <= 0:
        raise UserError(f"--n must be positive, got {n}")
    if name == "folder":
        raise UserError("samples writes built-in test images; a folder dataset's images are already files")
    info, x, y = load_arrays(name, data_dir, "test", native=True)
    out = ensure_writable_dir(out, option="--out")
    idx = np.random.default_rng(seed).permutation(len(y))[:n]
    written = []
    for i in idx:
        a = x[i]
        im = Image.fromarray(a[0]) if a.shape[0] == 1 else Image.fromarray(a.transpose(1, 2, 0))
        label = info.classes[int(y[i])].lower().replace("/", "-").replace(" ", "-")
        dest = out / f"{int(i):05d}_{label}.png"
        atomic_write(dest, lambda tmp, im=im: im.save(tmp, format="PNG"))
        written.append(dest)
    return written
