"""Datasets as uint8 tensors for training: CIFAR-10 (torchvision) and Fashion-MNIST (idx files).

The reference decodes every image through PIL in a DataLoader; on a 2-core machine that, not the
model, bounds an epoch. Here each split is decoded once into a (N, C, H, W) uint8 tensor at the
model's input size, and augmentation runs on whole batches (augment.py). File formats are read
by sedeploy.core.datasets (numpy only); this module adds torchvision's CIFAR-10 loader and downloads:
- cifar10: torchvision's CIFAR10 (with --download). If torchvision refuses a folder because its
  md5 sums differ from the published ones (a re-packed or synthetic copy), the
  cifar-10-batches-py pickles are read directly.
- fashion-mnist: see sedeploy.core.datasets; --download fetches the files through torchvision.
- folder: your own images (sedeploy.core.folder): train/val/test as zero-copy tensors over the
  memory-mapped decode cache, so batches are gathered from the map and a dataset larger than RAM trains.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch

from ..core.datasets import (DATASETS, DatasetInfo, find_idx, IDX_FILES, dataset_info, fmnist_dirs, read_cifar, read_fmnist)
from ..core.errors import UserError
from ..core.io import atomic_write_text
from ..splits import stratified_indices, subset_indices


@dataclass
class Split:
    images: torch.Tensor   # (N, C, H, W) uint8 at the model's input size
    labels: torch.Tensor   # (N,) int64


def load_dataset(name: str, data_dir: Optional[str] = None, download: bool = False,
                 splits: Tuple[str, ...] = ("train", "test"), folder: Any = None, progress: bool = True,
                 log: Callable[[str], None] = print) -> Tuple[DatasetInfo, dict]:
    """-> (info, {"train": Split, "test": Split}; a folder also "val" when it has one). Missing data
    raises UserError naming the fix. `folder`: sedeploy.core.folder.FolderOptions for name "folder"."""
    if name == "folder":
        return _load_folder(data_dir, folder, progress, log)
    if name == "cifar10":
        return _load_cifar10(Path(data_dir or "data"), download, splits)
    if name == "fashion-mnist":
        return _load_fmnist(Path(data_dir) if data_dir else None, download, splits)
    raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")


def _load_cifar10(root: Path, download: bool, splits) -> Tuple[DatasetInfo, dict]:
    info = dataset_info("cifar10")
    out = {}
    for split in splits:
        try:
            from torchvision.datasets import CIFAR10
            ds = CIFAR10(str(root), train=split == "train", download=download)
            x = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
            y = torch.tensor(ds.targets, dtype=torch.int64)
            info.source = f"torchvision CIFAR10 at {root}"
        except RuntimeError:  # not there, or md5 differs from the published set: read the pickles
            xa, ya = read_cifar(root, split)
            x, y = torch.from_numpy(xa), torch.from_numpy(ya)
            info.source = f"cifar-10-batches-py pickles at {root} (md5 not the published set)"
        except OSError as e:  # download failed
            raise UserError(f"CIFAR-10 download to {root} failed ({e}); check the network or pass "
                            f"--data-dir with an existing cifar-10-batches-py") from None
        out[split] = Split(x, y)
    return info, out


def _load_fmnist(data_dir: Optional[Path], download: bool, splits) -> Tuple[DatasetInfo, dict]:
    info = dataset_info("fashion-mnist")
    if data_dir is not None and not data_dir.exists() and not download:
        raise UserError(f"data directory {data_dir} does not exist; pass an existing --data-dir (or let "
                        f"`sedeploy train --dataset fashion-mnist --download` fetch it)")
    dirs = fmnist_dirs(data_dir)
    out = {}
    for split in splits:
        if download and any(find_idx(b, dirs) is None for b in IDX_FILES[split]):
            from torchvision.datasets import FashionMNIST
            root = data_dir or Path("data")
            try:
                FashionMNIST(str(root), train=split == "train", download=True)
            except OSError as e:
                raise UserError(f"Fashion-MNIST download to {root} failed ({e}); install Debian's "
                                f"dataset-fashion-mnist instead") from None
            dirs = [root / "FashionMNIST" / "raw"] + dirs
        x, y, src = read_fmnist(dirs, split, info.input_size[1])
        out[split] = Split(torch.from_numpy(x), torch.from_numpy(y))
        info.source = str(src)
    return info, out


def subset(split: Split, limit: Optional[int], seed: int = 0) -> Split:
    """A seeded random subset of `limit` samples (all when limit is None or larger); splits.subset_indices."""
    idx = subset_indices(len(split.labels), limit, seed)
    return split if idx is None else Split(split.images[idx], split.labels[idx])


def stratified_split(split: Split, fraction: float, seed: int) -> Tuple[Split, Split]:
    """-> (rest, held_out): `fraction` of every class held out, chosen by seed (same on every rank;
    splits.stratified_indices, which export uses to find a run's validation images again)."""
    rest_idx, held_idx = stratified_indices(split.labels, fraction, seed)
    return (Split(split.images[rest_idx], split.labels[rest_idx]),
            Split(split.images[held_idx], split.labels[held_idx]))


# ---------------------------------------------------------------- folder
def folder_options(cfg: Any) -> Any:
    """sedeploy.core.folder.FolderOptions from a TrainConfig's fields."""
    from ..core.folder import FolderOptions
    return FolderOptions(seed=cfg.seed, val_split=cfg.val_split, test_split=cfg.test_split,
                         input_size=cfg.input_size, channels=cfg.channels, cache_dir=cfg.cache_dir)


def check_data_options(cfg: Any) -> None:
    """The folder-only options are refused for the built-in datasets, whose size and channels are fixed."""
    if cfg.dataset != "folder" and (cfg.input_size is not None or cfg.channels is not None):
        raise UserError(f"--input-size and --color apply to --dataset folder; {cfg.dataset} has a fixed input size "
                        f"and channel count")
    if cfg.dataset == "folder":
        folder_options(cfg).validate()


def _load_folder(data_dir: Optional[str], folder: Any, progress: bool,
                 log: Callable[[str], None]) -> Tuple[DatasetInfo, dict]:
    from ..core.folder import FolderOptions, load_folder
    fd = load_folder(data_dir, folder or FolderOptions(), progress, log)
    # torch.from_numpy over the copy-on-write memory map: no copy, rows are read as batches gather them
    return fd.info, {s: Split(torch.from_numpy(x), torch.from_numpy(y)) for s, (x, y) in fd.arrays.items()}


def write_data_files(info: DatasetInfo, out: Path) -> Optional[Dict[str, Any]]:
    """Write the dataset's run-folder files (a folder's split.json, skipped.json); -> the data reference
    for the checkpoint, with the split file's absolute path (None for the built-in datasets)."""
    for name, text in info.files.items():
        atomic_write_text(out / name, text)
    if not info.ref:
        return None
    ref = dict(info.ref)
    if ref.get("split_file"):
        ref["split_file"] = str((out / ref["split_file"]).resolve())
    return ref
