"""Dataset files read with numpy and Pillow alone (no torch): CIFAR-10 pickles, Fashion-MNIST idx.

Used by training (through sedeploy.training.data, which adds torchvision's downloads and tensors)
and by the torch-free tools (bench's accuracy column, the faithfulness test).
- cifar10: the cifar-10-batches-py pickles, read with an unpickler that admits numpy arrays only.
- fashion-mnist: the original idx(.gz) files from a data dir, its FashionMNIST/raw folder, or
  Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist); adapted to the models as
  1 channel, resized 28 -> 32 with PIL bilinear (the resize the runtime applies to any image),
  normalized with Fashion-MNIST's own mean/std.
"""
from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .errors import UserError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # the reference's normalization
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
FMNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot"]
FMNIST_MEAN = (0.2860,)  # Fashion-MNIST train set statistics
FMNIST_STD = (0.3530,)
DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")
DATASETS = ("cifar10", "fashion-mnist", "folder")  # folder: your own images (sedeploy.core.folder)



@dataclass
class DatasetInfo:
    name: str
    classes: List[str]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    input_size: Tuple[int, int, int]  # (C, H, W)
    source: str                       # where the data was read from
    ref: Optional[Dict[str, Any]] = None  # where to find the data again (folder: its path, split file, seed);
                                          # stored in the checkpoint and the ONNX metadata as "data"
    files: Dict[str, str] = field(default_factory=dict)  # name -> text written to the run folder
                                                         # (folder: split.json, skipped.json)


def dataset_info(name: str) -> DatasetInfo:
    if name == "cifar10":
        return DatasetInfo("cifar10", CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, (3, 32, 32), "")
    if name == "fashion-mnist":
        return DatasetInfo("fashion-mnist", FMNIST_CLASSES, FMNIST_MEAN, FMNIST_STD, (1, 32, 32), "")
    if name == "folder":
        raise UserError("the folder dataset's classes and statistics come from the folder; "
                        "pass --data-dir with one sub-folder of images per class")
    raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")


# ---------------------------------------------------------------- CIFAR-10
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """The CIFAR batches are pickles: admit the numpy array machinery and nothing else."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_cifar_batch(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """One cifar-10-batches-py file -> (N, 3, 32, 32) uint8, (N,) int64."""
    try:
        with open(path, "rb") as f:
            d = _NumpyOnlyUnpickler(f, encoding="latin1").load()
        data = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(d.get("labels", d.get("fine_labels")), dtype=np.int64)
    except Exception as e:  # noqa: BLE001 - any parse failure is bad input
        raise UserError(f"{path} is not a CIFAR-10 batch file ({e}); download it again "
                        f"(`sedeploy train --dataset cifar10 --download`)") from None
    if len(labels) != len(data):
        raise UserError(f"{path}: {len(data)} images but {len(labels)} labels; download it again "
                        f"(`sedeploy train --dataset cifar10 --download`)")
    return data, labels


def cifar_files(root: Path, split: str) -> List[Path]:
    folder = root / "cifar-10-batches-py"
    return [folder / f"data_batch_{i}" for i in range(1, 6)] if split == "train" else [folder / "test_batch"]


def read_cifar(root: Path, split: str) -> Tuple[np.ndarray, np.ndarray]:
    files = cifar_files(root, split)
    missing = [f.name for f in files if not f.exists()]
    if missing:
        raise UserError(f"CIFAR-10 not found in {root} (missing {', '.join(missing)}); "
                        f"pass --data-dir pointing at it, or let `sedeploy train --dataset cifar10 --download` "
                        f"fetch it (needs internet)")
    parts = [read_cifar_batch(f) for f in files]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


# ---------------------------------------------------------------- Fashion-MNIST
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (optionally .gz): magic 0x0000 08 <ndim>, big-endian dims, uint8 data."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
        zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype != 0x08 or not 1 <= ndim <= 3:
            raise ValueError("bad magic number")
        dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        return data.reshape(dims)
    except (OSError, EOFError, ValueError, struct.error) as e:
        raise UserError(f"{path} is not a valid idx file ({e}); reinstall the dataset (`apt-get install --reinstall "
                        f"dataset-fashion-mnist`) or fetch it with `sedeploy train --dataset fashion-mnist --download`"
                        ) from None


def find_idx(base: str, dirs: List[Path]) -> Optional[Path]:
    for d in dirs:
        for cand in (d / base, d / (base + ".gz")):
            if cand.is_file():
                return cand
    return None


def resize_uint8(images: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W) uint8 -> (N, size, size) uint8 with PIL bilinear, as the runtime resizes images."""
    from PIL import Image
    if images.shape[1:] == (size, size):
        return images
    out = np.empty((len(images), size, size), dtype=np.uint8)
    for i, im in enumerate(images):
        out[i] = np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR))
    return out


def fmnist_dirs(data_dir: Optional[Path]) -> List[Path]:
    dirs = [data_dir, data_dir / "FashionMNIST" / "raw"] if data_dir else []
    return dirs + [DEBIAN_FMNIST]


def read_fmnist(dirs: List[Path], split: str, size: Optional[int] = 32) -> Tuple[np.ndarray, np.ndarray, Path]:
    """-> (N, 1, size, size) uint8 (size None: native 28x28), (N,) int64, folder; missing files raise UserError."""
    img_f, lbl_f = (find_idx(b, dirs) for b in IDX_FILES[split])
    if img_f is None or lbl_f is None:
        where = ", ".join(str(d) for d in dirs)
        raise UserError(f"Fashion-MNIST {split} files not found in {where}; "
                        f"run `apt-get install dataset-fashion-mnist` or "
                        f"`sedeploy train --dataset fashion-mnist --download`")
    x, y = read_idx(img_f), read_idx(lbl_f).astype(np.int64)
    if x.ndim != 3 or len(x) != len(y):
        raise UserError(f"{img_f}: {x.shape} images do not match {len(y)} labels; reinstall the dataset")
    x = resize_uint8(x, size) if size else x
    return np.ascontiguousarray(x[:, None]), y, img_f.parent


def normalize_batch(images: np.ndarray, mean, std) -> np.ndarray:
    """uint8 (N, C, H, W) -> float32 (x / 255 - mean) / std, the models' input."""
    m = np.asarray(mean, np.float32)[:, None, None]
    s = np.asarray(std, np.float32)[:, None, None]
    return ((images.astype(np.float32) / 255 - m) / s).astype(np.float32)
