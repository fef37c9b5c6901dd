"""Writes that are all-or-nothing, and bad input that exits 2.

Failures are injected between two writes (every rename of a commit, in turn; an exception, Ctrl-C,
and a hard kill of the process) and the tests check that the old set is intact, byte for byte, with
no staging left; a successful --force replaces the whole set. Then: the folder cache on a full disk,
damaged checkpoints, old cache files, ONNX checker errors, and the options error messages name.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch

from conftest import assert_one_line_error
from sedeploy.core import commit
from sedeploy.core.errors import UserError
from test_export import write_ckpt

OLD = {"model.onnx": b"old onnx", "model.ts": b"old ts", "model.fp16.onnx": b"old fp16", "export.json": b"old manifest"}
NEW = {"model.onnx": b"new onnx", "model.ts": b"new ts", "model.int8.onnx": b"new int8", "export.json": b"new manifest"}


def snapshot(folder: Path) -> Dict[str, bytes]:
    """Every entry of the folder, hidden ones included (a staging or backup folder shows as b'<dir>')."""
    return {p.name: (p.read_bytes() if p.is_file() else b"<dir>") for p in folder.iterdir()}


def prepare(folder: Path) -> Dict[str, Path]:
    """The old set in `folder`, the new one staged beside it; -> staged name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    for n, b in OLD.items():
        (folder / n).write_bytes(b)
    stage = commit.stage_dir(folder)
    for n, b in NEW.items():
        (stage / n).write_bytes(b)
    return {n: stage / n for n in NEW}


def old_state(folder: Path) -> Dict[str, bytes]:
    return {**OLD, **{p.name: b"<dir>" for p in folder.glob(commit.STAGE_PREFIX + "*")}}


def fail_at(monkeypatch, k: int, exc: BaseException):
    """Make the k-th rename or link of a commit raise `exc` (the others go through); -> call counter."""
    calls = []
    real_move, real_link = commit._move, commit._link

    def wrap(real):
        def f(src, dst):
            calls.append((real.__name__, Path(src).name, Path(dst).name))
            if len(calls) - 1 == k:
                raise exc
            real(src, dst)
        return f
    monkeypatch.setattr(commit, "_move", wrap(real_move))
    monkeypatch.setattr(commit, "_link", wrap(real_link))
    return calls


def commit_steps(tmp_path, monkeypatch) -> list:
    """The renames/links a successful commit of NEW over OLD makes: [(function, src name, dst name)]."""
    calls = fail_at(monkeypatch, -1, RuntimeError())
    d = tmp_path / "count"
    commit.commit_files(d, prepare(d), "export.json", stale=list(OLD))
    monkeypatch.undo()
    return calls


# ---------------------------------------------------------------- the commit of a file set
@pytest.mark.parametrize("exc", [OSError(errno.EIO, "injected"), KeyboardInterrupt()], ids=["oserror", "ctrl-c"])
def test_a_failure_at_every_step_leaves_the_old_set(tmp_path, monkeypatch, exc):
    steps = commit_steps(tmp_path, monkeypatch)
    # old manifest and stale fp16 aside, 2 old files kept (links), 3 new ones in, the manifest last
    assert [f for f, *_ in steps] == ["_move"] * 2 + ["_link"] * 2 + ["_move"] * 4
    assert steps[-1][1:] == ("export.json", "export.json")
    for k, (how, _, name) in enumerate(steps):
        d = tmp_path / f"k{k}"
        staged = prepare(d)
        fail_at(monkeypatch, k, exc)
        if how == "_link" and isinstance(exc, OSError):    # no hard link: the old file is moved aside instead
            commit.commit_files(d, staged, "export.json", stale=list(OLD))
            monkeypatch.undo()
            assert {n: b for n, b in snapshot(d).items() if b != b"<dir>"} == NEW
            continue
        with pytest.raises(type(exc)):
            commit.commit_files(d, staged, "export.json", stale=list(OLD))
        monkeypatch.undo()
        assert snapshot(d) == old_state(d), f"failure at step {k} ({how} {name})"
        assert not list(d.glob(commit.BACKUP_PREFIX + "*"))


def test_a_successful_commit_replaces_the_whole_set(tmp_path):
    d = tmp_path / "d"
    staged = prepare(d)
    commit.commit_files(d, staged, "export.json", stale=list(OLD))
    staged["export.json"].parent.rmdir()                   # the staging folder, emptied by the commit
    assert snapshot(d) == NEW                              # the stale model.fp16.onnx is gone too


def test_without_hard_links_the_old_files_are_moved_aside(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EPERM, "no hard links here")
    monkeypatch.setattr(commit, "_link", no_links)
    d = tmp_path / "d"
    staged = prepare(d)
    real = commit._move
    monkeypatch.setattr(commit, "_move", lambda s, t: (_ for _ in ()).throw(KeyboardInterrupt())
                        if Path(s).parent.name.startswith(commit.STAGE_PREFIX) and Path(t).name == "export.json"
                        else real(s, t))
    with pytest.raises(KeyboardInterrupt):
        commit.commit_files(d, staged, "export.json", stale=list(OLD))
    assert snapshot(d) == old_state(d)


# ---------------------------------------------------------------- a folder in the set (model.mlpackage)
OLD_PKG = {"Manifest.json": b"old manifest", "Data/weights/weight.bin": b"old weights"}
NEW_PKG = {"Manifest.json": b"new manifest", "Data/weights/weight.bin": b"new weights", "Data/extra": b"new"}


def files_under(folder: Path) -> Dict[str, bytes]:
    """Every file under the folder by relative path (hidden staging/backup folders left out)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and not p.relative_to(folder).parts[0].startswith(".")}


def write_tree(folder: Path, files: Dict[str, bytes]) -> None:
    for rel, b in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b)


def prepare_pkg(folder: Path, new_pkg: bool = True) -> Dict[str, Path]:
    """The old set with a model.mlpackage folder, the new one (with or without its own) staged."""
    write_tree(folder, {"model.onnx": b"old onnx", "export.json": b"old manifest",
                        **{f"model.mlpackage/{k}": v for k, v in OLD_PKG.items()}})
    stage = commit.stage_dir(folder)
    write_tree(stage, {"model.onnx": b"new onnx", "export.json": b"new manifest",
                       **({f"model.mlpackage/{k}": v for k, v in NEW_PKG.items()} if new_pkg else {})})
    return {p.name: p for p in stage.iterdir()}


@pytest.mark.parametrize("exc", [OSError(errno.EIO, "injected"), KeyboardInterrupt()], ids=["oserror", "ctrl-c"])
def test_a_folder_artifact_is_committed_whole_or_not_at_all(tmp_path, monkeypatch, exc):
    stale = ["model.onnx", "model.mlpackage", "export.json"]
    calls = fail_at(monkeypatch, -1, RuntimeError())
    commit.commit_files(tmp_path / "count", prepare_pkg(tmp_path / "count"), "export.json", stale=stale)
    monkeypatch.undo()
    assert ("_move", "model.mlpackage", "model.mlpackage") in calls           # moved aside, never linked
    assert not any(f == "_link" and n == "model.mlpackage" for f, n, _ in calls)
    for k in range(len(calls)):
        d = tmp_path / f"k{k}"
        staged = prepare_pkg(d)
        old = files_under(d)
        fail_at(monkeypatch, k, exc)
        if calls[k][0] == "_link" and isinstance(exc, OSError):   # no hard link: moved aside, the commit goes on
            commit.commit_files(d, staged, "export.json", stale=stale)
            monkeypatch.undo()
            continue
        with pytest.raises(type(exc)):
            commit.commit_files(d, staged, "export.json", stale=stale)
        monkeypatch.undo()
        assert files_under(d) == old, f"failure at step {k} ({calls[k]})"
        assert not list(d.glob(commit.BACKUP_PREFIX + "*"))
    d = tmp_path / "ok"
    commit.commit_files(d, prepare_pkg(d), "export.json", stale=stale)
    assert files_under(d) == {"model.onnx": b"new onnx", "export.json": b"new manifest",
                       **{f"model.mlpackage/{k}": v for k, v in NEW_PKG.items()}}   # no old file left inside
    d = tmp_path / "gone"                                                       # a new set without the folder
    commit.commit_files(d, prepare_pkg(d, new_pkg=False), "export.json", stale=stale)
    assert files_under(d) == {"model.onnx": b"new onnx", "export.json": b"new manifest"}


def test_a_folder_hashes_by_its_files_names_and_contents(tmp_path):
    from sedeploy.core.io import file_sha256, path_bytes, path_sha256
    write_tree(tmp_path / "a.mlpackage", NEW_PKG)
    write_tree(tmp_path / "b.mlpackage", NEW_PKG)
    (tmp_path / "b.mlpackage" / "empty").mkdir()                                # empty folders do not count
    h = path_sha256(tmp_path / "a.mlpackage")
    assert h == path_sha256(tmp_path / "b.mlpackage") and path_bytes(tmp_path / "a.mlpackage") == 26
    (tmp_path / "b.mlpackage" / "Data" / "extra").write_bytes(b"neW")
    assert path_sha256(tmp_path / "b.mlpackage") != h                           # a content changes it
    write_tree(tmp_path / "c.mlpackage", {**{k: v for k, v in NEW_PKG.items() if k != "Data/extra"}, "Data/extrb": b"new"})
    assert path_sha256(tmp_path / "c.mlpackage") != h                           # so does a name
    assert path_sha256(tmp_path / "c.mlpackage" / "Manifest.json") == file_sha256(tmp_path / "c.mlpackage" / "Manifest.json")


CRASH = """
import os, sys
from pathlib import Path
from sedeploy.core import commit
from sedeploy.core.errors import UserError
k, folder = int(sys.argv[1]), Path(sys.argv[2])
stage = commit.stage_dir(folder)                     # staged by this process: its pid in the name
for n in ("model.onnx", "model.ts", "model.int8.onnx", "export.json"):
    (stage / n).write_bytes(b"new " + {"model.onnx": b"onnx", "model.ts": b"ts", "model.int8.onnx": b"int8",
                                       "export.json": b"manifest"}[n])
calls = [0]
def crash(real):
    def f(src, dst):
        if calls[0] == k:
            os._exit(9)                     # a kill: no exception handler, no rollback runs
        calls[0] += 1
        real(src, dst)
    return f
commit._move, commit._link = crash(commit._move), crash(commit._link)
commit.commit_files(folder, {n.name: n for n in stage.iterdir()}, "export.json", stale=sys.argv[3:])
"""


def test_a_killed_commit_is_finished_or_undone_by_the_next_export(tmp_path, monkeypatch):
    n = len(commit_steps(tmp_path, monkeypatch))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(commit.__file__).parents[2]),
                                                        os.environ.get("PYTHONPATH", "")])}
    for k in range(n + 1):
        d = tmp_path / f"k{k}"
        d.mkdir()
        for name, b in OLD.items():
            (d / name).write_bytes(b)
        r = subprocess.run([sys.executable, "-c", CRASH, str(k), str(d), *OLD], env=env, capture_output=True)
        assert r.returncode == (9 if k < n else 0), r.stderr
        logs = []
        commit.recover(d, logs.append)
        assert snapshot(d) == (OLD if k < n else NEW), f"killed at step {k}"   # the dead staging folder too
        assert bool(logs) == (k < n)


def test_the_next_export_restores_what_a_killed_one_left(run_cli, tmp_path):
    """An export killed after installing its new files, before export.json: the next `sedeploy export` puts the old set back
    first (here it then refuses to overwrite it without --force)."""
    d = tmp_path / "run"
    d.mkdir()
    write_ckpt(d / "best.pt")
    for name, b in OLD.items():
        (d / name).write_bytes(b)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(commit.__file__).parents[2]),
                                                        os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", CRASH, "7", str(d), *OLD], env=env, capture_output=True)
    assert r.returncode == 9 and (d / "model.int8.onnx").exists() and not (d / "export.json").exists()
    r = run_cli("export", "--ckpt", d / "best.pt")
    assert r.code == 2 and "previous set is restored" in r.out and "already exists" in r.err
    assert {n: b for n, b in snapshot(d).items() if n != "best.pt"} == OLD


def test_ctrl_c_during_the_commit_is_held_until_it_is_complete(tmp_path, monkeypatch):
    d = tmp_path / "d"
    staged = prepare(d)
    real = commit._move
    sent = []

    def interrupting(src, dst):
        if not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGINT)               # a real Ctrl-C, in the middle of the renames
        real(src, dst)
    monkeypatch.setattr(commit, "_move", interrupting)
    with pytest.raises(KeyboardInterrupt):
        commit.commit_files(d, staged, "export.json", stale=list(OLD))
    staged["export.json"].parent.rmdir()                   # the test's own (emptied) staging folder
    assert sent and snapshot(d) == NEW                     # complete, and no hidden backup left behind


KILL_IN_UNDO = """
import os, sys
from pathlib import Path
from sedeploy.core import commit
from sedeploy.core.errors import UserError
folder, stale = Path(sys.argv[1]), sys.argv[2:]
stage = commit.stage_dir(folder)
for n, b in (("model.onnx", b"new onnx"), ("model.ts", b"new ts"), ("model.int8.onnx", b"new int8"),
             ("export.json", b"new manifest")):
    (stage / n).write_bytes(b)
real, undoing = commit._move, []
def move(src, dst):
    if undoing:                        # the rollback's first move went through: killed right after it
        real(src, dst)
        os._exit(9)
    if Path(dst).name == "model.int8.onnx" and Path(src).parent == stage:
        undoing.append(1)              # the 3rd new file fails: the rollback starts
        raise OSError(5, "injected")
    real(src, dst)
commit._move = move
commit.commit_files(folder, {n.name: n for n in stage.iterdir()}, "export.json", stale=stale)
"""


@pytest.mark.parametrize("first_back", ["export.json", "model.onnx"])
def test_a_kill_during_the_rollback_is_still_undone(tmp_path, first_back):
    """Whichever old file the rollback had put back when it was killed, the next export restores the
    old set: the manifest goes back last, and `recover` trusts only the journal's own manifest."""
    d = tmp_path / "d"
    d.mkdir()
    for name, b in OLD.items():
        (d / name).write_bytes(b)
    code = KILL_IN_UNDO
    if first_back == "export.json":    # the order the old code used on some filesystems: manifest first
        code = code.replace("commit._move = move", "commit._move = move\n"
                            "commit._undo.__globals__['sorted'] = lambda it, key=None: sorted_(it, key)\n")
        code = code.replace("import os, sys", "import os, sys\nsorted_ = lambda it, key: "
                            "__builtins__.sorted(it, key=lambda p: p.name != 'export.json')")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(commit.__file__).parents[2]),
                                                        os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", code, str(d), *OLD], env=env, capture_output=True, text=True)
    assert r.returncode == 9, r.stderr
    logs = []
    commit.recover(d, logs.append)
    assert snapshot(d) == OLD and logs


HOLD = """
import sys, time
from pathlib import Path
from sedeploy.core import commit
from sedeploy.core.errors import UserError
commit.owned_dir(Path(sys.argv[1]), commit.BACKUP_PREFIX)     # a commit in progress in another process
print("ready", flush=True)
time.sleep(60)
"""


def test_recover_leaves_a_live_commit_alone(tmp_path):
    """Liveness is the folder's own flock, not a pid: a backup folder whose owner runs is not undone."""
    d = tmp_path / "d"
    d.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(commit.__file__).parents[2]),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(d)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        (backup,) = d.glob(commit.BACKUP_PREFIX + "*")
        (backup / "model.onnx").write_bytes(b"old onnx")       # what an undo would move back
        commit.recover(d, lambda m: None)
        assert backup.is_dir() and not (d / "model.onnx").exists()
    finally:
        proc.kill()
        proc.wait(timeout=30)
    commit.recover(d, lambda m: None)                          # its owner gone: now it is undone
    assert snapshot(d) == {"model.onnx": b"old onnx"}


SIGTERM_MID_COMMIT = """
import os, signal, sys
from pathlib import Path
from sedeploy.core import commit
from sedeploy.core.errors import UserError
folder = Path(sys.argv[1])
stage = commit.stage_dir(folder)
for n, b in (("model.onnx", b"new onnx"), ("model.ts", b"new ts"), ("model.int8.onnx", b"new int8"),
             ("export.json", b"new manifest")):
    (stage / n).write_bytes(b)
real = commit._move
def move(src, dst):
    if Path(src).parent == stage and Path(dst).name == "model.ts":
        os.kill(os.getpid(), signal.SIGTERM)                  # docker stop, timeout: mid-commit
    real(src, dst)
commit._move = move
commit.commit_files(folder, {n.name: n for n in stage.iterdir()}, "export.json", stale=sys.argv[2:])
print("not reached: SIGTERM is delivered once the commit is complete")
"""


def test_sigterm_during_the_commit_is_held_until_it_is_complete(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    for name, b in OLD.items():
        (d / name).write_bytes(b)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(commit.__file__).parents[2]),
                                                        os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", SIGTERM_MID_COMMIT, str(d), *OLD], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == -signal.SIGTERM and "not reached" not in r.stdout
    commit.recover(d, lambda m: None)                          # the dead process's emptied staging folder
    assert snapshot(d) == NEW


# ---------------------------------------------------------------- export end to end
def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def old_export(tmp_path):
    """An export (onnx + ts) of one checkpoint, a stale fp16 file beside it, and a second checkpoint."""
    from sedeploy.export.exporter import ExportOptions, export_checkpoint
    write_ckpt(tmp_path / "best.pt", seed=0)
    write_ckpt(tmp_path / "other.pt", seed=1)
    export_checkpoint(str(tmp_path / "best.pt"), str(tmp_path), ExportOptions(), log=lambda m: None)
    (tmp_path / "model.fp16.onnx").write_bytes(b"an older export's fp16 model")
    return tmp_path, snapshot(tmp_path)


@pytest.mark.parametrize("where", ["second file", "manifest"])
def test_export_force_interrupted_between_two_writes_keeps_the_old_set(run_cli, old_export, monkeypatch, where):
    d, before = old_export
    real, moved = commit._move, []

    def interrupt(src, dst):
        installing = Path(src).parent.name.startswith(commit.STAGE_PREFIX) and Path(dst).parent == d
        if installing:
            moved.append(Path(dst).name)
            if (where == "second file" and len(moved) == 2) or (where == "manifest" and moved[-1] == "export.json"):
                raise KeyboardInterrupt
        real(src, dst)
    monkeypatch.setattr(commit, "_move", interrupt)
    r = run_cli("export", "--ckpt", d / "other.pt", "--out", d, "--force")
    assert r.code == 130 and "interrupted" in r.err
    assert snapshot(d) == before                            # every old file, byte for byte; no staging left


def test_export_force_replaces_the_whole_set(run_cli, old_export):
    d, before = old_export
    r = run_cli("export", "--ckpt", d / "other.pt", "--out", d, "--force", "--formats", "onnx")
    assert r.code == 0, r.err
    man = json.loads((d / "export.json").read_text())
    assert man["checkpoint_sha256"] == sha(d / "other.pt")
    assert sorted(p.name for p in d.iterdir()) == ["best.pt", "export.json", "model.onnx", "other.pt"]
    assert [(f["path"], f["sha256"]) for f in man["files"]] == [("model.onnx", sha(d / "model.onnx"))]
    assert (d / "model.onnx").read_bytes() != before["model.onnx"]


def test_export_without_force_refuses_any_file_of_the_old_set(run_cli, tmp_path):
    write_ckpt(tmp_path / "best.pt")
    (tmp_path / "model.int8.onnx").write_bytes(b"left over")
    r = run_cli("export", "--ckpt", tmp_path / "best.pt", "--formats", "onnx")
    assert_one_line_error(r, "model.int8.onnx already exists", "--force", "--out")


def test_overhead_reaches_export_json(run_cli, tmp_path, monkeypatch):
    import sedeploy.export.overhead as ov
    real = ov.measure_overhead
    monkeypatch.setattr(ov, "measure_overhead", lambda full, logits, log=print:
                        real(full, logits, batches=(1,), rounds=2, log=log))
    write_ckpt(tmp_path / "best.pt")
    r = run_cli("export", "--ckpt", tmp_path / "best.pt", "--formats", "onnx", "--overhead", "--json")
    assert r.code == 0, r.err
    man = json.loads((tmp_path / "export.json").read_text())
    o = man["overhead"]["batch1"]
    assert o["full"]["p50_ms"] > 0 and o["logits_only"]["p50_ms"] > 0
    assert o["ratio_p50"] == pytest.approx(o["full"]["p50_ms"] / o["logits_only"]["p50_ms"])
    assert json.loads(r.out)["overhead"] == man["overhead"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ---------------------------------------------------------------- triton-repo --force
@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> Path:
    from sedeploy.export.exporter import ExportOptions, export_checkpoint
    d = tmp_path_factory.mktemp("triton_src")
    write_ckpt(d / "best.pt")
    export_checkpoint(str(d / "best.pt"), str(d), ExportOptions(formats=("onnx",)), log=lambda m: None)
    return d / "model.onnx"


def tree(folder: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("exc", [OSError(errno.EIO, "injected"), KeyboardInterrupt()], ids=["oserror", "ctrl-c"])
@pytest.mark.parametrize("step", [0, 1, "writing"])
def test_triton_force_failure_at_each_step_keeps_the_old_entry(onnx_model, tmp_path, monkeypatch, exc, step):
    from sedeploy.export import triton
    repo = tmp_path / "models"
    triton.write_triton_repository(onnx_model, repo, name="fm", max_batch=8)
    before = tree(repo)
    if step == "writing":                                  # while the new entry is being written
        monkeypatch.setattr(triton.shutil, "copyfile", lambda *a, **k: (_ for _ in ()).throw(exc))
    else:                                                  # 0: old entry aside, 1: new entry in
        fail_at(monkeypatch, step, exc)
    with pytest.raises(type(exc)):
        triton.write_triton_repository(onnx_model, repo, name="fm", max_batch=16, force=True)
    monkeypatch.undo()
    assert tree(repo) == before and [p.name for p in repo.iterdir()] == ["fm"]


KILL_MID_SWAP = """
import os, sys
from pathlib import Path
from sedeploy.core import commit
from sedeploy.core.errors import UserError
from sedeploy.export import triton
real = commit._move
def move(src, dst):
    real(src, dst)
    if Path(dst).parent.name.startswith(".fm.old-"):
        os._exit(9)                    # killed between the two renames: the old entry aside, no new one in
commit._move = move
triton.write_triton_repository(sys.argv[1], sys.argv[2], name="fm", max_batch=16, force=True)
"""


def test_a_triton_repo_killed_mid_swap_gets_its_old_entry_back(onnx_model, tmp_path):
    from sedeploy.export import triton
    repo = tmp_path / "models"
    triton.write_triton_repository(onnx_model, repo, name="fm", max_batch=8)
    before = tree(repo)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(commit.__file__).parents[2]),
                                                        os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", KILL_MID_SWAP, str(onnx_model), str(repo)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 9, r.stderr
    assert not (repo / "fm").exists()                          # the window the next run must mend
    with pytest.raises(UserError, match="already exists"):     # the next triton-repo restores it first
        triton.write_triton_repository(onnx_model, repo, name="fm", max_batch=16)
    assert tree(repo) == before and [p.name for p in repo.iterdir()] == ["fm"]


def test_triton_force_replaces_the_entry(onnx_model, tmp_path, run_cli):
    repo = tmp_path / "models"
    assert run_cli("triton-repo", onnx_model, "--out", repo, "--name", "fm", "--max-batch", "8").code == 0
    assert run_cli("triton-repo", onnx_model, "--out", repo, "--name", "fm", "--max-batch", "16").code == 2
    r = run_cli("triton-repo", onnx_model, "--out", repo, "--name", "fm", "--max-batch", "16", "--force")
    assert r.code == 0, r.err
    assert "max_batch_size: 16" in (repo / "fm" / "config.pbtxt").read_text()
    assert [p.name for p in repo.iterdir()] == ["fm"]


# ---------------------------------------------------------------- the folder cache on a full disk
@pytest.fixture
def images(tmp_path, monkeypatch):
    from test_folder import class_folder
    monkeypatch.setenv("SEDEPLOY_CACHE", str(tmp_path / "cache"))
    return class_folder(tmp_path / "data", n=5)


def load(root: Path, tmp_path: Path, logs: list):
    from sedeploy.core.folder import FolderOptions, load_folder
    return load_folder(str(root), FolderOptions(cache_dir=str(tmp_path / "cache"), input_size=16), progress=False,
                       log=logs.append)


def test_a_full_disk_falls_back_to_memory_without_leftovers(images, tmp_path, monkeypatch):
    from sedeploy.core.folder import cache

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(cache.os, "posix_fallocate", full, raising=False)
    logs: list = []
    fd = load(images, tmp_path, logs)
    assert any("No space left on device" in m and "--cache-dir" in m and "room" in m for m in logs), logs
    assert fd.decoded.path is None and fd.arrays["train"][0].shape == (9, 3, 16, 16)
    assert not isinstance(fd.arrays["train"][0], np.memmap)
    entries = [p.name for p in next((tmp_path / "cache").iterdir()).iterdir()]
    assert sorted(entries) == ["headers.json", "lock"]       # no entry, no temporary folder, no images.u8
    monkeypatch.undo()
    monkeypatch.setenv("SEDEPLOY_CACHE", str(tmp_path / "cache"))
    again = load(images, tmp_path, [])                      # room again: the entry is written and mapped
    assert again.decoded.path is not None
    np.testing.assert_array_equal(again.arrays["train"][0], fd.arrays["train"][0])


def test_a_disk_that_fills_while_rows_are_written_falls_back_too(images, tmp_path, monkeypatch):
    """Where fallocate reserves nothing (ZFS, compressed btrfs, NFS), the disk can still fill while rows
    go in: rows are plain writes, so that is an OSError and the same fallback, not SIGBUS."""
    from sedeploy.core.folder import cache
    real, written = cache._RowWriter.__setitem__, []

    def fills_up(self, i, row):
        if len(written) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written.append(i)
        real(self, i, row)
    monkeypatch.setattr(cache._RowWriter, "__setitem__", fills_up)
    logs: list = []
    fd = load(images, tmp_path, logs)
    assert written and any("No space left on device" in m for m in logs), logs
    assert fd.decoded.path is None and fd.arrays["train"][0].shape == (9, 3, 16, 16)
    assert sorted(p.name for p in next((tmp_path / "cache").iterdir()).iterdir()) == ["headers.json", "lock"]


def test_a_failed_cache_swap_keeps_the_old_entry(images, tmp_path, monkeypatch):
    from sedeploy.core.folder.cache import folder_cache_dir
    load(images, tmp_path, [])
    entry = folder_cache_dir(tmp_path / "cache", images) / "3x16x16"
    before = tree(entry)
    victim = next((images / "ant").iterdir())
    os.utime(victim, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns + 10**9))   # the key changes
    real = commit._move

    def fail_new_in(src, dst):
        if Path(src).name.startswith(".3x16x16.") and ".old-" not in Path(src).parent.name and Path(dst) == entry:
            raise OSError(errno.EIO, "injected")
        real(src, dst)
    monkeypatch.setattr(commit, "_move", fail_new_in)
    logs: list = []
    fd = load(images, tmp_path, logs)
    assert fd.decoded.path is None and any("decoding into memory" in m for m in logs)
    assert tree(entry) == before and sorted(p.name for p in entry.parent.iterdir()) == ["3x16x16", "headers.json",
                                                                                          "lock"]


@pytest.mark.parametrize("how", ["fallocate", "zeros"])
def test_reserve_allocates_every_block(tmp_path, monkeypatch, how):
    """A sparse file has no blocks behind its pages (a write through the map on a full disk is SIGBUS);
    a reserved one has them all."""
    from sedeploy.core.folder import cache
    if how == "zeros":
        monkeypatch.setattr(cache.os, "posix_fallocate", lambda *a: (_ for _ in ()).throw(
            OSError(errno.EOPNOTSUPP, "not on this filesystem")), raising=False)
    p = tmp_path / "images.u8"
    n = 3 << 20
    cache.reserve(p, n)
    st = p.stat()
    assert st.st_size == n and st.st_blocks * 512 >= n


def test_old_format_cache_files_are_rebuilt_not_errors(images, tmp_path):
    from sedeploy.core.folder.cache import folder_cache_dir
    first = load(images, tmp_path, [])
    fc = folder_cache_dir(tmp_path / "cache", images)
    headers = json.loads((fc / "headers.json").read_text())["headers"]
    (fc / "headers.json").write_text(json.dumps({k: v[:6] for k, v in headers.items()}))   # an older layout
    idx = json.loads((fc / "3x16x16" / "index.json").read_text())
    del idx["bounds"]
    (fc / "3x16x16" / "index.json").write_text(json.dumps(idx))
    again = load(images, tmp_path, [])
    assert not again.decoded.hit and again.decoded.decoded == 15      # rebuilt
    np.testing.assert_array_equal(again.arrays["train"][0], first.arrays["train"][0])
    assert json.loads((fc / "headers.json").read_text())["format"] == 2
    (fc / "headers.json").write_text("[1, 2]")
    assert load(images, tmp_path, []).decoded.hit


# ---------------------------------------------------------------- bad input: exit 2, one line
@pytest.mark.parametrize("case, needles", [
    ("no_classes", ["lacks classes", "sedeploy train"]),
    ("no_state_dict", ["lacks state_dict"]),
    ("state_dict_list", ["wrong type for state_dict"]),
    ("missing_weight", ["weights do not fit", "Missing key"]),
    ("unexpected_weight", ["weights do not fit", "Unexpected key"]),
])
def test_damaged_checkpoints_are_one_line_errors(run_cli, tmp_path, case, needles):
    ck = tmp_path / "best.pt"
    write_ckpt(ck)
    d = torch.load(ck, weights_only=True)
    if case == "no_classes":
        del d["classes"]
    elif case == "no_state_dict":
        del d["state_dict"]
    elif case == "state_dict_list":
        d["state_dict"] = list(d["state_dict"].values())
    elif case == "missing_weight":
        d["state_dict"].pop(next(iter(d["state_dict"])))
    else:
        d["state_dict"]["extra.weight"] = torch.zeros(1)
    torch.save(d, ck)
    r = run_cli("export", "--ckpt", ck, "--out", tmp_path / "out")
    assert_one_line_error(r, *needles)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["checker", "exporter"])
def test_onnx_shape_inference_errors_are_one_line_errors(run_cli, tmp_path, monkeypatch, where):
    import onnx
    write_ckpt(tmp_path / "best.pt")
    if where == "checker":
        def reject(*a, **k):
            raise onnx.shape_inference.InferenceError("[ShapeInferenceError] (op_type:Conv): shapes differ\nmore")
        monkeypatch.setattr(onnx.checker, "check_model", reject)
        needles = ["shape inference rejects the raw ONNX graph", "shapes differ", "--opset"]
    else:
        def fail(*a, **k):
            raise torch.onnx.errors.OnnxExporterError("Unsupported: ONNX export of operator foo")
        monkeypatch.setattr(torch.onnx, "export", fail)
        needles = ["ONNX exporter failed at opset 17", "operator foo", "--opset"]
    r = run_cli("export", "--ckpt", tmp_path / "best.pt", "--formats", "onnx")
    assert_one_line_error(r, *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]


# ---------------------------------------------------------------- options named in messages exist
def named_options(message: str) -> set:
    """The --options a message tells the user to pass (commands quoted in backticks are other commands)."""
    return set(re.findall(r"--[a-z][a-z0-9-]*", re.sub(r"`[^`]*`", "", message)))


def command_options(name: str) -> set:
    from sedeploy.cli import cli
    return {o for p in cli.commands[name].params for o in [*p.opts, *p.secondary_opts]}


@pytest.mark.parametrize("command, args, option", [
    ("infer", ["x.png", "--heatmaps", "{file}/sub"], "--heatmaps"),
    ("samples", ["--out", "{file}/sub", "--data-dir", "{fm}"], "--out"),
    ("samples", ["--dataset", "cifar10", "--data-dir", "{tmp}"], "--data-dir"),     # was: "pass --download"
    ("export", ["--ckpt", "{ckpt}", "--out", "{file}/sub"], "--out"),
    ("export", ["--ckpt", "{ckpt}", "--out", "{tmp}"], "--force"),
    ("export", ["--ckpt", "{ckpt}", "--opset", "5"], "--opset"),
    ("export", ["--ckpt", "{ckpt}", "--batch", "x"], "--batch"),
    ("export", ["--ckpt", "{ckpt}", "--formats", "torchscript", "--int8"], "--int8"),
    ("triton-repo", ["{onnx}", "--out", "{file}/sub"], "--out"),
    ("triton-repo", ["{onnx}", "--out", "{repo}", "--name", "fm"], "--force"),
    ("triton-repo", ["{onnx}", "--out", "{tmp}/r2", "--count", "0"], "--count"),
    ("features", ["--ckpt", "{ckpt}", "x.png", "--out", "{file}/sub"], "--out"),
    ("bench-train", ["--dataset", "fashion-mnist", "--data-dir", "{tmp}/none"], "--data-dir"),  # was: "add --download"
])
def test_every_option_an_error_names_exists_on_its_command(run_cli, tmp_path, onnx_model, fmnist_dir, command, args,
                                                            option):
    (tmp_path / "file").write_text("")
    write_ckpt(tmp_path / "best.pt")
    (tmp_path / "export.json").write_text("{}")
    (tmp_path / "repo" / "fm").mkdir(parents=True)
    fill = {"file": tmp_path / "file", "ckpt": tmp_path / "best.pt", "tmp": tmp_path, "onnx": onnx_model,
            "repo": tmp_path / "repo", "fm": fmnist_dir}
    if command == "infer":
        args = [*args, "--model", str(onnx_model)]
        from PIL import Image
        Image.new("L", (28, 28)).save(tmp_path / "x.png")
    args = [a.format(**fill) for a in args]
    args = [str(tmp_path / a) if a == "x.png" else a for a in args]
    r = run_cli(command, *args)
    assert_one_line_error(r, option)
    named = named_options(r.err)
    assert option in named and named <= command_options(command), (named - command_options(command), r.err)


def test_find_model_skips_staging_and_backup_folders(tmp_path, monkeypatch):
    """A killed export's leftovers (hidden, newer) are never the model infer picks."""
    from sedeploy.runtime.model import find_model
    run = tmp_path / "runs" / "fm"
    run.mkdir(parents=True)
    (run / "model.onnx").write_bytes(b"the model")
    for hidden in (commit.BACKUP_PREFIX + "1-x", commit.STAGE_PREFIX + "1-y"):
        (run / hidden).mkdir()
        (run / hidden / "model.onnx").write_bytes(b"leftover")
        os.utime(run / hidden / "model.onnx", (2e9, 2e9))          # newer than the real one
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SEDEPLOY_MODEL", raising=False)
    assert find_model(None) == Path("runs/fm/model.onnx")
