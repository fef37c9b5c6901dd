"""Export formats as plug-ins (export.formats): the registry, `sedeploy formats`, and the ORT format
exported, verified in its own runtime, run by infer and bench, on the tiny trained Fashion-MNIST
model and on a tiny RGB 48x48 model; bad names, extensions and a failed verification."""
from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import assert_one_line_error
from sedeploy.core import contract
from sedeploy.core.parity import ATOL
from sedeploy.export import formats as fm
from sedeploy.export.exporter import ExportOptions, export_checkpoint
from sedeploy.export.formats.ort import NCHWC_DOMAIN, target_platform

ALL = ("onnx", "torchscript", "ort")
LABEL = {"onnx": "onnx simplified", "torchscript": "torchscript", "ort": "ort"}   # its row in the parity table
SET = {"model.onnx", "model.ts", "model.ort", "model.required_operators.config"}


@pytest.fixture(scope="module")
def fm_set(trained_fm, fmnist_dir, tmp_path_factory) -> Path:
    """The tiny trained se_cnn exported as onnx, torchscript and ort into one set."""
    d = tmp_path_factory.mktemp("fm_set")
    export_checkpoint(str(trained_fm / "best.pt"), str(d), ExportOptions(formats=ALL, data_dir=str(fmnist_dir)),
                      log=lambda s: None)
    return d


def manifest(d: Path) -> dict:
    return json.loads((d / "export.json").read_text())


# ---------------------------------------------------------------- the registry
@pytest.mark.parametrize("name", list(fm.FORMATS))
def test_every_registered_format_is_a_plugin_of_the_same_shape(name):
    f = fm.FORMATS[name]
    mod = fm.format_module(name)
    assert callable(mod.build) and callable(mod.outputs)
    assert f.extra in ("full", "runtime", "serve", name) and fm.converter_installed(f)   # all installed here
    assert all(n in fm.FORMATS and list(fm.FORMATS).index(n) < list(fm.FORMATS).index(name) for n in f.needs)
    assert fm.format_for_suffix(f"model{f.suffix}") is f
    assert name not in fm.PLANNED


def test_parse_formats_all_unknown_and_missing_converter(monkeypatch):
    from sedeploy.core.errors import UserError
    real = fm.installed
    core = {p for n in ALL for p in fm.FORMATS[n].converter}                # the edge families' converters off
    monkeypatch.setattr(fm, "installed", lambda p: p in core and real(p))
    monkeypatch.setattr(fm.shutil, "which", lambda tool: None)                # no npm: no web
    assert fm.parse_formats(["all"]) == ALL
    assert fm.parse_formats(["ort", " ONNX "]) == ("onnx", "ort")           # registry order, names normalized
    assert fm.build_order(("ort",)) == ("onnx", "ort")                       # ort is derived from onnx
    with pytest.raises(UserError, match="unknown format bogus; choose from: onnx, torchscript, ort, "):
        fm.parse_formats(["onnx", "bogus"])
    monkeypatch.setattr(fm, "PLANNED", ("webnn",))                           # a planned format is said so
    with pytest.raises(UserError, match="webnn: planned"):
        fm.parse_formats(["webnn"])
    monkeypatch.setattr(fm, "PLANNED", ())
    monkeypatch.setattr(fm, "installed", lambda p: p in core - {"flatbuffers"} and real(p))
    assert fm.parse_formats(["all"]) == ("onnx", "torchscript")              # all = converters installed
    with pytest.raises(UserError, match=r"format ort needs flatbuffers, which is not installed: "
                                        r"pip install 'sedeploy\[full\]'"):
        fm.parse_formats(["onnx", "ort"])


def test_formats_command_json_and_table(run_cli, monkeypatch):
    r = run_cli("formats", "--json")
    assert r.code == 0, r.err
    data = json.loads(r.out)
    rows = {x["format"]: x for x in data["formats"]}
    assert list(rows) == list(fm.FORMATS) and data["planned"] == list(fm.PLANNED)
    for name, f in fm.FORMATS.items():
        assert rows[name] == {**rows[name], "file": f"model{f.suffix}", "runtime": f.runtime, "int8": bool(f.int8),
                              "converter_installed": True, "runtime_installed": True,
                              "runs_here": f.platforms is None or platform.system() in f.platforms}
    assert rows["onnx"]["int8"] and rows["ort"]["int8"] and not rows["torchscript"]["int8"]
    real = fm.installed                                                      # a runtime that is absent
    monkeypatch.setattr(fm, "installed", lambda p: p != "onnxruntime" and real(p))
    rows = {x["format"]: x for x in json.loads(run_cli("formats", "--json").out)["formats"]}
    assert not rows["ort"]["runtime_installed"] and not rows["ort"]["runs_here"] and rows["torchscript"]["runs_here"]
    monkeypatch.undo()
    r = run_cli("export", "--list-formats")                                  # no --ckpt needed
    assert r.code == 0 and r.out.splitlines()[0].split()[:3] == ["format", "file", "converter"]
    assert [ln.split()[0] for ln in r.out.splitlines()[1:1 + len(fm.FORMATS)]] == list(fm.FORMATS) and ("planned" in r.out) is bool(fm.PLANNED)


# ---------------------------------------------------------------- export: the set, verification, facts
def test_set_files_and_manifest(fm_set):
    man = manifest(fm_set)
    assert {f["path"] for f in man["files"]} == SET
    assert {f["path"]: f["format"] for f in man["files"]}["model.required_operators.config"] == "ort"
    for f in man["files"]:
        data = (fm_set / f["path"]).read_bytes()
        assert f["bytes"] == len(data) and f["sha256"] == hashlib.sha256(data).hexdigest()
    assert man["options"]["formats"] == list(ALL) and set(man["formats"]) == set(ALL)


@pytest.mark.parametrize("name", ALL)    # the edge families check their own rows (tests/test_formats_<name>.py)
def test_verification_row_for_every_output_of_every_artifact(fm_set, name):
    man = manifest(fm_set)
    rows = [r for r in man["verification"]["rows"] if r["backend"] == LABEL[name]]
    assert [r["output"] for r in rows] == man["output_names"] == contract.output_names(3)
    assert all(r["ok"] and r["max_abs"] <= ATOL for r in rows), rows
    assert man["verification"]["atol"] == ATOL and "test images" in man["verification"]["batch"]


def test_ort_keeps_the_metadata_and_records_its_target_platform(fm_set):
    import onnxruntime as ort
    meta = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).get_modelmeta()
    a, b = meta(fm_set / "model.onnx").custom_metadata_map, meta(fm_set / "model.ort").custom_metadata_map
    assert a == b and contract.META_PREFIX + "classes" in b                   # inside the artifact: no sidecar
    facts = manifest(fm_set)["formats"]["ort"]
    config = (fm_set / "model.required_operators.config").read_text()
    assert facts["target_platform"] == (target_platform() or "generic") and facts["optimization_style"] == "Fixed"
    assert facts["operators_config"] == "model.required_operators.config" and "# - model.ort" in config
    assert facts["nchwc_layout"] == (NCHWC_DOMAIN in config)
    if platform.machine().lower() in ("x86_64", "amd64"):
        # the x86 layout optimization is in the file: converting without --target_platform amd64 drops it
        assert facts["target_platform"] == "amd64" and facts["nchwc_layout"] and NCHWC_DOMAIN in config


@pytest.mark.parametrize("machine, target", [("x86_64", "amd64"), ("AMD64", "amd64"), ("aarch64", "arm"),
                                             ("arm64", "arm"), ("riscv64", None)])
def test_target_platform_follows_the_machine(machine, target):
    assert target_platform(machine) == target


@pytest.mark.parametrize("break_it", ["drop se2", pytest.param("shift logits", marks=pytest.mark.slow)])
def test_a_failed_verification_installs_nothing(trained_fm, run_cli, tmp_path, monkeypatch, break_it):
    from sedeploy.export.formats import ort as ort_plugin
    real = ort_plugin.outputs

    def wrong(ctx, paths, x):
        outs = real(ctx, paths, x)
        got = outs["ort"]
        if break_it == "drop se2":
            del got["se2"]
        else:
            got["logits"] = got["logits"] + 1e-3
        return outs
    monkeypatch.setattr(ort_plugin, "outputs", wrong)
    out = tmp_path / "out"
    r = run_cli("export", "--ckpt", trained_fm / "best.pt", "--out", out, "--formats", "onnx,ort")
    assert_one_line_error(r, "parity check failed: ort output", "se2" if break_it == "drop se2" else "logits",
                          "nothing was written")
    assert not out.exists() or not any(out.iterdir())


def test_ort_is_verified_by_loading_the_file_in_its_runner(trained_fm, tmp_path, monkeypatch):
    """The ort row of the parity table comes from the staged model.ort on the onnxruntime runner,
    not from the ONNX file it was converted from."""
    from sedeploy.runtime import runners
    loaded = []
    real = runners.load_runner

    def spy(name, path, **kw):
        loaded.append((name, Path(path).name))
        return real(name, path, **kw)
    monkeypatch.setattr(runners, "load_runner", spy)
    export_checkpoint(str(trained_fm / "best.pt"), str(tmp_path), ExportOptions(formats=("ort",)), log=lambda s: None)
    assert loaded == [("onnxruntime", "model.ort")]


def test_export_cli_formats_errors(trained_fm, run_cli, tmp_path):
    ck = trained_fm / "best.pt"
    assert_one_line_error(run_cli("export", "--ckpt", ck, "--out", tmp_path, "--formats", "onnx,bogus"),
                          "unknown format bogus", "choose from: onnx, torchscript, ort, ", ", all")
    assert not list(tmp_path.iterdir())


def test_export_ort_alone_installs_only_its_files(trained_fm, run_cli, tmp_path):
    r = run_cli("export", "--ckpt", trained_fm / "best.pt", "--out", tmp_path, "--formats", "ort")
    assert r.code == 0, r.err
    assert {p.name for p in tmp_path.iterdir()} == {"model.ort", "model.required_operators.config", "export.json"}
    assert "ort " in r.out and "wrote " + str(tmp_path / "model.ort") in r.out   # its parity rows printed


# ---------------------------------------------------------------- infer, serve, bench on the .ort
def test_infer_ort_equals_onnx_with_heatmaps(fm_set, run_cli, tmp_path):
    from sedeploy.runtime.predictor import Predictor
    from test_runtime import sample_images
    files = sample_images(tmp_path / "imgs")
    preds = {s: Predictor(fm_set / f"model.{s}", provider="cpu", workers=0).predict(files) for s in ("onnx", "ort")}
    for a, b in zip(preds["onnx"], preds["ort"]):
        np.testing.assert_allclose(b.probs, a.probs, atol=1e-5, rtol=0)
        assert [t.index for t in a.top] == [t.index for t in b.top] and list(a.outputs) == list(b.outputs)
    recs = {}
    for s in ("onnx", "ort"):
        r = run_cli("infer", tmp_path / "imgs", "--model", fm_set / f"model.{s}", "--heatmaps", tmp_path / s,
                    "--json", "--topk", "3")
        assert r.code == 0, r.err
        recs[s] = [json.loads(line) for line in r.out.splitlines()]
    for a, b in zip(recs["onnx"], recs["ort"]):
        assert [t["index"] for t in a["top"]] == [t["index"] for t in b["top"]]
        assert all(abs(x["prob"] - y["prob"]) <= 1e-5 for x, y in zip(a["top"], b["top"]))
        assert a["heatmaps"]["top_channels"] == b["heatmaps"]["top_channels"]
        for kind in ("heatmap", "channels", "se"):
            assert Image.open(b["heatmaps"]["files"][kind]).format == "PNG"


def test_serve_loads_the_ort_file(fm_set):
    import time
    from starlette.testclient import TestClient
    from sedeploy.serve.app import create_app
    from sedeploy.serve.model import ModelSpec, ServedModel
    app = create_app([ServedModel(ModelSpec(s, fm_set / f"model.{s}"), "cpu") for s in ("onnx", "ort")])
    with TestClient(app) as c:
        for _ in range(200):
            if c.get("/v2/health/ready").status_code == 200:
                break
            time.sleep(0.05)
        x = np.random.default_rng(0).standard_normal((2, 1, 32, 32)).astype(np.float32)
        body = {"inputs": [{"name": "input", "shape": [2, 1, 32, 32], "datatype": "FP32", "data": x.ravel().tolist()}]}
        outs = {}
        for s in ("onnx", "ort"):
            meta = c.get(f"/v2/models/{s}").json()
            assert [o["name"] for o in meta["outputs"]] == contract.output_names(3)
            r = c.post(f"/v2/models/{s}/infer", json=body)
            assert r.status_code == 200, r.text
            outs[s] = {o["name"]: np.asarray(o["data"]) for o in r.json()["outputs"]}
        assert list(outs["ort"]) == list(outs["onnx"])
        for k in outs["onnx"]:
            np.testing.assert_allclose(outs["ort"][k], outs["onnx"][k], atol=1e-5, rtol=0, err_msg=k)


def test_unknown_extension_and_damaged_ort(fm_set, run_cli, tmp_path):
    Image.new("L", (28, 28), 128).save(tmp_path / "a.png")
    (tmp_path / "model.h5").write_bytes((fm_set / "model.onnx").read_bytes())   # Keras: no runner loads it
    assert_one_line_error(run_cli("infer", tmp_path / "a.png", "--model", tmp_path / "model.h5"),
                          "does not load .h5 files", ".onnx, .ort")
    (tmp_path / "bad.ort").write_bytes(b"\x00garbage" * 40)
    assert_one_line_error(run_cli("infer", tmp_path / "a.png", "--model", tmp_path / "bad.ort"),
                          "not a valid ORT-format model")


def test_bench_rows_per_artifact_of_the_set(fm_set, fmnist_dir, run_cli, tmp_path):
    args = ("--backends", "ort-cpu,ort-format,torchscript", "--batch-sizes", "1,3", "--warmup", "1", "--min-time",
            "0", "--repeats", "1", "--data-dir", fmnist_dir, "--limit", "40", "--json")
    res = {}
    for how in (fm_set, fm_set / "export.json"):
        r = run_cli("bench", "--model", how, *args)
        assert r.code == 0, r.err
        res[how] = json.loads(r.out)
    rows = res[fm_set]["rows"]
    assert [(x["backend"], x["batch"]) for x in rows] == [(b, n) for b in ("ort-cpu", "ort-format", "torchscript")
                                                          for n in (1, 3)]
    by = {(x["backend"], x["batch"]): x for x in rows}
    assert all(x["status"] == "ok" for x in rows), rows
    assert by[("ort-format", 1)]["file"] == "model.ort" and by[("ort-cpu", 1)]["file"] == "model.onnx"
    assert by[("ort-format", 3)]["max_abs_diff"] <= ATOL and by[("ort-format", 3)]["top1_agreement"] == 100.0
    assert by[("ort-format", 1)]["accuracy"] == by[("ort-cpu", 1)]["accuracy"]
    assert by[("ort-format", 1)]["sgemm_pct"] > 0                            # an fp32 CPU row
    assert res[fm_set]["summary"]["1"]["ort_format_vs_onnx"] > 0
    assert res[fm_set / "export.json"]["header"]["model"] == str(fm_set / "model.onnx")
    assert_one_line_error(run_cli("bench", "--model", tmp_path, *args), "cannot read the export set")


def test_int8_ort_from_the_gated_int8_onnx(trained_fm, fmnist_dir, run_cli, tmp_path):
    """--int8 with ort: model.int8.ort converted from the gated model.int8.onnx, checked against it in
    its runtime (recorded in int8_gate.derived), in the operators config, the bench and infer."""
    ck = trained_fm / "best.pt"
    r = run_cli("export", "--ckpt", ck, "--out", tmp_path, "--formats", "onnx,ort", "--int8", "--calib", "64",
                "--data-dir", fmnist_dir, "--int8-min-agreement", "0", "--int8-max-drop", "100", "--int8-se-atol", "1")
    assert r.code == 0, r.err
    man = manifest(tmp_path)
    assert {f["path"]: f["format"] for f in man["files"]}["model.int8.ort"] == "ort-int8"
    derived = man["int8_gate"]["derived"]
    assert [d["output"] for d in derived] == contract.output_names(3)
    assert all(d["backend"] == "ort int8" and d["ok"] and d["max_abs"] <= ATOL for d in derived)
    assert man["formats"]["ort"]["int8"] == "model.int8.ort"
    config = (tmp_path / "model.required_operators.config").read_text()
    assert "# - model.int8.ort" in config and "QLinearConv" in config                # int8 kernels listed too
    r = run_cli("bench", "--model", tmp_path, "--backends", "ort-format,ort-format-int8", "--batch-sizes", "2",
                "--warmup", "1", "--min-time", "0", "--repeats", "1", "--data-dir", fmnist_dir, "--json")
    assert r.code == 0, r.err
    by = {x["backend"]: x for x in json.loads(r.out)["rows"]}
    assert by["ort-format-int8"]["status"] == "ok" and by["ort-format-int8"]["file"] == "model.int8.ort"
    assert "fp32" in by["ort-format-int8"]["note"] and by["ort-format-int8"]["peak_pct"] is None
    Image.new("L", (28, 28), 128).save(tmp_path / "a.png")
    r = run_cli("infer", tmp_path / "a.png", "--model", tmp_path / "model.ort", "--precision", "int8")
    assert r.code == 0, r.err
    assert f"model {tmp_path / 'model.int8.ort'} " in r.out + r.err      # the .ort's own int8, not the .onnx's
    assert_one_line_error(run_cli("export", "--ckpt", ck, "--out", tmp_path / "x", "--formats", "ort", "--int8"),
                          "include onnx in --formats")


# ---------------------------------------------------------------- another input size and channel count
def write_rgb48_checkpoint(path: Path) -> None:
    """A small untrained se_cnn on 3x48x48 RGB input with 4 classes: not the default input size or channels."""
    import torch
    from sedeploy.checkpoint import make_checkpoint, save_checkpoint
    from sedeploy.models import create_model
    from sedeploy.models.registry import model_config
    torch.manual_seed(0)
    m = create_model("se_cnn", in_channels=3, input_size=48, num_classes=4, widths=[8, 16, 32]).eval()
    ck = make_checkpoint(m, "se_cnn", model_config(m), classes=["ant", "bee", "cow", "doe"], mean=[0.5] * 3,
                         std=[0.25] * 3, input_size=(3, 48, 48), dataset="cifar10", epoch=1, metrics={})
    save_checkpoint(ck, path)


@pytest.mark.slow  # every format converter on a second model: ~30 s on 2 cores
def test_rgb_48_model_through_every_format(tmp_path):
    import onnxruntime as ort
    from sedeploy.runtime.predictor import Predictor
    write_rgb48_checkpoint(tmp_path / "best.pt")
    export_checkpoint(str(tmp_path / "best.pt"), str(tmp_path), ExportOptions(formats=("all",), tflite_batch_sizes=(2,)),
                      log=lambda s: None)        # tflite: one small signature (litert-torch takes ~10 s per signature)
    man = manifest(tmp_path)
    assert man["options"]["formats"] == [n for n, f in fm.FORMATS.items() if fm.converter_installed(f)]  # all = every installed converter
    assert {r["backend"] for r in man["verification"]["rows"]} >= set(LABEL.values())
    assert all(r["ok"] for r in man["verification"]["rows"])
    sess = ort.InferenceSession(str(tmp_path / "model.ort"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape == ["batch", 3, 48, 48]
    shapes = {o.name: o.shape for o in sess.get_outputs()}
    assert shapes["feature_map"][1:] == [32, 12, 12]              # before the last pool: 48 / 2^2 and shapes["logits"][1:] == [4]
    im = Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 50, 3), dtype=np.uint8))
    a, b = (Predictor(tmp_path / f"model.{s}", provider="cpu", workers=0).predict([im])[0] for s in ("onnx", "ort"))
    np.testing.assert_allclose(b.probs, a.probs, atol=1e-5, rtol=0)
    assert b.outputs["feature_map"].shape == (32, 12, 12) and b.top[0].label == a.top[0].label
