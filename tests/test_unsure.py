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


def test_export_stores_a_calibrated_score(fm_onnx):
    """The exporter's metadata carries the score; its threshold accepts ~95 % of test images, flags noise."""
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
    run = lambda x: dict(zip(names, sess.run(None, {contract.INPUT_NAME: x})))
    # the test images the exporter found (the same lookup as int8 calibration), 2000 of them calibrated on
    _, x, _ = load_arrays(meta["dataset"], None, "test", ref=meta.get("data"))
    x = x[np.random.default_rng(1).permutation(len(x))[:1000]]
    _, flags = U.unsure(run(normalize_batch(x, meta["mean"], meta["std"])), spec)
    assert abs((~flags).mean() - 0.95) < 0.03             # 1000 images, binomial sd ~0.007
    noise = np.random.default_rng(0).normal(0, 2, (64, *meta["input_size"])).astype(np.float32)
    assert U.unsure(run(noise), spec)[1].mean() > 0.8


def test_infer_text_and_json_carry_the_flag(fm_onnx, run_cli, tmp_path):
    """Noise is flagged in `sedeploy infer` (text and JSON); the same model without the key: no flag, same top-k."""
    import onnx
    from PIL import Image
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(tmp_path / f"noise{i}.png")
    res = run_cli("infer", str(tmp_path), "--model", str(fm_onnx), "--topk", "3", "--json")
    assert res.code == 0, res.err
    recs = [json.loads(line) for line in res.out.splitlines()]
    assert all(r["unsure"] is True and isinstance(r["ood_score"], float) for r in recs)
    text = run_cli("infer", str(tmp_path), "--model", str(fm_onnx), "--topk", "3")
    assert text.out.count("(unsure)") == 3
    m = onnx.load(str(fm_onnx))                            # an old artifact: the key removed
    keep = [p for p in m.metadata_props if p.key != contract.META_PREFIX + "unsure"]
    del m.metadata_props[:]
    m.metadata_props.extend(keep)
    old = tmp_path / "old.onnx"
    onnx.save(m, str(old))
    res_old = run_cli("infer", str(tmp_path), "--model", str(old), "--topk", "3", "--json")
    assert res_old.code == 0, res_old.err
    olds = [json.loads(line) for line in res_old.out.splitlines()]
    assert all("unsure" not in r and "ood_score" not in r for r in olds)
    assert [r["top"] for r in olds] == [r["top"] for r in recs]     # the flag never changes top-k


def test_serve_answers_carry_the_flag(fm_onnx):
    """The image route's JSON has unsure / ood_score; the OIP infer response has them as parameters."""
    import io
    from PIL import Image
    from support.app import app_client
    with app_client(fm_onnx) as c:
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)).save(buf, "PNG")
        r = c.post("/v2/models/fm/classify?topk=3", content=buf.getvalue())
        assert r.status_code == 200, r.text
        assert r.json()["unsure"] is True and isinstance(r.json()["ood_score"], float)
        x = np.random.default_rng(1).normal(0, 2, (2, 1, 32, 32)).astype(np.float32)
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
        r = c.post("/v2/models/fm/infer", json=body)
        assert r.status_code == 200, r.text
        p = r.json()["parameters"]
        assert json.loads(p["unsure"]) == [True, True] and len(json.loads(p["ood_score"])) == 2
        assert "unsure" not in {o["name"] for o in r.json()["outputs"]}


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
    from sedeploy.core.arrays import load_arrays
    from sedeploy.core.datasets import normalize_batch
    from sedeploy.export.exporter import ExportOptions, export_checkpoint
    man = export_checkpoint(str(trained_fm / "best.pt"), str(tmp_path),
                            ExportOptions(formats=("onnx", "ort"), int8=True, half=True, calib=64, data_dir=str(fmnist_dir),
                                          int8_min_agreement=0, int8_max_drop=100, int8_se_atol=1),
                            log=lambda s: None)
    specs, shares = {}, {}
    for name in ("model.onnx", "model.int8.onnx", "model.fp16.onnx", "model.int8.ort"):
        sess = ort.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"])
        meta = contract.decode_metadata(sess.get_modelmeta().custom_metadata_map)
        specs[name] = meta["unsure"]
        _, x, _ = load_arrays(meta["dataset"], str(fmnist_dir), "test")
        xn = normalize_batch(x[np.random.default_rng(0).permutation(len(x))[:2000]], meta["mean"], meta["std"])
        outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": xn})))
        shares[name] = float((~U.unsure(outs, specs[name])[1]).mean())
    n = 200                                                        # the test images the tiny data set has
    expected = (n - int(np.floor(0.05 * (n - 1)))) / n             # the lower quantile's share: 191 of 200
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
