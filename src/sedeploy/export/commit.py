"""All-or-nothing replacement of output sets: an export's files, a Triton repository entry. No torch.

An export writes several files beside the checkpoint (model.onnx, model.ts, model.int8.onnx, ...,
export.json) that only make sense together: infer pairs model.onnx with the model.int8.onnx beside
it, bench reads export.json beside the model. Everything is built in a staging folder in the same
directory, then `commit_files` moves it in, in an order a reader can rely on:

    1. the old manifest (export.json) and old files the new set lacks go aside into a backup folder
    2. every old file the new set replaces is kept there too (a hard link: it stays in place)
    3. each new file is renamed over its old one (each rename atomic)
    4. the new manifest is renamed in last: from that instant it names the complete new set, each
       file with its sha256, and no manifest ever names a mix of old and new files

Any exception on the way (Ctrl-C included) puts every old file back and removes the new ones, then
re-raises; Ctrl-C arriving during the few renames is held until they are done, so the rollback
itself cannot be cut short. A process killed mid-commit (SIGKILL, power loss) leaves its backup
folder with a journal; `recover` (run by the next export into that folder) finishes or undoes it.

`swap_dir` does the same for one folder (the Triton entry): new staged complete, old renamed aside,
new renamed in, old removed; a failure at any step puts the old one back.
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

STAGE_PREFIX = ".export-stage-"   # + pid: new files being built
BACKUP_PREFIX = ".export-old-"    # + pid: old files kept until the commit is complete
JOURNAL = "journal.json"          # in the backup folder: what the commit installs


def _move(src: Path, dst: Path) -> None:
    """Every rename of a commit goes through here (one place for tests to inject a failure)."""
    os.replace(src, dst)


def _link(src: Path, dst: Path) -> None:
    os.link(src, dst)


def stage_dir(folder: Path) -> Path:
    """A private staging folder inside `folder` (same filesystem, so the final moves are renames)."""
    return Path(tempfile.mkdtemp(prefix=f"{STAGE_PREFIX}{os.getpid()}-", dir=str(folder)))


@contextlib.contextmanager
def held_interrupts() -> Iterator[None]:
    """Hold SIGINT for the duration; re-raise it as KeyboardInterrupt afterwards (main thread only:
    elsewhere Python cannot change handlers, and Ctrl-C is delivered to the main thread anyway)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: List[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)  # None: set from C
    if got:
        raise KeyboardInterrupt


def commit_files(folder: Path, staged: Dict[str, Path], manifest: str, stale: Iterable[str] = ()) -> None:
    """Move staged files (final name -> staged path, `manifest` among them) into `folder` together.

    `stale`: names of the old set that the new one does not replace (removed with the old set)."""
    folder = Path(folder)
    names = [n for n in staged if n != manifest]
    aside = [n for n in dict.fromkeys([manifest, *stale]) if n not in names and (folder / n).exists()]
    backup = Path(tempfile.mkdtemp(prefix=f"{BACKUP_PREFIX}{os.getpid()}-", dir=str(folder)))
    installed: List[str] = []
    with held_interrupts():
        try:
            for n in aside:                                    # 1. old manifest and stale files aside
                _move(folder / n, backup / n)
            for n in names:                                    # 2. every old file kept in the backup
                if (folder / n).exists():
                    _keep(folder / n, backup / n)
            _journal(backup, names, manifest)                  #    (from here new files may appear)
            for n in names:                                    # 3. each new file over its old one
                installed.append(n)
                _move(staged[n], folder / n)
            _move(staged[manifest], folder / manifest)   # 4. the manifest last: the commit point
        except BaseException:
            _undo(folder, backup, installed)
            raise
    shutil.rmtree(backup, ignore_errors=True)


def _journal(backup: Path, names: List[str], manifest: str) -> None:
    """The names about to be installed, synced before the first one is: after a hard crash, `recover`
    removes those with no old copy in the backup (without a journal, none was installed yet)."""
    with open(backup / JOURNAL, "w") as f:
        json.dump({"installs": names, "manifest": manifest}, f)
        f.flush()
        os.fsync(f.fileno())


def _keep(path: Path, backup: Path) -> None:
    """Keep the old file under `backup`: a hard link, so `path` never disappears; a move where the
    filesystem has no hard links."""
    try:
        _link(path, backup)
    except OSError:
        _move(path, backup)


def _undo(folder: Path, backup: Path, installed: Iterable[str]) -> None:
    """Remove new files that replaced nothing, then put every old file back; the backup goes."""
    for n in installed:
        if not (backup / n).exists():
            (folder / n).unlink(missing_ok=True)
    for p in backup.iterdir():
        if p.name != JOURNAL:
            _move(p, folder / p.name)
    shutil.rmtree(backup, ignore_errors=True)


def _dead(entry: Path, prefix: str) -> bool:
    """The folder's owner (the pid in its name) is gone. Only on POSIX, where kill(pid, 0) only asks."""
    if os.name != "posix":
        return False
    try:
        os.kill(int(entry.name[len(prefix):].split("-")[0]), 0)
    except ProcessLookupError:
        return True
    except (ValueError, PermissionError, OSError):
        return False
    return False


def recover(folder: Path, log: Callable[[str], None] = print) -> None:
    """Finish or undo what a killed export left in `folder`: with its new manifest in place the commit
    was complete (the backup goes); without it the old set is put back. Stale staging folders go."""
    folder = Path(folder)
    for entry in sorted(folder.glob(BACKUP_PREFIX + "*")):
        if not entry.is_dir() or not _dead(entry, BACKUP_PREFIX):
            continue
        try:
            journal = json.loads((entry / JOURNAL).read_text())
            installs, done = journal["installs"], (folder / journal["manifest"]).exists()
        except (OSError, ValueError, KeyError, TypeError):
            installs, done = [], False                         # killed before installing anything
        if not done:                                           # killed before the commit point: undo
            _undo(folder, entry, installs)
            log(f"note: an export into {folder} was killed while replacing its files; the previous set is restored")
        else:                                                  # complete (or nothing moved yet)
            shutil.rmtree(entry, ignore_errors=True)
    for entry in folder.glob(STAGE_PREFIX + "*"):
        if entry.is_dir() and _dead(entry, STAGE_PREFIX):
            shutil.rmtree(entry, ignore_errors=True)


def swap_dir(new: Path, dest: Path) -> None:
    """Put the complete folder `new` at `dest`, replacing the old one; on any failure the old one stays.

    The old folder is renamed aside (into a hidden folder beside dest), the new one renamed in, then
    the old one removed; between the two renames `dest` is briefly absent, never half-written."""
    aside: Optional[Path] = None
    with held_interrupts():
        try:
            if dest.exists():
                aside = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=str(dest.parent)))
                _move(dest, aside / dest.name)
            _move(new, dest)
        except BaseException:
            if aside is not None:
                if (aside / dest.name).exists():               # the new one did not get in: old back
                    _move(aside / dest.name, dest)
                shutil.rmtree(aside, ignore_errors=True)
            raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
