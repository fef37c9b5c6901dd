"""The coreml format (issue 15): an fp32 ML Program package (a folder, model.mlpackage) converted by
coremltools, with the sedeploy metadata inside; on Linux validated (reloaded, re-read into MIL, spec
checked) and recorded as not verified, never run; committed and hashed as one entry of the set; a
Core ML package given to infer or bench is a one-line error. Predictions (macOS only) are not tested."""
from __future__ import annotations

import json
import logging
import platform
import shutil
from pathlib import Path

import pytest
from PIL import Image

from conftest import assert_one_line_error
from support.formats import export_set
from sedeploy.core import contract
from sedeploy.core.errors import UserError
from sedeploy.core.io import path_bytes, path_sha256
from sedeploy.export.exporter import ExportOptions, export_checkpoint

ct = pytest.importorskip("coremltools", reason="coremltools is not installed: pip install 'sedeploy[coreml]'")

from sedeploy.export.formats import coreml  # noqa: E402

NAMES = ["logits", "se1", "se2", "se3", "feature_map"]
pytestmark = pytest.mark.skipif(platform.system() == "Darwin", reason="macOS verifies by predicting: other tests")


@pytest.fixture(scope="module")
def cm_set(trained_fm, fmnist_dir, tmp_path_factory) -> Path:
    return export_set(trained_fm, fmnist_dir, tmp_path_factory.mktemp("cm_set"), "coreml")


def spec_of(pkg: Path):
    return ct.models.MLModel(str(pkg), skip_model_load=True).get_spec()


def test_set_manifest_and_not_verified(cm_set):
    assert sorted(p.name for p in cm_set.iterdir()) == ["export.json", "model.mlpackage", "model.onnx"]
    man = json.loads((cm_set / "export.json").read_text())
    facts = man["formats"]["coreml"]
    assert facts["verified"] is False and facts["precision"] == "fp32" and facts["batch"] == "1..256"
    assert facts["not_verified"] == f"needs macOS for predictions; program reloaded and validated by coremltools " \
                                    f"{ct.__version__}"
    assert man["formats"]["onnx"]["verified"] is True
    assert not any(r["backend"].startswith("coreml") for r in man["verification"]["rows"])
    rec = {f["path"]: f for f in man["files"]}["model.mlpackage"]
    pkg = cm_set / "model.mlpackage"
    assert rec["format"] == "coreml" and rec["bytes"] == path_bytes(pkg) and rec["sha256"] == path_sha256(pkg)
    # fp32 weights: the package is as large as the ONNX file's fp32 initializers, not half (fp16)
    assert rec["bytes"] > 0.95 * (cm_set / "model.onnx").stat().st_size


def test_spec_input_outputs_metadata_and_fp32(cm_set):
    from coremltools.proto import MIL_pb2
    spec = spec_of(cm_set / "model.mlpackage")
    d = spec.description
    assert spec.WhichOneof("Type") == "mlProgram"
    assert [i.name for i in d.input] == [contract.INPUT_NAME]
    assert coreml.input_range(d.input[0]) == [(1, coreml.MAX_BATCH), (1, 1), (32, 32), (32, 32)]
    assert [o.name for o in d.output] == NAMES                         # as given, in the contract's order
    meta = contract.decode_metadata(dict(d.metadata.userDefined))
    assert meta["output_names"] == NAMES and len(meta["classes"]) == 10 and meta["input_size"] == [1, 32, 32]
    assert coreml.fp16_tensors(spec) == []
    ops = spec.mlProgram.functions["main"].block_specializations[spec.mlProgram.functions["main"].opset].operations
    weights = [o for op in ops if op.type == "const" for o in op.outputs if o.name.endswith("weight")]
    assert len(weights) >= 6 and all(o.type.tensorType.dataType == MIL_pb2.DataType.Value("FLOAT32") for o in weights)


def test_the_fp16_default_is_refused_and_a_failed_force_keeps_the_old_set(cm_set, trained_fm, fmnist_dir,
                                                                          monkeypatch, tmp_path):
    """Guard: coremltools' default ML Program precision is fp16; asked for it, the package check refuses
    the export and the set in place stays as it was; a good --force then replaces the package whole."""
    d = tmp_path / "set"
    shutil.copytree(cm_set, d)
    (d / "model.mlpackage" / "stale.bin").write_bytes(b"left from an older package")
    before = {p: path_sha256(d / p) for p in ("model.mlpackage", "model.onnx", "export.json")}
    monkeypatch.setattr(coreml, "precision", lambda: ct.precision.FLOAT16)
    opts = ExportOptions(formats=("onnx", "coreml"), data_dir=str(fmnist_dir), force=True)
    with pytest.raises(UserError, match=r"model.mlpackage is not what was exported: \d+ tensors are fp16"):
        export_checkpoint(str(trained_fm / "best.pt"), str(d), opts, log=lambda s: None)
    assert {p: path_sha256(d / p) for p in before} == before and sorted(q.name for q in d.iterdir()) == sorted(before)
    monkeypatch.undo()
    man = export_checkpoint(str(trained_fm / "best.pt"), str(d), opts, log=lambda s: None)
    assert not (d / "model.mlpackage" / "stale.bin").exists()
    assert {f["path"]: f["sha256"] for f in man["files"]}["model.mlpackage"] == path_sha256(d / "model.mlpackage")
    assert sorted(q.name for q in d.iterdir()) == sorted(before)          # no staging or backup left


def test_rgb_48_model_with_a_fixed_batch(tmp_path):
    from test_formats import write_rgb48_checkpoint
    write_rgb48_checkpoint(tmp_path / "best.pt")
    man = export_checkpoint(str(tmp_path / "best.pt"), str(tmp_path), ExportOptions(formats=("coreml",), batch=4),
                            log=lambda s: None)
    assert man["formats"]["coreml"]["batch"] == "fixed 4" and man["formats"]["coreml"]["verified"] is False
    d = spec_of(tmp_path / "model.mlpackage").description
    assert coreml.input_range(d.input[0]) == [(4, 4), (3, 3), (48, 48), (48, 48)]
    assert [o.name for o in d.output] == NAMES
    assert contract.decode_metadata(dict(d.metadata.userDefined))["classes"] == ["ant", "bee", "cow", "doe"]


def test_infer_and_bench_on_a_package_are_one_line_errors_and_bench_skips_it(cm_set, fmnist_dir, run_cli, tmp_path):
    Image.new("L", (28, 28), 128).save(tmp_path / "a.png")
    for cmd in (("infer", tmp_path / "a.png", "--model", cm_set / "model.mlpackage"),
                ("bench", "--model", cm_set / "model.mlpackage")):
        assert_one_line_error(run_cli(*cmd), "model.mlpackage is a Core ML package", "macOS", "model.onnx")
    r = run_cli("bench", "--model", cm_set, "--backends", "ort-cpu", "--batch-sizes", "1", "--warmup", "1",
                "--min-time", "0", "--repeats", "1", "--data-dir", fmnist_dir, "--limit", "20", "--json")
    assert r.code == 0, r.err
    assert [(x["backend"], x["status"]) for x in json.loads(r.out)["rows"]] == [("ort-cpu", "ok")]
    from sedeploy.bench.backends import BACKENDS
    assert "coreml" not in BACKENDS                                      # no runner here: no bench row


def test_formats_row(run_cli):
    rows = {x["format"]: x for x in json.loads(run_cli("formats", "--json").out)["formats"]}
    assert rows["coreml"] == {**rows["coreml"], "file": "model.mlpackage", "converter_installed": True,
                              "runtime": "coreml", "runtime_installed": True, "runs_here": False, "int8": False,
                              "extra": "coreml"}


def test_only_coremltools_known_noise_is_filtered(caplog):
    coreml.coremltools()
    log = logging.getLogger("coremltools")
    with caplog.at_level(logging.WARNING):
        log.warning("Torch version 9.9 has not been tested with coremltools. You may run into unexpected errors.")
        log.warning("Failed to load _MLModelProxy: No module named 'coremltools.libcoremlpython'")
        log.warning("Some other converter warning")
    assert [r.getMessage() for r in caplog.records] == ["Some other converter warning"]
