"""Index a folder of images: layout, classes, files and their headers (numpy and Pillow only, no torch).

Two layouts, as torchvision's ImageFolder names them:
- PATH/<class>/**/<image>              one folder per class; train/val/test drawn by seed (split.py)
- PATH/{train,val,test}/<class>/...    the split given by the folders (val/ and test/ may be absent:
                                       then they are drawn from train/ by seed)
Class names are the class folder names, sorted; label i is the i-th name. Hidden files and folders
(a leading '.') are ignored; other files that are not images are skipped and listed, as are files
whose header Pillow cannot read. Headers (mode, size) are read once, in parallel, and remembered
by (path, size, mtime) in the cache folder: they decide the channel count and the default input
size before anything is decoded.
"""
from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, TypeVar

from ..errors import UserError
from ..io import atomic_write_text
from ..decode import IMAGE_SUFFIXES, opened

SPLITS = ("train", "val", "test")
GREY_MODES = ("1", "L", "LA", "La", "I", "F") + ("I;16", "I;16L", "I;16B", "I;16N")
T = TypeVar("T")
R = TypeVar("R")


@dataclass
class FileEntry:
    rel: str                # path relative to the data folder, '/'-separated
    label: int              # index into the sorted class names
    size: int               # bytes
    mtime_ns: int
    role: Optional[str]     # train | val | test from the layout; None: drawn by seed

    @property
    def stamp(self) -> Tuple[str, int, int]:
        """What identifies this file's content for the caches."""
        return self.rel, self.size, self.mtime_ns


@dataclass
class FolderIndex:
    root: Path
    layout: str                        # "classes" (PATH/<class>) or "splits" (PATH/train/<class>)
    classes: List[str]
    files: List[FileEntry]             # usable files (header readable), sorted by rel
    skipped: List[Tuple[str, str]]     # (rel, reason) of files left out
    grey: int                          # how many usable images are grey
    common_size: Optional[Tuple[int, int]]  # (w, h) when every usable image has that size, else None


def pmap(fn: Callable[[T], R], items: Sequence[T], workers: int, desc: str, progress: bool,
         window: int = 2048) -> Iterator[R]:
    """fn over items on `workers` threads, results in order, with a tqdm bar on stderr when asked.

    Pillow releases the GIL while it decodes and resizes, so threads scale on cores; windows bound
    the results held in memory to `window` at a time."""
    bar = _bar(len(items), desc) if progress else None
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for i in range(0, len(items), window):
            for r in pool.map(fn, items[i:i + window]):
                if bar is not None:
                    bar.update(1)
                yield r
    if bar is not None:
        bar.close()


def _bar(total: int, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:  # the edge runtime does not ship tqdm
        return None
    bar = tqdm(total=total, desc=desc, unit="img", leave=False, file=sys.stderr, dynamic_ncols=True, disable=None)
    return None if bar.disable else bar


def _visible(names: Iterable[str]) -> List[str]:
    return sorted(n for n in names if not n.startswith("."))


Found = Tuple[str, int, int]   # (path relative to the data folder, size in bytes, mtime_ns)


def _walk(folder: str, rel: str) -> List[Found]:
    """Every non-hidden file under folder, recursively (ImageFolder's os.walk; linked sub-folders are
    not followed), sorted. Strings and os.scandir, not pathlib: 70k files index in a second, not ten."""
    out: List[Found] = []
    stack = [(folder, rel)]
    while stack:
        d, r = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                if e.name.startswith("."):
                    continue
                if e.is_dir(follow_symlinks=False):
                    stack.append((e.path, f"{r}/{e.name}"))
                elif e.is_file():
                    st = e.stat()
                    out.append((f"{r}/{e.name}", st.st_size, st.st_mtime_ns))
    return sorted(out)


def _class_dirs(folder: Path) -> List[Path]:
    return [folder / n for n in _visible(os.listdir(folder)) if (folder / n).is_dir()]


def find_layout(root: Path) -> str:
    """'splits' when root/train exists, else 'classes'; a val/ or test/ without train/ is an error."""
    if (root / "train").is_dir():
        return "splits"
    stray = [s for s in ("val", "test") if (root / s).is_dir()]
    if stray:
        raise UserError(f"{root} has {stray[0]}/ but no train/; add {root}/train/<class>/ with the training "
                        f"images, or put the class folders directly in {root}")
    return "classes"


def list_files(root: Path, layout: str) -> Tuple[List[str], List[Tuple[Found, Optional[str], str]],
                                                  List[Tuple[str, str]]]:
    """-> (classes, [((rel, size, mtime), role, class)], [(rel, reason)] of files outside any class folder)."""
    skipped: List[Tuple[str, str]] = []
    found: List[Tuple[Found, Optional[str], str]] = []
    tops = [(root / s, s) for s in SPLITS if (root / s).is_dir()] if layout == "splits" else [(root, None)]
    per_role: Dict[Optional[str], List[str]] = {}
    for top, role in tops:
        for f in _visible(os.listdir(top)):
            if (top / f).is_file() and not (layout == "splits" and top == root):
                skipped.append((_rel(top / f, root), "not inside a class folder"))
        dirs = _class_dirs(top)
        per_role[role] = [d.name for d in dirs]
        for d in dirs:
            files = _walk(str(d), _rel(d, root))
            if not files:
                raise UserError(f"class folder {d} is empty; add images of class {d.name!r} or remove the folder")
            found += [(f, role, d.name) for f in files]
    classes = per_role.get("train", per_role.get(None, []))
    for role, names in per_role.items():
        extra = sorted(set(names) - set(classes))
        if extra:
            raise UserError(f"{root}/{role}/{extra[0]} has no matching {root}/train/{extra[0]}; every class "
                            f"needs training images (add them, or remove the folder)")
    if not found:
        raise UserError(f"{root} has no class folders with images; expected {root}/<class>/*.jpg (one folder per "
                        f"class) or {root}/train/<class>/*.jpg")
    if len(classes) < 2:
        raise UserError(f"{root} has one class folder ({classes[0]}); a classifier needs at least 2: "
                        f"add one folder of images per class")
    return classes, found, skipped


def _rel(p: Path, root: Path) -> str:
    return p.relative_to(root).as_posix()


def _is_grey(im) -> bool:
    if im.mode in GREY_MODES:
        return True
    if im.mode in ("P", "PA"):
        pal = im.getpalette() or []
        return all(pal[i] == pal[i + 1] == pal[i + 2] for i in range(0, len(pal) - 2, 3))
    return False


def probe(path: Path) -> Tuple[Optional[list], Optional[str]]:
    """-> ([mode, w, h, grey], None) from the header, or (None, reason) when it is not a usable image."""
    try:
        with opened(path) as im:
            return [im.mode, im.size[0], im.size[1], _is_grey(im)], None
    except UserError as e:
        return None, reason_of(e, path)
    except Exception as e:  # noqa: BLE001 - any failure on one file is a skipped file, not a crash
        return None, f"unreadable ({type(e).__name__}: {str(e)[:100]})"


def reason_of(e: Exception, path: Path) -> str:
    """An ImageError's message without its leading '<path>: '."""
    msg = str(e)
    prefix = f"{path}: "
    return msg[len(prefix):] if msg.startswith(prefix) else msg


def index_folder(root: Path, headers_file: Optional[Path], workers: int, progress: bool) -> FolderIndex:
    """Scan `root` (layout, classes, files), read every header (remembered in headers_file)."""
    layout = find_layout(root)
    classes, found, skipped = list_files(root, layout)
    label = {c: i for i, c in enumerate(classes)}
    known = _read_headers(headers_file)
    entries, todo = [], []
    for (rel, size, mtime), role, cls in found:
        suffix = os.path.splitext(rel)[1]
        if suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append((rel, f"not an image file name ({suffix or 'no suffix'})"))
            continue
        e = FileEntry(rel, label[cls], size, mtime, role)
        entries.append(e)
        if known.get(rel, [None])[:2] != [e.size, e.mtime_ns]:
            todo.append(e)
    for e, res in zip(todo, pmap(lambda e: probe(root / e.rel), todo, workers, "indexing", progress)):
        known[e.rel] = [e.size, e.mtime_ns, *(res[0] or [None] * 4), res[1]]
    files, grey, sizes = [], 0, set()
    for e in entries:
        size, mtime, mode, w, h, is_grey, reason = known[e.rel]
        if reason:
            skipped.append((e.rel, reason))
            continue
        files.append(e)
        grey += bool(is_grey)
        sizes.add((w, h))
    if headers_file is not None and todo:
        _write_headers(headers_file, {e.rel: known[e.rel] for e in entries})
    have = {f.label for f in files}
    for i, cls in enumerate(classes):
        if i not in have:
            raise UserError(f"class {cls!r} in {root} has no readable images (all skipped: "
                            f"{first_reason(skipped, cls)}); add images or remove the folder")
    return FolderIndex(root, layout, classes, sorted(files, key=lambda f: f.rel), sorted(skipped), grey,
                       next(iter(sizes)) if len(sizes) == 1 else None)


def first_reason(skipped: List[Tuple[str, str]], cls: str) -> str:
    """The reason the first skipped file of class `cls` was skipped (for one-line errors)."""
    mine = [r for rel, r in skipped if f"/{cls}/" in f"/{rel}"]
    return mine[0] if mine else "none found"


HEADERS_FORMAT = 2   # headers.json: {"format": 2, "headers": {rel: [size, mtime_ns, mode, w, h, grey, reason]}}


def _read_headers(path: Optional[Path]) -> Dict[str, list]:
    """The remembered headers; a damaged file, or one from an older sedeploy (another layout), is
    ignored: the headers are read again, a slower run and never an error."""
    try:
        data = json.loads(path.read_text()) if path is not None and path.is_file() else {}
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != HEADERS_FORMAT or not isinstance(data.get("headers"), dict):
        return {}
    return {k: v for k, v in data["headers"].items() if isinstance(v, list) and len(v) == 7}


def _write_headers(path: Path, headers: Dict[str, list]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"format": HEADERS_FORMAT, "headers": headers}))
    except OSError:
        pass  # read-only cache: headers are read again next time
