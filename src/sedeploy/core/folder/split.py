"""Train/validation/test split of an indexed folder: stratified, drawn by seed, written down.

Within each class the files (sorted by path) are permuted by a generator seeded with
(seed, crc32(class name)), so a class's split depends on its own files and the seed only (adding
a class does not move another's files); the first round(n * test_split) files go to test, the
next round(n * val_split) to val (at least one each when the fraction is positive), the rest to
train. With the PATH/{train,val,test} layout the folders decide, and a missing val/ or test/ is
drawn from train/ the same way. The result is recorded in split.json (which file went where),
which evaluation reads back.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ..errors import UserError
from .index import SPLITS, FileEntry, FolderIndex

FORMAT = "sedeploy-split"


def _carve_counts(n: int, val_split: float, test_split: float) -> Dict[str, int]:
    n_test = max(1, round(n * test_split)) if test_split > 0 else 0
    n_val = max(1, round(n * val_split)) if val_split > 0 else 0
    return {"test": n_test, "val": n_val, "train": n - n_test - n_val}


def _carve(files: List[FileEntry], cls: str, seed: int, val_split: float, test_split: float,
           where: Path) -> Dict[str, List[FileEntry]]:
    """One class's files -> {train, val, test}, by seed; too few files is a UserError."""
    files = sorted(files, key=lambda f: f.rel)
    counts = _carve_counts(len(files), val_split, test_split)
    if counts["train"] < 1:
        need = 1 + (val_split > 0) + (test_split > 0)
        raise UserError(f"class folder {where / cls} has {len(files)} usable image(s), too few to split into "
                        f"train/val/test (--val-split {val_split:g} --test-split {test_split:g}); add at least "
                        f"{need - len(files)} more, or give the split yourself as {where}/train, {where}/val, "
                        f"{where}/test")
    perm = np.random.default_rng([seed, zlib.crc32(cls.encode())]).permutation(len(files))
    picked = [files[i] for i in perm]
    out = {"test": picked[:counts["test"]], "val": picked[counts["test"]:counts["test"] + counts["val"]],
           "train": picked[counts["test"] + counts["val"]:]}
    return {k: sorted(v, key=lambda f: f.rel) for k, v in out.items()}


def assign(index: FolderIndex, seed: int, val_split: float, test_split: float) -> Dict[str, List[FileEntry]]:
    """-> {"train": [...], "val": [...], "test": [...]} (val empty when val_split is 0 and there is no val/)."""
    by_role: Dict[Optional[str], List[FileEntry]] = {}
    for f in index.files:
        by_role.setdefault(f.role, []).append(f)
    if index.layout == "classes":
        pool, fixed = by_role.get(None, []), {}
        fractions = (val_split, test_split)
    else:
        pool = by_role.get("train", [])
        fixed = {s: by_role[s] for s in ("val", "test") if by_role.get(s)}
        # only what the folders do not give is drawn from train/
        fractions = (0.0 if "val" in fixed else val_split, 0.0 if "test" in fixed else test_split)
    where = index.root / ("train" if index.layout == "splits" else "")
    out: Dict[str, List[FileEntry]] = {s: [] for s in SPLITS}
    for label, cls in enumerate(index.classes):
        mine = [f for f in pool if f.label == label]
        if not mine:
            raise UserError(f"class {cls!r} has no training images in {where}; add some to {where / cls}")
        for s, part in _carve(mine, cls, seed, *fractions, where).items():
            out[s] += part
    for s, files in fixed.items():
        out[s] = sorted(files, key=lambda f: f.rel)
    out["train"].sort(key=lambda f: f.rel)
    if not out["test"]:
        raise UserError(f"no test images for {index.root}; use --test-split above 0 or add {index.root}/test/<class>/")
    return out


def make_record(index: FolderIndex, splits: Dict[str, List[FileEntry]], seed: int, val_split: float,
                test_split: float, input_size: List[int], mean: List[float], std: List[float]) -> dict:
    """The content of split.json: enough to audit the split and to read it back for evaluation."""
    return {
        "format": FORMAT, "version": 1, "data_dir": str(index.root.resolve()), "layout": index.layout,
        "seed": seed, "val_split": val_split, "test_split": test_split, "classes": index.classes,
        "input_size": list(input_size), "mean": list(mean), "std": list(std),
        "counts": {s: {c: sum(f.label == i for f in files) for i, c in enumerate(index.classes)}
                   for s, files in splits.items()},
        "skipped": len(index.skipped),
        "splits": {s: [[f.rel, f.label] for f in files] for s, files in splits.items()},
    }


def dump_record(rec: dict) -> str:
    """split.json text: the header indented, then one file per line (diff- and grep-friendly)."""
    head = {k: v for k, v in rec.items() if k != "splits"}
    text = json.dumps(head, indent=1)[:-2]  # drop the closing "\n}"
    parts = []
    for s, rows in rec["splits"].items():
        body = ",\n".join("   " + json.dumps(r) for r in rows)
        parts.append(f'  {json.dumps(s)}: [\n{body}\n  ]' if rows else f"  {json.dumps(s)}: []")
    return text + ',\n "splits": {\n' + ",\n".join(parts) + "\n }\n}\n"


def read_record(path: Path) -> dict:
    """Read a split.json written by `sedeploy train`; a damaged one is a UserError."""
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read split file {path} ({type(e).__name__}); re-train, or pass the data folder "
                        f"with --data-dir") from None
    if not isinstance(rec, dict) or rec.get("format") != FORMAT:
        raise UserError(f"{path} is not a sedeploy split file; pass the split.json written by `sedeploy train`")
    return rec
