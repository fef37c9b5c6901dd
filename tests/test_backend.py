"""`--backend auto|FORMAT` (runtime.backend): which file of an export set runs. The rule is tested on
given timings (a fake measure), the candidates on a real set (verified, unmodified, installed only),
the cache by a measure that must not be called again, and the CLI end to end with a real measurement."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from conftest import assert_one_line_error
from sedeploy.core.errors import UserError
from sedeploy.export.exporter import ExportOptions, export_checkpoint
from sedeploy.runtime.backend import MIN_GAIN_FP32, choose_backend
from sedeploy.runtime.precision import MIN_GAIN


@pytest.fixture(scope="module")
def bset(trained_fm, fmnist_dir, tmp_path_factory) -> Path:
    """onnx + ort, each with its gated int8 file."""
    d = tmp_path_factory.mktemp("bset")
    export_checkpoint(str(trained_fm / "best.pt"), str(d), ExportOptions(formats=("onnx", "ort"), int8=True, calib=64,
                                                                         int8_eval=200, data_dir=str(fmnist_dir)),
                      log=lambda s: None)
    return d


def fake(ms: dict):
    calls = []

    def measure(cands, threads, batch):
        calls.append(sorted(c.kind for c in cands))
        return {c.kind: ms[c.kind] for c in cands}
    measure.calls = calls
    return measure


def choose(d, tmp_path, ms, **kw):
    m = fake(ms)
    return choose_backend(d, "auto", provider="cpu", cache=tmp_path / "c.json", measure_fn=m, **kw), m


BASE = {"onnx": 1.0, "ort": 1.0, "int8": 1.0, "ort-int8": 1.0}


def test_the_measured_rule(bset, tmp_path):
    c, m = choose(bset, tmp_path / "a", BASE)
    assert m.calls == [["int8", "onnx", "ort", "ort-int8"]]
    assert (c.kind, c.precision, c.runner) == ("onnx", "fp32", "onnxruntime")      # a tie keeps the reference
    # another fp32 runtime must beat onnxruntime fp32 by MIN_GAIN_FP32, not by noise
    c, _ = choose(bset, tmp_path / "b", {**BASE, "onnx": 1.0, "ort": 1.0 / (MIN_GAIN_FP32 * 0.99)})
    assert c.kind == "onnx" and "below the" in c.reason
    c, _ = choose(bset, tmp_path / "c", {**BASE, "ort": 1.0 / (MIN_GAIN_FP32 * 1.01)})
    assert c.kind == "ort" and c.path.name == "model.ort"
    # int8 must beat the best fp32 by MIN_GAIN
    c, _ = choose(bset, tmp_path / "d", {**BASE, "int8": 1.0 / (MIN_GAIN * 0.99), "ort-int8": 5.0})
    assert c.kind == "onnx" and "worth its accuracy cost" in c.reason
    c, _ = choose(bset, tmp_path / "e", {**BASE, "ort-int8": 1.0 / (MIN_GAIN * 1.01)})
    assert (c.kind, c.precision, c.path.name) == ("ort-int8", "int8", "model.int8.ort")
    c, m = choose(bset, tmp_path / "f", {**BASE, "int8": 0.1}, precision="fp32")   # fp32 asked: no int8 file
    assert c.kind == "onnx" and m.calls == [["onnx", "ort"]]
    c, m = choose(bset, tmp_path / "g", {**BASE, "onnx": 0.1}, precision="int8")    # int8 asked: only int8 files
    assert c.precision == "int8" and m.calls == [["int8", "ort-int8"]]


def test_choice_is_cached_per_set_and_batch(bset, tmp_path):
    cache = tmp_path / "c.json"
    ms = {**BASE, "ort": 0.5}
    a = choose_backend(bset, "auto", provider="cpu", cache=cache, measure_fn=fake(ms))
    never = fake({})
    b = choose_backend(bset, "auto", provider="cpu", cache=cache, measure_fn=never)
    assert a.kind == b.kind == "ort" and b.cached and not never.calls
    c = choose_backend(bset, "auto", provider="cpu", cache=cache, batch=7, measure_fn=fake(ms))  # other batch: measured
    assert not c.cached


def copy_set(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_candidates_are_verified_unmodified_files_only(bset, tmp_path):
    d = copy_set(bset, tmp_path / "s")
    doc = json.loads((d / "export.json").read_text())
    doc["formats"]["ort"]["verified"] = False                  # as Core ML off macOS is recorded
    doc["formats"]["ort"]["not_verified"] = "needs macOS"
    (d / "export.json").write_text(json.dumps(doc))
    with open(d / "model.int8.onnx", "ab") as f:               # changed after export: sha256 differs
        f.write(b"\0")
    c, m = choose(d, tmp_path, BASE)
    assert not m.calls                                         # one candidate: nothing to measure
    assert c.kind == "onnx" and "only runnable file" in c.reason
    assert "not verified" in c.skipped["ort"] and "needs macOS" in c.skipped["ort"]
    assert "sha256" in c.skipped["int8"]


def test_named_backend_and_errors(bset, tmp_path):
    c = choose_backend(bset / "model.onnx", "ort", precision="fp32")
    assert c.path.name == "model.ort" and c.runner == "onnxruntime"
    c = choose_backend(bset / "export.json", "ort", precision="int8")
    assert c.path.name == "model.int8.ort"
    with pytest.raises(UserError, match="has no tflite file; choose from: auto, file, onnx, ort$"):
        choose_backend(bset, "tflite", precision="fp32")
    with pytest.raises(UserError, match="has no fp16 file|no runner of sedeploy"):
        choose_backend(bset, "fp16", precision="fp32")
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(bset / "model.onnx", lone)
    with pytest.raises(UserError, match="needs the export set's export.json"):
        choose_backend(lone / "model.onnx", "auto")


def test_cli_backend_auto_measures_and_reports(bset, run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    Image.new("L", (28, 28), 90).save(tmp_path / "a.png")
    r = run_cli("infer", tmp_path / "a.png", "--model", bset, "--backend", "auto", "--json", "--batch-size", "4")
    assert r.code == 0, r.err
    rec = json.loads(r.out.splitlines()[0])
    assert rec["backend"] in ("onnx", "ort", "int8", "ort-int8") and "backend " in r.err and "measured now" in r.err
    assert json.loads((tmp_path / "cache" / "sedeploy" / "backend.json").read_text())
    r2 = run_cli("infer", tmp_path / "a.png", "--model", bset, "--backend", "auto", "--batch-size", "4")
    assert r2.code == 0 and "cached" in r2.err
    ref = run_cli("infer", tmp_path / "a.png", "--model", bset / "model.onnx", "--precision", "fp32", "--json")
    if rec["precision"] == "fp32":                           # the same model on another fp32 runtime: same answer
        assert json.loads(ref.out)["top"][0]["index"] == rec["top"][0]["index"]
    bad = run_cli("infer", tmp_path / "a.png", "--model", bset, "--backend", "nope")
    assert_one_line_error(bad, "--backend nope", "choose from: auto, file")


def test_serve_runs_the_chosen_file_on_its_own_runtime(trained_fm, fmnist_dir, tmp_path):
    """serve --backend ncnn: the same protocol answers (metadata shapes, outputs within the fp32 tolerance)
    from a runner that is not onnxruntime."""
    pytest.importorskip("ncnn", reason="the ncnn runtime is not installed: pip install 'sedeploy[ncnn]'")
    pytest.importorskip("pnnx", reason="the pnnx converter is not installed: pip install --no-deps pnnx")
    import time

    import numpy as np
    import starlette.testclient as stc
    from sedeploy.core.parity import ATOL
    from sedeploy.serve.app import create_app
    from sedeploy.serve.model import ModelSpec, ServedModel
    d = tmp_path / "set"
    export_checkpoint(str(trained_fm / "best.pt"), str(d), ExportOptions(formats=("onnx", "ncnn"),
                                                                         data_dir=str(fmnist_dir)), log=lambda s: None)
    models = [ServedModel(ModelSpec("ref", d / "model.onnx", max_batch=4), "cpu"),
              ServedModel(ModelSpec("nc", d, max_batch=4), "cpu", backend="ncnn")]
    x = np.random.default_rng(0).random((2, 1, 32, 32), dtype=np.float32)
    body = {"inputs": [{"name": "input", "shape": [2, 1, 32, 32], "datatype": "FP32", "data": x.ravel().tolist()}]}
    with stc.TestClient(create_app(models, max_body=1 << 20), raise_server_exceptions=False) as c:
        for _ in range(400):
            if all(c.get(f"/v2/models/{n}/ready").status_code == 200 for n in ("ref", "nc")):
                break
            time.sleep(0.05)
        assert models[1].predictor.runner.provider == "ncnn-cpu"
        meta = {n: c.get(f"/v2/models/{n}").json() for n in ("ref", "nc")}
        assert meta["nc"]["inputs"] == meta["ref"]["inputs"] and meta["nc"]["outputs"] == meta["ref"]["outputs"]
        out = {n: {o["name"]: np.array(o["data"]) for o in c.post(f"/v2/models/{n}/infer", json=body).json()["outputs"]}
               for n in ("ref", "nc")}
    assert sorted(out["nc"]) == sorted(out["ref"])
    for k in out["ref"]:
        np.testing.assert_allclose(out["nc"][k], out["ref"][k], atol=ATOL, rtol=0)


def test_none_precision_means_fp32_never_a_silent_int8(bset, tmp_path):
    """Predictor(backend="auto") and serve --precision fp32 pass precision None: the file as given, fp32."""
    c, m = choose(bset, tmp_path, {**BASE, "int8": 0.01, "ort-int8": 0.01}, precision=None)
    assert c.precision == "fp32" and m.calls == [["onnx", "ort"]]


def test_every_file_of_a_kind_is_checked_and_a_file_that_fails_to_load_is_skipped(bset, tmp_path):
    d = copy_set(bset, tmp_path / "s")
    (d / "model.required_operators.config").write_text("changed")          # a side file of the ort kind
    c, _ = choose(d, tmp_path / "a", BASE)
    assert "model.required_operators.config differs" in c.skipped["ort"]
    d2 = copy_set(bset, tmp_path / "s2")

    def half_broken(cands, threads, batch):
        return {c.kind: ("could not be loaded: boom" if c.kind == "ort" else 1.0) for c in cands}
    c = choose_backend(d2, "auto", provider="cpu", cache=tmp_path / "b.json", measure_fn=half_broken)
    assert c.kind != "ort" and c.skipped["ort"] == "could not be loaded: boom"
    assert not (tmp_path / "b.json").exists()                  # a choice without one candidate is not kept


def test_a_damaged_cache_entry_is_measured_again(bset, tmp_path):
    cache = tmp_path / "c.json"
    choose_backend(bset, "auto", provider="cpu", cache=cache, measure_fn=fake(BASE))
    doc = json.loads(cache.read_text())
    for entry in doc.values():
        entry["ms"]["onnx"] = None
    cache.write_text(json.dumps(doc))
    again = fake(BASE)
    c = choose_backend(bset, "auto", provider="cpu", cache=cache, measure_fn=again)
    assert again.calls and not c.cached


def test_an_ort_file_converted_for_another_machine_is_skipped(bset, tmp_path):
    d = copy_set(bset, tmp_path / "s")
    doc = json.loads((d / "export.json").read_text())
    doc["formats"]["ort"]["machine"] = "aarch64" if doc["formats"]["ort"]["machine"] != "aarch64" else "x86_64"
    (d / "export.json").write_text(json.dumps(doc))
    c, _ = choose(d, tmp_path, BASE)
    assert "converted for" in c.skipped["ort"] and "converted for" in c.skipped["ort-int8"]
