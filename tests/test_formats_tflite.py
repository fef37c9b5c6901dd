"""The tflite format (issue 15): converted by litert-torch from the PyTorch module, one signature per batch size
in one file, verified in LiteRT on every output, run by infer (with heatmaps) and bench; the record inside the
.tflite (metadata, signatures, output mapping) written and read back without torch; XNNPACK in fp32; batches
that match no signature padded or chunked; static int8 (PT2E) through the gate; a truncated or foreign
.tflite and bad --batch-sizes are one-line errors.

Conversion is slow (litert-torch imports ~20 s, then ~8-15 s per signature on 2 cores): the shared set has
two small signatures (b1, b4). The whole module runs in `make test-slow` (CI runs both halves)."""
from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import assert_one_line_error
from support.formats import assert_bench_row, assert_infer_equals_onnx, export_set
from sedeploy.core import contract
from sedeploy.core.parity import ATOL
from sedeploy.export.exporter import ExportOptions, export_checkpoint

pytest.importorskip("ai_edge_litert", reason="the LiteRT runtime is not installed: pip install 'sedeploy[litert]'")
# the converter is looked up, not imported (~5 s) at collection; the whole module is in `make test-slow`
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(find_spec("litert_torch") is None,
                                 reason="the litert-torch converter is not installed: pip install 'sedeploy[tflite]'")]

from sedeploy.runtime.runners import load_runner  # noqa: E402
from sedeploy.runtime.runners.litert import chunks, embed_record, read_record  # noqa: E402

NAMES = ["logits", "se1", "se2", "se3", "feature_map"]
SIZES = (1, 4)


@pytest.fixture(scope="module")
def tfl_set(trained_fm, fmnist_dir, tmp_path_factory) -> Path:
    return export_set(trained_fm, fmnist_dir, tmp_path_factory.mktemp("tfl_set"), "tflite", tflite_batch_sizes=SIZES)


def test_set_record_mapping_and_verification_rows(tfl_set):
    assert sorted(p.name for p in tfl_set.iterdir()) == ["export.json", "model.onnx", "model.tflite"]   # no sidecar
    rec = read_record((tfl_set / "model.tflite").read_bytes(), tfl_set / "model.tflite")
    assert rec["precision"] == "fp32" and rec["input_shape"] == [1, 32, 32]
    assert [(s["key"], s["batch"]) for s in rec["signatures"]] == [("b1", 1), ("b4", 4)]
    for s in rec["signatures"]:                        # recorded per signature, in contract order
        assert [o["name"] for o in s["outputs"]] == NAMES and all(o["key"] == o["name"] for o in s["outputs"])
    meta = contract.decode_metadata(rec["metadata"])
    assert len(meta["classes"]) == 10 and meta["output_names"] == NAMES
    man = json.loads((tfl_set / "export.json").read_text())
    facts = man["formats"]["tflite"]
    assert facts["verified"] is True and facts["batch_sizes"] == [1, 4] and facts["signatures"] == {"b1": 1, "b4": 4}
    assert facts["outputs"]["b4"] == {n: n for n in NAMES}
    rows = [r for r in man["verification"]["rows"] if r["backend"] == "tflite"]
    assert sorted(r["output"] for r in rows) == sorted(NAMES) and all(r["ok"] for r in rows)
    assert man["options"]["tflite_batch_sizes"] == [1, 4]


@pytest.mark.parametrize("n", [1, 4, 3, 9])      # exact b1, exact b4, 3 padded to b4, 9 = b4 + b4 + b1
def test_runner_equals_onnxruntime_on_every_output(tfl_set, n):
    x = np.random.default_rng(n).standard_normal((n, 1, 32, 32)).astype(np.float32)
    a = load_runner("onnxruntime", tfl_set / "model.onnx", provider="cpu").run(x)
    r = load_runner("litert", tfl_set / "model.tflite", threads=2)
    assert r.batch_sizes == list(SIZES) and r.info.fixed_batch is None and r.provider == "litert-cpu"
    b = r.run(x)
    assert list(b) == NAMES
    for k in NAMES:
        assert b[k].shape == a[k].shape and b[k].dtype == np.float32
        np.testing.assert_allclose(b[k], a[k], atol=ATOL, rtol=0)


def test_signature_choice():
    assert chunks(1, [1, 4]) == [(0, 1, 1)] and chunks(4, [1, 4]) == [(0, 4, 4)]
    assert chunks(3, [1, 4]) == [(0, 3, 4)]                             # the smallest that holds it, padded
    assert chunks(9, [1, 4]) == [(0, 4, 4), (4, 4, 4), (8, 1, 1)]       # the largest while more remain
    assert chunks(70, [1, 64]) == [(0, 64, 64), (64, 6, 64)]


def test_mapping_is_read_from_the_record(tfl_set, tmp_path):
    """The runner takes each output from the key the record names: swap two names in the record and the
    outputs swap with them (nothing is matched by shape)."""
    src = tfl_set / "model.tflite"
    rec = read_record(src.read_bytes(), src)
    for s in rec["signatures"]:
        k = {o["name"]: o for o in s["outputs"]}
        k["se2"]["key"], k["se3"]["key"] = "se3", "se2"
    (tmp_path / "m.tflite").write_bytes(embed_record(src.read_bytes(), rec))
    x = np.random.default_rng(0).standard_normal((1, 1, 32, 32)).astype(np.float32)
    a, b = load_runner("litert", src).run(x), load_runner("litert", tmp_path / "m.tflite").run(x)
    np.testing.assert_array_equal(b["se2"], a["se3"])


def test_xnnpack_computes_in_fp32(tfl_set):
    """The runner (XNNPACK delegate) agrees with LiteRT's reference kernels to fp32 rounding: an fp16 path
    (XNNPACK can be told to use one) would be ~1e-3 off on these outputs."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    x = np.random.default_rng(1).standard_normal((4, 1, 32, 32)).astype(np.float32)
    ref = Interpreter(model_path=str(tfl_set / "model.tflite"),
                      experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
                      ).get_signature_runner("b4")(args_0=x)
    got = load_runner("litert", tfl_set / "model.tflite").run(x)
    assert max(float(np.abs(got[k] - ref[k]).max()) for k in NAMES) < 1e-5


def test_infer_tflite_equals_onnx_with_heatmaps(tfl_set, run_cli, tmp_path):
    assert_infer_equals_onnx(run_cli, tfl_set, "tflite", "litert-cpu", tmp_path)


def test_bench_row(tfl_set, fmnist_dir, run_cli):
    assert_bench_row(run_cli, tfl_set, "tflite", ("model.tflite",), fmnist_dir, ATOL)   # size: all the artifact's files


def test_truncated_foreign_and_damaged_tflite(tfl_set, run_cli, tmp_path):
    Image.new("L", (28, 28), 128).save(tmp_path / "a.png")
    buf = (tfl_set / "model.tflite").read_bytes()
    bad = tmp_path / "model.tflite"
    for cut in (len(buf) // 2, 1000, 6):
        bad.write_bytes(buf[:cut])
        assert_one_line_error(run_cli("infer", tmp_path / "a.png", "--model", bad), "model.tflite")
    from ai_edge_litert import schema_py_generated as schema
    import flatbuffers
    m = schema.ModelT.InitFromPackedBuf(buf, 0)              # the same model without sedeploy's entry: foreign
    m.metadata = [e for e in m.metadata if e.name != b"sedeploy"]
    b = flatbuffers.Builder(len(buf))
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    bad.write_bytes(bytes(b.Output()))
    assert_one_line_error(run_cli("infer", tmp_path / "a.png", "--model", bad), "no sedeploy metadata")
    bad.write_bytes(embed_record(buf, {"record_version": 1, "signatures": []}))
    assert_one_line_error(run_cli("infer", tmp_path / "a.png", "--model", bad), "not a sedeploy LiteRT record")


def test_batch_sizes_option(trained_fm, run_cli, tmp_path):
    from sedeploy.export.formats import BuildContext
    from sedeploy.export.formats.tflite import batch_sizes
    ctx = lambda **kw: BuildContext(None, None, tmp_path, "model", NAMES, lambda o: {}, **kw)
    assert batch_sizes(ctx(batch_sizes=(64, 1, 64))) == (1, 64) and batch_sizes(ctx(batch=8)) == (8,)
    for bad in ("0,4", "a,b", ","):
        assert_one_line_error(run_cli("export", "--ckpt", trained_fm / "best.pt", "--out", tmp_path / "x",
                                      "--formats", "tflite", "--batch-sizes", bad), "--batch-sizes")
    assert "only for formats without a dynamic batch" in " ".join(run_cli("export", "--help").out.lower().split())


def test_int8_through_the_gate_run_and_bench(trained_fm, fmnist_dir, run_cli, tmp_path, monkeypatch):
    man = export_checkpoint(str(trained_fm / "best.pt"), str(tmp_path),
                            ExportOptions(formats=("onnx", "tflite"), tflite_batch_sizes=SIZES, int8=True, calib=64,
                                          int8_eval=200, data_dir=str(fmnist_dir)), log=lambda s: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.json", "model.int8.onnx", "model.int8.tflite",
                                                         "model.onnx", "model.tflite"]
    gate = man["formats"]["tflite"]["int8_gate"]
    assert gate["agreement"] >= 98 and gate["drop"] <= 1 and gate["se_max_abs"] <= 0.1
    r = load_runner("litert", tmp_path / "model.int8.tflite")
    assert r.record["precision"] == "int8" and r.batch_sizes == list(SIZES)
    spec8 = r.info.meta["unsure"]                           # its own threshold, stamped into the record in place
    assert "tflite int8 model" in spec8["calibrated_on"] and man["unsure"]["variants"]["tflite-int8"] == spec8["threshold"]
    assert (tmp_path / "model.int8.tflite").read_bytes().count(b'calibrated_on') == 1   # no orphaned old record
    (inp,) = r.sigs[4][1].get_input_details().values()
    assert inp["dtype"] == np.int8                             # static int8 I/O: the runner (de)quantizes
    x = np.random.default_rng(0).standard_normal((3, 1, 32, 32)).astype(np.float32)
    a, b = load_runner("litert", tmp_path / "model.tflite").run(x), r.run(x)
    assert list(b) == NAMES and all(b[k].dtype == np.float32 and b[k].shape == a[k].shape for k in NAMES)
    assert max(float(np.abs(a[k] - b[k]).max()) for k in ("se1", "se2", "se3")) < 0.1
    Image.new("L", (28, 28), 128).save(tmp_path / "a.png")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))    # --precision auto caches its timing here
    for precision in ("auto", "int8", "fp32"):     # auto times the .tflite pair on LiteRT, not onnxruntime
        res = run_cli("infer", tmp_path / "a.png", "--model", tmp_path / "model.tflite", "--precision", precision,
                      "--json")
        assert res.code == 0, res.err
        rec = json.loads(res.out)
        assert rec["provider"] == "litert-cpu" and rec["precision"] in (("fp32", "int8") if precision == "auto"
                                                                        else (precision,))
    res = run_cli("bench", "--model", tmp_path, "--backends", "ort-cpu,tflite,tflite-int8", "--batch-sizes",
                  "1", "--warmup", "1", "--min-time", "0", "--repeats", "1", "--data-dir", fmnist_dir, "--limit", "40",
                  "--json")
    assert res.code == 0, res.err
    by = {x["backend"]: x for x in json.loads(res.out)["rows"]}
    assert by["tflite-int8"]["status"] == "ok" and by["tflite-int8"]["file"] == "model.int8.tflite"


def test_rgb_48_model(tmp_path):
    from sedeploy.runtime.predictor import Predictor
    from test_formats import write_rgb48_checkpoint
    write_rgb48_checkpoint(tmp_path / "best.pt")
    export_checkpoint(str(tmp_path / "best.pt"), str(tmp_path),
                      ExportOptions(formats=("onnx", "tflite"), tflite_batch_sizes=(2,)), log=lambda s: None)
    im = Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 50, 3), dtype=np.uint8))
    a, b = (Predictor(tmp_path / f"model.{s}", provider="cpu", workers=0).predict([im])[0] for s in ("onnx", "tflite"))
    np.testing.assert_allclose(b.probs, a.probs, atol=1e-4, rtol=0)
    assert b.outputs["feature_map"].shape == (32, 12, 12) and b.top[0].label == a.top[0].label


def test_infer_prints_no_litert_log_lines(tfl_set, tmp_path):
    """LiteRT's native code prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." on fd 2 at a
    signature's first run; the runner filters that line (runners.native_stderr_filtered): the user reads
    sedeploy's header and results only. A real process, since in-process capture does not see fd 2."""
    import subprocess
    import sys
    Image.new("L", (28, 28), 100).save(tmp_path / "a.png")
    r = subprocess.run([sys.executable, "-m", "sedeploy", "infer", str(tmp_path / "a.png"), "--model",
                        str(tfl_set / "model.tflite"), "--precision", "fp32"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "XNNPACK" not in r.stderr and r.stderr.startswith("model ") and len(r.stderr.splitlines()) == 1, r.stderr
