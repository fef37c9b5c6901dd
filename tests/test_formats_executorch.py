"""The executorch format (issue 15): a .pte lowered to XNNPACK, verified in ExecuTorch on every output, run
by infer (with heatmaps) and bench; metadata and the positional output names live inside the .pte (its
`sedeploy` constant method); batches above the exported maximum are split by the runner (ExecuTorch
itself refuses them); a truncated .pte or one that sedeploy did not write is a one-line error; the RGB
48x48 model with a fixed batch; native int8 (XNNPACK's quantizer) through the int8 gate."""
from __future__ import annotations

import json
from importlib.util import find_spec

import numpy as np
import pytest
from PIL import Image

from conftest import assert_one_line_error
from support.formats import assert_bench_row, assert_infer_equals_onnx, export_set
from sedeploy.core import contract
from sedeploy.core.parity import ATOL
from sedeploy.export.exporter import ExportOptions, export_checkpoint

# looked up, not imported (~8 s) at collection; the whole module (conversions) is in `make test-slow`
pytestmark = [pytest.mark.slow, pytest.mark.skipif(find_spec("executorch") is None,
                                                   reason="ExecuTorch is not installed: pip install 'sedeploy[executorch]'")]

from sedeploy.export.formats.executorch import MAX_BATCH  # noqa: E402
from sedeploy.runtime.runners import load_runner  # noqa: E402

NAMES = ["logits", "se1", "se2", "se3", "feature_map"]


@pytest.fixture(scope="module")
def et_set(trained_fm, fmnist_dir, tmp_path_factory):
    return export_set(trained_fm, fmnist_dir, tmp_path_factory.mktemp("et_set"), "executorch")


def test_set_description_and_verification_rows(et_set):
    assert sorted(p.name for p in et_set.iterdir()) == ["export.json", "model.onnx", "model.pte"]   # no sidecar
    r = load_runner("executorch", et_set / "model.pte")
    assert r.doc["outputs"] == NAMES and r.doc["batch"] == {"min": 1, "max": MAX_BATCH}   # read from the .pte
    meta = contract.decode_metadata(r.doc["metadata"])
    assert r.doc["input_shape"] == [1, 32, 32] and len(meta["classes"]) == 10 and meta["output_names"] == NAMES
    man = json.loads((et_set / "export.json").read_text())
    rows = [x for x in man["verification"]["rows"] if x["backend"] == "executorch"]
    assert sorted(x["output"] for x in rows) == sorted(NAMES) and all(x["ok"] for x in rows)
    assert man["formats"]["executorch"]["verified"] and man["formats"]["executorch"]["precision"] == "fp32"


@pytest.mark.parametrize("n", [1, 5, MAX_BATCH + 3])
def test_runner_equals_onnx_in_fp32(et_set, n):
    x = np.random.default_rng(n).standard_normal((n, 1, 32, 32)).astype(np.float32)
    a = load_runner("onnxruntime", et_set / "model.onnx", provider="cpu").run(x)
    b = load_runner("executorch", et_set / "model.pte").run(x)
    assert list(b) == NAMES
    for k in NAMES:
        assert b[k].shape == a[k].shape and b[k].dtype == np.float32
        np.testing.assert_allclose(b[k], a[k], atol=ATOL, rtol=0)


def test_the_split_is_needed_above_the_max(et_set):
    """ExecuTorch refuses a batch above the exported range ("Attempted to resize a bounded tensor"), so the
    runner's split is what makes MAX_BATCH + 3 work above; a runner that passed the batch whole fails here."""
    import torch
    r = load_runner("executorch", et_set / "model.pte")
    with pytest.raises(RuntimeError):
        r.method.execute([torch.zeros(MAX_BATCH + 1, 1, 32, 32)])
    assert r.method.execute([torch.zeros(MAX_BATCH, 1, 32, 32)])[0].shape == (MAX_BATCH, 10)


def test_infer_pte_equals_onnx_with_heatmaps(et_set, run_cli, tmp_path):
    assert_infer_equals_onnx(run_cli, et_set, "pte", "executorch-xnnpack", tmp_path)


def test_bench_row(et_set, fmnist_dir, run_cli):
    assert_bench_row(run_cli, et_set, "executorch", ("model.pte",), fmnist_dir, ATOL)   # size: all the artifact's files


def foreign_pte(path):
    """A .pte that sedeploy did not write: a plain ExecuTorch program without the `sedeploy` method."""
    import torch
    from executorch.exir import to_edge_transform_and_lower
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 32, 10)).eval()
    ep = torch.export.export(m, (torch.zeros(2, 1, 32, 32),))
    path.write_bytes(to_edge_transform_and_lower(ep).to_executorch().buffer)
    return path


def test_truncated_and_foreign_pte(et_set, run_cli, tmp_path):
    Image.new("L", (28, 28), 128).save(tmp_path / "a.png")
    cut = tmp_path / "cut.pte"
    cut.write_bytes((et_set / "model.pte").read_bytes()[:300_000])
    assert_one_line_error(run_cli("infer", tmp_path / "a.png", "--model", cut), "not a complete .pte",
                          "file size is too small", "--formats executorch")
    assert_one_line_error(run_cli("infer", tmp_path / "a.png", "--model", foreign_pte(tmp_path / "other.pte")),
                          "not a sedeploy ExecuTorch program")
    assert_one_line_error(run_cli("infer", tmp_path / "a.png", "--model", et_set / "model.pte", "--provider",
                                  "cuda"), "--provider cpu")


def test_rgb_48_model_with_a_fixed_batch(tmp_path):
    """The non-default size and channel count, exported with --batch 2 (a static graph: the base runner pads)."""
    from sedeploy.runtime.predictor import Predictor
    from test_formats import write_rgb48_checkpoint
    write_rgb48_checkpoint(tmp_path / "best.pt")
    export_checkpoint(str(tmp_path / "best.pt"), str(tmp_path), ExportOptions(formats=("onnx", "executorch"),
                                                                              batch=2), log=lambda s: None)
    r = load_runner("executorch", tmp_path / "model.pte")
    assert r.info.fixed_batch == 2 and r.doc["batch"] == {"fixed": 2} and r.info.input_size == [3, 48, 48]
    rng = np.random.default_rng(0)
    ims = [Image.fromarray(rng.integers(0, 255, (70, 50, 3), dtype=np.uint8)) for _ in range(3)]
    a, b = (Predictor(tmp_path / f"model.{s}", provider="cpu", workers=0).predict(ims)
            for s in ("onnx", "pte"))
    for p, q in zip(a, b):
        np.testing.assert_allclose(q.probs, p.probs, atol=1e-4, rtol=0)
        assert q.outputs["feature_map"].shape == (32, 12, 12) and q.top[0].label == p.top[0].label


def test_int8_passes_the_gate_and_runs(trained_fm, fmnist_dir, tmp_path, run_cli):
    man = export_checkpoint(str(trained_fm / "best.pt"), str(tmp_path),
                            ExportOptions(formats=("onnx", "executorch"), int8=True, calib=128, int8_eval=200,
                                          data_dir=str(fmnist_dir)), log=lambda s: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.json", "model.int8.onnx", "model.int8.pte",
                                                         "model.onnx", "model.pte"]
    fmt = man["formats"]["executorch"]
    assert fmt["int8_gate"]["passed"] and fmt["int8"] == "model.int8.pte" and fmt["verified"]
    q = load_runner("executorch", tmp_path / "model.int8.pte")
    assert q.doc["precision"] == "int8" and q.doc["outputs"] == NAMES
    # int8 weights: a quarter of the fp32 program and some
    assert (tmp_path / "model.int8.pte").stat().st_size < 0.4 * (tmp_path / "model.pte").stat().st_size
    x = np.random.default_rng(3).standard_normal((MAX_BATCH + 1, 1, 32, 32)).astype(np.float32)
    a, b = load_runner("executorch", tmp_path / "model.pte").run(x), q.run(x)
    assert 0 < float(np.abs(a["logits"] - b["logits"]).max()) < 0.5    # quantized, and close
    r = run_cli("bench", "--model", tmp_path, "--backends", "executorch,executorch-int8", "--batch-sizes", "2",
                "--warmup", "1", "--min-time", "0", "--repeats", "1", "--data-dir", fmnist_dir, "--limit", "40",
                "--json")
    assert r.code == 0, r.err
    by = {x["backend"]: x for x in json.loads(r.out)["rows"]}
    assert by["executorch-int8"]["status"] == "ok" and by["executorch-int8"]["file"] == "model.int8.pte"
    Image.new("L", (28, 28), 90).save(tmp_path / "a.png")
    r = run_cli("infer", tmp_path / "a.png", "--model", tmp_path / "model.pte", "--precision", "int8", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["precision"] == "int8" and json.loads(r.out)["provider"] == "executorch-xnnpack"
    r = run_cli("infer", tmp_path / "a.png", "--model", tmp_path / "model.pte", "--precision", "auto", "--json")
    assert r.code == 0, r.err                     # auto times model.pte against model.int8.pte on ExecuTorch
    assert json.loads(r.out)["precision"] in ("fp32", "int8") and "int8 runs" in r.err and "x fp32 here" in r.err


def test_formats_row_says_the_runtime_brings_torch(run_cli):
    r = run_cli("formats", "--json")
    assert r.code == 0, r.err
    row = next(x for x in json.loads(r.out)["formats"] if x["format"] == "executorch")
    assert row["int8"] and row["runtime"] == "executorch" and "brings torch" in row["what"]
    assert "executorch" not in json.loads(r.out)["planned"]
