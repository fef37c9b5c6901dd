"""Precision choice: auto takes int8 only where it measures faster, remembers it per model and CPU,
says why; explicit choices and missing files; the CLI reports the choice."""
import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from conftest import assert_one_line_error
from sedeploy.core.errors import UserError
from sedeploy.runtime.precision import MIN_GAIN, cache_key, choose_precision


def heavier(src, dst, matmuls: int = 24) -> None:
    """dst = src plus an extra output computed by a chain of 1024x1024 MatMuls on the flattened input:
    the same model, several times slower (a stand-in for an int8 graph that loses on this CPU)."""
    m = onnx.load(str(src))
    g = m.graph
    w = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32) / 32
    g.initializer.append(numpy_helper.from_array(w, "heavy_w"))
    g.node.append(helper.make_node("Flatten", [g.input[0].name], ["heavy_0"], axis=1))
    for i in range(matmuls):
        g.node.append(helper.make_node("MatMul", [f"heavy_{i}", "heavy_w"], [f"heavy_{i + 1}"]))
    g.output.append(helper.make_tensor_value_info(f"heavy_{matmuls}", onnx.TensorProto.FLOAT, None))
    onnx.save(m, str(dst))


@pytest.fixture
def pair(fm_onnx, tmp_path, monkeypatch):
    """A folder with model.onnx and a model.int8.onnx beside it; the cache in tmp_path."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    shutil.copy(fm_onnx, tmp_path / "model.onnx")
    shutil.copy(fm_onnx, tmp_path / "model.int8.onnx")
    return tmp_path / "model.onnx"


def fixed(fp32_ms, int8_ms, calls=None):
    def measure(*args):
        if calls is not None:
            calls.append(args)
        return {"fp32_ms": fp32_ms, "int8_ms": int8_ms}
    return measure


@pytest.mark.parametrize("fp32_ms,int8_ms,expect", [(1.0, 1.3, "fp32"), (2.0, 1.0, "int8"),
                                                     (1.0, 1.0 / (MIN_GAIN - 0.05), "fp32")])
def test_auto_takes_int8_only_when_clearly_faster(pair, fp32_ms, int8_ms, expect):
    c = choose_precision(pair, "auto", "cpu", measure=fixed(fp32_ms, int8_ms))
    assert c.precision == expect and c.path.name == ("model.int8.onnx" if expect == "int8" else "model.onnx")
    assert f"int8 runs {fp32_ms / int8_ms:.2f}x fp32 here" in c.reason and "measured now" in c.reason
    assert not c.cached


def test_choice_is_remembered_per_model_cpu_and_threads(pair, tmp_path):
    calls = []
    first = choose_precision(pair, "auto", "cpu", threads=2, measure=fixed(2.0, 1.0, calls))
    again = choose_precision(pair, "auto", "cpu", threads=2, measure=fixed(1.0, 9.0, calls))
    assert len(calls) == 1 and again.cached and again.precision == first.precision == "int8"
    assert "cached" in again.reason and str(tmp_path / "cache") in again.reason
    other = choose_precision(pair, "auto", "cpu", threads=1, measure=fixed(1.0, 9.0, calls))   # other key
    assert len(calls) == 2 and other.precision == "fp32"
    data = json.loads((tmp_path / "cache" / "sedeploy" / "precision.json").read_text())
    assert set(data) == {cache_key(pair, pair.with_name("model.int8.onnx"), t, 32) for t in (1, 2)}
    pair.with_name("model.int8.onnx").write_bytes(pair.read_bytes() + b"\0")   # a re-exported int8 file
    choose_precision(pair, "auto", "cpu", threads=2, measure=fixed(1.0, 9.0, calls))
    assert len(calls) == 3


def test_damaged_cache_is_measured_again_and_rewritten(pair, tmp_path):
    cache = tmp_path / "cache" / "sedeploy" / "precision.json"
    cache.parent.mkdir(parents=True)
    cache.write_text("{not json")
    calls = []
    assert choose_precision(pair, "auto", "cpu", measure=fixed(1.0, 2.0, calls)).precision == "fp32"
    assert len(calls) == 1 and len(json.loads(cache.read_text())) == 1


def test_auto_measures_and_picks_fp32_where_int8_really_loses(pair, fm_onnx, tmp_path):
    heavier(fm_onnx, pair.with_name("model.int8.onnx"))
    c = choose_precision(pair, "auto", "cpu", threads=1, batch=4)
    assert c.precision == "fp32" and c.int8_ms > c.fp32_ms, c
    # and the other way round: the measurement, not a preference for either file, decides
    (tmp_path / "b").mkdir()
    heavier(fm_onnx, tmp_path / "b" / "model.onnx")
    shutil.copy(fm_onnx, tmp_path / "b" / "model.int8.onnx")
    c = choose_precision(tmp_path / "b" / "model.onnx", "auto", "cpu", threads=1, batch=4)
    assert c.precision == "int8" and c.fp32_ms > MIN_GAIN * c.int8_ms, c


def test_explicit_choices(pair, fm_onnx):
    assert choose_precision(pair, "fp32").path == pair
    assert choose_precision(pair, "int8").path.name == "model.int8.onnx"
    given = choose_precision(pair.with_name("model.int8.onnx"), "auto")
    assert given.precision == "int8" and "given explicitly" in given.reason
    assert choose_precision(fm_onnx, "auto").reason.startswith("no model.int8.onnx beside the model")
    with pytest.raises(UserError, match="no model.int8.onnx"):
        choose_precision(fm_onnx, "int8")
    with pytest.raises(UserError, match="auto, fp32, int8"):
        choose_precision(pair, "int4")
    assert choose_precision(pair, "auto", "cuda").reason == "int8 is a CPU path; fp32 on CUDA"


def test_cli_says_what_it_chose_and_why(run_cli, pair, tmp_path):
    from PIL import Image
    heavier(pair, pair.with_name("model.int8.onnx"))
    Image.new("L", (28, 28), 90).save(tmp_path / "x.png")
    r = run_cli("infer", tmp_path / "x.png", "--model", pair, "--json", "--threads", "1", "--batch-size", "4")
    assert r.code == 0, r.err
    assert json.loads(r.out)["precision"] == "fp32"
    assert "precision fp32: int8 runs" in r.err and "measured now" in r.err
    r = run_cli("infer", tmp_path / "x.png", "--model", pair, "--threads", "1", "--batch-size", "4")
    assert "; precision fp32: int8 runs" in r.err and "cached" in r.err
    r = run_cli("infer", tmp_path / "x.png", "--model", pair, "--precision", "int8", "--json")
    assert json.loads(r.out)["precision"] == "int8"
    assert_one_line_error(run_cli("infer", tmp_path / "x.png", "--model", tmp_path / "nope.onnx",
                                  "--precision", "int8"), "nope.int8.onnx")


def test_serve_loads_the_chosen_precision(pair):
    """`sedeploy serve --precision int8` serves model.int8.onnx beside the model; fp32 (None) the file given."""
    pytest.importorskip("starlette")
    from sedeploy.serve.model import ModelSpec, ServedModel
    for precision, name in ((None, "model.onnx"), ("int8", "model.int8.onnx")):
        m = ServedModel(ModelSpec("m", pair), "cpu", 1, precision)
        m.load()
        assert m.predictor.path.name == name
