"""The deletion test of faithfulness against an oracle: a planted-signal model whose evidence is known.

The model is a hand-built ONNX graph (no training): its class-0 logit is 4 x the mean of the image's
top-left 4x4 quadrant, and its feature map is the per-quadrant mean. The images are bright in that
quadrant only. So the right region is known: a deletion that masks the top-ranked pixels of the
SE/spatial-mean map wipes out the evidence, while random pixels barely touch it. A deletion step that
masks nothing, masks the wrong end of the ranking, or masks with the wrong value fails here.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from sedeploy.core import contract  # noqa: E402

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


def test_deletion_finds_the_planted_evidence(planted):
    from sedeploy.faithfulness import deletion_eval
    res = deletion_eval(str(planted), "planted", None, n=24, fraction=0.2, log=lambda s: None)
    drops = {m: v["mean_drop"] for m, v in res["methods"].items()}
    assert res["images"] == 24 and set(drops) == {"se", "spatial_mean", "random"}
    # before: p = sigmoid(4 * 1) = 0.982 (255 normalizes to 1). The map's top 13 of 64 pixels lie in the
    # quadrant: blacked out (-1) its mean falls to (3 - 13) / 16 = -0.625 -> p = 0.076, a drop of ~0.9.
    assert res["mean_confidence"] == pytest.approx(1 / (1 + np.exp(-4.0)), abs=1e-5)
    for m in ("se", "spatial_mean"):
        assert drops[m] == pytest.approx(1 / (1 + np.exp(-4.0)) - 1 / (1 + np.exp(2.5)), abs=1e-4), m
    # random pixels hit ~3 of the quadrant's 16: a small drop, but a drop (masking does happen)
    assert 0.005 < drops["random"] < 0.3
    assert drops["se"] - drops["random"] > 0.5                   # the SE map beats random by a margin


def test_rank_mask_takes_the_top_fraction():
    from sedeploy.faithfulness import _rank_mask
    m = _rank_mask(np.arange(20.0).reshape(4, 5), 0.2)
    assert m.sum() == 4 and m.ravel()[-4:].all()                   # the 4 highest of 20
    assert _rank_mask(np.arange(20.0)[::-1].reshape(4, 5), 0.25).ravel()[:5].all()
