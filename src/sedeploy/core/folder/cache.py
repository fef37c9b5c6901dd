"""Decode once: a folder's images decoded and resized once, in parallel, into a memory-mapped uint8 array.

One entry per folder and input shape, <cache root>/<folder name>-<sha of its path>/<C>x<H>x<W>/:
    images.u8    raw uint8 rows (N, C, H, W): the train rows, then val, then test
    labels.npy   (N,) int64
    index.json   key, shape, rows [(path, size, mtime_ns)], bounds per split, dropped files, train mean/std
The key hashes the ordered file list (paths, sizes, modification times, labels) and the shape, so a
changed folder (a file added, replaced or touched, a different split) gives a new key and the entry
is rebuilt, re-using every row whose (path, size, mtime) is unchanged: only new or changed files are
decoded again. Each split is a contiguous slice of the memory map, so training gathers its batches
from the map (the OS pages rows in as needed): a dataset larger than RAM still trains. A lock file
serializes builders (data-parallel ranks, two runs at once); an entry is built in a temporary
folder and renamed into place, so a crash never leaves a half-written entry. The disk space of
images.u8 is reserved before it is mapped (`reserve`): a full disk falls back to decoding into
memory with a log line, instead of a SIGBUS on the first page with no block behind it. An entry or
header file of another format (an older sedeploy) is rebuilt, never an error.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from ..commit import swap_dir
from ..io import atomic_write_text
from ..decode import ImageError, load_chw
from .index import SPLITS, FileEntry, pmap, reason_of

CACHE_FORMAT = 1
Shape = Tuple[int, int, int]


def default_cache_root() -> Path:
    """$SEDEPLOY_CACHE, else $XDG_CACHE_HOME/sedeploy, else ~/.cache/sedeploy.

    Not inside the data folder: data folders are often read-only or shared, and a cache there
    would be scanned as data by other ImageFolder tools."""
    if os.environ.get("SEDEPLOY_CACHE"):
        return Path(os.environ["SEDEPLOY_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sedeploy"


def folder_cache_dir(cache_root: Path, data_dir: Path) -> Path:
    """The cache folder of one data folder (its entries and remembered headers)."""
    path = str(Path(data_dir).resolve())
    name = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in Path(path).name)[:40] or "root"
    return Path(cache_root) / f"{name}-{hashlib.sha256(path.encode()).hexdigest()[:12]}"


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass
class Decoded:
    images: np.ndarray                      # (N, C, H, W) uint8, memory-mapped when cached
    labels: np.ndarray                      # (N,) int64
    bounds: Dict[str, Tuple[int, int]]      # split -> [start, end) rows
    dropped: List[Tuple[str, str]] = field(default_factory=list)  # (path, reason): failed to decode
    mean: Optional[List[float]] = None      # per channel, on the train rows, in [0, 1]
    std: Optional[List[float]] = None
    decoded: int = 0                        # images decoded by this call
    reused: int = 0                         # rows copied from the previous cache entry
    seconds: float = 0.0
    hit: bool = False                       # the entry was there: nothing decoded or copied
    path: Optional[Path] = None             # the entry folder, None when held in memory only

    def split(self, name: str) -> Tuple[np.ndarray, np.ndarray]:
        """(images, labels) of one split: slices (no copy) of the memory map."""
        a, b = self.bounds[name]
        return self.images[a:b], self.labels[a:b]


def cache_key(splits: Dict[str, List[FileEntry]], shape: Shape) -> str:
    h = hashlib.sha256(json.dumps([CACHE_FORMAT, list(shape)]).encode())
    for s in SPLITS:
        for f in splits.get(s, []):
            h.update(f"{s}\0{f.rel}\0{f.size}\0{f.mtime_ns}\0{f.label}\n".encode())
    return h.hexdigest()


def decode_splits(data_dir: Path, splits: Dict[str, List[FileEntry]], shape: Shape, folder_cache: Optional[Path],
                  persist: bool = True, workers: int = 0, progress: bool = True,
                  log: Callable[[str], None] = print) -> Decoded:
    """The uint8 rows of `splits` at `shape`, from the cache entry when its key matches, else decoded.

    persist=True writes the entry (memory-mapped result); False keeps the result in memory (still
    re-using rows of an existing entry), for evaluation reads that must not replace the training entry.
    An unwritable cache folder falls back to memory with a log line."""
    entry = Path(folder_cache) / "x".join(map(str, shape)) if folder_cache is not None else None
    key = cache_key(splits, shape)
    workers = workers or cpu_count()
    if entry is not None and persist:
        hit = _open(entry, key)
        if hit is not None:
            return hit
        try:
            with _lock(Path(folder_cache)):
                return _open(entry, key) or _build(data_dir, splits, shape, entry, key, True, workers, progress)
        except OSError as e:
            full = e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG)
            room = " and room for it" if full else ""
            log(f"warning: cannot write the image cache in {folder_cache} ({e.strerror or e}); decoding into "
                f"memory instead (pass --cache-dir with a writable folder{room} to keep the decoded images)")
    return _build(data_dir, splits, shape, entry, key, False, workers, progress)


@contextlib.contextmanager
def _lock(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "lock", "a+") as f:
        try:
            import fcntl
            fcntl.flock(f, fcntl.LOCK_EX)  # released when f closes
        except ImportError:  # pragma: no cover - Windows: no lock
            pass
        yield


INDEX_KEYS = ("key", "shape", "n", "rows", "bounds", "dropped", "mean", "std")


def _read_index(entry: Optional[Path]) -> Optional[dict]:
    """The entry's index.json, or None when absent, damaged or of another CACHE_FORMAT (an older
    sedeploy): the entry is then rebuilt, never an error."""
    try:
        idx = json.loads((entry / "index.json").read_text()) if entry is not None else None
    except (OSError, ValueError):
        return None
    ok = isinstance(idx, dict) and idx.get("format") == CACHE_FORMAT and all(k in idx for k in INDEX_KEYS)
    return idx if ok else None


def _map(entry: Path, idx: dict) -> Optional[np.ndarray]:
    """The entry's images as a copy-on-write memory map (torch can wrap it without a copy), or None."""
    n, shape = idx["n"], tuple(idx["shape"])
    path = entry / "images.u8"
    if n == 0 or not path.is_file() or path.stat().st_size != n * int(np.prod(shape)):
        return None
    return np.memmap(path, dtype=np.uint8, mode="c", shape=(n, *shape))


def _open(entry: Path, key: str) -> Optional[Decoded]:
    idx = _read_index(entry)
    if idx is None or idx.get("key") != key:
        return None
    images = _map(entry, idx)
    if images is None:
        return None
    labels = np.load(entry / "labels.npy")
    return Decoded(images, labels, {k: tuple(v) for k, v in idx["bounds"].items()},
                   [tuple(d) for d in idx["dropped"]], idx["mean"], idx["std"], hit=True, path=entry)


def _previous(entry: Optional[Path]):
    """Rows of the existing entry, by (path, size, mtime): (images or None, {stamp: row}, {stamp: reason})."""
    idx = _read_index(entry)
    images = _map(entry, idx) if idx is not None else None
    if images is None:
        return None, {}, {}
    rows = {tuple(r): i for i, r in enumerate(idx["rows"])}
    dropped = {tuple(d[:3]): d[3] for d in idx.get("dropped_stamps", [])}
    return images, rows, dropped


def _decode_one(data_dir: Path, shape: Shape):
    c, h, w = shape

    def run(f: FileEntry):
        path = data_dir / f.rel
        try:
            return load_chw(path, c, (h, w)), None           # (C, H, W) uint8
        except ImageError as e:
            return None, reason_of(e, path)
        except Exception as e:  # noqa: BLE001 - one bad file is a listed file, not a crashed run
            return None, f"cannot decode ({type(e).__name__}: {str(e)[:100]})"
    return run


def _build(data_dir: Path, splits: Dict[str, List[FileEntry]], shape: Shape, entry: Optional[Path], key: str,
           persist: bool, workers: int, progress: bool) -> Decoded:
    t0 = time.perf_counter()
    order = [s for s in SPLITS if s in splits]
    n = sum(len(splits[s]) for s in order)
    old_images, old_rows, old_dropped = _previous(entry)
    todo = [f for s in order for f in splits[s] if f.stamp not in old_rows and f.stamp not in old_dropped]
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=str(entry.parent))) if persist else None
    try:
        if persist:   # the disk space first (an early ENOSPC), then rows written as plain writes
            reserve(tmp / "images.u8", max(n, 1) * int(np.prod(shape)))
            out = _RowWriter(tmp / "images.u8", int(np.prod(shape)))
        else:
            out = np.empty((n, *shape), dtype=np.uint8)
        results = iter(pmap(_decode_one(data_dir, shape), todo, workers, "decoding", progress))
        pos, labels, rows, bounds, dropped, stamps = 0, [], [], {}, [], []
        for s in order:
            start = pos
            for f in splits[s]:
                if f.stamp in old_rows:
                    out[pos] = old_images[old_rows[f.stamp]]
                elif f.stamp in old_dropped:
                    dropped.append((f.rel, old_dropped[f.stamp]))
                    stamps.append([*f.stamp, old_dropped[f.stamp]])
                    continue
                else:
                    arr, reason = next(results)
                    if arr is None:
                        dropped.append((f.rel, reason))
                        stamps.append([*f.stamp, reason])
                        continue
                    out[pos] = arr
                labels.append(f.label)
                rows.append(list(f.stamp))
                pos += 1
            bounds[s] = (start, pos)
        labels_a = np.asarray(labels, dtype=np.int64)
        if persist:
            out.close()
            out = np.memmap(tmp / "images.u8", dtype=np.uint8, mode="r", shape=(max(n, 1), *shape))
        mean, std = channel_stats(out[slice(*bounds["train"])]) if bounds.get("train", (0, 0))[1] else (None, None)
        stats = dict(decoded=len(todo), reused=n - len(todo), seconds=time.perf_counter() - t0)
        if not persist:
            return Decoded(out[:pos], labels_a, bounds, dropped, mean, std, **stats)
        del out
        os.truncate(tmp / "images.u8", pos * int(np.prod(shape)))
        np.save(tmp / "labels.npy", labels_a)
        atomic_write_text(tmp / "index.json", json.dumps(
            {"format": CACHE_FORMAT, "key": key, "shape": list(shape), "n": pos, "rows": rows,
             "bounds": bounds, "dropped": dropped, "dropped_stamps": stamps, "mean": mean, "std": std,
             "data_dir": str(Path(data_dir).resolve())}))
        swap_dir(tmp, entry)              # a reader that mapped the old files keeps them until it closes
        tmp = None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    dec = _open(entry, key)
    if dec is None:  # every file failed: nothing to map
        return Decoded(np.empty((0, *shape), np.uint8), np.empty(0, np.int64), bounds, dropped, **stats)
    dec.hit, dec.decoded, dec.reused, dec.seconds = False, stats["decoded"], stats["reused"], stats["seconds"]
    return dec


class _RowWriter:
    """Rows of the image file written with plain (unbuffered) writes, not through a memory map: a full
    disk or quota is then an OSError on every filesystem, where a store into a mapped page is SIGBUS on
    those whose fallocate reserves no blocks (ZFS, compressed btrfs, NFS). `out[i] = row` as for an array."""

    def __init__(self, path: Path, row_bytes: int) -> None:
        self.f = open(path, "r+b", buffering=0)
        self.row_bytes = row_bytes

    def __setitem__(self, i: int, row: np.ndarray) -> None:
        data = memoryview(np.ascontiguousarray(row, dtype=np.uint8)).cast("B")
        assert len(data) == self.row_bytes, (len(data), self.row_bytes)
        self.f.seek(i * self.row_bytes)
        while data:                         # an unbuffered write may be short
            data = data[self.f.write(data):]

    def close(self) -> None:
        os.fsync(self.f.fileno())
        self.f.close()


def reserve(path: Path, nbytes: int) -> None:
    """Create `path` with `nbytes` of disk blocks allocated, so that writing through a memory map of it
    cannot run out of space (a full disk raises OSError ENOSPC here, not SIGBUS later): posix_fallocate
    where the OS and filesystem have it, else zeros written."""
    with open(path, "wb") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, nbytes)
            return
        except AttributeError:                  # not on this OS (macOS, Windows)
            pass
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise                           # ENOSPC, EFBIG, EIO: the caller falls back
        block = bytes(1 << 20)
        for done in range(0, nbytes, len(block)):
            f.write(block[:min(len(block), nbytes - done)])
        f.flush()
        os.fsync(f.fileno())


def channel_stats(images: np.ndarray) -> Tuple[List[float], List[float]]:
    """Per-channel mean and std in [0, 1] of uint8 (N, C, H, W), streamed in ~16 MB chunks."""
    n, c = images.shape[:2]
    per_row = int(np.prod(images.shape[1:]))
    step = max(1, (1 << 22) // per_row)
    s1, s2, count = np.zeros(c), np.zeros(c), 0
    for i in range(0, n, step):
        a = np.asarray(images[i:i + step], dtype=np.float32) / 255.0   # (b, C, H, W)
        s1 += a.sum(axis=(0, 2, 3), dtype=np.float64)
        s2 += np.square(a).sum(axis=(0, 2, 3), dtype=np.float64)
        count += a.shape[0] * a.shape[2] * a.shape[3]
    mean = s1 / max(count, 1)
    std = np.sqrt(np.maximum(s2 / max(count, 1) - mean ** 2, 0.0))
    # a constant channel would divide by zero; 1/255 keeps it finite and changes nothing else
    return [float(m) for m in mean], [float(max(s, 1 / 255)) for s in std]
