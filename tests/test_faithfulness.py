"""Heatmap faithfulness (deletion, insertion, ROAD) against an oracle: a planted-signal model whose evidence
is known, and the head maps' numpy formulas against a torch reference.

The planted model is a hand-built ONNX graph (no training): its class-0 logit is 4 x the mean of the image's
top-left 4x4 quadrant, and its feature map is the per-quadrant mean. The images are bright in that quadrant
only. So the right map is known (the quadrant), and so is the wrong one (its complement): every metric must
rank the true map above random and random above the inverted map.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from sedeploy import faithfulness as fa  # noqa: E402
from sedeploy.core import contract  # noqa: E402
from sedeploy.runtime import explain  # noqa: E402

MEAN, STD = [0.5], [0.5]


def planted_model(path: Path) -> Path:
    """input (N,1,8,8) -> feature_map (N,1,2,2) quadrant means, se1 (N,1), logits (N,2) = [4 q_topleft, 0]."""
    w = np.zeros((4, 2), np.float32)
    w[0, 0] = 4.0                                             # class 0 reads the top-left quadrant only
    nodes = [
        helper.make_node("AveragePool", ["input"], ["feature_map"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Flatten", ["feature_map"], ["flat"]),                       # (N, 4)
        helper.make_node("Gemm", ["flat", "w"], ["logits"]),                          # (N, 2)
        helper.make_node("GlobalAveragePool", ["input"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["gapf"]),                               # (N, 1)
        helper.make_node("Sigmoid", ["gapf"], ["se1"]),                               # SE weight in (0, 1)
    ]
    graph = helper.make_graph(
        nodes, "planted", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2]),
         helper.make_tensor_value_info("se1", TensorProto.FLOAT, ["batch", 1]),
         helper.make_tensor_value_info("feature_map", TensorProto.FLOAT, ["batch", 1, 2, 2])],
        [helper.make_tensor("w", TensorProto.FLOAT, [4, 2], w.ravel().tolist())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {"classes": ["planted", "other"], "mean": MEAN, "std": STD, "input_size": [1, 8, 8],
            "output_names": ["logits", "se1", "feature_map"], "se_outputs": ["se1"],
            "feature_map": "feature_map", "dataset": "planted"}
    for k, v in contract.encode_metadata(meta).items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return path


def planted_images(n: int, seed: int = 0) -> np.ndarray:
    """uint8 (N,1,8,8): the top-left quadrant at 255, the rest dim noise in [40, 80]."""
    x = np.random.default_rng(seed).integers(40, 81, size=(n, 1, 8, 8)).astype(np.uint8)
    x[:, :, :4, :4] = 255
    return x


@pytest.fixture
def planted(tmp_path, monkeypatch):
    import sedeploy.core.arrays as arrays
    images = planted_images(24)
    monkeypatch.setattr(arrays, "load_arrays", lambda *a, **k: (["planted", "other"], images,
                                                                np.zeros(len(images), np.int64)))
    return planted_model(tmp_path / "planted.onnx")


def test_metrics_rank_the_true_map_above_random_above_the_inverted(planted):
    from sedeploy.runtime.predictor import Predictor
    px = planted_images(24).astype(np.float32) / 255
    k = np.zeros(24, np.int64)
    scorer = fa.Scorer(Predictor(str(planted), "cpu"))
    truth = np.zeros((24, 8, 8))
    truth[:, :4, :4] = 1
    rng = np.random.default_rng(0)
    got = {}
    for name, m in (("true", truth), ("random", rng.random((24, 8, 8))), ("inverted", 1 - truth)):
        rank = fa.order_pixels(m, rng)
        got[name] = {**fa.curves(scorer, px, k, rank, steps=8), **fa.road(scorer, px, k, rank, rng)}
    mean = {n: {m: float(v.mean()) for m, v in d.items()} for n, d in got.items()}
    assert mean["true"]["deletion"] < mean["random"]["deletion"] - 0.05 < mean["inverted"]["deletion"] - 0.1
    assert mean["true"]["insertion"] > mean["random"]["insertion"] + 0.05 > mean["inverted"]["insertion"] + 0.1
    assert mean["true"]["road"] > mean["random"]["road"] + 0.05 > mean["inverted"]["road"] + 0.1
    # ROAD's MoRF at 10 % of the true map already wipes out a large share of the evidence
    assert mean["true"]["road_morf"] < mean["inverted"]["road_morf"]


def test_evaluate_and_cli_table(planted, run_cli):
    res = fa.evaluate(str(planted), None, "planted", None, n=24, steps=8, kinds=["se", "spatial-mean", "random"],
                      log=lambda s: None)
    assert res["images"] == 24 and list(res["methods"]) == ["se", "spatial-mean", "random"]
    # the one-channel map is the quadrant map: it beats random on every metric by many standard errors
    for m in ("deletion", "insertion", "road"):
        assert res["paired"]["random"]["vs_spatial-mean"][m]["better_se"] < -3, m
    r = run_cli("faithfulness", "--model", planted, "--n", "24", "--steps", "4", "--kinds", "se,random")
    assert r.code == 0, r.err
    assert r.out.startswith("| map | deletion AUC") and "| se | " in r.out and "| random | " in r.out
    r = run_cli("faithfulness", "--model", planted, "--n", "24", "--steps", "4", "--kinds", "se,random", "--json")
    assert r.code == 0 and set(json.loads(r.out)["methods"]) == {"se", "random"}
    r = run_cli("faithfulness", "--model", planted, "--n", "24", "--kinds", "gradcam")
    assert r.code == 2 and "--ckpt" in r.err                                       # no checkpoint beside it


def test_road_imputation_solves_the_linear_system():
    """The batched Jacobi solve equals pytorch-grad-cam's sparse direct solve (same weights) within 1e-3."""
    sparse = pytest.importorskip("scipy.sparse")
    from scipy.sparse.linalg import spsolve
    rng = np.random.default_rng(1)
    img = rng.random((1, 1, 12, 12)).astype(np.float32)
    removed = rng.random((1, 12, 12)) < 0.5
    got = fa.road_impute(img, removed, rng, iters=400, noise=0.0)[0, 0]
    idx = np.flatnonzero(removed[0])
    pos = {p: i for i, p in enumerate(idx)}
    a, b = sparse.lil_matrix((len(idx), len(idx))), np.zeros(len(idx))
    for i, p in enumerate(idx):
        y, x = divmod(p, 12)
        total = 0.0
        for (dy, dx), wt in fa._NEIGHBOURS:
            yy, xx = y + dy, x + dx
            if 0 <= yy < 12 and 0 <= xx < 12:
                total += wt
                q = yy * 12 + xx
                if q in pos:
                    a[i, pos[q]] = wt
                else:
                    b[i] -= wt * img[0, 0, yy, xx]
        a[i, i] = -total
    want = spsolve(a.tocsc(), b)
    np.testing.assert_allclose(got.ravel()[idx], want, atol=1e-3)
    assert np.array_equal(got[~removed[0]], img[0, 0][~removed[0]])               # known pixels untouched


def test_head_maps_equal_a_torch_reference():
    """head-gradcam / head-cam in numpy == autograd through max-pool and the linearized head (W2 @ W1)."""
    torch = pytest.importorskip("torch")
    from sedeploy.export.exporter import head_linear
    from sedeploy.models.registry import create_model
    torch.manual_seed(0)
    model = create_model("se_cnn", in_channels=1, input_size=16, num_classes=3, widths=[4, 8], hidden=16).eval()
    meta = {"head_linear": json.loads(json.dumps(head_linear(model)))}               # through JSON, as stored
    g, pool = explain.head_weights(meta)
    assert g.shape == (3, 8, 4, 4) and pool == 2
    w_eff = (model.head[4].weight @ model.head[1].weight).detach().numpy()
    np.testing.assert_allclose(g.reshape(3, -1), w_eff, rtol=1e-4, atol=1e-6)
    x = torch.randn(2, 1, 16, 16)
    fmap = model.forward_explain(x)[2].detach()
    for j in range(2):
        f = fmap[j:j + 1].clone().requires_grad_(True)
        cls = j + 1
        logit = (torch.from_numpy(g[cls]).flatten() * torch.nn.functional.max_pool2d(f, pool).flatten()).sum()
        logit.backward()
        grad = f.grad[0]
        ref_cam = torch.relu((grad * f[0]).sum(0)).detach().numpy()
        ref_gc = torch.relu((grad.mean((1, 2))[:, None, None] * f[0]).sum(0)).detach().numpy()
        fm = fmap[j].numpy()
        np.testing.assert_allclose(explain.head_cam_attention(fm, g[cls], pool), ref_cam / ref_cam.max(), atol=1e-5)
        np.testing.assert_allclose(explain.head_gradcam_attention(fm, g[cls], pool), ref_gc / ref_gc.max(), atol=1e-5)


def test_order_pixels_ranks_descending_with_random_ties():
    rank = fa.order_pixels(np.arange(20.0).reshape(1, 4, 5), np.random.default_rng(0))
    assert rank[0, -1, -1] == 0 and rank[0, 0, 0] == 19
    ties = [fa.order_pixels(np.zeros((1, 2, 2)), np.random.default_rng(s))[0, 0, 0] for s in range(8)]
    assert len(set(ties)) > 1                                                      # not broken by position


def test_asked_kinds_the_model_cannot_give_are_errors(planted, run_cli, tmp_path):
    """--kinds se on a model without SE outputs is an error (not an empty table); a checkpoint that is not
    the one the model was exported from is refused by its sha256."""
    import onnx
    from conftest import assert_one_line_error
    m = onnx.load(str(planted))
    meta = contract.decode_metadata({p.key: p.value for p in m.metadata_props})
    no_se = {**meta, "se_outputs": [], "checkpoint_sha256": "0" * 64}
    del m.metadata_props[:]
    for k, v in contract.encode_metadata(no_se).items():
        m.metadata_props.add(key=k, value=v)
    path = tmp_path / "no_se.onnx"
    onnx.save(m, str(path))
    assert_one_line_error(run_cli("faithfulness", "--model", path, "--n", "4", "--kinds", "se"),
                          "no SE outputs", "drop se from --kinds")
    other = tmp_path / "other.pt"
    other.write_bytes(b"not the checkpoint")
    assert_one_line_error(run_cli("faithfulness", "--model", path, "--n", "4", "--kinds", "gradcam",
                                  "--ckpt", other), "is not the checkpoint", "--ckpt")


def test_default_kinds_on_an_older_export_without_a_checkpoint(planted):
    """No head_linear in the metadata and no best.pt beside it: the maps that need them are left out, said
    once; the others are measured (before: an error telling to drop gradcam, which was already dropped)."""
    logs = []
    res = fa.evaluate(str(planted), None, "planted", None, n=8, steps=2, log=logs.append)
    assert set(res["methods"]) == {"se", "spatial-mean", "random"}
    assert any("no Grad-CAM, head-cam, head-gradcam" in m for m in logs), logs


def test_gradcam_equals_finite_differences(tmp_path):
    """Grad-CAM on the PyTorch model (the 'vs Grad-CAM' column): alpha_c = mean over h, w of d logit_k / d F_c,
    taken here without autograd: d logit / d pooled map by central finite differences through the model's own
    head (Linear, ReLU, Linear), routed by numpy to each 2x2 window's first maximum (max-pool's subgradient, as
    torch takes it); map = relu(sum_c alpha_c F_c) / its max. What this pins: the per-channel weighting (pooled
    gradients, not per-pixel ones), the layer, the ReLU and the scaling (a sum instead of the mean over h, w is
    the same map after scaling). Also: the asked class is used, and batches past 256 images give what the images
    give alone."""
    torch = pytest.importorskip("torch")
    import copy
    from sedeploy.checkpoint import make_checkpoint, save_checkpoint
    from sedeploy.faithfulness import gradcam
    from sedeploy.models.registry import create_model
    torch.manual_seed(0)
    cfg = {"in_channels": 1, "input_size": 16, "num_classes": 3, "widths": [4, 8], "hidden": 16}
    model = create_model("se_cnn", **cfg).eval()
    ck = tmp_path / "best.pt"
    save_checkpoint(make_checkpoint(model, "se_cnn", cfg, classes=["a", "b", "c"], mean=[0.5], std=[0.25],
                                    input_size=[1, 16, 16], dataset="planted", epoch=1, metrics={}), ck)
    x = np.random.default_rng(0).normal(0, 1, (260, 1, 16, 16)).astype(np.float32)
    k = np.arange(260) % 3
    got = gradcam(ck, x, k)
    assert got.shape == (260, 8, 8) and got.dtype == np.float32          # the last block, before its pool
    head = copy.deepcopy(model.head).double()                          # float64 for the differences
    for j in (0, 1, 257):
        with torch.no_grad():
            f = model.forward_explain(torch.from_numpy(x[j:j + 1]))[2][0].double().numpy()     # (8, 8, 8)
            win = f.reshape(8, 4, 2, 4, 2).transpose(0, 1, 3, 2, 4).reshape(8, 4, 4, 4)       # (c, i, j, window)
            p = win.max(-1)
            logit = lambda q: float(head(torch.from_numpy(q)[None])[0, int(k[j])])
            dp = np.zeros_like(p)
            for idx in np.ndindex(*p.shape):
                up, dn = p.copy(), p.copy()
                up[idx] += 1e-6
                dn[idx] -= 1e-6
                dp[idx] = (logit(up) - logit(dn)) / 2e-6
        first = win.argmax(-1)                                              # the first maximum of each window
        grad = np.zeros_like(win)
        np.put_along_axis(grad, first[..., None], dp[..., None], -1)
        grad = grad.reshape(8, 4, 4, 2, 2).transpose(0, 1, 3, 2, 4).reshape(8, 8, 8)
        ref = np.maximum((grad.mean((1, 2))[:, None, None] * f).sum(0), 0)
        ref = ref / ref.max() if ref.max() > 0 else ref
        np.testing.assert_allclose(got[j], ref, atol=1e-4)
    other = gradcam(ck, x[:3], (k[:3] + 1) % 3)                       # another class: another map
    assert not np.allclose(other, got[:3], atol=1e-3)
    np.testing.assert_allclose(gradcam(ck, x[257:258], k[257:258]), got[257:258], atol=1e-6)
