"""All-or-nothing replacement of output sets: an export's files, a Triton repository entry, a folder
cache entry. No torch.

An export writes several files beside the checkpoint (model.onnx, model.ts, model.int8.onnx, ...,
export.json) that only make sense together: infer pairs model.onnx with the model.int8.onnx beside
it, bench reads export.json beside the model. Everything is built in a staging folder in the same
directory, then `commit_files` moves it in, in an order a reader can rely on:

    1. the old manifest (export.json) and old files the new set lacks go aside into a backup folder
    2. every old file the new set replaces is kept there too (a hard link: it stays in place)
    3. each new file is renamed over its old one (each rename atomic)
    4. the new manifest is renamed in last: from that instant it names the complete new set, each
       file with its sha256, and no manifest ever names a mix of old and new files

An entry of the set may be a folder (a Core ML model.mlpackage): it is staged and synced file by
file, renamed in as one entry (so it is never half there), moved aside rather than hard-linked in
step 2 (a folder has no hard link: it is absent between steps 2 and 3), and removed as a whole.

Any exception before the commit point (Ctrl-C included) puts every old file back, the manifest last,
and removes the new ones, then re-raises. SIGINT and SIGTERM arriving during the renames are held
until the commit (or its rollback) is complete and the backup removed, then delivered: a Ctrl-C there
lets the new set finish going in. One commit at a time enters a folder (an exclusive flock on the
folder itself, POSIX). A process killed mid-commit (SIGKILL) leaves its backup folder with a journal
(synced, like every staged file, before the first rename); `recover`, run by the next export into
that folder, finishes the commit when the manifest in place is the journal's, else undoes it. Whether
the owner of a staging or backup folder is alive is asked of the folder's own flock, not of a pid,
so it holds across containers sharing a volume. Without flock (Windows) nothing is recovered.

`swap_dir` does the same for one folder (the Triton entry, a cache entry): new staged complete, old
renamed aside, new renamed in, old removed; a failure at any step puts the old one back, and
`recover_dir` puts it back after a kill between the two renames.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional

from .io import file_sha256

try:
    import fcntl
except ImportError:  # Windows: no flock; commits are not serialized and nothing is recovered
    fcntl = None  # type: ignore[assignment]

STAGE_PREFIX = ".export-stage-"   # + pid: new files being built
BACKUP_PREFIX = ".export-old-"    # + pid: old files kept until the commit is complete
JOURNAL = "journal.json"          # in the backup folder: what the commit installs
HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_owned: Dict[str, int] = {}       # folder -> fd whose flock says this process is using the folder


def _move(src: Path, dst: Path) -> None:
    """Every rename of a commit goes through here (one place for tests to inject a failure)."""
    os.replace(src, dst)


def _link(src: Path, dst: Path) -> None:
    os.link(src, dst)


# ---------------------------------------------------------------- locks on folders (no lock files)
def _flock(path: Path, blocking: bool) -> Optional[int]:
    """An fd holding an exclusive flock on the folder itself; None without flock. Raises
    BlockingIOError when not blocking and another process holds it."""
    if fcntl is None:
        return None
    fd = os.open(str(path), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _unlock(fd: Optional[int]) -> None:
    if fd is not None:
        os.close(fd)                      # closing the last fd releases the flock


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """One commit at a time into `folder` (waits for another process's commit to finish)."""
    fd = _flock(folder, blocking=True)
    try:
        yield
    finally:
        _unlock(fd)


def owned_dir(parent: Path, prefix: str) -> Path:
    """A new private folder in `parent` whose flock this process holds until `release_dir`: how
    `recover` tells a live owner's folder from a dead one's."""
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=str(parent)))
    fd = _flock(path, blocking=True)
    if fd is not None:
        _owned[str(path)] = fd
    return path


def release_dir(path: Path) -> None:
    """Remove a folder made by owned_dir and drop its lock."""
    shutil.rmtree(path, ignore_errors=True)
    _unlock(_owned.pop(str(path), None))


def _dead(entry: Path) -> bool:
    """Nobody holds the folder's flock: its owner is gone (False without flock: never guess)."""
    if fcntl is None or str(entry) in _owned:
        return False
    try:
        fd = _flock(entry, blocking=False)
    except (BlockingIOError, PermissionError):
        return False
    except OSError:                       # vanished meanwhile
        return False
    _unlock(fd)
    return True


@contextlib.contextmanager
def held_interrupts() -> Iterator[None]:
    """Hold SIGINT and SIGTERM for the duration, then deliver them (Ctrl-C becomes KeyboardInterrupt
    as usual). Main thread only: elsewhere Python cannot change handlers, and both signals are
    delivered to the main thread anyway."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: List[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: got.append(signum)) for s in HELD_SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)  # None: set from C
    for s in dict.fromkeys(got):
        signal.raise_signal(s)


# ---------------------------------------------------------------- a set of files
def stage_dir(folder: Path) -> Path:
    """A private staging folder inside `folder` (same filesystem, so the final moves are renames)."""
    return owned_dir(folder, STAGE_PREFIX)


def _fsync(path: Path) -> None:
    """Sync a file, or a staged folder with every file and folder under it, the folder last."""
    if path.is_dir() and not path.is_symlink():
        for p in path.iterdir():
            _fsync(p)
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:                       # a folder on a filesystem that cannot sync one
        pass
    finally:
        os.close(fd)


def commit_files(folder: Path, staged: Dict[str, Path], manifest: str, stale: Iterable[str] = ()) -> None:
    """Move staged files (final name -> staged path, `manifest` among them) into `folder` together.

    `stale`: names of the old set that the new one does not replace (removed with the old set)."""
    folder = Path(folder)
    names = [n for n in staged if n != manifest]
    for p in staged.values():             # the new bytes are on disk before any old file goes
        _fsync(p)
    with locked(folder), held_interrupts():
        aside = [n for n in dict.fromkeys([manifest, *stale]) if n not in names and (folder / n).exists()]
        backup = owned_dir(folder, BACKUP_PREFIX)
        installed: List[str] = []
        try:
            for n in aside:                                    # 1. old manifest and stale files aside
                _move(folder / n, backup / n)
            for n in names:                                    # 2. every old file kept in the backup
                if (folder / n).exists():
                    _keep(folder / n, backup / n)
            _journal(backup, names, manifest, file_sha256(staged[manifest]))
            for n in names:                                    # 3. each new file over its old one
                installed.append(n)
                _move(staged[n], folder / n)
            _move(staged[manifest], folder / manifest)         # 4. the manifest last: the commit point
            _fsync(folder)
        except BaseException:
            _undo(folder, backup, installed, manifest)
            raise
        release_dir(backup)                                    # inside the held block: a Ctrl-C here
                                                               # cannot leave the old files hidden


def _journal(backup: Path, names: List[str], manifest: str, manifest_sha256: str) -> None:
    """What is about to be installed, synced before the first file is: after a kill, `recover` removes
    those with no old copy in the backup, and knows the commit complete only if the manifest in place
    has this sha256 (without a journal, nothing was installed yet)."""
    with open(backup / JOURNAL, "w") as f:
        json.dump({"installs": names, "manifest": manifest, "manifest_sha256": manifest_sha256}, f)
        f.flush()
        os.fsync(f.fileno())


def _keep(path: Path, backup: Path) -> None:
    """Keep the old file under `backup`: a hard link, so `path` never disappears; a move where the
    filesystem has no hard links, and for a folder (it has none)."""
    if path.is_dir() and not path.is_symlink():
        _move(path, backup)
        return
    try:
        _link(path, backup)
    except OSError:
        _move(path, backup)


def _undo(folder: Path, backup: Path, installed: Iterable[str], manifest: str) -> None:
    """Remove new files that replaced nothing, put every old file back, the manifest last (so that a
    kill in between still reads as unfinished to `recover`); the backup goes."""
    for n in installed:
        if not (backup / n).exists():
            _remove(folder / n)
    olds = sorted((p for p in backup.iterdir() if p.name != JOURNAL), key=lambda p: p.name == manifest)
    for p in olds:
        if (folder / p.name).is_dir() and not (folder / p.name).is_symlink():
            _remove(folder / p.name)              # a new folder in place: a rename cannot replace it
        _move(p, folder / p.name)
    release_dir(backup)


def _remove(path: Path) -> None:
    """Remove a file, or a folder with everything under it; nothing if absent."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def recover(folder: Path, log: Callable[[str], None] = print) -> None:
    """Finish or undo what a killed export left in `folder`: with the journal's manifest in place the
    commit was complete (the backup goes); otherwise the old set is put back. Dead staging folders go."""
    folder = Path(folder)
    with locked(folder):
        for entry in sorted(folder.glob(BACKUP_PREFIX + "*")):
            if not entry.is_dir() or not _dead(entry):
                continue
            try:
                journal = json.loads((entry / JOURNAL).read_text())
                installs, manifest = journal["installs"], journal["manifest"]
                done = (folder / manifest).is_file() and file_sha256(folder / manifest) == journal["manifest_sha256"]
            except (OSError, ValueError, KeyError, TypeError):
                installs, manifest, done = [], "", False           # killed before installing anything
            if done:
                shutil.rmtree(entry, ignore_errors=True)
            else:
                _undo(folder, entry, installs, manifest)
                log(f"note: an export into {folder} was killed while replacing its files; the previous set is restored")
        for entry in folder.glob(STAGE_PREFIX + "*"):
            if entry.is_dir() and _dead(entry):
                shutil.rmtree(entry, ignore_errors=True)


# ---------------------------------------------------------------- one folder
def swap_dir(new: Path, dest: Path) -> None:
    """Put the complete folder `new` at `dest`, replacing the old one; on any failure the old one stays.

    The old folder is renamed aside (into a hidden folder beside dest, owned by this process), the new
    one renamed in, then the old one removed; between the two renames `dest` is briefly absent, never
    half-written, and `recover_dir` puts the old one back if the process was killed right there."""
    with locked(dest.parent), held_interrupts():
        aside: Optional[Path] = None
        try:
            if dest.exists():
                aside = owned_dir(dest.parent, f".{dest.name}.old-")
                _move(dest, aside / dest.name)
            _move(new, dest)
        except BaseException:
            if aside is not None and (aside / dest.name).exists():   # the new one did not get in: old back
                _move(aside / dest.name, dest)
            if aside is not None:
                release_dir(aside)
            raise
        if aside is not None:
            release_dir(aside)


def recover_dir(dest: Path, prefixes: Iterable[str] = ()) -> None:
    """After a kill: put back an old `dest` left aside by swap_dir when no new one got in, and remove
    dead owners' leftovers (the aside folders, and staging folders named by `prefixes`)."""
    with locked(dest.parent):
        for entry in sorted(dest.parent.glob(f".{dest.name}.old-*")):
            if entry.is_dir() and _dead(entry):
                if not dest.exists() and (entry / dest.name).exists():
                    _move(entry / dest.name, dest)
                shutil.rmtree(entry, ignore_errors=True)
        for prefix in prefixes:
            for entry in dest.parent.glob(prefix + "*"):
                if entry.is_dir() and _dead(entry):
                    shutil.rmtree(entry, ignore_errors=True)
