"""Runtime: torch-free inference through image files vs the PyTorch path, preprocessing, heatmaps,
providers, bad input, CLI formats."""
import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image, ImageOps

from conftest import assert_one_line_error
from sedeploy.core.errors import UserError
from sedeploy.export.exporter import ExportOptions, export_checkpoint
from sedeploy.runtime import explain as hm
from sedeploy.runtime.predictor import Predictor
from sedeploy.core.decode import load_image, to_model_mode
from sedeploy.checkpoint import build_model, load_checkpoint


@pytest.fixture(scope="module")
def fm_export(trained_fm, tmp_path_factory):
    d = tmp_path_factory.mktemp("fm_export")
    export_checkpoint(str(trained_fm / "best.pt"), str(d), ExportOptions(formats=("onnx",)), log=lambda s: None)
    return d / "model.onnx", trained_fm / "best.pt"


def sample_images(d: Path, seed: int = 0):
    """Images of many kinds and sizes: grey, RGB, RGBA, palette, 16-bit, CMYK JPEG, EXIF-rotated, odd sizes."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    files = []
    def save(name, im, **kw):
        p = d / name
        im.save(p, **kw)
        files.append(p)
    base = (rng.random((45, 37)) * 255).astype(np.uint8)
    base[10:30, 8:28] = 255
    save("grey.png", Image.fromarray(base))
    save("rgb_big.png", Image.fromarray((rng.random((300, 211, 3)) * 255).astype(np.uint8)))
    save("tiny.bmp", Image.fromarray((rng.random((7, 9, 3)) * 255).astype(np.uint8)))
    rgba = (rng.random((64, 64, 4)) * 255).astype(np.uint8)
    rgba[..., 3] = np.where(np.arange(64)[None, :] < 32, 255, 0)
    save("rgba.png", Image.fromarray(rgba, "RGBA"))
    save("palette.gif", Image.fromarray(base).convert("P"))
    save("deep16.png", Image.fromarray(base.astype(np.uint16) * 257))
    save("cmyk.jpg", Image.fromarray((rng.random((40, 50, 3)) * 255).astype(np.uint8)).convert("CMYK"), quality=95)
    ex = Image.Exif()
    ex[0x0112] = 6  # rotate 90 CW when displayed
    save("exif.jpg", Image.fromarray((rng.random((20, 60, 3)) * 255).astype(np.uint8)), exif=ex, quality=95)
    return files


def reference_probs(ckpt_path, path):
    """The PyTorch path: PIL decode + EXIF + mode conversion, torchvision Resize/ToTensor/Normalize, eager model."""
    from torchvision import transforms as T
    ck = load_checkpoint(ckpt_path)
    model = build_model(ck)
    im = ImageOps.exif_transpose(Image.open(path))
    if im.mode == "I;16":
        im = Image.fromarray((np.asarray(im) / 257.0).round().astype(np.uint8))
    if im.mode == "P":
        im = im.convert("RGB")
    if im.mode == "RGBA":
        bg = Image.new("RGBA", im.size, (0, 0, 0, 255))
        im = Image.alpha_composite(bg, im).convert("RGB")
    im = im.convert("L" if ck["input_size"][0] == 1 else "RGB")
    tf = T.Compose([T.Resize(tuple(ck["input_size"][1:])), T.ToTensor(), T.Normalize(ck["mean"], ck["std"])])
    with torch.no_grad():
        return torch.softmax(model(tf(im)[None]), 1)[0].numpy()


def test_predictions_match_pytorch_path(fm_export, tmp_path):
    model, ckpt = fm_export
    files = sample_images(tmp_path)
    preds = Predictor(model, "cpu").predict(files, topk=10, batch_size=3)
    assert len(preds) == len(files)
    for f, p in zip(files, preds):
        ref = reference_probs(ckpt, f)
        np.testing.assert_allclose(p.probs, ref, atol=1e-5, rtol=0, err_msg=f.name)
        assert p.top[0].index == int(ref.argmax())
        assert abs(sum(t.prob for t in p.top) - 1) < 1e-5


def test_preprocess_modes():
    rgba = Image.new("RGBA", (4, 4), (200, 100, 50, 0))
    assert to_model_mode(rgba, 3).getpixel((0, 0)) == (0, 0, 0)                     # transparent -> background
    assert to_model_mode(rgba, 3, (255, 255, 255)).getpixel((0, 0)) == (255, 255, 255)
    deep = Image.fromarray(np.full((2, 2), 65535, np.uint16))
    assert to_model_mode(deep, 1).getpixel((0, 0)) == 255
    assert to_model_mode(Image.new("L", (2, 2), 9), 3).getpixel((0, 0)) == (9, 9, 9)
    assert to_model_mode(Image.new("CMYK", (2, 2)), 1).mode == "L"
    assert to_model_mode(Image.new("1", (2, 2), 1), 1).getpixel((0, 0)) == 255
    f = Image.fromarray(np.full((2, 2), 0.5, np.float32))
    assert to_model_mode(f, 1).getpixel((0, 0)) == 128


def test_exif_orientation_applied(tmp_path):
    ex = Image.Exif()
    ex[0x0112] = 6
    im = Image.new("RGB", (60, 20), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 6, 6))                                     # a red corner at the top left
    im.save(tmp_path / "r.png", exif=ex)
    out = load_image(tmp_path / "r.png", 3)
    assert out.size == (20, 60)
    assert out.getpixel((18, 1))[0] > 200 and out.getpixel((1, 1))[2] > 200   # orientation 6: rotated 90 cw


def test_heatmap_uses_the_last_se_output_and_feature_map(fm_export, tmp_path):
    """The predictor feeds the graph's own se3 and feature_map into the heatmap (formula: test_heatmap.py)."""
    model, _ = fm_export
    pred = Predictor(model, "cpu")
    p = pred.predict(sample_images(tmp_path)[:1])[0]
    fmap, w = p.outputs["feature_map"], p.outputs["se3"]
    ex = pred.explain(p, top=4, kind="se")
    np.testing.assert_allclose(ex["attention"], hm.se_attention(fmap, w), atol=1e-6)
    assert ex["method"] == "se" and [c for c, _ in ex["ranked"]] == list(np.argsort(-w, kind="stable")[:4])
    cm = hm.colormap(np.array([0.0, 1.0]))
    assert cm[0, 2] > 100 and cm[0, :2].max() < 60 and cm[1, 0] > 100 and cm[1, 1:].max() < 60  # blue low, red high


def test_infer_cli_heatmaps_and_json(run_cli, fm_export, tmp_path):
    model, _ = fm_export
    files = sample_images(tmp_path / "imgs")
    r = run_cli("infer", tmp_path / "imgs", "--model", model, "--heatmaps", tmp_path / "h", "--json", "--topk", "3")
    assert r.code == 0, r.err
    recs = [json.loads(line) for line in r.out.splitlines()]
    assert len(recs) == len(files) and all(len(x["top"]) == 3 for x in recs)
    assert recs[0]["provider"] == "CPUExecutionProvider"
    hmeta = recs[0]["heatmaps"]
    assert hmeta["method"] == "head-cam" and set(hmeta["top_channels"]) == {"se1", "se2", "se3"}
    for kind in ("heatmap", "channels", "se"):
        im = Image.open(hmeta["files"][kind])
        assert im.format == "PNG" and im.size[0] > 100
    assert not list((tmp_path / "h").glob("*.tmp"))
    r = run_cli("infer", files[0], "--model", model)
    assert r.code == 0 and r.out.startswith(str(files[0])) and "%" in r.out


def test_cnn_heatmap_fallback(run_cli, tmp_path):
    from test_export import write_ckpt
    write_ckpt(tmp_path / "best.pt", "cnn")
    export_checkpoint(str(tmp_path / "best.pt"), str(tmp_path), ExportOptions(formats=("onnx",)), log=lambda s: None)
    Image.new("RGB", (32, 32), (10, 200, 30)).save(tmp_path / "g.png")
    r = run_cli("infer", tmp_path / "g.png", "--model", tmp_path / "model.onnx", "--heatmaps", tmp_path / "h",
                "--json")
    assert r.code == 0, r.err
    rec = json.loads(r.out)
    # no SE outputs: channels ranked by spatial mean; the map is head-cam (a cnn export carries head_linear too)
    assert rec["heatmaps"]["method"] == "head-cam" and "spatial_mean" in rec["heatmaps"]["top_channels"]
    assert (tmp_path / "h" / "g_heatmap.png").exists() and not (tmp_path / "h" / "g_se.png").exists()
    r = run_cli("infer", tmp_path / "g.png", "--model", tmp_path / "model.onnx", "--heatmaps", tmp_path / "h")
    assert r.code == 0 and "(*_heatmap.png, *_channels.png)" in r.err, r.err    # the summary names no *_se.png


def test_providers(fm_export):
    model, _ = fm_export
    import onnxruntime as ort
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu installed: the CUDA side is covered by tests/test_gpu.py")
    assert Predictor(model, "auto").provider == "CPUExecutionProvider"      # auto falls back to the CPU
    with pytest.raises(UserError, match="onnxruntime-gpu"):
        Predictor(model, "cuda")                                             # cuda never runs on the CPU silently
    with pytest.raises(UserError, match="auto, cpu, cuda"):
        Predictor(model, "tpu")


def test_runtime_is_torch_free(fm_export, tmp_path):
    model, _ = fm_export
    Image.new("L", (28, 28), 200).save(tmp_path / "x.png")
    code = ("import sys\nfor m in ('torch', 'torchvision', 'onnx', 'onnxsim'): sys.modules[m] = None\n"
            "from sedeploy.cli import main\n"
            f"main(['infer', {str(tmp_path / 'x.png')!r}, '--model', {str(model)!r}, '--heatmaps', "
            f"{str(tmp_path / 'h')!r}, '--json'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["top"][0]["label"]
    proc = subprocess.run([sys.executable, "-c", "import sys; sys.modules['torch'] = None\n"
                           "from sedeploy.cli import main; main(['--help'])"], capture_output=True, text=True)
    assert proc.returncode == 0 and "infer" in proc.stdout


def _bomb_png(path: Path, w: int = 30000, h: int = 30000) -> None:
    def chunk(t, data):
        return struct.pack(">I", len(data)) + t + data + struct.pack(">I", zlib.crc32(t + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("case,needle", [
    ("missing", "no such file"), ("empty", "0 bytes"), ("text", "not an image"),
    ("truncated", "truncated"), ("bomb", "decompression bomb"), ("emptydir", "no images"),
    ("glob", "matches no files"),
])
def test_bad_images_in_a_batch(run_cli, fm_export, tmp_path, case, needle):
    model, _ = fm_export
    good = tmp_path / "good.png"
    Image.new("L", (28, 28), 100).save(good)
    bad = tmp_path / "bad.png"
    if case == "empty":
        bad.write_bytes(b"")
    elif case == "text":
        bad.write_text("hello")
    elif case == "truncated":
        buf = io.BytesIO()
        Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(buf, "PNG")
        bad.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    elif case == "bomb":
        _bomb_png(bad)
    elif case == "emptydir":
        bad = tmp_path / "empty_dir"
        bad.mkdir()
    elif case == "glob":
        bad = str(tmp_path / "*.nothing")
    r = run_cli("infer", good, bad, "--model", model, "--heatmaps", tmp_path / "h")
    assert r.code == 1
    assert "good.png:" in r.out                                   # the good image still got its result
    errs = [ln for ln in r.err.splitlines() if ln.startswith("error:")]
    assert len(errs) == 1 and needle in errs[0].lower() and "Traceback" not in r.err
    assert sorted(p.name for p in (tmp_path / "h").iterdir()) == ["good_channels.png", "good_heatmap.png",
                                                                   "good_se.png"]


def test_bad_models(run_cli, fm_export, tmp_path):
    model, _ = fm_export
    Image.new("L", (28, 28), 100).save(tmp_path / "x.png")
    assert_one_line_error(run_cli("infer", tmp_path / "x.png", "--model", tmp_path / "nope.onnx"), "does not exist")
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x01garbage" * 50)
    assert_one_line_error(run_cli("infer", tmp_path / "x.png", "--model", tmp_path / "junk.onnx"), "junk.onnx")
    # a valid ONNX graph without sedeploy metadata
    m = onnx.load(str(model))
    del m.metadata_props[:]
    onnx.save(m, str(tmp_path / "nometa.onnx"))
    assert_one_line_error(run_cli("infer", tmp_path / "x.png", "--model", tmp_path / "nometa.onnx"),
                          "no sedeploy metadata")
    # metadata promises outputs the graph does not have
    m = onnx.load(str(model))
    keep = [o for o in m.graph.output if o.name == "logits"]
    del m.graph.output[:]
    m.graph.output.extend(keep)
    onnx.save(m, str(tmp_path / "noout.onnx"))
    assert_one_line_error(run_cli("infer", tmp_path / "x.png", "--model", tmp_path / "noout.onnx"),
                          "missing from the graph")
    assert_one_line_error(run_cli("infer", tmp_path / "x.png", "--model", model, "--provider", "tpu"),
                          "'tpu' is not one of 'auto', 'cpu', 'cuda'")
    assert_one_line_error(run_cli("infer", tmp_path / "x.png", "--model", model, "--precision", "int4"),
                          "'int4' is not one of 'auto', 'fp32', 'int8'")
    assert_one_line_error(run_cli("infer", tmp_path / "x.png", "--model", model, "--precision", "int8"),
                          "no model.int8.onnx", "export --ckpt best.pt --int8")
    assert_one_line_error(run_cli("infer", tmp_path / "x.png", "--model", model, "--workers", "-1"), "--workers")
    assert_one_line_error(run_cli("infer", tmp_path / "x.png", "--model", model, "--topk", "0"), "--topk")


def test_model_discovery(run_cli, fm_export, tmp_path, monkeypatch):
    model, _ = fm_export
    Image.new("L", (28, 28), 100).save(tmp_path / "x.png")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SEDEPLOY_MODEL", raising=False)
    assert_one_line_error(run_cli("infer", "x.png"), "no model found")
    (tmp_path / "model.onnx").write_bytes(model.read_bytes())
    assert run_cli("infer", "x.png").code == 0


def test_faithfulness_eval(fm_export, fmnist_dir):
    """On the real model: every method masks something (the planted-signal oracle is test_faithfulness.py)."""
    from sedeploy.faithfulness import evaluate
    model, _ = fm_export
    kinds = ["head-cam", "se", "spatial-mean", "random"]
    res = evaluate(str(model), None, "fashion-mnist", str(fmnist_dir), n=16, steps=4, kinds=kinds, log=lambda s: None)
    assert res["images"] == 16 and list(res["methods"]) == kinds
    for v in res["methods"].values():      # every metric varies across images
        assert all(v[m]["se"] > 0 for m in ("deletion", "insertion", "road"))


def test_samples_cli(run_cli, fmnist_dir, tmp_path):
    r = run_cli("samples", "--data-dir", fmnist_dir, "--n", "3", "--out", tmp_path)
    assert r.code == 0, r.err
    files = sorted(tmp_path.glob("*.png"))
    assert len(files) == 3 and Image.open(files[0]).size == (28, 28)
    assert_one_line_error(run_cli("samples", "--dataset", "mnist", "--out", tmp_path), "--dataset", "'mnist' is not one of", "fashion-mnist")


def test_json_errors_name_the_image(run_cli, fm_export, tmp_path):
    model, _ = fm_export
    Image.new("L", (28, 28), 100).save(tmp_path / "ok.png")
    (tmp_path / "odd:name.png").write_text("not an image")
    r = run_cli("infer", tmp_path / "ok.png", tmp_path / "odd:name.png", tmp_path / "gone.png", "--model", model,
                "--json")
    assert r.code == 1
    recs = [json.loads(line) for line in r.out.splitlines()]
    assert [x["image"] for x in recs] == [str(tmp_path / n) for n in ("ok.png", "odd:name.png", "gone.png")]
    assert "top" in recs[0] and "not an image" in recs[1]["error"] and "no such file" in recs[2]["error"]
