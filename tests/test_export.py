"""Export: contract, metadata, manifest, parity over models x batch sizes x raw/simplified, bad input."""
import hashlib
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from conftest import assert_one_line_error, assert_parity
from sedeploy.core import contract
from sedeploy.core.errors import UserError
from sedeploy.export.exporter import ExportOptions, export_checkpoint
from sedeploy.export.torchscript import load_torchscript
from sedeploy.models import create_model, list_models, model_config
from sedeploy.checkpoint import make_checkpoint, save_checkpoint
from sedeploy.core.datasets import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD

ATOL = 1e-4  # fp32; observed differences are ~1e-6


def write_ckpt(path, name="se_cnn", seed=0, **cfg):
    torch.manual_seed(seed)
    m = create_model(name, **cfg).eval()
    with torch.no_grad():  # non-trivial BN statistics
        for b in m.blocks:
            b.bn.running_mean.uniform_(-0.2, 0.2)
            b.bn.running_var.uniform_(0.5, 2.0)
    ck = make_checkpoint(m, name, model_config(m), classes=CIFAR10_CLASSES, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                         input_size=(3, 32, 32), dataset="cifar10", epoch=1, metrics={"test_acc": 12.5})
    save_checkpoint(ck, path)
    return m


@pytest.fixture(scope="module", params=list_models())
def exported(request, tmp_path_factory):
    """(model, dir) with model.onnx (simplified), raw/model.onnx (not simplified), model.ts."""
    d = tmp_path_factory.mktemp(f"exp_{request.param}")
    m = write_ckpt(d / "best.pt", request.param)
    export_checkpoint(str(d / "best.pt"), str(d), ExportOptions(), log=lambda s: None)
    export_checkpoint(str(d / "best.pt"), str(d / "raw"), ExportOptions(formats=("onnx",), simplify=False),
                      log=lambda s: None)
    return m, d


def eager(m, x):
    with torch.no_grad():
        logits, se, fmap = m.forward_explain(torch.from_numpy(x))
    names = contract.output_names(len(se))
    return dict(zip(names, [t.numpy() for t in (logits, *se, fmap)]))


@pytest.mark.parametrize("batch", [1, 7, 64])
@pytest.mark.parametrize("variant", ["model.onnx", "raw/model.onnx"])
def test_onnx_parity_every_output(exported, batch, variant):
    m, d = exported
    x = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32)).astype(np.float32)
    sess = ort.InferenceSession(str(d / variant), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x})))
    assert_parity(eager(m, x), got, atol=ATOL, what=variant)


def test_torchscript_reload_parity_and_metadata(exported):
    m, d = exported
    keys = [contract.META_PREFIX + k for k in contract.META_KEYS]
    ts, extra = load_torchscript(d / "model.ts", keys)
    x = np.random.default_rng(0).standard_normal((7, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        outs = ts(torch.from_numpy(x))
    ref = eager(m, x)
    assert len(outs) == len(ref)
    for (name, r), o in zip(ref.items(), outs):
        np.testing.assert_allclose(o.numpy(), r, atol=1e-6, rtol=0, err_msg=name)
    meta = contract.decode_metadata({k: v for k, v in extra.items() if v})
    assert meta["output_names"] == list(ref) and meta["opset"] is None


def test_contract_read_back(exported):
    m, d = exported
    model = onnx.load(str(d / "model.onnx"))
    g = model.graph
    assert [i.name for i in g.input] == [contract.INPUT_NAME]
    n_se = m.num_se_blocks
    assert [o.name for o in g.output] == contract.output_names(n_se)
    dims = lambda v: [x.dim_param or x.dim_value for x in v.type.tensor_type.shape.dim]
    assert dims(g.input[0]) == ["batch", 3, 32, 32]
    shapes = {o.name: dims(o) for o in g.output}
    assert shapes["logits"] == ["batch", 10] and shapes["feature_map"] == ["batch", 128, 8, 8]
    if n_se:
        assert [shapes[f"se{i}"] for i in (1, 2, 3)] == [["batch", 32], ["batch", 64], ["batch", 128]]
    else:
        assert [o.name for o in g.output] == ["logits", "feature_map"]


def test_metadata_round_trip(exported):
    m, d = exported
    ck = torch.load(d / "best.pt", weights_only=True)
    props = {p.key: p.value for p in onnx.load(str(d / "model.onnx")).metadata_props}
    for v in props.values():
        if v:
            json.loads(v)  # every value is JSON
    meta = contract.decode_metadata(props)
    assert not contract.missing_keys(meta)
    assert set(contract.META_KEYS) <= set(meta)
    assert meta["classes"] == ck["classes"] and meta["mean"] == ck["mean"] and meta["std"] == ck["std"]
    assert meta["input_size"] == [3, 32, 32] and meta["model_name"] == ck["model_name"]
    assert meta["model_config"] == ck["model_config"] and meta["test_accuracy"] == 12.5
    assert meta["se_outputs"] == contract.se_output_names(m.num_se_blocks)
    assert meta["checkpoint_sha256"] == hashlib.sha256((d / "best.pt").read_bytes()).hexdigest()
    assert meta["opset"] == 17 and meta["precision"] == "fp32" and "torch" in meta["versions"]


def test_manifest(exported):
    _, d = exported
    man = json.loads((d / "export.json").read_text())
    assert {f["path"] for f in man["files"]} == {"model.onnx", "model.ts"}
    for f in man["files"]:
        data = (d / f["path"]).read_bytes()
        assert f["bytes"] == len(data) and f["sha256"] == hashlib.sha256(data).hexdigest()
    assert man["nodes"]["simplified"] <= man["nodes"]["raw"]
    rows = man["verification"]["rows"]
    assert {r["backend"] for r in rows} == {"torchscript", "onnx raw", "onnx simplified"}
    assert all(r["ok"] and r["max_abs"] < ATOL for r in rows)
    assert man["timings_s"]["total"] > 0


def test_fixed_batch_and_logits_only(tmp_path):
    write_ckpt(tmp_path / "best.pt")
    export_checkpoint(str(tmp_path / "best.pt"), str(tmp_path), ExportOptions(formats=("onnx",), batch=4,
                                                                              extras=False), log=lambda s: None)
    g = onnx.load(str(tmp_path / "model.onnx")).graph
    assert [o.name for o in g.output] == ["logits"]
    assert [x.dim_value for x in g.input[0].type.tensor_type.shape.dim] == [4, 3, 32, 32]


def _no_outputs(d):
    return not [p for p in os.listdir(d) if p.startswith(("model.", ".export", "export.json"))]


def test_export_cli_and_force(run_cli, tmp_path):
    write_ckpt(tmp_path / "best.pt")
    r = run_cli("export", "--ckpt", tmp_path / "best.pt", "--formats", "onnx", "--json")
    assert r.code == 0, r.err
    man = json.loads(r.out)
    assert man["files"][0]["path"] == "model.onnx" and "parity" in r.err
    r = run_cli("export", "--ckpt", tmp_path / "best.pt", "--formats", "onnx")
    assert_one_line_error(r, "already exists", "--force")
    r = run_cli("export", "--ckpt", tmp_path / "best.pt", "--formats", "onnx", "--force")
    assert r.code == 0 and "onnx simplified" in r.out


@pytest.mark.parametrize("case", ["missing", "not_ckpt", "evil", "unknown_model", "bad_weights", "unwritable",
                                  "bad_format", "bad_opset", "bad_batch"])
def test_export_bad_input(run_cli, tmp_path, case):
    ck = tmp_path / "best.pt"
    out = tmp_path / "out"
    args = []
    if case == "missing":
        needles = ["does not exist"]
    elif case == "not_ckpt":
        ck.write_bytes(b"\x00garbage" * 10)
        needles = ["not a readable PyTorch checkpoint"]
    elif case == "evil":
        class Evil:
            def __reduce__(self):
                return (os.system, ("echo pwned",))
        torch.save({"format": "sedeploy-checkpoint", "x": Evil()}, ck)
        needles = ["refusing to load", "untrusted"]
    elif case == "unknown_model":
        write_ckpt(ck)
        d = torch.load(ck, weights_only=True)
        d["model_name"] = "resnet50"
        torch.save(d, ck)
        needles = ["unknown model", "cnn, se_cnn"]
    elif case == "bad_weights":
        write_ckpt(ck)
        d = torch.load(ck, weights_only=True)
        d["model_config"]["hidden"] = 256
        torch.save(d, ck)
        needles = ["weights do not fit"]
    elif case == "unwritable":
        write_ckpt(ck)
        (tmp_path / "f").write_text("")
        out = tmp_path / "f" / "sub"
        needles = ["cannot create output directory"]
    elif case == "bad_format":
        write_ckpt(ck)
        args = ["--formats", "webnn"]
        needles = ["unknown format webnn", "onnx, torchscript"]
    elif case == "bad_opset":
        write_ckpt(ck)
        args = ["--opset", "5"]
        needles = ["opset"]
    else:
        write_ckpt(ck)
        args = ["--batch", "many"]
        needles = ["--batch"]
    r = run_cli("export", "--ckpt", ck, "--out", out, *args)
    assert_one_line_error(r, *needles)
    if out.exists():
        assert _no_outputs(out)


def test_simplify_failure_is_an_error(tmp_path, monkeypatch):
    import onnxsim
    write_ckpt(tmp_path / "best.pt")

    def boom(*a, **k):
        raise RuntimeError("unsupported op Foo\nmore detail")
    monkeypatch.setattr(onnxsim, "simplify", boom)
    with pytest.raises(UserError, match="--no-simplify"):
        export_checkpoint(str(tmp_path / "best.pt"), str(tmp_path), ExportOptions(), log=lambda s: None)
    assert _no_outputs(tmp_path)


def test_parity_failure_writes_nothing(tmp_path, monkeypatch):
    from sedeploy.export import verify               # what the onnx format plug-in runs its graphs with
    write_ckpt(tmp_path / "best.pt")
    real = verify.run_onnx

    def skewed(path, x):
        out = real(path, x)
        out["se2"] = out["se2"] + 1e-2
        return out
    monkeypatch.setattr(verify, "run_onnx", skewed)
    with pytest.raises(UserError, match="parity check failed.*se2"):
        export_checkpoint(str(tmp_path / "best.pt"), str(tmp_path), ExportOptions(), log=lambda s: None)
    assert _no_outputs(tmp_path)


def test_verification_uses_real_test_images_when_present(trained_fm, fmnist_dir, tmp_path):
    man = export_checkpoint(str(trained_fm / "best.pt"), str(tmp_path), ExportOptions(data_dir=str(fmnist_dir)),
                            log=lambda s: None)
    assert man["verification"]["batch"] == "16 fashion-mnist test images"


def test_verification_falls_back_to_seeded_noise(trained_fm, tmp_path, monkeypatch):
    import sedeploy.core.arrays as ds

    def missing(*a, **k):
        raise UserError("Fashion-MNIST not found")
    monkeypatch.setattr(ds, "load_arrays", missing)
    man = export_checkpoint(str(trained_fm / "best.pt"), str(tmp_path), ExportOptions(), log=lambda s: None)
    assert man["verification"]["batch"] == "16 seeded random inputs"
    assert all(r["ok"] for r in man["verification"]["rows"])


def _top1(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(["logits"], {"input": x[i:i + 100]})[0].argmax(1) for i in range(0, len(x), 100)])


def test_int8_gate_measures_agreement_and_accuracy(trained_fm, fmnist_dir, tmp_path):
    from sedeploy.core.datasets import normalize_batch
    from sedeploy.core.arrays import load_arrays
    man = export_checkpoint(str(trained_fm / "best.pt"), str(tmp_path),
                            ExportOptions(formats=("onnx",), int8=True, calib=128, data_dir=str(fmnist_dir),
                                          int8_min_agreement=0, int8_max_drop=100, int8_se_atol=1),
                            log=lambda s: None)
    gate = man["int8_gate"]
    ck = torch.load(trained_fm / "best.pt", weights_only=True)
    _, x, y = load_arrays("fashion-mnist", str(fmnist_dir), "test")
    idx = np.random.default_rng(0).permutation(len(x))[:1000]           # the gate's sample: all 200 here
    xn, y = normalize_batch(x[idx], ck["mean"], ck["std"]), y[idx]
    p32, p8 = _top1(tmp_path / "model.onnx", xn), _top1(tmp_path / "model.int8.onnx", xn)
    assert gate["images"] == "200 test images" and gate["passed"] is True
    assert gate["agreement"] == pytest.approx(100 * (p32 == p8).mean())
    assert gate["fp32_acc"] == pytest.approx(100 * (p32 == y).mean())
    assert gate["drop"] == pytest.approx(100 * ((p32 == y).mean() - (p8 == y).mean()))


def test_int8_gate_refuses_a_bad_int8_model(run_cli, trained_fm, fmnist_dir, tmp_path, monkeypatch):
    """Calibrated on constant images, the int8 ranges are wrong and predictions collapse: refused, nothing written."""
    import sedeploy.export.quantize as q
    real = q.calibration_images
    monkeypatch.setattr(q, "calibration_images", lambda meta, n, data_dir=None, seed=0:
                        np.zeros_like(real(meta, n, data_dir, seed)))
    r = run_cli("export", "--ckpt", trained_fm / "best.pt", "--out", tmp_path, "--formats", "onnx", "--int8",
                "--calib", "64", "--data-dir", fmnist_dir)
    assert_one_line_error(r, "int8 model refused: top-1 agreement with fp32", "(--int8-min-agreement)",
                          "nothing was written")
    assert r.code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_int8_gate_accuracy_drop_and_unlabelled(trained_fm, fmnist_dir, tmp_path, monkeypatch):
    import sedeploy.core.arrays as ds
    import sedeploy.export.quantize as q
    real = q.calibration_images
    monkeypatch.setattr(q, "calibration_images", lambda meta, n, data_dir=None, seed=0:
                        np.zeros_like(real(meta, n, data_dir, seed)))
    opts = dict(formats=("onnx",), int8=True, calib=64, data_dir=str(fmnist_dir), int8_min_agreement=0,
                int8_se_atol=1)
    with pytest.raises(UserError, match=r"points below fp32 .* --int8-max-drop 0"):
        export_checkpoint(str(trained_fm / "best.pt"), str(tmp_path / "a" / "b" / "c"),
                          ExportOptions(**opts, int8_max_drop=0), log=lambda s: None)
    assert not (tmp_path / "a").exists()                    # not even an empty folder (or its new parents) is left
    monkeypatch.setattr(q, "calibration_images", real)
    real_load = ds.load_arrays
    monkeypatch.setattr(ds, "load_arrays", lambda name, data_dir=None, split="test", native=False, ref=None:
                        real_load(name, data_dir, split) if split == "train" else (_ for _ in ()).throw(
                            UserError("Fashion-MNIST test files not found")))
    with pytest.raises(UserError, match="needs labelled fashion-mnist test images.*--int8-allow-unlabelled"):
        export_checkpoint(str(trained_fm / "best.pt"), str(tmp_path / "b"), ExportOptions(**opts), log=lambda s: None)
    man = export_checkpoint(str(trained_fm / "best.pt"), str(tmp_path / "b"),
                            ExportOptions(**opts, int8_allow_unlabelled=True), log=lambda s: None)
    assert man["int8_gate"]["images"] == "16 seeded random inputs" and "fp32_acc" not in man["int8_gate"]


def test_int8_with_a_fixed_batch(trained_fm, fmnist_dir, tmp_path):
    man = export_checkpoint(str(trained_fm / "best.pt"), str(tmp_path),
                            ExportOptions(formats=("onnx",), batch=64, int8=True, calib=64, data_dir=str(fmnist_dir),
                                          int8_min_agreement=0, int8_max_drop=100, int8_se_atol=1),
                            log=lambda s: None)
    assert man["int8_gate"]["images"] == "200 test images"             # 200 = 3 full batches + a padded one
    sess = ort.InferenceSession(str(tmp_path / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape[0] == 64
