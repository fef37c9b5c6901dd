"""runtime/unsure.py: the out-of-distribution score ('unsure'), pure numpy."""
import json

import numpy as np
import pytest

from sedeploy.core import contract
from sedeploy.runtime import unsure as U


def _outputs(n: int, seed: int, shift: float = 0.0, classes: int = 4, d: int = 8):
    """Clustered features (in-distribution) or shifted ones (OOD); logits confident for clustered ones."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centers = np.eye(classes, d) * 4
    f = centers[y] + rng.normal(0, 0.5, (n, d)) + shift
    logits = f[:, :classes] * 2
    se = 1 / (1 + np.exp(-f))
    return {"logits": logits, "se3": se, "feature_map": f[:, :, None, None] * np.ones((1, 1, 2, 2))}, y


@pytest.mark.parametrize("kind", U.KINDS)
def test_threshold_accepts_the_stated_share_and_flags_ood(kind):
    fit, y = _outputs(400, 0)
    val, _ = _outputs(1000, 1)
    spec = U.calibrate(kind, fit, y, 4, val, accept=0.9)
    assert json.loads(json.dumps(spec)) == spec            # storable as JSON metadata
    test, _ = _outputs(1000, 2)
    scores, flags = U.unsure(test, spec)
    # binomial tolerance: 1000 draws at p=0.9, sd ~ 0.0095; 4 sd
    assert abs((~flags).mean() - 0.9) < 0.04
    rng = np.random.default_rng(3)
    noise = {"logits": rng.normal(0, 0.3, (200, 4)), "se3": rng.uniform(0, 1, (200, 8)),
             "feature_map": rng.normal(0, 3, (200, 8, 2, 2))}
    assert U.unsure(noise, spec)[1].mean() > 0.5


def test_flag_never_changes_top_k():
    out, y = _outputs(100, 0)
    spec = U.calibrate("msp", out, y, 4, out)
    before = np.argsort(-out["logits"], axis=1).copy()
    U.unsure(out, spec)
    assert (np.argsort(-out["logits"], axis=1) == before).all()


def test_no_spec_no_flag():
    out, _ = _outputs(5, 0)
    assert U.unsure(out, None) == (None, None)


def test_metrics():
    assert U.auroc([1, 2, 3], [0, 0.5]) == 1.0
    assert U.auroc([0, 0.5], [1, 2, 3]) == 0.0
    assert U.auroc([1, 1], [1, 1]) == 0.5
    assert U.far_at(np.arange(100), np.array([99, 0]), 0.95) == 0.5


def test_metadata_key_round_trips():
    spec = {"version": 1, "kind": "msp", "params": {}, "threshold": 0.5, "accept": 0.95}
    enc = contract.encode_metadata({"unsure": spec})
    assert contract.decode_metadata(enc)["unsure"] == spec


def _validation_images(run_dir, fmnist_dir):
    """The validation images the tiny run selected on, drawn again from its recipe (sedeploy.splits)."""
    import torch
    from sedeploy.checkpoint import load_checkpoint
    from sedeploy.core.arrays import load_arrays
    from sedeploy.splits import run_split
    ck = load_checkpoint(str(run_dir / "best.pt"))
    _, x, y = load_arrays("fashion-mnist", str(fmnist_dir), "train")
    trained, val = run_split(ck["recipe"], torch.from_numpy(y.astype(np.int64)))
    return x[val.numpy()], x[trained.numpy()]


def test_export_stores_a_calibrated_score(fm_onnx, trained_fm, fmnist_dir):
    """The exporter's metadata carries the score; its threshold is set on the run's validation images (the
    ones it selected best.pt on, never trained on): it accepts the stated share of exactly those, about as
    many unseen test images, and flags noise."""
    import onnxruntime as ort
    from sedeploy.core.arrays import load_arrays
    from sedeploy.core.datasets import normalize_batch
    sess = ort.InferenceSession(str(fm_onnx), providers=["CPUExecutionProvider"])
    meta = contract.decode_metadata(sess.get_modelmeta().custom_metadata_map)
    spec = meta["unsure"]
    assert spec["version"] == 1 and spec["kind"] == "maha" and spec["accept"] == 0.95
    manifest = json.loads((fm_onnx.parent / "export.json").read_text())
    assert manifest["unsure"]["threshold"] == spec["threshold"]
    names = [o.name for o in sess.get_outputs()]
    run = lambda x: dict(zip(names, sess.run(None, {contract.INPUT_NAME: normalize_batch(x, meta["mean"], meta["std"])})))
    val, trained = _validation_images(trained_fm, fmnist_dir)
    n = len(val)                                                       # 10 % of 800, rounded per class
    assert 75 <= n <= 85 and spec["calibrated_on"] == f"{len(trained)} training / {n} validation images"
    expected = (n - int(np.floor(0.05 * (n - 1)))) / n                 # the lower quantile's share: 77 of 81
    assert (~U.unsure(run(val), spec)[1]).mean() == expected
    _, xte, _ = load_arrays("fashion-mnist", str(fmnist_dir), "test")
    # 200 unseen test images: binomial sd ~1.5 points, plus the threshold's own error from ~80 images (~2.4)
    assert abs((~U.unsure(run(xte), spec)[1]).mean() - 0.95) < 0.10
    noise = np.random.default_rng(0).normal(0, 2, (64, *meta["input_size"])).astype(np.float32)
    assert U.unsure(dict(zip(names, sess.run(None, {contract.INPUT_NAME: noise}))), spec)[1].mean() > 0.8


def test_export_refuses_validation_images_from_other_data(trained_fm, tmp_path):
    """Another copy of the data (other labels) cannot give the run's validation split: the export says so and
    ships no flag rather than a threshold set on images the run may have trained on."""
    from conftest import learnable_images, write_idx
    from sedeploy.export.exporter import ExportOptions, export_checkpoint
    other = tmp_path / "other"
    other.mkdir()
    for split, n, seed in (("train", 800, 7), ("t10k", 200, 8)):
        x, y = learnable_images(n, 28, 1, seed)
        write_idx(other / f"{split}-images-idx3-ubyte", x)
        write_idx(other / f"{split}-labels-idx1-ubyte", y)
    logs = []
    man = export_checkpoint(str(trained_fm / "best.pt"), str(tmp_path / "out"),
                            ExportOptions(formats=("onnx",), data_dir=str(other)), log=logs.append)
    assert man["unsure"] is None
    assert any("not calibrated" in m and "--data-dir" in m for m in logs), logs


def test_a_run_without_validation_is_calibrated_on_test_images(fmnist_dir, tmp_path):
    """--select-on test holds out no validation split: the threshold is set on test images, and says so."""
    from sedeploy.export.exporter import ExportOptions, export_checkpoint
    from sedeploy.training import TrainConfig, fit
    fit(TrainConfig(model="cnn", dataset="fashion-mnist", data_dir=str(fmnist_dir), epochs=1, out=str(tmp_path / "r"),
                    select_on="test", limit_train=300, log_every=0), progress=False)
    logs = []
    man = export_checkpoint(str(tmp_path / "r" / "best.pt"), str(tmp_path / "out"),
                            ExportOptions(formats=("onnx",), data_dir=str(fmnist_dir)), log=logs.append)
    assert man["unsure"]["calibrated_on"] == "300 training / 200 test images"
    assert any("set on test images: the run held out no validation split" in m for m in logs), logs


def _strip_unsure(model, dest):
    """A copy of the model without the unsure key: an artifact exported before the flag existed."""
    import onnx
    m = onnx.load(str(model))
    keep = [p for p in m.metadata_props if p.key != contract.META_PREFIX + "unsure"]
    del m.metadata_props[:]
    m.metadata_props.extend(keep)
    onnx.save(m, str(dest))
    return dest


def _pngs(folder, fmnist_dir, n_known=12, n_noise=3):
    """n_known unseen test images of the synthetic set (known_*.png, native 28x28) and n_noise of uniform noise."""
    from PIL import Image
    from sedeploy.core.datasets import fmnist_dirs, read_fmnist
    folder.mkdir(exist_ok=True)
    x, _, _ = read_fmnist(fmnist_dirs(fmnist_dir), "test", None)
    for i in range(n_known):
        Image.fromarray(x[i, 0]).save(folder / f"known_{i:02d}.png")
    rng = np.random.default_rng(0)
    for i in range(n_noise):
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(folder / f"noise{i}.png")
    return folder


def test_infer_text_and_json_carry_the_flag(fm_onnx, fmnist_dir, run_cli, tmp_path):
    """`sedeploy infer` (text and JSON): noise is flagged, images like the training data mostly are not (the
    threshold accepts ~95 % of them); the same model without the key: no flag, the same top-k."""
    folder = _pngs(tmp_path / "in", fmnist_dir)
    res = run_cli("infer", str(folder), "--model", str(fm_onnx), "--topk", "3", "--json")
    assert res.code == 0, res.err
    recs = {r["image"].rsplit("/", 1)[-1]: r for r in map(json.loads, res.out.splitlines())}
    assert all(isinstance(r["ood_score"], float) and isinstance(r["unsure"], bool) for r in recs.values())
    assert all(recs[f"noise{i}.png"]["unsure"] is True for i in range(3))
    known = [r["unsure"] for k, r in recs.items() if k.startswith("known_")]
    assert len(known) == 12 and sum(known) <= 3, known          # ~0.6 expected at 95 %; 4 or more: P < 0.3 %
    text = run_cli("infer", str(folder), "--model", str(fm_onnx), "--topk", "3")
    assert text.out.count("(unsure)") == 3 + sum(known)
    old = _strip_unsure(fm_onnx, tmp_path / "old.onnx")
    res_old = run_cli("infer", str(folder), "--model", str(old), "--topk", "3", "--json")
    assert res_old.code == 0, res_old.err
    olds = {r["image"].rsplit("/", 1)[-1]: r for r in map(json.loads, res_old.out.splitlines())}
    assert all("unsure" not in r and "ood_score" not in r for r in olds.values())
    assert {k: r["top"] for k, r in olds.items()} == {k: r["top"] for k, r in recs.items()}   # flag never changes top-k


def test_serve_answers_carry_the_flag(fm_onnx, fmnist_dir, tmp_path):
    """The image route's JSON has unsure / ood_score (noise: unsure; images like the training data: mostly
    not), the same top-k as the model without the key; OIP infer responses carry them as parameters."""
    from support.app import app_client
    folder = _pngs(tmp_path / "in", fmnist_dir, n_known=10, n_noise=1)
    files = sorted(folder.iterdir())

    def classify(model):
        with app_client(model) as c:
            out = {}
            for f in files:
                r = c.post("/v2/models/fm/classify?topk=3", content=f.read_bytes())
                assert r.status_code == 200, r.text
                out[f.name] = r.json()
            x = np.random.default_rng(1).normal(0, 2, (2, 1, 32, 32)).astype(np.float32)
            body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
            r = c.post("/v2/models/fm/infer", json=body)
            assert r.status_code == 200, r.text
            return out, r.json()

    got, oip = classify(fm_onnx)
    assert got["noise0.png"]["unsure"] is True and isinstance(got["noise0.png"]["ood_score"], float)
    known = [r["unsure"] for k, r in got.items() if k.startswith("known_")]
    assert sum(known) <= 3, known
    p = oip["parameters"]
    assert json.loads(p["unsure"]) == [True, True] and len(json.loads(p["ood_score"])) == 2
    assert "unsure" not in {o["name"] for o in oip["outputs"]}
    plain, oip_plain = classify(_strip_unsure(fm_onnx, tmp_path / "old.onnx"))
    assert all("unsure" not in r for r in plain.values()) and "unsure" not in (oip_plain.get("parameters") or {})
    strip = lambda r: {k: v for k, v in r.items() if k not in ("unsure", "ood_score")}
    assert {k: strip(r) for k, r in got.items()} == plain                         # the flag never changes the answer


def test_threshold_lies_between_scores_not_on_one():
    """Halfway between the last rejected and the first accepted score: a few ulps of another runtime's
    arithmetic cannot flip a calibration image; all accepted at --unsure-accept 1."""
    s = np.random.default_rng(0).permutation(200).astype(float)   # 0..199
    t = U.threshold_for(s, 0.8)                    # np.quantile(s, 0.2, method="lower") = 39: 0..38 rejected
    assert t == 38.5 and (s >= t).mean() == 0.805
    tied = np.array([1.0, 1.0, 1.0, 2.0])
    assert U.threshold_for(tied, 0.5) < 1.0        # ties at the boundary: all accepted, as the quantile would
    t1 = U.threshold_for(np.array([-208.504429, -100.0, -50.0]), 1.0)
    assert t1 < -208.504429 * (1 + 1e-6)                           # below the lowest by a margin
    one = U.threshold_for(np.array([7.0]), 1.0)
    assert one < 7.0 and 7.0 * (1 - 1e-7) >= one
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError):
            U.threshold_for(s, bad)
    assert U.threshold_for(np.arange(11.0), 0.9) == 0.5     # 1 - 0.9 = 0.0999...: one of 11 rejected, as asked
    # a score that is not a number ranks lowest (rejected) within n: 1 NaN + 19 finite at 0.9 -> the NaN
    # is the one rejected, not a finite score beside it (n counted without it: 2 of 20 rejected)
    mixed = np.concatenate([[np.nan], np.arange(19.0)])
    assert U.threshold_for(mixed, 0.9) == -0.5
    with pytest.raises(ValueError, match="3 of 20 scores are not finite"):    # 85 % at most can be accepted
        U.threshold_for(np.concatenate([[np.nan, np.nan, -np.inf], np.arange(17.0)]), 0.9)


def test_a_score_that_is_not_a_number_is_unsure():
    out, y = _outputs(50, 0)
    spec = U.calibrate("maha", out, y, 4, out)
    out["feature_map"] = out["feature_map"].copy()
    out["feature_map"][0] = np.nan
    scores, flags = U.unsure(out, spec)
    assert np.isnan(scores[0]) and flags[0]


@pytest.mark.parametrize("change,needle", [
    (lambda s: "maha", "is a str"),
    (lambda s: {**s, "kind": "foo"}, "names the score 'foo'"),
    (lambda s: {k: v for k, v in s.items() if k != "threshold"}, "no finite threshold"),
    (lambda s: {**s, "threshold": "1"}, "no finite threshold"),
    (lambda s: {**s, "version": 2}, "version 2"),
    (lambda s: {**s, "params": {**s["params"], "precision": [[1.0]]}}, "do not fit"),
    (lambda s: {**s, "params": {"means": "x"}}, "missing or not numbers"),
    (lambda s: {**s, "params": {**s["params"], "means": [[None] * len(s["params"]["means"][0])]
                                + s["params"]["means"][1:]}}, "not finite"),
    (lambda s: {**s, "params": {"means": [[0.0] * 4] * 10, "precision": [[1.0] * 4] * 4}}, "do not fit"),
])
def test_a_damaged_spec_is_refused_when_the_model_loads(fm_onnx, run_cli, tmp_path, change, needle):
    """An untrusted model's unsure metadata is checked once, at load: a one-line error naming it for infer
    (and serve, which loads through the same describe), never an internal error mid-request."""
    import onnx
    from PIL import Image
    from conftest import assert_one_line_error
    m = onnx.load(str(fm_onnx))
    key = contract.META_PREFIX + "unsure"
    spec = json.loads(next(p.value for p in m.metadata_props if p.key == key))
    keep = [(p.key, p.value) for p in m.metadata_props if p.key != key]
    del m.metadata_props[:]
    for k, v in keep + [(key, json.dumps(change(spec)))]:
        m.metadata_props.add(key=k, value=v)
    bad = tmp_path / "bad.onnx"
    onnx.save(m, str(bad))
    Image.new("L", (32, 32), 128).save(tmp_path / "x.png")
    assert_one_line_error(run_cli("infer", tmp_path / "x.png", "--model", bad), "'unsure' metadata", needle,
                          "re-export")


def test_check_spec_reads_cos_se_outputs():
    spec = {"version": 1, "kind": "cos_se", "threshold": 0.5, "params": {"output": "se3", "means": [[1.0, 0.0]]}}
    assert U.check_spec(spec, {"logits": ["b", 4], "se3": ["b", 2]}) is None
    assert "lacks" in U.check_spec({**spec, "params": {**spec["params"], "output": "se9"}},
                                   {"logits": ["b", 4], "se3": ["b", 2]})
    assert "do not fit" in U.check_spec(spec, {"logits": ["b", 4], "se3": ["b", 5]})
    # the channel axis, not any axis: means of width 2 do not fit a (b, 64, 2, 2) output
    assert "do not fit" in U.check_spec(spec, {"logits": ["b", 4], "se3": ["b", 64, 2, 2]})


def test_variants_carry_their_own_threshold(trained_fm, fmnist_dir, tmp_path):
    """int8 and fp16 move the scores: each variant's threshold is set again on its own outputs for the same
    held-out images, so each accepts the share the fp32 model accepts there (before: fp32's threshold)."""
    import onnxruntime as ort
    from sedeploy.core.datasets import normalize_batch
    from sedeploy.export.exporter import ExportOptions, export_checkpoint
    man = export_checkpoint(str(trained_fm / "best.pt"), str(tmp_path),
                            ExportOptions(formats=("onnx", "ort"), int8=True, half=True, calib=64, data_dir=str(fmnist_dir),
                                          int8_min_agreement=0, int8_max_drop=100, int8_se_atol=1),
                            log=lambda s: None)
    specs, shares = {}, {}
    val, _ = _validation_images(trained_fm, fmnist_dir)                # the held-out images thresholds are set on
    for name in ("model.onnx", "model.int8.onnx", "model.fp16.onnx", "model.int8.ort"):
        sess = ort.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"])
        meta = contract.decode_metadata(sess.get_modelmeta().custom_metadata_map)
        specs[name] = meta["unsure"]
        xn = normalize_batch(val, meta["mean"], meta["std"])
        outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": xn})))
        shares[name] = float((~U.unsure(outs, specs[name])[1]).mean())
    n = len(val)
    expected = (n - int(np.floor(0.05 * (n - 1)))) / n             # the lower quantile's share: 77 of 81
    assert shares == {name: expected for name in shares}, shares
    assert specs["model.int8.onnx"]["threshold"] != specs["model.onnx"]["threshold"]
    assert "int8 model" in specs["model.int8.onnx"]["calibrated_on"]
    assert specs["model.int8.ort"] == specs["model.int8.onnx"]      # converted from the stamped int8 graph
    assert man["unsure"]["variants"] == {"int8": specs["model.int8.onnx"]["threshold"],
                                         "ort-int8": specs["model.int8.onnx"]["threshold"],
                                         "fp16": specs["model.fp16.onnx"]["threshold"]}


def test_a_nan_input_is_unsure_and_its_score_is_json_null(fm_onnx):
    """A NaN tensor (OIP binary data can carry one): unsure, and the score null in JSON (NaN is not JSON)."""
    from sedeploy.runtime.predictor import Predictor
    from sedeploy.serve.model import ServedModel
    pred = Predictor(str(fm_onnx), "cpu")
    x = np.random.default_rng(0).normal(0, 1, (2, *pred.info.input_size)).astype(np.float32)
    x[1] = np.nan
    outs = pred.run(x)
    d = [p.to_dict() for p in pred.predictions(["a", "b"], [None, None], outs, 3)]
    assert d[1]["unsure"] is True and d[1]["ood_score"] is None
    json.dumps(d, allow_nan=False)
    served = ServedModel.__new__(ServedModel)
    served.predictor = pred
    params = served.unsure_parameters(outs)
    assert json.loads(params["unsure"])[1] is True and json.loads(params["ood_score"])[1] is None
    json.loads(params["ood_score"], parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))


def test_unsure_accept_option(trained_fm, fmnist_dir, run_cli, tmp_path):
    """--unsure-accept sets the share of validation images accepted; values outside (0, 1] (NaN included) are a
    one-line error; with no images on disk the export ships no flag and says why."""
    from conftest import assert_one_line_error
    ck = trained_fm / "best.pt"
    for bad in ("nan", "0", "1.5"):
        assert_one_line_error(run_cli("export", "--ckpt", ck, "--out", tmp_path / bad, "--formats", "onnx",
                                      "--data-dir", fmnist_dir, "--unsure-accept", bad), "--unsure-accept")
        assert not (tmp_path / bad).exists()
    r = run_cli("export", "--ckpt", ck, "--out", tmp_path / "a80", "--formats", "onnx", "--data-dir", fmnist_dir,
                "--unsure-accept", "0.8", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["unsure"]["accept"] == 0.8
    import onnxruntime as ort
    from sedeploy.core.datasets import normalize_batch
    sess = ort.InferenceSession(str(tmp_path / "a80" / "model.onnx"), providers=["CPUExecutionProvider"])
    meta = contract.decode_metadata(sess.get_modelmeta().custom_metadata_map)
    spec = meta["unsure"]
    assert spec["accept"] == 0.8
    val, _ = _validation_images(trained_fm, fmnist_dir)
    outs = dict(zip([o.name for o in sess.get_outputs()],
                    sess.run(None, {"input": normalize_batch(val, meta["mean"], meta["std"])})))
    n = len(val)
    assert (~U.unsure(outs, spec)[1]).mean() == (n - int(np.floor(0.2 * (n - 1)))) / n    # 65 of 81
    empty = tmp_path / "nodata"
    empty.mkdir()
    r = run_cli("export", "--ckpt", ck, "--out", tmp_path / "nd", "--formats", "onnx", "--data-dir", empty, "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["unsure"] is None and "unsure: not calibrated" in r.err


def test_unsure_bench_script(trained_fm, fm_onnx, fmnist_dir, tmp_path):
    """scripts/unsure_bench.py (BENCHMARKS 13): every score on every OOD set, thresholds set as export sets its own
    (the maha row's threshold equal to the exported one), AUROC in [0, 1], noise told apart by maha."""
    pytest.importorskip("sklearn", reason="scikit-learn (the dev extra) ships the photos and digits sets")
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "b.json"
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    r = subprocess.run([sys.executable, str(root / "scripts" / "unsure_bench.py"), "--ckpt", str(trained_fm / "best.pt"),
                        "--model", str(fm_onnx), "--data-dir", str(fmnist_dir), "--n-ood", "40", "--json", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=str(tmp_path), env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    sets = {"noise", "gradients", "shapes", "photos", "digits"}
    assert {(x["score"], x["ood"]) for x in res["rows"]} == {(k, s) for k in U.KINDS for s in sets}
    assert res["calibrated_on"].endswith("validation images") and res["test"] == 200
    assert all(0 <= x["auroc"] <= 1 and 0 <= x["far"] <= 1 for x in res["rows"])
    maha = {x["ood"]: x for x in res["rows"] if x["score"] == "maha"}
    assert maha["noise"]["auroc"] > 0.9 and abs(maha["noise"]["test_accepted"] - 0.95) < 0.10
    import onnxruntime as ort
    shipped = contract.decode_metadata(ort.InferenceSession(str(fm_onnx), providers=["CPUExecutionProvider"])
                                       .get_modelmeta().custom_metadata_map)["unsure"]["threshold"]
    assert res["thresholds"]["maha"] == pytest.approx(shipped, rel=1e-4)     # onnxruntime here, torch at export
    for bad in (["--ckpt", str(tmp_path / "none.pt"), "--model", str(fm_onnx)],
                ["--ckpt", str(trained_fm / "best.pt"), "--model", str(tmp_path / "none.onnx")]):
        rb = subprocess.run([sys.executable, str(root / "scripts" / "unsure_bench.py"), *bad], capture_output=True,
                            text=True, timeout=300, env=env)
        assert rb.returncode == 2 and rb.stderr.startswith("error:") and "Traceback" not in rb.stderr, rb.stderr
    assert "maha" in r.stdout and "digits" in r.stdout


@pytest.mark.parametrize("change,calibrated,log", [
    (lambda ck: ck.pop("recipe"), "test", "has no recipe"),
    (lambda ck: ck.update(recipe_changed=True), "test", "recipe changed on resume"),
    (lambda ck: ck["recipe"].update(seed="x"), None, "recipe is damaged"),
    (lambda ck: ck["recipe"].update(limit_train=[3]), None, "recipe is damaged"),
    (lambda ck: ck["recipe"].update(data=[1]), "validation", ""),           # no hash to check: drawn as recorded
])
def test_which_images_an_unusual_checkpoint_is_calibrated_on(trained_fm, fmnist_dir, tmp_path, change, calibrated, log):
    """A checkpoint without a recipe (versions that selected on test), one resumed under another recipe (earlier
    epochs may have trained on today's validation images): test images, said why. A damaged recipe: no flag and
    a logged reason, never a traceback."""
    import torch
    from sedeploy.export.exporter import ExportOptions, export_checkpoint
    ck = torch.load(trained_fm / "best.pt", weights_only=True)
    change(ck)
    torch.save(ck, tmp_path / "best.pt")
    logs = []
    man = export_checkpoint(str(tmp_path / "best.pt"), str(tmp_path / "out"),
                            ExportOptions(formats=("onnx",), data_dir=str(fmnist_dir)), log=logs.append)
    if calibrated is None:
        assert man["unsure"] is None and any("not calibrated" in m and log in m for m in logs), logs
    else:
        assert man["unsure"]["calibrated_on"].endswith(f" {calibrated} images"), man["unsure"]
        assert any(log in m for m in logs), logs


def test_limit_train_validation_is_the_one_training_drew(fmnist_dir, tmp_path):
    """--limit-train 300 with validation selection: the threshold's images are as many as training held out (its
    own count, written by training), and their labels hash to what training recorded (else: not calibrated)."""
    from sedeploy.checkpoint import load_checkpoint
    from sedeploy.export.exporter import ExportOptions, export_checkpoint
    from sedeploy.training import TrainConfig, fit
    fit(TrainConfig(model="cnn", dataset="fashion-mnist", data_dir=str(fmnist_dir), epochs=1, out=str(tmp_path / "r"),
                    limit_train=300, seed=3, log_every=0), progress=False)
    data = load_checkpoint(str(tmp_path / "r" / "best.pt"))["recipe"]["data"]
    man = export_checkpoint(str(tmp_path / "r" / "best.pt"), str(tmp_path / "out"),
                            ExportOptions(formats=("onnx",), data_dir=str(fmnist_dir)), log=lambda m: None)
    assert man["unsure"]["calibrated_on"] == f"{data['n_train']} training / {data['n_select']} validation images"
    assert data["n_train"] + data["n_select"] == 300
