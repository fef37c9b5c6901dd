"""Runners: the small interface every runtime implements (load an artifact, run a batch, return named
outputs), checked on the onnxruntime runner against onnxruntime itself and against Predictor; the
registry's errors (an unknown name, a runtime that is not installed) and the fixed-batch padding."""
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import assert_one_line_error
from sedeploy.core import contract
from sedeploy.core.errors import UserError
from sedeploy.runtime.model import ModelInfo
from sedeploy.runtime.predictor import Predictor, softmax
from sedeploy.runtime.runners import RUNNERS, Runner, load_runner, runner_class
from sedeploy.runtime.runners.ort import OrtRunner

ATOL = 1e-5   # the same graph on the same provider; only thread scheduling may reorder float sums


def _batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 32, 32)).astype(np.float32)


def test_onnxruntime_runner_returns_every_named_output(fm_onnx):
    import onnxruntime as ort
    r = load_runner("onnxruntime", fm_onnx, provider="cpu", threads=1)
    assert isinstance(r, OrtRunner) and isinstance(r, Runner)
    assert r.provider == "CPUExecutionProvider" and r.path == Path(fm_onnx)
    assert r.input_name == contract.INPUT_NAME
    assert r.output_names == [contract.LOGITS, "se1", "se2", "se3", "feature_map"]
    x = _batch(5)
    got = r.run(x)
    assert list(got) == r.output_names
    # onnxruntime called directly, without any sedeploy code in between
    sess = ort.InferenceSession(str(fm_onnx), providers=["CPUExecutionProvider"])
    ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {sess.get_inputs()[0].name: x})))
    for name in r.output_names:
        assert got[name].shape[0] == 5
        np.testing.assert_allclose(got[name], ref[name], atol=ATOL, rtol=0, err_msg=name)


def test_runner_outputs_equal_the_predictors(fm_onnx, tmp_path):
    files = []
    for i, v in enumerate((0, 90, 200)):
        files.append(tmp_path / f"{i}.png")
        Image.new("L", (28, 28), v).save(files[-1])
    p = Predictor(fm_onnx, "cpu", threads=1, workers=0)
    x = np.stack([p.to_input(p.load(f)) for f in files])
    outs = load_runner("onnxruntime", fm_onnx, provider="cpu", threads=1).run(x)
    preds = p.predict(files, topk=10)
    for i, pred in enumerate(preds):
        assert set(pred.outputs) == set(outs)
        for name, o in outs.items():
            np.testing.assert_allclose(pred.outputs[name], o[i], atol=ATOL, rtol=0, err_msg=name)
        np.testing.assert_allclose(pred.probs, softmax(outs["logits"][i].astype(np.float64)), atol=ATOL)


def test_predictor_runs_through_its_runner(fm_onnx):
    p = Predictor(fm_onnx, "cpu", threads=1)
    assert isinstance(p.runner, OrtRunner) and p.info is p.runner.info and p.provider == p.runner.provider
    assert p.session is p.runner.session            # kept for callers of onnxruntime's own API (serve)
    x = _batch(3, seed=1)
    np.testing.assert_allclose(p.run(x)["se3"], p.runner.run(x)["se3"], atol=ATOL, rtol=0)
    assert p.model_seconds > 0


class _Doubler(Runner):
    """A runner with a fixed batch of 2 whose 'graph' doubles its input: the padding is visible."""

    def __init__(self) -> None:
        self.path, self.provider, self.calls = Path("fake"), "numpy", []
        self.info = ModelInfo(Path("fake"), {}, ["a"], [0.0], [1.0], [1, 2, 2], "input", ["logits", "n"], [], None, 2)

    def _invoke(self, batch):
        assert batch.shape[0] == 2                      # the graph only ever sees its own batch size
        self.calls.append(batch.copy())
        return {"logits": batch * 2, "n": np.full((2, 1), float(len(self.calls)), np.float32)}


def test_fixed_batch_runner_pads_the_last_chunk_and_trims_it():
    r = _Doubler()
    x = np.arange(3 * 4, dtype=np.float32).reshape(3, 1, 2, 2) + 1
    out = r.run(x)
    assert len(r.calls) == 2 and not r.calls[1][1].any()         # the second call: one image + zero padding
    np.testing.assert_array_equal(out["logits"], x * 2)          # three rows back, in order
    assert out["n"][:, 0].tolist() == [1.0, 1.0, 2.0]
    assert r.run(x[:2])["logits"].shape[0] == 2 and len(r.calls) == 3


def test_unknown_runner_names_the_choices(fm_onnx):
    with pytest.raises(UserError, match="unknown runner 'tflite'; choose one of: onnxruntime") as e:
        load_runner("tflite", fm_onnx)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="choose one of: " + ", ".join(RUNNERS)):
        Predictor(fm_onnx, "cpu", runner="nope")


def test_missing_runtime_package_gives_the_install_hint(fm_onnx, monkeypatch, run_cli, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)     # `import onnxruntime` now fails
    for call in (lambda: runner_class("onnxruntime"), lambda: load_runner("onnxruntime", fm_onnx),
                 lambda: Predictor(fm_onnx, "cpu")):
        with pytest.raises(UserError, match=r"needs the onnxruntime package.*pip install 'sedeploy\[runtime\]'"):
            call()
    Image.new("L", (28, 28), 9).save(tmp_path / "x.png")
    # the precision choice (auto) would import onnxruntime too: the runner's check comes first
    assert_one_line_error(run_cli("infer", tmp_path / "x.png", "--model", fm_onnx), "sedeploy[runtime]")
