"""The one validation site (runtime.options): every bad option of `infer` is a UserError raised by the
library before any model is loaded, the same one-line error (exit 2) on the command line; Predictor
and `serve` go through the same checks."""
import pytest
from PIL import Image

from conftest import assert_one_line_error
from sedeploy.core.errors import EXIT_USAGE, UserError
from sedeploy.runtime import infer as infer_mod
from sedeploy.runtime.infer import start_infer
from sedeploy.runtime.options import InferOptions, ModelOptions
from sedeploy.runtime.predictor import Predictor

# (option field, CLI flag, bad value, what the library's message says); click's own choices catch the
# named ones first on the command line, with their own one-line message naming the value
BAD = [
    ("topk", "--topk", 0, "--topk must be positive, got 0"),
    ("channels", "--channels", -3, "--channels must be positive, got -3"),
    ("batch_size", "--batch-size", 0, "--batch-size must be positive, got 0"),
    ("threads", "--threads", 0, "--threads must be positive, got 0"),
    ("threads", "--threads", -2, "--threads must be positive, got -2"),
    ("workers", "--workers", -1, "--workers must be 0 or more, got -1"),
    ("provider", "--provider", "tpu", "unknown provider 'tpu'; choose one of: auto, cpu, cuda"),
    ("precision", "--precision", "int4", "unknown precision 'int4'; choose one of: auto, fp32, int8"),
    ("graph_opt", "--graph-opt", "max", "unknown graph optimization level 'max'; choose one of: none, basic"),
    ("background", "--background", "pink", "unknown background 'pink'; choose one of: black, white, grey"),
]


@pytest.fixture
def image(tmp_path):
    Image.new("L", (28, 28), 120).save(tmp_path / "x.png")
    return tmp_path / "x.png"


@pytest.mark.parametrize("field, flag, value, message", BAD, ids=[f"{b[0]}={b[2]}" for b in BAD])
def test_each_bad_option_is_one_error_before_anything_loads(field, flag, value, message, fm_onnx, image,
                                                          monkeypatch, run_cli):
    opts = InferOptions(model=str(fm_onnx), **{field: value})
    with pytest.raises(UserError) as e:
        opts.validate()
    assert str(e.value).startswith(message) and "\n" not in str(e.value) and e.value.exit_code == EXIT_USAGE

    def no_loading(*a, **k):
        raise AssertionError("a model was loaded before the options were checked")
    monkeypatch.setattr(infer_mod.Predictor, "from_options", no_loading)
    with pytest.raises(UserError, match=message.split(";")[0]):
        start_infer(opts, [str(image)])
    monkeypatch.undo()
    r = run_cli("infer", image, "--model", fm_onnx, flag, value)
    assert_one_line_error(r, str(value), flag if field in ("topk", "channels", "batch_size", "threads", "workers")
                          else "")


@pytest.mark.parametrize("field, value, message", [(b[0], b[2], b[3]) for b in BAD
                                                    if b[0] in ("threads", "workers", "provider", "precision",
                                                                "graph_opt", "background")])
def test_predictor_checks_through_the_same_site(field, value, message, fm_onnx):
    kw = {"provider": "cpu", field: value}
    with pytest.raises(UserError) as e:
        Predictor(fm_onnx, **kw)
    assert str(e.value).startswith(message)
    with pytest.raises(UserError) as e2:
        ModelOptions(str(fm_onnx), **kw).validate()
    assert str(e2.value) == str(e.value)


def test_heatmap_checks_need_the_model(fm_onnx, image, tmp_path, run_cli):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(UserError, match="heatmap directory"):
        start_infer(InferOptions(model=str(fm_onnx), heatmaps=str(blocker)), [str(image)])
    assert_one_line_error(run_cli("infer", image, "--model", fm_onnx, "--heatmaps", blocker), "heatmap directory")
    run = start_infer(InferOptions(model=str(fm_onnx), heatmaps=str(tmp_path / "h"), precision="fp32"), [str(image)])
    assert run.outdir == tmp_path / "h" and run.outdir.is_dir()


def test_logits_only_model_cannot_draw_heatmaps(trained_fm, image, tmp_path, run_cli):
    from sedeploy.export.exporter import ExportOptions, export_checkpoint
    export_checkpoint(str(trained_fm / "best.pt"), str(tmp_path / "lo"),
                      ExportOptions(formats=("onnx",), extras=False, simplify=False), log=lambda s: None)
    model = tmp_path / "lo" / "model.onnx"
    with pytest.raises(UserError, match="no feature_map output; re-export without --logits-only"):
        start_infer(InferOptions(model=str(model), heatmaps=str(tmp_path / "h")), [str(image)])
    assert_one_line_error(run_cli("infer", image, "--model", model, "--heatmaps", tmp_path / "h2"), "feature_map")
    run = start_infer(InferOptions(model=str(model)), [str(image)])       # without heatmaps it runs
    (r,) = list(run.results())
    assert r.record["top"] and "heatmaps" not in r.record


def test_infer_run_yields_records_in_order_and_names_heatmaps_apart(fm_onnx, tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        Image.new("L", (28, 28), 50).save(tmp_path / sub / "same.png")
    (tmp_path / "a" / "bad.png").write_text("no image")
    (tmp_path / "empty").mkdir()
    run = start_infer(InferOptions(model=str(fm_onnx), heatmaps=str(tmp_path / "h"), topk=2, precision="fp32",
                                   provider="cpu"), [str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "empty")])
    assert [str(p) for p in run.paths] == [str(tmp_path / "a" / "bad.png"), str(tmp_path / "a" / "same.png"),
                                           str(tmp_path / "b" / "same.png")]
    assert len(run.failures) == 1 and "directory has no images" in str(run.failures[0])
    out = list(run.results())
    assert isinstance(out[0], Exception) and "not an image" in str(out[0])
    a, b = out[1].record, out[2].record
    assert a["image"].endswith("a/same.png") and len(a["top"]) == 2 and a["precision"] == "fp32"
    assert a["provider"] == "CPUExecutionProvider"
    assert a["heatmaps"]["files"]["heatmap"].endswith("same_heatmap.png")
    assert b["heatmaps"]["files"]["heatmap"].endswith("same_2_heatmap.png")      # not over the first


def test_serve_checks_its_options_at_the_same_site(fm_onnx, run_cli):
    pytest.importorskip("starlette")
    assert_one_line_error(run_cli("serve", "--model", fm_onnx, "--threads", "0"), "--threads must be positive")
    from sedeploy.serve.model import ModelSpec, ServedModel
    m = ServedModel(ModelSpec("m", fm_onnx), "cpu", -1)
    with pytest.raises(UserError, match="--threads must be positive, got -1"):
        m.load()
    assert ServedModel(ModelSpec("m", fm_onnx), "cpu").options().threads >= 1   # serve's default: cores - 1
