"""The folder split (core/folder/split.py) on indexes built here, no images: counts, stratification,
seeding, the layouts, the errors, and split.json's text. Fast enough to run for every mutant."""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from sedeploy.core.errors import UserError
from sedeploy.core.folder.index import FileEntry, FolderIndex
from sedeploy.core.folder.split import _carve_counts, assign, dump_record, make_record, read_record


def index(counts, layout="classes", roles=None, root=Path("/data")) -> FolderIndex:
    """counts: {class: n files}; roles: {class: {role: n}} for the splits layout."""
    classes = sorted(counts if roles is None else roles)
    files = []
    for label, c in enumerate(classes):
        if roles is None:
            files += [FileEntry(f"{c}/{i:02d}.png", label, 100 + i, i, None) for i in range(counts[c])]
        else:
            for role, n in roles[c].items():
                files += [FileEntry(f"{role}/{c}/{i:02d}.png", label, 1, i, role) for i in range(n)]
    return FolderIndex(root, layout, classes, sorted(files, key=lambda f: f.rel), [("x/bad.png", "empty")], 0, None)


def rels(files):
    return [f.rel for f in files]


@pytest.mark.parametrize("n, val, test, expect", [
    (10, 0.2, 0.1, (7, 2, 1)), (3, 0.1, 0.1, (1, 1, 1)),        # a positive fraction takes at least one
    (10, 0.0, 0.25, (8, 0, 2)), (10, 0.25, 0.0, (8, 2, 0)),
    (7, 0.5, 0.25, (1, 4, 2)),                                   # Python rounds half to even: 3.5 -> 4
    (6, 0.25, 0.25, (2, 2, 2)), (10, 0.25, 0.25, (6, 2, 2)),     # 1.5 -> 2, 2.5 -> 2
    (2, 0.1, 0.1, (0, 1, 1)),                                    # no train left (assign refuses it)
])
def test_carve_counts(n, val, test, expect):
    c = _carve_counts(n, val, test)
    assert (c["train"], c["val"], c["test"]) == expect


def test_assign_is_stratified_disjoint_and_seeded():
    idx = index({"ant": 10, "bee": 20})
    a = assign(idx, 0, 0.2, 0.1)
    assert {s: len(v) for s, v in a.items()} == {"train": 21, "val": 6, "test": 3}
    for s, (n_ant, n_bee) in {"train": (7, 14), "val": (2, 4), "test": (1, 2)}.items():
        assert sum(f.rel.startswith("ant/") for f in a[s]) == n_ant and sum(f.rel.startswith("bee/") for f in a[s]) == n_bee
        assert rels(a[s]) == sorted(rels(a[s]))                  # each split sorted by path
    assert sorted(rels(a["train"] + a["val"] + a["test"])) == rels(idx.files)   # every file exactly once
    assert rels(assign(idx, 0, 0.2, 0.1)["test"]) == rels(a["test"])            # same seed: same split
    draws = {tuple(rels(assign(idx, s, 0.2, 0.1)["test"])) for s in range(6)}
    assert len(draws) > 1                                                     # the seed changes the draw
    # the documented draw: class files sorted, permuted by default_rng([seed, crc32(class)]), test first
    perm = np.random.default_rng([0, zlib.crc32(b"bee")]).permutation(20)
    assert [f.rel for f in a["test"] if f.rel.startswith("bee/")] == sorted(f"bee/{i:02d}.png" for i in perm[:2])
    assert [f.rel for f in a["val"] if f.rel.startswith("bee/")] == sorted(f"bee/{i:02d}.png" for i in perm[2:6])


def test_a_new_class_does_not_move_another_class_files():
    before = assign(index({"ant": 10, "bee": 20}), 3, 0.2, 0.1)
    after = assign(index({"ant": 10, "bee": 20, "cow": 5}), 3, 0.2, 0.1)
    for s in before:
        assert [f.rel for f in after[s] if not f.rel.startswith("cow/")] == rels(before[s])
    assert [f.label for f in after["train"] if f.rel.startswith("cow/")] == [2, 2, 2]


def test_splits_layout_keeps_the_folders_and_draws_only_what_is_missing():
    idx = index(None, "splits", roles={"ant": {"train": 10, "test": 3}, "bee": {"train": 10, "test": 2}})
    a = assign(idx, 0, 0.2, 0.5)                       # test/ given: test_split unused; val drawn from train
    assert rels(a["test"]) == [f"test/ant/{i:02d}.png" for i in range(3)] + [f"test/bee/{i:02d}.png" for i in range(2)]
    assert len(a["val"]) == 4 and all(f.rel.startswith("train/") for f in a["val"])
    assert len(a["train"]) == 16 and rels(a["train"]) == sorted(rels(a["train"]))
    given = index(None, "splits", roles={"ant": {"train": 4, "val": 2, "test": 1}})
    b = assign(given, 0, 0.5, 0.5)                     # everything given: nothing drawn
    assert (len(b["train"]), len(b["val"]), len(b["test"])) == (4, 2, 1)
    drawn = assign(index(None, "splits", roles={"ant": {"train": 10}}), 0, 0.0, 0.2)
    assert (len(drawn["train"]), len(drawn["val"]), len(drawn["test"])) == (8, 0, 2)


def test_errors_name_the_folder_and_the_fix():
    with pytest.raises(UserError, match=r"class folder /data/cow has 2 usable image\(s\), too few to split .*"
                                        r"--val-split 0.1 --test-split 0.1\); add at least 1 more"):
        assign(index({"ant": 10, "cow": 2}), 0, 0.1, 0.1)
    with pytest.raises(UserError, match=r"has 1 usable .*add at least 1 more"):
        assign(index({"ant": 1}), 0, 0.0, 0.1)
    with pytest.raises(UserError, match=r"class 'bee' has no training images in /data/train; add some to "
                                        r"/data/train/bee"):
        assign(index(None, "splits", roles={"ant": {"train": 5}, "bee": {"test": 5}}), 0, 0.0, 0.2)
    with pytest.raises(UserError, match=r"no test images for /data; use --test-split above 0 or add /data/test/"):
        assign(index({"ant": 5}), 0, 0.2, 0.0)


def test_record_counts_and_text_round_trip(tmp_path):
    idx = index({"ant": 4, "bee": 6}, root=tmp_path)
    a = assign(idx, 1, 0.25, 0.25)
    rec = make_record(idx, a, 1, 0.25, 0.25, [3, 8, 8], [0.5, 0.5, 0.5], [0.2, 0.2, 0.2])
    assert rec["counts"] == {"train": {"ant": 2, "bee": 2}, "val": {"ant": 1, "bee": 2}, "test": {"ant": 1, "bee": 2}}
    assert (rec["format"], rec["version"], rec["layout"], rec["seed"], rec["skipped"]) == ("sedeploy-split", 1,
                                                                                           "classes", 1, 1)
    assert rec["data_dir"] == str(tmp_path.resolve()) and rec["input_size"] == [3, 8, 8] and rec["std"] == [0.2] * 3
    assert rec["splits"]["test"] == [[f.rel, f.label] for f in a["test"]]
    text = dump_record(rec)
    assert json.loads(text) == rec and text.endswith("\n }\n}\n")
    lines = [line.rstrip(",") for line in text.splitlines()]
    assert all(f'   ["{r}", {lab}]' in lines for r, lab in rec["splits"]["train"])      # one file per line
    empty = dump_record({**rec, "splits": {"train": rec["splits"]["train"], "val": []}})
    assert '  "val": []' in empty.splitlines() and json.loads(empty)["splits"]["val"] == []
    (tmp_path / "split.json").write_text(text)
    assert read_record(tmp_path / "split.json") == rec


@pytest.mark.parametrize("content, needle", [
    (None, "cannot read split file"), ("{not json", "cannot read split file"),
    ('{"format": "other"}', "is not a sedeploy split file"), ("[1]", "is not a sedeploy split file"),
])
def test_read_record_refuses_damaged_files(tmp_path, content, needle):
    p = tmp_path / "split.json"
    if content is not None:
        p.write_text(content)
    with pytest.raises(UserError, match=needle):
        read_record(p)


# ---------------------------------------------------------------- cases that killed surviving mutants
def test_edges_of_the_split():
    a = assign(index({"ant": 3}), 0, 0.1, 0.1)                    # one file each: one train file is enough
    assert [len(a[s]) for s in ("train", "val", "test")] == [1, 1, 1]
    with pytest.raises(UserError, match=r"add at least 1 more"):  # val only: need 2, have 1
        assign(index({"ant": 1}), 0, 0.1, 0.0)
    with pytest.raises(UserError, match=r"class 'ant' has no training images in /data; add some to /data/ant"):
        assign(index({"ant": 0}), 0, 0.1, 0.1)
    with pytest.raises(UserError, match=r"class 'ant' has no training images in /data/train"):
        assign(index(None, "splits", roles={"ant": {"test": 3}}), 0, 0.1, 0.1)


def test_record_header_keys_and_text_layout(tmp_path):
    idx = index({"ant": 4}, root=tmp_path)
    rec = make_record(idx, assign(idx, 0, 0.25, 0.25), 0, 0.25, 0.25, (1, 4, 4), (0.5,), (0.2,))
    assert {k: v for k, v in rec.items() if k not in ("counts", "splits", "data_dir")} == {
        "format": "sedeploy-split", "version": 1, "layout": "classes", "seed": 0, "val_split": 0.25,
        "test_split": 0.25, "classes": ["ant"], "input_size": [1, 4, 4], "mean": [0.5], "std": [0.2], "skipped": 1}
    text = dump_record(rec)
    assert text.startswith('{\n "format": "sedeploy-split",\n "version": 1,\n')     # the header indented by 1
    assert text.count('"splits"') == 1 and text.count('"train"') == 2               # counts + splits


def test_read_record_names_the_error_kind(tmp_path):
    with pytest.raises(UserError) as e:
        read_record(tmp_path / "gone.json")
    assert str(e.value) == (f"cannot read split file {tmp_path / 'gone.json'} (FileNotFoundError); re-train, or "
                            f"pass the data folder with --data-dir")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UserError, match=r"\(JSONDecodeError\)"):
        read_record(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(UserError) as e:
        read_record(tmp_path / "other.json")
    assert str(e.value) == (f"{tmp_path / 'other.json'} is not a sedeploy split file; pass the split.json written "
                            f"by `sedeploy train`")
