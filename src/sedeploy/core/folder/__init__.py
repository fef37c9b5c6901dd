"""Train on your own images: a folder of images of any size, mode and class count as a dataset.

`load_folder` (training) indexes the folder (index.py), splits it (split.py), decodes every image
once through the runtime's own decoding (core.decode) into a memory-mapped cache (cache.py) and returns the
splits as uint8 arrays with the train split's mean/std. `folder_arrays` (evaluation: bench,
faithfulness, export verification, int8 calibration) reads one split back through the split file a
training run wrote, using the cache when it is there. numpy and Pillow only: the torch-free tools
import this.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from ..datasets import DatasetInfo
from ..errors import UserError
from .cache import Decoded, channel_stats, cpu_count, decode_splits, default_cache_root, folder_cache_dir
from .index import SPLITS, FileEntry, FolderIndex, first_reason, index_folder
from .split import assign, dump_record, make_record, read_record

__all__ = ["FolderOptions", "FolderData", "load_folder", "folder_arrays", "default_cache_root"]
MAX_INPUT_SIZE = 512


@dataclass
class FolderOptions:
    seed: int = 0                       # draws the split
    val_split: float = 0.1              # share of each class held out for validation (no PATH/val)
    test_split: float = 0.1             # share of each class held out for test (no PATH/test)
    input_size: Optional[int] = None    # square side; None: the images' own when all are one square
                                        # multiple-of-8 size up to 128, else 32
    channels: Optional[int] = None      # 1 or 3; None: 1 when every image is grey, else 3
    cache_dir: Optional[str] = None     # cache root; None: default_cache_root()
    workers: int = 0                    # decode threads; 0: every core this process may use

    def validate(self) -> None:
        if not 0 <= self.val_split < 1 or not 0 < self.test_split < 1 or self.val_split + self.test_split >= 1:
            raise UserError(f"--val-split must be in [0, 1), --test-split in (0, 1), and their sum below 1; got "
                            f"{self.val_split:g} and {self.test_split:g}")
        s = self.input_size
        if s is not None and (s < 8 or s > MAX_INPUT_SIZE or s % 8):
            raise UserError(f"--input-size must be a multiple of 8 from 8 to {MAX_INPUT_SIZE} (the models halve it "
                            f"3 times), e.g. 32, 48, 64, 96; got {s}")
        if self.channels not in (None, 1, 3):
            raise UserError(f"channels must be 1 (grey) or 3 (RGB), got {self.channels}")


@dataclass
class FolderData:
    info: DatasetInfo
    arrays: Dict[str, Tuple[np.ndarray, np.ndarray]]   # split -> (images (N, C, H, W) uint8, labels (N,) int64)
    record: dict                                       # split.json
    skipped: List[Dict[str, str]] = field(default_factory=list)  # skipped.json
    decoded: Optional[Decoded] = None                  # cache statistics (hit, decoded, reused, seconds)


def _root(data_dir: Optional[str]) -> Path:
    if not data_dir:
        raise UserError("--dataset folder needs --data-dir PATH: a folder with one sub-folder of images per class")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise UserError(f"data folder {root} does not exist or is not a folder; pass --data-dir with one "
                        f"sub-folder of images per class")
    return root


def default_input_size(index: FolderIndex) -> Tuple[int, str]:
    """-> (side, why): the images' own size when they share one square multiple-of-8 size <= 128, else 32."""
    if index.common_size is not None:
        w, h = index.common_size
        if w == h and w % 8 == 0 and 8 <= w <= 128:
            return w, f"every image is {w}x{h}"
        return 32, f"default; every image is {w}x{h}"
    return 32, "default; the images differ in size"


def _plan(root: Path, opts: FolderOptions, fcache: Path, progress: bool):
    """Index, choose channels and input size, split: -> (index, splits, (C, H, W), why)."""
    index = index_folder(root, fcache / "headers.json", opts.workers or cpu_count(), progress)
    n = len(index.files)
    if opts.channels:
        channels, why_c = opts.channels, "forced"
    else:
        channels = 1 if index.grey == n else 3
        why_c = "every image is grey" if channels == 1 else f"{n - index.grey} of {n} images in colour"
    side, why_s = (opts.input_size, "forced") if opts.input_size else default_input_size(index)
    splits = assign(index, opts.seed, opts.val_split, opts.test_split)
    return index, splits, (channels, side, side), f"{channels} channel(s): {why_c}; {side}x{side}: {why_s}"


def load_folder(data_dir: Optional[str], opts: FolderOptions = FolderOptions(), progress: bool = True,
                log: Callable[[str], None] = print) -> FolderData:
    """Index, split and decode (once, cached) a folder dataset for training."""
    opts.validate()
    root = _root(data_dir)
    cache_root = Path(opts.cache_dir).expanduser() if opts.cache_dir else default_cache_root()
    fcache = folder_cache_dir(cache_root, root)
    t0 = time.perf_counter()
    index, splits, shape, why = _plan(root, opts, fcache, progress)
    dec = decode_splits(root, splits, shape, fcache, True, opts.workers, progress, log)
    dropped = {rel for rel, _ in dec.dropped}
    final = {s: [f for f in splits[s] if f.rel not in dropped] for s in SPLITS}
    for label, cls in enumerate(index.classes):
        if not any(f.label == label for f in final["train"]):
            raise UserError(f"class {cls!r} in {root} has no decodable training images ({first_reason(dec.dropped, cls)}"
                            f"); add images or remove the folder")
    if not final["test"]:
        raise UserError(f"every test image of {root} failed to decode ({dec.dropped[-1][1]}); fix or replace them")
    skipped = [{"path": rel, "reason": r} for rel, r in sorted(index.skipped + dec.dropped)]
    how = "cache hit" if dec.hit else f"decoded {dec.decoded}, re-used {dec.reused}"
    rate = f", {dec.decoded / dec.seconds:.0f} img/s" if dec.decoded and dec.seconds else ""
    log(f"folder {root} ({index.layout} layout): {len(index.classes)} classes, "
        f"{' / '.join(f'{len(final[s])} {s}' for s in SPLITS)}, {len(skipped)} file(s) skipped; input "
        f"{'x'.join(map(str, shape))} ({why}); {how} in {time.perf_counter() - t0:.1f} s{rate} [{dec.path or 'memory'}]")
    record = make_record(index, final, opts.seed, opts.val_split, opts.test_split, list(shape), dec.mean, dec.std)
    ref = {"data_dir": str(root.resolve()), "split_file": "split.json", "layout": index.layout, "seed": opts.seed,
           "val_split": opts.val_split, "test_split": opts.test_split, "input_size": list(shape),
           "cache_dir": str(cache_root.resolve()) if opts.cache_dir else None}
    info = DatasetInfo("folder", index.classes, tuple(dec.mean), tuple(dec.std), shape, str(root), ref=ref,
                       files={"split.json": dump_record(record),
                              "skipped.json": json.dumps(skipped, indent=1)})
    arrays = {s: dec.split(s) for s in SPLITS if final[s]}
    return FolderData(info, arrays, record, skipped, dec)


def folder_arrays(ref: Optional[dict], data_dir: Optional[str] = None, split: str = "test",
                  progress: bool = False) -> Tuple[DatasetInfo, np.ndarray, np.ndarray]:
    """One split of a folder dataset a model was trained on -> (info, (N, C, H, W) uint8, (N,) int64).

    `ref` is the checkpoint's / ONNX metadata's data reference; data_dir overrides where the folder
    is now. The split file is read back when it exists, else the split is drawn again from the
    folder with the recorded seed and fractions. Nothing is written to the cache."""
    ref = dict(ref or {})
    root = _root(data_dir or ref.get("data_dir"))
    cache_root = Path(ref["cache_dir"]) if ref.get("cache_dir") else default_cache_root()
    fcache = folder_cache_dir(cache_root, root)
    split_file = ref.get("split_file")
    rec = None
    if split_file and Path(split_file).is_file():
        rec = read_record(Path(split_file))
        classes, shape = rec["classes"], tuple(ref.get("input_size") or rec["input_size"])
        listed = rec["splits"].get(split, [])
        files = [_stat(root, rel, label) for rel, label in listed]
    else:
        size = ref.get("input_size")
        opts = FolderOptions(ref.get("seed", 0), ref.get("val_split", 0.1), ref.get("test_split", 0.1),
                             size[1] if size else None, size[0] if size else None)
        index, splits, shape, _ = _plan(root, opts, fcache, progress)
        classes, files = index.classes, splits[split]
    if not files:
        raise UserError(f"the folder dataset {root} has no {split} images; pass --data-dir with the data the model "
                        f"was trained on")
    dec = decode_splits(root, {split: files}, shape, fcache, False, 0, progress, print)
    x, y = dec.split(split)
    # the training split's statistics when the split file is there, else this split's own
    mean, std = (rec["mean"], rec["std"]) if rec else channel_stats(x)
    return DatasetInfo("folder", classes, tuple(mean), tuple(std), shape, str(root), ref=ref), x, y


def _stat(root: Path, rel: str, label: int) -> FileEntry:
    try:
        st = os.stat(os.path.join(root, rel))
    except OSError:
        raise UserError(f"{root / rel} (listed in the split file) is missing; pass --data-dir with the folder the "
                        f"model was trained on") from None
    return FileEntry(rel, int(label), st.st_size, st.st_mtime_ns, None)
