"""Training on a folder of images: layouts, split, odd images, bad data, errors, cache, end to end.

Every folder here is written by the test (small images, a few per class) into tmp_path; the decode
cache goes to tmp_path too (SEDEPLOY_CACHE), never to the user's ~/.cache.
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pytest
from PIL import Image

from conftest import assert_one_line_error
from sedeploy.core.errors import UserError
from sedeploy.core.folder import FolderOptions, folder_arrays, load_folder
from sedeploy.core.folder.cache import channel_stats
from sedeploy.core.decode import load_image
from sedeploy.runtime.preprocess import preprocess

COLOURS = {"ant": (230, 40, 40), "bee": (40, 200, 40), "cow": (40, 40, 230)}


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("SEDEPLOY_CACHE", str(tmp_path / "cache"))


def write_images(folder: Path, cls: str, n: int, size=(20, 16), fmt: str = "png", grey: bool = False,
                 seed: int = 0) -> List[Path]:
    """n images of class `cls`: noise plus a class-coloured square at a class-specific place (learnable)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, zlib.crc32(cls.encode())])
    k = sorted(COLOURS).index(cls) if cls in COLOURS else zlib.crc32(cls.encode()) % 3
    w, h = size
    out = []
    for i in range(n):
        a = rng.integers(0, 50, (h, w, 3)).astype(np.uint8)
        a[k * h // 3:(k + 1) * h // 3, : w // 2] = COLOURS.get(cls, (200, 200, 200))
        im = Image.fromarray(a).convert("L") if grey else Image.fromarray(a)
        p = folder / f"{cls}_{i:03d}.{fmt}"
        im.save(p)
        out.append(p)
    return out


def class_folder(root: Path, n: int = 10, classes: Sequence[str] = tuple(COLOURS), **kw) -> Path:
    for c in classes:
        write_images(root / c, c, n, **kw)
    return root


def load(root: Path, tmp_path: Path, logs: Optional[list] = None, **opts):
    return load_folder(str(root), FolderOptions(cache_dir=str(tmp_path / "cache"), **opts), progress=False,
                       log=(logs.append if logs is not None else (lambda m: None)))


def split_files(fd) -> Dict[str, List[str]]:
    return {s: [r for r, _ in rows] for s, rows in fd.record["splits"].items()}


# ---------------------------------------------------------------- layouts and split
def test_class_layout_split_is_stratified_deterministic_and_disjoint(tmp_path):
    root = class_folder(tmp_path / "data", n=20)
    a, b = load(root, tmp_path), load(root, tmp_path)
    c = load(root, tmp_path, seed=1)
    assert a.info.classes == ["ant", "bee", "cow"] and a.record["layout"] == "classes"
    assert split_files(a) == split_files(b)                       # same seed: same split
    assert split_files(a)["test"] != split_files(c)["test"]       # another seed: another draw
    for s, n in (("train", 16), ("val", 2), ("test", 2)):         # 20 per class at 0.1 / 0.1
        assert a.record["counts"][s] == {"ant": n, "bee": n, "cow": n}
        assert len(a.arrays[s][1]) == 3 * n and np.bincount(a.arrays[s][1]).tolist() == [n] * 3
    sets = [set(v) for v in split_files(a).values()]
    assert set.union(*sets) == {f"{c}/{c}_{i:03d}.png" for c in COLOURS for i in range(20)}
    assert sum(map(len, sets)) == 60                              # disjoint
    # labels follow the folder each file came from
    for rel, label in a.record["splits"]["train"]:
        assert rel.split("/")[0] == a.info.classes[label]


def test_class_split_does_not_move_when_another_class_is_added(tmp_path):
    root = class_folder(tmp_path / "data", n=20, classes=("ant", "bee"))
    before = [r for r in split_files(load(root, tmp_path))["test"] if r.startswith("ant/")]
    write_images(root / "cow", "cow", 20)
    after = [r for r in split_files(load(root, tmp_path))["test"] if r.startswith("ant/")]
    assert before == after


def test_split_layout_uses_the_folders_and_carves_missing_val(tmp_path):
    root = tmp_path / "data"
    for c in ("ant", "bee"):
        write_images(root / "train" / c, c, 10)
        write_images(root / "test" / c, c, 3, seed=1)
    fd = load(root, tmp_path)
    files = split_files(fd)
    assert fd.record["layout"] == "splits"
    assert sorted(files["test"]) == sorted(f"test/{c}/{c}_{i:03d}.png" for c in ("ant", "bee") for i in range(3))
    assert len(files["val"]) == 2 and all(r.startswith("train/") for r in files["val"])  # 1 per class from train/
    assert len(files["train"]) == 18
    write_images(root / "val" / "ant", "ant", 2, seed=2)
    write_images(root / "val" / "bee", "bee", 2, seed=2)
    files = split_files(load(root, tmp_path))
    assert all(r.startswith("val/") for r in files["val"]) and len(files["train"]) == 20


# ---------------------------------------------------------------- any size and mode, as the runtime sees it
def _png_bomb(path: Path, w: int = 10_000, h: int = 10_000) -> None:
    """A PNG whose header claims w x h pixels (no pixel data): refused before any decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                     + chunk(b"IEND", b""))


def odd_images(d: Path) -> Dict[str, Path]:
    """One file per awkward case Pillow reads; returns name -> path."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (30, 40, 3)).astype(np.uint8))
    out = {}
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 40).astype(np.uint8), (30, 1))))
    out["rgba"] = d / "rgba.png"
    rgba.save(out["rgba"])
    pal = rgb.convert("P", palette=Image.ADAPTIVE, colors=16)
    out["palette"] = d / "palette.png"
    pal.save(out["palette"], transparency=0)
    out["i16"] = d / "i16.png"
    Image.fromarray((rng.integers(0, 65535, (30, 40))).astype(np.uint16)).save(out["i16"])
    out["cmyk"] = d / "cmyk.jpg"
    rgb.convert("CMYK").save(out["cmyk"])
    exif = Image.Exif()
    exif[0x0112] = 6                                             # rotate 90 degrees clockwise to display
    out["exif"] = d / "exif.jpg"
    rgb.save(out["exif"], exif=exif.tobytes())
    out["tiny"] = d / "tiny.png"
    rgb.resize((3, 2)).save(out["tiny"])
    out["large"] = d / "large.jpg"
    rgb.resize((2400, 1800)).save(out["large"], quality=80)
    out["la"] = d / "la.png"
    rgba.convert("LA").save(out["la"])
    out["bilevel"] = d / "bilevel.gif"
    rgb.convert("1").save(out["bilevel"])
    return out


@pytest.mark.parametrize("channels", [1, 3])
def test_odd_modes_and_sizes_decode_as_the_runtime_preprocesses(tmp_path, channels):
    root = tmp_path / "data"
    odd = odd_images(root / "odd")
    class_folder(root, n=4, classes=("ant",))
    fd = load(root, tmp_path, input_size=16, channels=channels, val_split=0.25, test_split=0.25)
    assert fd.skipped == []
    rows = {}
    for s, (x, _) in fd.arrays.items():
        for (rel, _), row in zip(fd.record["splits"][s], x):
            rows[rel] = row
    assert len(rows) == len(odd) + 4
    mean, std = fd.info.mean, fd.info.std
    for name, p in odd.items():
        # what `sedeploy infer` feeds the model for this file, and what training saw
        want = preprocess(load_image(p, channels), (channels, 16, 16), mean, std)
        got = (rows[f"odd/{p.name}"].astype(np.float32) / 255 - np.asarray(mean, np.float32)[:, None, None]) \
            / np.asarray(std, np.float32)[:, None, None]
        assert got.shape == (channels, 16, 16)
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=name)


def test_exif_orientation_is_applied(tmp_path):
    root = tmp_path / "data"
    a = np.zeros((16, 32), np.uint8)
    a[:, :16] = 255                                              # stored: left half white
    exif = Image.Exif()
    exif[0x0112] = 6                                             # displayed rotated 90 degrees clockwise
    (root / "ant").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(a).convert("RGB").save(root / "ant" / f"{i}.jpg", exif=exif.tobytes(), quality=95)
    class_folder(root, n=3, classes=("bee",), size=(32, 16))
    fd = load(root, tmp_path, input_size=16, channels=1)
    x, y = fd.arrays["train"]
    row = x[list(y).index(0)][0].astype(int)                     # an 'ant' image, (16, 16)
    assert row[:6].mean() > 200 and row[-6:].mean() < 50         # displayed: top half white


def test_channels_and_input_size_from_the_data(tmp_path):
    grey = tmp_path / "grey"
    class_folder(grey, n=4, classes=("ant", "bee"), size=(64, 64), grey=True)
    Image.fromarray(np.full((64, 64), 30000, np.uint16)).save(grey / "ant" / "deep.png")      # 16-bit grey
    fd = load(grey, tmp_path, test_split=0.25, val_split=0.25)
    assert fd.info.input_size == (1, 64, 64)                     # every image grey and 64x64
    write_images(grey / "bee", "bee", 1, size=(50, 40), seed=9)  # one colour image of another size
    fd = load(grey, tmp_path, test_split=0.25, val_split=0.25)
    assert fd.info.input_size == (3, 32, 32)
    fd = load(grey, tmp_path, test_split=0.25, val_split=0.25, channels=1, input_size=24)
    assert fd.info.input_size == (1, 24, 24)


# ---------------------------------------------------------------- bad data is a list
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # pytest resets the module's filter
def test_bad_files_are_skipped_and_listed(tmp_path, run_cli):
    root = class_folder(tmp_path / "data", n=6)
    (root / "ant" / "zero.png").write_bytes(b"")
    (root / "ant" / "text.jpg").write_text("not an image at all")
    good = (root / "bee" / "bee_000.png").read_bytes()
    (root / "bee" / "cut.png").write_bytes(good[:len(good) // 2])                 # truncated: header fine
    jpg = root / "cow" / "full.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3)).astype(np.uint8)).save(jpg)
    (root / "cow" / "cut.jpg").write_bytes(jpg.read_bytes()[:300])
    _png_bomb(root / "cow" / "bomb.png")
    (root / "cow" / "notes.txt").write_text("labels by Bob")
    (root / "cow" / ".DS_Store").write_bytes(b"\0\0")                             # hidden: ignored
    (root / "loose.png").write_bytes(good)                                        # outside any class
    r = run_cli("train", "--dataset", "folder", "--data-dir", root, "--epochs", "1", "--out", tmp_path / "run",
                "--no-progress", "--input-size", "16")
    assert r.code == 0, r.err
    assert "7 file(s) skipped" in r.out
    skipped = {d["path"]: d["reason"] for d in json.loads((tmp_path / "run" / "skipped.json").read_text())}
    assert set(skipped) == {"ant/zero.png", "ant/text.jpg", "bee/cut.png", "cow/cut.jpg", "cow/bomb.png",
                            "cow/notes.txt", "loose.png"}
    assert "0 bytes" in skipped["ant/zero.png"] and "not an image" in skipped["ant/text.jpg"]
    assert "truncated" in skipped["bee/cut.png"] and "decompression bomb" in skipped["cow/bomb.png"]
    assert "class folder" in skipped["loose.png"]
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    listed = {rel for rows in split["splits"].values() for rel, _ in rows}
    assert len(listed) == 19 and not listed & set(skipped)       # the 19 good images, nothing else


def _make(tmp_path: Path, case: str) -> Path:
    root = tmp_path / "data"
    if case == "empty-class":
        class_folder(root, n=5, classes=("ant", "bee"))
        (root / "cow").mkdir()
    elif case == "one-class":
        class_folder(root, n=5, classes=("ant",))
    elif case == "too-small":
        class_folder(root, n=5, classes=("ant", "bee"))
        write_images(root / "cow", "cow", 2)
    elif case == "no-images":
        root.mkdir()
        (root / "readme.txt").write_text("x")
    elif case == "all-unreadable":
        class_folder(root, n=5, classes=("ant", "bee"))
        (root / "cow").mkdir()
        for i in range(3):
            (root / "cow" / f"{i}.jpg").write_text("oops")
    elif case == "all-truncated":
        class_folder(root, n=5, classes=("ant", "bee"))
        good = (root / "ant" / "ant_000.png").read_bytes()
        (root / "cow").mkdir()
        for i in range(3):
            (root / "cow" / f"{i}.png").write_bytes(good[:len(good) // 2])   # headers fine, pixels cut
    elif case == "val-without-train":
        class_folder(root / "val", n=3, classes=("ant", "bee"))
    elif case == "test-class-not-in-train":
        class_folder(root / "train", n=5, classes=("ant", "bee"))
        class_folder(root / "test", n=2, classes=("ant", "cow"))
    return root


@pytest.mark.parametrize("case,needles", [
    ("empty-class", ["data/cow", "is empty", "remove the folder"]),
    ("one-class", ["one class folder", "at least 2"]),
    ("too-small", ["data/cow", "2 usable image(s)", "too few to split", "add at least 1"]),
    ("no-images", ["no class folders with images", "<class>"]),
    ("all-unreadable", ["'cow'", "no readable images", "not an image"]),
    ("all-truncated", ["'cow'", "no decodable training images", "truncated"]),
    ("val-without-train", ["val/ but no train/", "train/<class>"]),
    ("test-class-not-in-train", ["test/cow", "train/cow"]),
])
def test_bad_folders_are_one_line_errors(tmp_path, run_cli, case, needles):
    root = _make(tmp_path, case)
    r = run_cli("train", "--dataset", "folder", "--data-dir", root, "--out", tmp_path / "run", "--epochs", "1")
    assert_one_line_error(r, *needles)
    assert not (tmp_path / "run" / "best.pt").exists()


@pytest.mark.parametrize("args,needles", [
    ([], ["needs --data-dir"]),
    (["--data-dir", "nowhere"], ["nowhere", "does not exist"]),
    (["--data-dir", "DATA", "--input-size", "30"], ["--input-size", "multiple of 8"]),
    (["--data-dir", "DATA", "--test-split", "0"], ["--test-split"]),
    (["--data-dir", "DATA", "--val-split", "0.6", "--test-split", "0.5"], ["sum below 1"]),
    (["--data-dir", "DATA", "--color", "purple"], ["--color", "purple"]),
])
def test_bad_folder_options_are_one_line_errors(tmp_path, run_cli, args, needles):
    data = class_folder(tmp_path / "data", n=3, classes=("ant", "bee"))
    args = [str(data) if a == "DATA" else (str(tmp_path / a) if a == "nowhere" else a) for a in args]
    r = run_cli("train", "--dataset", "folder", "--out", tmp_path / "run", *args)
    assert_one_line_error(r, *needles)


def test_folder_options_refused_for_builtin_datasets(run_cli, tmp_path):
    r = run_cli("train", "--dataset", "fashion-mnist", "--input-size", "64", "--out", tmp_path)
    assert_one_line_error(r, "apply to --dataset folder")


# ---------------------------------------------------------------- the decode cache
def test_cache_hit_and_invalidation(tmp_path):
    root = class_folder(tmp_path / "data", n=5)
    first = load(root, tmp_path, input_size=16)
    assert not first.decoded.hit and first.decoded.decoded == 15
    x0 = {rel: row.copy() for rel, row in zip(split_files(first)["train"], first.arrays["train"][0])}
    second = load(root, tmp_path, input_size=16)
    assert second.decoded.hit and second.decoded.decoded == 0
    assert isinstance(second.arrays["train"][0], np.memmap)       # read from the map, not a copy in RAM
    np.testing.assert_array_equal(second.arrays["train"][0], first.arrays["train"][0])

    victim = root / split_files(first)["train"][0]
    st = victim.stat()
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touch: same bytes, new mtime
    touched = load(root, tmp_path, input_size=16)
    assert not touched.decoded.hit and touched.decoded.decoded == 1 and touched.decoded.reused == 14

    rel = split_files(first)["train"][1]
    Image.new("RGB", (20, 16), (255, 255, 255)).save(root / rel)    # replaced content
    replaced = load(root, tmp_path, input_size=16)
    assert replaced.decoded.decoded == 1
    row = dict(zip(split_files(replaced)["train"], replaced.arrays["train"][0]))[rel]
    assert row.min() == 255 and not np.array_equal(row, x0[rel])

    write_images(tmp_path / "more", "ant", 6)[-1].rename(root / "ant" / "ant_005.png")  # one file added
    assert load(root, tmp_path, input_size=16).decoded.decoded == 1
    other = load(root, tmp_path, input_size=24)                       # another input size: its own entry
    assert other.decoded.decoded == 16 and load(root, tmp_path, input_size=16).decoded.hit


def test_unwritable_cache_falls_back_to_memory(tmp_path):
    root = class_folder(tmp_path / "data", n=5)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")                                      # a cache under a file: unwritable, even for root
    logs: list = []
    fd = load_folder(str(root), FolderOptions(cache_dir=str(blocker / "cache")), progress=False, log=logs.append)
    assert any("cannot write the image cache" in m and "--cache-dir" in m for m in logs)
    assert fd.decoded.path is None and len(fd.arrays["train"][1]) == 9


def test_training_tensors_share_the_memory_map(tmp_path):
    import torch  # noqa: F401 - load_dataset needs it
    from sedeploy.training.data import load_dataset
    root = class_folder(tmp_path / "data", n=5)
    opts = FolderOptions(cache_dir=str(tmp_path / "cache"), input_size=16)
    load_folder(str(root), opts, progress=False, log=lambda m: None)
    info, data = load_dataset("folder", str(root), folder=opts, progress=False, log=lambda m: None)
    fd = load_folder(str(root), opts, progress=False, log=lambda m: None)
    assert set(data) == {"train", "val", "test"} and info.input_size == (3, 16, 16)
    x = fd.arrays["train"][0]
    assert isinstance(x, np.memmap)
    assert data["train"].images.shape == x.shape
    np.testing.assert_array_equal(data["train"].images.numpy(), x)


def test_mean_std_on_the_training_split_only(tmp_path):
    root = class_folder(tmp_path / "data", n=10)
    fd = load(root, tmp_path, input_size=16)
    # computed here independently: every train file through PIL, float64 over all pixels
    px = np.stack([np.asarray(Image.open(root / rel).convert("RGB").resize((16, 16), Image.BILINEAR), np.float64)
                   for rel in split_files(fd)["train"]]) / 255
    np.testing.assert_allclose(fd.info.mean, px.mean(axis=(0, 1, 2)), atol=1e-6)
    np.testing.assert_allclose(fd.info.std, px.std(axis=(0, 1, 2)), atol=1e-6)
    every = channel_stats(np.concatenate([fd.arrays[s][0] for s in ("train", "val", "test")]))[0]
    assert not np.allclose(every, fd.info.mean, atol=1e-7)       # not the whole folder's


# ---------------------------------------------------------------- evaluation reads the recorded split
def test_folder_arrays_reads_the_recorded_test_split(tmp_path):
    root = class_folder(tmp_path / "data", n=10)
    fd = load(root, tmp_path, input_size=16)
    run = tmp_path / "run"
    run.mkdir()
    (run / "split.json").write_text(fd.info.files["split.json"])
    ref = dict(fd.info.ref, split_file=str(run / "split.json"))
    info, x, y = folder_arrays(ref, None, "test")
    np.testing.assert_array_equal(x, fd.arrays["test"][0])
    np.testing.assert_array_equal(y, fd.arrays["test"][1])
    assert info.classes == fd.info.classes and info.mean == fd.info.mean
    # no split file (the run folder moved): the same split is drawn again from the recorded seed
    info, x2, y2 = folder_arrays(dict(ref, split_file=str(tmp_path / "gone.json")), None, "test")
    np.testing.assert_array_equal(x2, x)
    # the data moved: --data-dir says where
    os.rename(root, tmp_path / "moved")
    with pytest.raises(UserError, match="does not exist"):
        folder_arrays(ref, None, "test")
    _, x3, _ = folder_arrays(ref, str(tmp_path / "moved"), "test")
    np.testing.assert_array_equal(x3, x)


def test_fmnist_folder_has_the_builtin_pixels(tmp_path, fmnist_dir):
    """The PNG folder written by scripts/fmnist_to_folder.py trains on exactly the built-in loader's pixels."""
    from sedeploy.core.arrays import load_arrays
    from support.folder_write import write_image_folder
    out = tmp_path / "fm"
    counts = write_image_folder("fashion-mnist", out, str(fmnist_dir), limit=120, progress=False)
    assert counts == {"train": 120, "test": 120}
    fd = load(out, tmp_path, val_split=0.0)
    assert fd.info.input_size == (1, 32, 32) and len(fd.info.classes) == 10
    _, xb, yb = load_arrays("fashion-mnist", str(fmnist_dir), "test")
    x, y = fd.arrays["test"]
    for (rel, label), row in zip(fd.record["splits"]["test"], x):
        i = int(Path(rel).stem)
        np.testing.assert_array_equal(row, xb[i])
        assert fd.info.classes[label].replace("-", "") in "".join(
            ch for ch in ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                          "Ankle boot"][yb[i]] if ch.isalnum())
    with pytest.raises(UserError, match="not empty"):
        write_image_folder("fashion-mnist", out, str(fmnist_dir), limit=5, progress=False)


# ---------------------------------------------------------------- end to end
def test_train_export_infer_bench_on_a_folder(tmp_path, run_cli):
    """Non-default input size, RGB: best.pt -> model.onnx with the folder's classes and statistics."""
    import onnx
    from sedeploy.core import contract
    root = class_folder(tmp_path / "data", n=12, size=(40, 30))
    run = tmp_path / "run"
    r = run_cli("train", "--dataset", "folder", "--data-dir", root, "--input-size", "48", "--epochs", "2",
                "--batch-size", "8", "--out", run, "--no-progress")
    assert r.code == 0, r.err
    assert "input 3x48x48" in r.out and "params" in r.out
    split = json.loads((run / "split.json").read_text())
    r = run_cli("export", "--ckpt", run / "best.pt", "--formats", "onnx")
    assert r.code == 0, r.err
    assert f"{len(split['splits']['test'])} folder test images" in r.out          # verified on the user's test split
    n_val = len(split["splits"]["val"])                # 'unsure' set on the folder's own val split, labels checked
    assert n_val > 0 and f"of {n_val} validation images" in r.out and "not calibrated" not in r.out + r.err
    meta = contract.decode_metadata({p.key: p.value for p in onnx.load(str(run / "model.onnx")).metadata_props})
    assert meta["classes"] == ["ant", "bee", "cow"] and meta["input_size"] == [3, 48, 48]
    assert meta["mean"] == pytest.approx(split["mean"]) and meta["std"] == pytest.approx(split["std"])
    assert meta["dataset"] == "folder" and meta["data"]["split_file"] == str((run / "split.json").resolve())
    r = run_cli("infer", root / "cow", "--model", run / "model.onnx", "--heatmaps", tmp_path / "heat", "--json")
    assert r.code == 0, r.err
    preds = [json.loads(line) for line in r.out.splitlines()]
    assert len(preds) == 12 and all(p["top"][0]["label"] in meta["classes"] for p in preds)
    assert sum(p["top"][0]["label"] == "cow" for p in preds) >= 9                  # learnt, and labels line up
    assert len(list((tmp_path / "heat").glob("*_heatmap.png"))) == 12
    from sedeploy.bench import BenchConfig, load_data, resolve_model
    bcfg = BenchConfig(model=str(run / "model.onnx"))
    data = load_data(resolve_model(bcfg), bcfg)
    assert data.desc == f"{len(split['splits']['test'])} folder test images" and data.x_test.shape[1:] == (3, 48, 48)
    assert data.y_test.tolist() == [label for _, label in split["splits"]["test"]]


def test_compare_reads_a_folder_once_per_split_not_once_per_run(tmp_path):
    """compare's recipe checks share one load per distinct split of the data: a folder's split follows the
    seed, so two seeds are two loads, and each run's fingerprint is the one it gets when loaded alone."""
    import dataclasses
    from sedeploy.training import TrainConfig
    from sedeploy.training.compare import _recipe_now
    root = class_folder(tmp_path / "imgs", n=12)
    base = TrainConfig(dataset="folder", data_dir=str(root), cache_dir=str(tmp_path / "cache"), out=str(tmp_path / "r"))
    runs = [dataclasses.replace(base, model=m, seed=s) for s in (0, 1) for m in ("cnn", "se_cnn")]
    loads: dict = {}
    shared = [_recipe_now(c, loads)["data"] for c in runs]
    assert len(loads) == 2                                   # per seed, not per run
    assert shared == [_recipe_now(c)["data"] for c in runs]  # as each run alone would see its data
    (_, s0), (_, s1) = list(loads.values())                        # and the seeds' splits do differ
    assert s0["train"].images.shape == s1["train"].images.shape
    assert not np.array_equal(s0["train"].images.numpy(), s1["train"].images.numpy())
