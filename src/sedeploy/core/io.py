"""File writing and hashing shared by every side: atomic, umask-respecting writes, writable-folder
checks, sha256 and size of files and of folder artifacts (a Core ML .mlpackage). No torch.

Outputs are written atomically (temporary file in the same directory, fsync, rename), so a crash
never leaves a half-written file or a damaged previous version.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple, Union

from .errors import UserError

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_path(dest: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success it is renamed onto `dest`.

    On any exception the temporary file is removed and `dest` is untouched.
    """
    dest = Path(dest)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=str(dest.parent))
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp creates 0600; a shared output must get what open() would give it: 0666 & ~umask
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def current_umask() -> int:
    """The process umask: from /proc/self/status on Linux (no side effect); elsewhere by setting and
    restoring it (os has no getter), which is brief but not thread-safe."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(dest: PathLike, writer: Callable[[Path], None]) -> Path:
    """Call writer(tmp_path) and move the result onto dest atomically."""
    with atomic_path(dest) as tmp:
        writer(tmp)
    return Path(dest)


def atomic_write_text(dest: PathLike, text: str) -> Path:
    return atomic_write(dest, lambda p: p.write_text(text))


def ensure_writable_dir(path: PathLike, what: str = "output directory", option: Optional[str] = None) -> Path:
    """Create `path` if needed and check that files can be written there.

    `option` is the option of the calling command that chose the folder, named in the error's fix
    (None: the fix names no option: a library caller may have none)."""
    path = Path(path)
    fix = f"choose another with {option}" if option else "choose another folder"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {what} {path}: {e.strerror}; {fix}") from None
    if not path.is_dir():
        raise UserError(f"{what} {path} is not a directory; {fix}")
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path} is not writable; {fix}")
    return path


def file_sha256(path: PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (checkpoints, exports, the precision cache key)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def path_sha256(path: PathLike) -> str:
    """Hex sha256 of an artifact: a file's own (file_sha256); for a folder (model.mlpackage), the sha256
    of one line per file under it, in sorted order of the relative POSIX path: `<path>\\0<file sha256>\\n`.
    Names and contents count, file times and empty folders do not, so a copy hashes the same."""
    path = Path(path)
    if not path.is_dir():
        return file_sha256(path)
    h = hashlib.sha256()
    for rel, f in _tree_files(path):
        h.update(f"{rel}\0{file_sha256(f)}\n".encode())
    return h.hexdigest()


def path_bytes(path: PathLike) -> int:
    """Size of an artifact: a file's, or the sum of the files under a folder."""
    path = Path(path)
    return sum(f.stat().st_size for _, f in _tree_files(path)) if path.is_dir() else path.stat().st_size


def _tree_files(folder: Path) -> List[Tuple[str, Path]]:
    """(relative POSIX path, path) of every file under `folder`, sorted by the relative path."""
    return sorted((f.relative_to(folder).as_posix(), f) for f in folder.rglob("*") if f.is_file())


def share_tree(folder: PathLike) -> None:
    """Give a folder written by a library, and everything under it, the modes open() and mkdir() would
    (0666 / 0777 & ~umask): coremltools writes parts of a package 0600 / 0700 (temporary files moved in)."""
    mask = current_umask()
    for p in [Path(folder), *Path(folder).rglob("*")]:
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)
