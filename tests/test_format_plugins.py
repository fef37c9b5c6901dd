"""The format plug-in contract's two newer paths, on stand-in formats registered for the test:
a format with its own int8 quantizer ("native", LiteRT and ExecuTorch use it) goes through the same
int8 gate as the ONNX graph, against its own fp32 artifact, and a bad quantizer is refused with
nothing written; a format that cannot run here (Core ML off macOS) is recorded as built but not
verified, and a format that neither runs nor says why fails the export."""
from __future__ import annotations

import json
import shutil
import sys
import types

import pytest

from sedeploy.core.errors import UserError
from sedeploy.export import exporter
from sedeploy.export import formats as fm
from sedeploy.export.exporter import ExportOptions, export_checkpoint

NATIVE = fm.Format("fakeq", "fakeq", ".fake.onnx", ("onnxruntime",), "full", "onnxruntime", "onnxruntime",
                   int8="native", needs=("onnx",), side_files=(".int8.fake.onnx",), what="test stand-in")
UNVERIFIED = fm.Format("fakeu", "fakeu", ".fakeu.bin", ("onnxruntime",), "full", "onnxruntime", "onnxruntime",
                       int8="", needs=("onnx",), what="test stand-in that cannot run here")


def native_plugin(scramble_int8: bool) -> types.ModuleType:
    """A stand-in native-int8 format: the ONNX file copied; its int8 file is onnxruntime's static int8 of it
    (a real quantizer, calibrated on what export hands it); `scramble_int8` makes the int8 artifact's
    logits wrong (a broken quantizer) so that the gate must refuse it."""
    from sedeploy.export.quantize import quantize_int8
    from sedeploy.export.verify import run_onnx
    mod = types.ModuleType("fakeq")
    seen = {}

    def build(ctx):
        p = ctx.tmp / f"{ctx.stem}.fake.onnx"
        shutil.copyfile(ctx.built["onnx"][0], p)
        ctx.facts["fakeq"] = {"converter": "copy"}
        return [p]

    def build_int8(ctx, calib):
        import onnx
        seen["calib"] = calib.shape
        seen["builds"] = seen.get("builds", 0) + 1
        q = quantize_int8(ctx.built["fakeq"][0], ctx.tmp / fm.int8_file(NATIVE, ctx.stem), calib)
        key = "sedeploy.unsure"             # as a real plug-in, the file carries ctx.metadata's 'unsure' value
        m = onnx.load(str(q))
        props = [(x.key, x.value) for x in m.metadata_props if x.key != key]
        del m.metadata_props[:]
        for k, v in props + [(key, ctx.metadata(ctx.opset)[key])]:
            m.metadata_props.add(key=k, value=v)
        onnx.save(m, str(q))
        return [q]

    def outputs(ctx, paths, x):
        out = run_onnx(paths[0], x)
        if scramble_int8 and ".int8." in paths[0].name:
            out["logits"] = out["logits"][:, ::-1].copy()
        return {"fakeq" + (" int8" if ".int8." in paths[0].name else ""): out}
    mod.build, mod.build_int8, mod.outputs, mod.seen = build, build_int8, outputs, seen
    return mod


@pytest.fixture
def register(monkeypatch):
    """Register stand-in formats (name -> (Format, module)) for one test."""
    def add(**plugins):
        real = exporter.format_module
        for name, (f, mod) in plugins.items():
            monkeypatch.setitem(fm.FORMATS, name, f)
            monkeypatch.setitem(sys.modules, f"sedeploy.export.formats.{name}", mod)
        monkeypatch.setattr(exporter, "format_module", lambda n: plugins[n][1] if n in plugins else real(n))
    return add


def test_native_int8_is_gated_against_its_own_fp32(register, trained_fm, fmnist_dir, tmp_path):
    plugin = native_plugin(scramble_int8=False)
    register(fakeq=(NATIVE, plugin))
    man = export_checkpoint(str(trained_fm / "best.pt"), str(tmp_path),
                            ExportOptions(formats=("fakeq",), int8=True, calib=64, int8_eval=200,
                                          data_dir=str(fmnist_dir)), log=lambda s: None)
    assert plugin.seen["calib"] == (64, 1, 32, 32)                 # calibrated on the training images asked for
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.json", "model.fake.onnx", "model.int8.fake.onnx"]
    gate = man["formats"]["fakeq"]["int8_gate"]                  # no model.int8.onnx: onnx was not requested
    assert gate["passed"] and gate["images"] == "200 test images" and gate["agreement"] >= 98.0
    assert man["formats"]["fakeq"]["int8"] == "model.int8.fake.onnx" and man["formats"]["fakeq"]["verified"]
    assert {f["format"] for f in man["files"]} == {"fakeq", "fakeq-int8"}
    assert man["int8_gate"] is None                              # the ONNX graph's own gate did not run
    # its own 'unsure' threshold (set on its outputs for the held-out images): without a restamp function
    # the plug-in builds its int8 file a second time with it inside
    from sedeploy.runtime.predictor import Predictor
    spec8 = Predictor(str(tmp_path / "model.int8.fake.onnx"), "cpu").info.meta["unsure"]
    spec32 = Predictor(str(tmp_path / "model.fake.onnx"), "cpu").info.meta["unsure"]
    assert plugin.seen["builds"] == 2 and "fakeq int8 model" in spec8["calibrated_on"]
    assert spec8["threshold"] != spec32["threshold"] and man["unsure"]["variants"] == {"fakeq-int8": spec8["threshold"]}


def test_a_bad_native_quantizer_is_refused_and_nothing_written(register, trained_fm, fmnist_dir, tmp_path):
    register(fakeq=(NATIVE, native_plugin(scramble_int8=True)))
    with pytest.raises(UserError, match=r"^fakeq int8: int8 model refused: top-1 agreement"):
        export_checkpoint(str(trained_fm / "best.pt"), str(tmp_path / "out"),
                          ExportOptions(formats=("onnx", "fakeq"), int8=True, calib=64, int8_eval=200,
                                        data_dir=str(fmnist_dir)), log=lambda s: None)
    assert not (tmp_path / "out").exists()


def test_int8_needs_a_format_that_has_one(register, trained_fm, tmp_path):
    with pytest.raises(UserError, match="none of torchscript has an int8 variant"):
        export_checkpoint(str(trained_fm / "best.pt"), str(tmp_path), ExportOptions(formats=("torchscript",),
                                                                                    int8=True))
    with pytest.raises(UserError, match="--int8 for ort derives from the ONNX int8 graph; include onnx"):
        export_checkpoint(str(trained_fm / "best.pt"), str(tmp_path), ExportOptions(formats=("ort",), int8=True))
    with pytest.raises(UserError, match="--half derives from the ONNX export"):
        export_checkpoint(str(trained_fm / "best.pt"), str(tmp_path), ExportOptions(formats=("ort",), half=True))


def unverified_plugin(reason: str) -> types.ModuleType:
    mod = types.ModuleType("fakeu")

    def build(ctx):
        p = ctx.tmp / f"{ctx.stem}.fakeu.bin"
        p.write_bytes(b"program")
        if reason:
            ctx.facts["fakeu"] = {"not_verified": reason}
        return [p]
    mod.build, mod.outputs = build, lambda ctx, paths, x: {}
    return mod


def test_a_format_that_cannot_run_here_is_recorded_unverified(register, trained_fm, fmnist_dir, tmp_path):
    register(fakeu=(UNVERIFIED, unverified_plugin("needs macOS; program validated")))
    logs = []
    man = export_checkpoint(str(trained_fm / "best.pt"), str(tmp_path),
                            ExportOptions(formats=("onnx", "fakeu"), data_dir=str(fmnist_dir)), log=logs.append)
    assert man["formats"]["fakeu"] == {"not_verified": "needs macOS; program validated", "verified": False}
    assert man["formats"]["onnx"]["verified"] is True
    assert not any(r["backend"].startswith("fakeu") for r in man["verification"]["rows"])
    assert any("fakeu: built and validated, NOT verified here" in line for line in logs)
    assert json.loads((tmp_path / "export.json").read_text())["formats"]["fakeu"]["verified"] is False


def test_a_format_that_neither_runs_nor_says_why_fails(register, trained_fm, fmnist_dir, tmp_path):
    register(fakeu=(UNVERIFIED, unverified_plugin("")))
    with pytest.raises(UserError, match="format fakeu was built but could not be run to verify it"):
        export_checkpoint(str(trained_fm / "best.pt"), str(tmp_path / "o"),
                          ExportOptions(formats=("onnx", "fakeu"), data_dir=str(fmnist_dir)), log=lambda s: None)
    assert not (tmp_path / "o").exists()


def test_half_alone_writes_the_fp16_file(trained_fm, fmnist_dir, tmp_path):
    """--half without --int8 (the fp32 ONNX file is found whether or not int8 ran)."""
    man = export_checkpoint(str(trained_fm / "best.pt"), str(tmp_path), ExportOptions(formats=("onnx",), half=True,
                                                                                      data_dir=str(fmnist_dir)),
                            log=lambda s: None)
    assert {f["path"] for f in man["files"]} == {"model.onnx", "model.fp16.onnx"} and man["int8_gate"] is None
