"""Datasets decoded once into uint8 tensors: CIFAR-10 (torchvision) and Fashion-MNIST (idx files).

The reference decodes every image through PIL in a DataLoader; on a 2-core machine that, not the
model, bounds an epoch. Here each split is decoded once into a (N, C, H, W) uint8 tensor at the
model's input size, and augmentation runs on whole batches (augment.py).

- cifar10: torchvision's CIFAR10 (with --download). If torchvision refuses a folder because its
  md5 sums differ from the published ones (a re-packed or synthetic copy), the
  cifar-10-batches-py pickles are read directly, with an unpickler that admits numpy arrays only.
- fashion-mnist: the original idx(.gz) files from --data-dir, its FashionMNIST/raw folder, or
  Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist); torchvision downloads them
  with --download. Adapted to the model as 1 channel, resized 28 -> 32 with PIL bilinear (the same
  resize the runtime applies to any image), normalized with Fashion-MNIST's own mean/std.
"""
from __future__ import annotations

import gzip
import io
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from ..errors import UserError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # the reference's normalization (SPEC section 1)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
FMNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot"]
FMNIST_MEAN = (0.2860,)  # Fashion-MNIST train set statistics
FMNIST_STD = (0.3530,)
DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")
DATASETS = ("cifar10", "fashion-mnist")


@dataclass
class Split:
    images: torch.Tensor   # (N, C, H, W) uint8 at the model's input size
    labels: torch.Tensor   # (N,) int64


@dataclass
class DatasetInfo:
    name: str
    classes: List[str]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    input_size: Tuple[int, int, int]  # (C, H, W)
    source: str                       # where the data was read from


def load_dataset(name: str, data_dir: Optional[str] = None, download: bool = False,
                 splits: Tuple[str, ...] = ("train", "test")) -> Tuple[DatasetInfo, dict]:
    """-> (info, {"train": Split, "test": Split}). Missing data raises UserError naming the fix."""
    if name == "cifar10":
        return _load_cifar10(Path(data_dir or "data"), download, splits)
    if name == "fashion-mnist":
        return _load_fmnist(Path(data_dir) if data_dir else None, download, splits)
    raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")


def dataset_info(name: str) -> DatasetInfo:
    if name == "cifar10":
        return DatasetInfo("cifar10", CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, (3, 32, 32), "")
    if name == "fashion-mnist":
        return DatasetInfo("fashion-mnist", FMNIST_CLASSES, FMNIST_MEAN, FMNIST_STD, (1, 32, 32), "")
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
        raise UserError(f"{path} is not a CIFAR-10 batch file ({e}); re-download with --download") from None
    if len(labels) != len(data):
        raise UserError(f"{path}: {len(data)} images but {len(labels)} labels; re-download with --download")
    return data, labels


def _load_cifar10(root: Path, download: bool, splits) -> Tuple[DatasetInfo, dict]:
    info = dataset_info("cifar10")
    out = {}
    for split in splits:
        train = split == "train"
        try:
            from torchvision.datasets import CIFAR10
            ds = CIFAR10(str(root), train=train, download=download)
            x = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
            y = torch.tensor(ds.targets, dtype=torch.int64)
            info.source = f"torchvision CIFAR10 at {root}"
        except RuntimeError:
            folder = root / "cifar-10-batches-py"
            files = [folder / f"data_batch_{i}" for i in range(1, 6)] if train else [folder / "test_batch"]
            missing = [f.name for f in files if not f.exists()]
            if missing:
                raise UserError(f"CIFAR-10 not found in {root} (missing {', '.join(missing)}); "
                                f"pass --download (needs internet) or --data-dir pointing at it") from None
            parts = [read_cifar_batch(f) for f in files]
            x = torch.from_numpy(np.concatenate([p[0] for p in parts]))
            y = torch.from_numpy(np.concatenate([p[1] for p in parts]))
            info.source = f"cifar-10-batches-py pickles at {folder} (md5 differs from the published set)"
        out[split] = Split(x, y)
    return info, out


# ---------------------------------------------------------------- Fashion-MNIST
_IDX = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
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
        raise UserError(f"{path} is not a valid idx file ({e}); reinstall the dataset or pass --download") from None


def _find_idx(base: str, dirs: List[Path]) -> Optional[Path]:
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


def _load_fmnist(data_dir: Optional[Path], download: bool, splits) -> Tuple[DatasetInfo, dict]:
    info = dataset_info("fashion-mnist")
    dirs = [data_dir, data_dir / "FashionMNIST" / "raw"] if data_dir else []
    dirs.append(DEBIAN_FMNIST)
    if data_dir is not None and not data_dir.exists() and not download:
        raise UserError(f"data directory {data_dir} does not exist; pass an existing --data-dir or add --download")
    out = {}
    for split in splits:
        img_f, lbl_f = (_find_idx(b, dirs) for b in _IDX[split])
        if (img_f is None or lbl_f is None) and download:
            from torchvision.datasets import FashionMNIST
            root = data_dir or Path("data")
            FashionMNIST(str(root), train=split == "train", download=True)
            img_f, lbl_f = (_find_idx(b, [root / "FashionMNIST" / "raw"]) for b in _IDX[split])
        if img_f is None or lbl_f is None:
            where = ", ".join(str(d) for d in dirs)
            raise UserError(f"Fashion-MNIST {split} files not found in {where}; "
                            f"run `apt-get install dataset-fashion-mnist` or pass --download")
        x, y = read_idx(img_f), read_idx(lbl_f).astype(np.int64)
        if x.ndim != 3 or len(x) != len(y):
            raise UserError(f"{img_f}: {x.shape} images do not match {len(y)} labels; reinstall the dataset")
        x = resize_uint8(x, info.input_size[1])[:, None]        # (N, 1, 32, 32)
        out[split] = Split(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y))
        info.source = str(img_f.parent)
    return info, out


def subset(split: Split, limit: Optional[int], seed: int = 0) -> Split:
    """A seeded random subset of `limit` samples (all when limit is None or larger)."""
    if not limit or limit >= len(split.labels):
        return split
    idx = torch.randperm(len(split.labels), generator=torch.Generator().manual_seed(seed))[:limit]
    return Split(split.images[idx], split.labels[idx])


def to_bytes_png(image_chw: np.ndarray) -> bytes:
    """(C, H, W) uint8 -> PNG bytes (used to write real test images out)."""
    from PIL import Image
    arr = image_chw[0] if image_chw.shape[0] == 1 else image_chw.transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()
