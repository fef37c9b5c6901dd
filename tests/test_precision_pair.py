"""infer never pairs a model with an int8 file of another checkpoint (left beside it by an older export,
or read mid-export): `--precision int8` refuses, `auto` stays on fp32 and says why."""
from __future__ import annotations

import json
import shutil

import onnx
import pytest

from sedeploy.core.errors import UserError
from sedeploy.runtime.precision import choose_precision


def with_checkpoint(src, dst, sha: str) -> None:
    m = onnx.load(str(src))
    for p in m.metadata_props:
        if p.key.endswith("checkpoint_sha256"):
            p.value = json.dumps(sha)
            break
    else:
        raise AssertionError("the export records no checkpoint_sha256")
    onnx.save(m, str(dst))


@pytest.fixture
def mismatched(fm_onnx, tmp_path, monkeypatch):
    monkeypatch.setenv("SEDEPLOY_CACHE", str(tmp_path / "cache"))
    shutil.copy(fm_onnx, tmp_path / "model.onnx")
    with_checkpoint(fm_onnx, tmp_path / "model.int8.onnx", "0" * 64)   # another training run's int8 file
    return tmp_path / "model.onnx"


def never(*a, **k):
    raise AssertionError("a mismatched pair must not be timed")


def test_explicit_int8_of_another_checkpoint_is_refused(mismatched):
    with pytest.raises(UserError, match="another checkpoint"):
        choose_precision(mismatched, "int8", "cpu")


def test_auto_stays_on_fp32_with_an_int8_of_another_checkpoint(mismatched):
    c = choose_precision(mismatched, "auto", "cpu", measure=never)
    assert c.precision == "fp32" and c.path == mismatched and "another checkpoint" in c.reason


def test_a_matching_pair_is_still_used(fm_onnx, tmp_path, monkeypatch):
    monkeypatch.setenv("SEDEPLOY_CACHE", str(tmp_path / "cache"))
    shutil.copy(fm_onnx, tmp_path / "model.onnx")
    shutil.copy(fm_onnx, tmp_path / "model.int8.onnx")                 # same metadata: same checkpoint
    assert choose_precision(tmp_path / "model.onnx", "int8", "cpu").precision == "int8"
    c = choose_precision(tmp_path / "model.onnx", "auto", "cpu",
                         measure=lambda *a: {"fp32_ms": 2.0, "int8_ms": 1.0})
    assert c.precision == "int8"
