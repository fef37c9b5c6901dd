"""Bench: well-formed rows, JSON and CSV on a tiny budget; skipped/failed backends; int8/fp16 exports."""
import csv
import json

import numpy as np
import onnx
import pytest

from conftest import assert_one_line_error
from sedeploy.core import contract
from sedeploy.bench import BACKENDS, PYTORCH_CPU, BenchConfig, model_flops, run_bench
from sedeploy.export.exporter import ExportOptions, export_checkpoint


@pytest.fixture(scope="module")
def fm_full(trained_fm, tmp_path_factory, fmnist_dir):
    """model.onnx + model.ts + model.int8.onnx + model.fp16.onnx of the tiny trained Fashion-MNIST model."""
    d = tmp_path_factory.mktemp("bench")
    man = export_checkpoint(str(trained_fm / "best.pt"), str(d),
                            ExportOptions(int8=True, half=True, calib=128, data_dir=str(fmnist_dir),
                                          # the gate is tested in test_export.py; a 1-epoch toy model
                                          # may lose a point or two in int8, which is not what these test
                                          int8_min_agreement=0, int8_max_drop=100, int8_se_atol=1),
                            log=lambda s: None)
    return d, man


FAST_BACKENDS = tuple(b for b in BACKENDS if b != "torch-compile")   # inductor compiles for minutes: slow test


def test_bench_rows_json_csv(run_cli, fm_full, fmnist_dir, tmp_path):
    d, _ = fm_full
    r = run_cli("bench", "--model", d / "model.onnx", "--batch-sizes", "1,4", "--warmup", "1", "--min-time", "0.01",
                "--backends", ",".join(FAST_BACKENDS), "--data-dir", fmnist_dir, "--json",
                "--save-json", tmp_path / "b.json", "--save-csv", tmp_path / "b.csv")
    assert r.code == 0, r.err
    res = json.loads(r.out)                                      # --json: the results on stdout, nothing else
    assert res == json.loads((tmp_path / "b.json").read_text())
    rows = res["rows"]
    assert [(x["backend"], x["batch"]) for x in rows] == [(b, n) for b in FAST_BACKENDS for n in (1, 4)]
    by = {(x["backend"], x["batch"]): x for x in rows}
    for b in ("pytorch", "pytorch-cl", "torchscript", "ort-cpu", "ort-cpu-int8"):
        for n in (1, 4):
            x = by[(b, n)]
            assert x["status"] == "ok", x
            assert x["p50_ms"] > 0 and x["images_per_s"] > 0 and x["size_mb"] > 0   # percentiles: test_summarize_*
            assert x["accuracy"] == pytest.approx(_onnx_accuracy(d / "model.onnx", fmnist_dir), abs=1.01), x
            assert x["top1_agreement"] >= 50
    assert by[("pytorch", 1)]["max_abs_diff"] == 0
    for b in ("pytorch-cl", "ort-cpu"):
        assert by[(b, 1)]["max_abs_diff"] < 1e-4 and by[(b, 1)]["top1_agreement"] == 100
        assert by[(b, 1)]["accuracy"] == by[("pytorch", 1)]["accuracy"]
    assert by[("ort-cpu-int8", 1)]["size_mb"] < by[("ort-cpu", 1)]["size_mb"] / 2
    assert "fp32" in by[("ort-cpu-int8", 4)]["note"] and by[("ort-cpu-int8", 4)]["peak_pct"] is None
    assert by[("ort-cpu", 4)]["sgemm_pct"] > 0 and res["header"]["sgemm"]["flops"] > 0
    import importlib.util
    ov = by[("openvino", 1)]
    if importlib.util.find_spec("openvino") is None:
        assert ov["status"] == "skipped: openvino is not installed (pip install 'sedeploy[openvino]')"
    else:                             # the row runs the set's OpenVINO IR (tests/test_formats_openvino.py), not the .onnx
        assert ov["status"] == "skipped: no model.openvino.xml (run sedeploy export --formats openvino)", ov
    import onnxruntime as ort
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert by[("ort-cuda", 1)]["status"].startswith("skipped: ") and "onnxruntime-gpu" in by[("ort-cuda", 1)]["status"]
    # the headline compares with the fastest PyTorch row, whichever it is
    for n in (1, 4):
        s = res["summary"][str(n)]
        torch_ips = {b: by[(b, n)]["images_per_s"] for b in PYTORCH_CPU if b in FAST_BACKENDS}
        assert s["best_pytorch_backend"] == max(torch_ips, key=torch_ips.get)
        assert s["ort_vs_best_pytorch"] <= by[("ort-cpu", n)]["images_per_s"] / by[("pytorch", n)]["images_per_s"]
    assert "machine:" in r.err and "ISA: AVX2" in r.err and "best PyTorch row" in r.err and "ort-cpu-int8" in r.err
    with open(tmp_path / "b.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)


def _onnx_accuracy(path, data_dir) -> float:
    """Top-1 % of the fp32 ONNX model on the test set, computed here without the bench (the oracle)."""
    import onnxruntime as ort
    from sedeploy.core.arrays import load_arrays
    from sedeploy.core.datasets import normalize_batch
    _, x, y = load_arrays("fashion-mnist", str(data_dir), "test")
    meta = contract.decode_metadata({p.key: p.value for p in onnx.load(str(path)).metadata_props})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {"input": normalize_batch(x, meta["mean"], meta["std"])})[0]
    return float(100 * (logits.argmax(1) == y).mean())


def test_summarize_percentiles_of_known_samples():
    from sedeploy.core.timing import summarize
    s = summarize([k / 1000 for k in range(101, 0, -1)])          # 1..101 ms, given in reverse order
    assert s == pytest.approx({"p50_ms": 51.0, "p90_ms": 91.0, "p99_ms": 100.0, "mean_ms": 51.0, "runs": 101})
    s = summarize([0.004, 0.001, 0.002, 0.003])                   # numpy's linear interpolation, by hand
    assert s["p50_ms"] == pytest.approx(2.5) and s["p90_ms"] == pytest.approx(3.7)
    assert s["p99_ms"] == pytest.approx(3.97) and s["mean_ms"] == pytest.approx(2.5)


def test_measure_counts_warmup_and_runs():
    from sedeploy.core.timing import interleaved, measure
    calls = []
    s = measure(lambda: calls.append(1), warmup=3, min_time=0.0, min_runs=7)
    assert len(calls) == 3 + 7 and s["runs"] == 7
    calls.clear()
    assert measure(lambda: calls.append(1), warmup=0, min_time=60.0, min_runs=1, max_runs=5)["runs"] == 5
    order = []
    res = interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, warmup=1, rounds=2,
                      per_round=3)
    assert order == ["a", "b"] + ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3   # alternating rounds
    assert res["a"]["runs"] == 6 and res["b"]["runs"] == 6


def test_bench_deprecated_data_alias(run_cli, fm_full, fmnist_dir, tmp_path):
    d, _ = fm_full
    r = run_cli("bench", "--model", d / "model.onnx", "--batch-sizes", "2", "--warmup", "0", "--min-time", "0",
                "--repeats", "1", "--backends", "ort-cpu", "--data", "fashion-mnist", "--data-dir", fmnist_dir,
                "--csv", tmp_path / "b.csv")
    assert r.code == 0, r.err
    assert "--data is deprecated; use --dataset" in r.err and (tmp_path / "b.csv").exists()
    assert "200 fashion-mnist test images" in r.out
    assert_one_line_error(run_cli("bench", "--model", d / "model.onnx", "--dataset", "mnist"), "fashion-mnist")


def test_int8_notes_say_when_int8_loses():
    from sedeploy.bench import Row
    from sedeploy.bench.report import annotate, headline
    rows = [Row("ort-cpu", 1, "ok", images_per_s=1000.0), Row("ort-cpu", 64, "ok", images_per_s=1000.0),
            Row("ort-cpu-int8", 1, "ok", images_per_s=800.0), Row("ort-cpu-int8", 64, "ok", images_per_s=1900.0),
            Row("pytorch", 64, "ok", images_per_s=400.0), Row("pytorch-cl", 64, "ok", images_per_s=500.0)]
    annotate(rows)
    assert rows[2].note.startswith("int8 NOT faster than fp32 here (0.80x)")
    assert rows[3].note == "int8 1.90x fp32"
    s = headline([r.__dict__ for r in rows])
    assert s["64"]["best_pytorch_backend"] == "pytorch-cl" and s["64"]["ort_vs_best_pytorch"] == 2.0
    assert s["1"]["best_pytorch_backend"] is None and s["1"]["int8_vs_fp32"] == 0.8


def test_headline_names_the_fastest_file_that_agrees():
    from sedeploy.bench import Row
    from sedeploy.bench.report import headline, summary_lines
    rows = [Row("ort-cpu", 64, "ok", images_per_s=1000.0, top1_agreement=100.0),
            Row("ort-cpu-int8", 64, "ok", images_per_s=3000.0, top1_agreement=90.0),     # disagrees: never fastest
            Row("ncnn", 64, "ok", images_per_s=1500.0, top1_agreement=100.0),
            Row("tflite", 64, "ok", images_per_s=2500.0, top1_agreement=100.0, verified=False),  # changed file
            Row("torch-compile", 64, "ok", images_per_s=5000.0),                         # PyTorch: not a file
            Row("pytorch", 64, "ok", images_per_s=500.0)]
    s = headline([r.__dict__ for r in rows])["64"]
    assert (s["fastest_artifact"], s["fastest_vs_ort_fp32"], s["fastest_vs_best_pytorch"]) == ("ncnn", 1.5, 0.3)
    assert summary_lines({"64": s})[0].startswith("batch 64: fastest file: ncnn (1,500 img/s, 0.30x the best")


@pytest.mark.slow
def test_bench_torch_compile_row(fm_full, fmnist_dir):
    d, _ = fm_full
    res = run_bench(BenchConfig(model=str(d / "model.onnx"), batch_sizes=(2,), warmup=1, min_time=0.0, repeats=1,
                                backends=("pytorch", "torch-compile"), data_dir=str(fmnist_dir), limit=50),
                    log=lambda s: None)
    row = {x["backend"]: x for x in res["rows"]}["torch-compile"]
    import shutil
    if not any(shutil.which(c) for c in ("cc", "gcc", "clang", "g++")):
        assert row["status"].startswith("skipped: torch.compile needs a C/C++ compiler"), row
        return
    assert row["status"] == "ok", row                    # a compiler is here: compiling must work
    assert row["max_abs_diff"] < 1e-3 and row["top1_agreement"] == 100


def _compile_row(fm_full, fmnist_dir) -> dict:
    d, _ = fm_full
    res = run_bench(BenchConfig(model=str(d / "model.onnx"), batch_sizes=(2,), warmup=0, min_time=0.0, repeats=1,
                                backends=("torch-compile",), data_dir=str(fmnist_dir), limit=20),
                    log=lambda s: None)
    return {x["backend"]: x for x in res["rows"]}["torch-compile"]


def test_bench_torch_compile_failure_is_a_failed_row(fm_full, fmnist_dir, monkeypatch):
    """A compile error where a compiler exists is a broken backend: "failed", never hidden as "skipped"."""
    import shutil
    import torch

    def broken(*a, **k):
        raise RuntimeError("inductor codegen error (forced by the test)\nsecond line")
    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(shutil, "which", lambda c: "/usr/bin/" + c)
    assert _compile_row(fm_full, fmnist_dir)["status"] == (
        "failed: torch.compile failed: inductor codegen error (forced by the test)")


def test_bench_torch_compile_without_a_compiler_is_skipped(fm_full, fmnist_dir, monkeypatch):
    import shutil
    import torch
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("compiled without a compiler"))
    monkeypatch.setattr(shutil, "which", lambda c: None)
    assert _compile_row(fm_full, fmnist_dir)["status"] == (
        "skipped: torch.compile needs a C/C++ compiler for inductor's CPU kernels (none on PATH)")


def test_bench_missing_backends_are_skipped_not_fatal(tmp_path, fm_full):
    d, _ = fm_full
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "model.onnx").write_bytes((d / "model.onnx").read_bytes())
    res = run_bench(BenchConfig(model=str(lone / "model.onnx"), batch_sizes=(2,), warmup=0, min_time=0.0,
                                backends=("pytorch", "torchscript", "ort-cpu", "ort-cpu-int8"), limit=50),
                    log=lambda s: None)
    st = {x["backend"]: x["status"] for x in res["rows"]}
    assert st["pytorch"] == "skipped: no checkpoint (pass --ckpt)"
    assert st["torchscript"].startswith("skipped: no model.ts")
    assert st["ort-cpu-int8"].startswith("skipped: no model.int8.onnx")
    assert st["ort-cpu"] == "ok"


def test_bench_failed_backend_does_not_abort(tmp_path, fm_full):
    d, _ = fm_full
    broken = tmp_path / "b"
    broken.mkdir()
    (broken / "model.onnx").write_bytes((d / "model.onnx").read_bytes())
    (broken / "model.int8.onnx").write_bytes(b"not onnx")
    res = run_bench(BenchConfig(model=str(broken / "model.onnx"), batch_sizes=(1,), warmup=0, min_time=0.0,
                                backends=("ort-cpu-int8", "ort-cpu"), limit=20), log=lambda s: None)
    st = {x["backend"]: x["status"] for x in res["rows"]}
    assert st["ort-cpu-int8"].startswith("failed: ") and st["ort-cpu"] == "ok"


def test_bench_bad_options(run_cli, fm_full):
    d, _ = fm_full
    assert_one_line_error(run_cli("bench", "--model", d / "model.onnx", "--backends", "tensorrt"), "unknown backend")
    assert_one_line_error(run_cli("bench", "--model", d / "model.onnx", "--batch-sizes", "1,x"), "--batch-sizes")
    assert_one_line_error(run_cli("bench", "--model", d / "model.onnx", "--batch-sizes", "0"), "positive")


def test_int8_keeps_contract_metadata_and_top1(fm_full, fmnist_dir):
    d, man = fm_full
    fp = onnx.load(str(d / "model.onnx"))
    q = onnx.load(str(d / "model.int8.onnx"))
    assert [o.name for o in q.graph.output] == [o.name for o in fp.graph.output]
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in q.graph.output)
    mq = contract.decode_metadata({p.key: p.value for p in q.metadata_props})
    mf = contract.decode_metadata({p.key: p.value for p in fp.metadata_props})
    assert mq["precision"] == "int8" and mq["classes"] == mf["classes"] and mq["mean"] == mf["mean"]
    assert any(n.op_type in ("QLinearConv", "QuantizeLinear") for n in q.graph.node)
    # agreement with fp32 on a small real batch
    import onnxruntime as ort
    from sedeploy.core.datasets import normalize_batch
    from sedeploy.core.arrays import load_arrays
    from sedeploy.core.errors import UserError
    try:  # real Fashion-MNIST test images when Debian's package is installed, else the synthetic set
        _, x, _ = load_arrays("fashion-mnist", None, "test")
    except UserError:
        _, x, _ = load_arrays("fashion-mnist", str(fmnist_dir), "test")
    x = normalize_batch(x[:64], [0.2860], [0.3530])
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    a, b = run(d / "model.onnx"), run(d / "model.int8.onnx")
    assert (a[0].argmax(1) == b[0].argmax(1)).mean() >= 0.9
    for fa, fb in zip(a[1:4], b[1:4]):  # SE weights stay float and close
        assert fb.dtype == np.float32 and np.abs(fa - fb).max() < 0.1
    assert {f["format"] for f in man["files"]} == {"onnx", "torchscript", "int8", "fp16"}


def test_fp16_graph_float32_io(fm_full):
    d, _ = fm_full
    h = onnx.load(str(d / "model.fp16.onnx"))
    assert h.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in h.graph.output)
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in h.graph.initializer)
    meta = contract.decode_metadata({p.key: p.value for p in h.metadata_props})
    assert meta["precision"] == "fp16"


def test_model_flops_reference():
    cfg = dict(in_channels=3, input_size=32, widths=[32, 64, 128], hidden=512, num_classes=10, se=True)
    # ~11.4 M multiply-adds for the reference SE-CNN (SPEC section 4)
    assert 11.2e6 < model_flops(cfg) / 2 < 11.6e6
    macs_fc = 2048 * 512 + 512 * 10
    assert model_flops({**cfg, "se": False}) / 2 - (3 * 32 * 9 * 1024 + 32 * 64 * 9 * 256 + 64 * 128 * 9 * 64) == macs_fc


def test_isa_features_from_flags():
    from sedeploy.core.hardware import has_vnni, isa_features, isa_summary
    zen3 = {"fpu", "avx", "avx2", "fma"}
    assert isa_features(zen3) == {"AVX2": True, "AVX-512F": False, "AVX512-VNNI": False, "AVX-VNNI": False,
                                  "AMX": False}
    assert not has_vnni(zen3) and has_vnni(zen3 | {"avx512f", "avx512_vnni"}) and has_vnni(zen3 | {"avx_vnni"})
    assert has_vnni({"avx512f", "amx_tile", "amx_int8"})
    assert isa_summary(set()) == "AVX2 unknown, AVX-512F unknown, AVX512-VNNI unknown, AVX-VNNI unknown, AMX unknown"


def test_sgemm_is_measured_on_the_threads_asked():
    from sedeploy.core.hardware import sgemm_flops
    s = sgemm_flops(1, n=256, min_time=0.01)
    assert s["threads"] == 1 and s["by_library"]["numpy"] > 1e8 and s["flops"] == max(s["by_library"].values())
