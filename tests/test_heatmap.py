"""Heatmap arithmetic on literal cases worked out by hand (no call back into the code under test)."""
import numpy as np

from sedeploy.runtime import explain as hm
from sedeploy.runtime import render


def test_se_attention_literal():
    fmap = np.array([[[1, -2], [0, 3]], [[2, 2], [-4, 0]]], np.float32)     # (C=2, 2, 2)
    w = np.array([0.5, 1.0], np.float32)
    # 0.5 * F0 + F1 = [[2.5, 1], [-4, 1.5]] -> clamp at 0 -> / 2.5
    np.testing.assert_allclose(hm.se_attention(fmap, w), [[1, 0.4], [0, 0.6]], atol=1e-6)
    assert not hm.se_attention(-np.abs(fmap), w).any()                      # all negative: an empty map


def test_normalize_and_ranking_literal():
    np.testing.assert_allclose(hm.normalize01(np.array([[1, 3], [2, 5]])), [[0, 0.5], [0.25, 1]])
    assert not hm.normalize01(np.full((3, 3), 7.0)).any()
    got = hm.top_channels(np.array([0.1, 0.9, 0.5, 0.9]), 3)
    assert [c for c, _ in got] == [1, 3, 2] and np.allclose([v for _, v in got], [0.9, 0.9, 0.5])


def test_spatial_mean_fallback_literal():
    fmap = np.zeros((4, 2, 2), np.float32)
    fmap[0] = [[4, 0], [0, 0]]        # mean 1
    fmap[1] = [[1, 1], [1, 1]]        # mean 1 (ties keep channel order)
    fmap[2] = [[0, 0], [0, 8]]        # mean 2
    fmap[3] = [[0.4, 0], [0, 0]]      # mean 0.1: not in the top 3
    # top 3 = channels 2, 0, 1; mean [[5/3, 1/3], [1/3, 3]]; (v - 1/3) / (3 - 1/3) -> [[0.5, 0], [0, 1]]
    np.testing.assert_allclose(hm.spatial_mean_attention(fmap), [[0.5, 0], [0, 1]], atol=1e-6)


def test_upsample_keeps_orientation():
    a = np.zeros((4, 4), np.float32)
    a[0, 3] = 1.0                     # top-right corner
    up = hm.upsample(a, (40, 20))     # (width, height)
    assert up.shape == (20, 40)
    r, c = np.unravel_index(np.argmax(up), up.shape)
    assert r < 5 and c >= 30                                      # in the top-right source cell


def test_colormap_literal():
    # r, g, b = clip(1.5 - |4a - k|, 0, 1) for k = 3, 2, 1, times 255 (truncated to uint8)
    got = hm.colormap(np.array([[-1.0, 0.0, 0.25], [0.5, 1.0, 2.0]]))
    assert got.dtype == np.uint8 and got.shape == (2, 3, 3)
    assert got.tolist() == [[[0, 0, 127], [0, 0, 127], [0, 127, 255]],
                            [[127, 255, 127], [127, 0, 0], [127, 0, 0]]]


def test_overlay_blends_half_and_half():
    from PIL import Image
    img = Image.new("L", (4, 2), 100)
    out = render.overlay(img, np.ones((1, 1), np.float32))          # heat upsampled to the image: all 1 -> (127, 0, 0)
    assert out.mode == "RGB" and out.size == (4, 2)
    assert all(abs(a - b) <= 1 for px in out.getdata() for a, b in zip(px, (113.5, 50, 50)))
    quarter = render.overlay(img, np.zeros((2, 4), np.float32), alpha=0.25)   # all 0 -> (0, 0, 127)
    assert all(abs(a - b) <= 1 for px in quarter.getdata() for a, b in zip(px, (75, 75, 106.75)))


def test_display_enlarges_small_images_with_nearest():
    from PIL import Image
    small = Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8), "L")
    big = render._display(small, 6)                                  # ceil(6 / 2) = 3
    assert big.mode == "RGB" and big.size == (6, 6)
    assert np.asarray(big)[:3, :3].max() == 0 and np.asarray(big)[:3, 3:].min() == 255
    assert render._display(Image.new("L", (200, 100)), 192).size == (400, 200)     # ceil(192 / 100) = 2
    same = render._display(Image.new("L", (300, 200)), 192)
    assert same.size == (300, 200) and same.mode == "RGB"
    assert render._display(Image.new("L", (32, 32))).size == (192, 192)           # min_side defaults to 192


def test_top_channels_and_scores_literal():
    assert hm.top_channels(np.array([0.2, 0.7]), 5) == [(1, 0.7), (0, 0.2)]
    assert hm.top_channels(np.array([0.5, 0.5, 0.9]), 2) == [(2, 0.9), (0, 0.5)]      # ties: lower index first
    f = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    assert hm.spatial_mean_scores(f).tolist() == [1.5, 5.5]
    assert hm.TOP_MEAN_CHANNELS == 3
    np.testing.assert_allclose(hm.normalize01(np.array([-2.0, 0.0, 2.0])), [0, 0.5, 1])
    assert hm.normalize01(np.array([1, 2], np.int64)).dtype == np.float32
    one = hm.spatial_mean_attention(np.stack([f[0], f[1], f[1] * 0]), top=1)   # channel 1 alone
    np.testing.assert_allclose(one, [[0, 1 / 3], [2 / 3, 1]], atol=1e-6)


def test_upsample_is_bicubic_and_clipped():
    from PIL import Image
    a = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)
    up = hm.upsample(a, (8, 8))
    ref = np.asarray(Image.fromarray(a, "F").resize((8, 8), Image.BICUBIC))
    assert ref.min() < 0 and ref.max() > 1                                       # bicubic overshoots ...
    np.testing.assert_allclose(up, np.clip(ref, 0, 1))                            # ... and the map is clipped
    assert hm.upsample(a, (2, 2)).tolist() == a.tolist()


# ---------------------------------------------------------------- cases that killed surviving mutants
def test_map_types_shapes_and_small_maxima():
    flat = hm.normalize01(np.full((3, 3), 7.0))
    assert flat.shape == (3, 3) and flat.dtype == np.float32 and not flat.any()
    fmap = np.array([[[0.5, 0.25]]], np.float32)                  # max 0.5 < 1: still scaled to 1
    a = hm.se_attention(fmap, np.array([1.0], np.float64))
    assert a.dtype == np.float32 and a.tolist() == [[1.0, 0.5]]
    assert hm.se_attention(fmap.astype(np.float64), np.array([1.0], np.float32)).dtype == np.float32


def test_colormap_peak_channels_saturate():
    # at a = 0.75 red's ramp is at its top (1.5 before the clip at 1): 255, not an overflowed byte
    assert hm.colormap(np.array([0.75])).tolist() == [[255, 127, 0]]


def test_top_channels_ties_among_many():
    s = np.zeros(300)
    s[::7] = 1.0                                                  # 43 tied channels: the lowest indices first
    assert [c for c, _ in hm.top_channels(s, 4)] == [0, 7, 14, 21]


def test_head_maps_literal():
    """pool 2 on a (C=2, 4, 4) map, pooled 2x2; hand-worked gradient routing and both head maps."""
    fmap = np.zeros((2, 4, 4), np.float32)
    fmap[0, 0, 1] = 2.0               # channel 0's maximum in window (0, 0) sits at (0, 1)
    fmap[0, 3, 3] = 1.0               # window (1, 1) at (3, 3); windows (0, 1), (1, 0) are all 0: first cell
    fmap[1, 2, 0] = 4.0               # channel 1: window (1, 0) at (2, 0)
    g = np.array([[[1.0, 0.5], [0.0, -1.0]], [[0.0, 0.0], [0.25, 0.0]]], np.float32)     # (C, s, s)
    grad = hm.pool_gradient(fmap, g, 2)
    want0 = np.zeros((4, 4))
    want0[0, 1], want0[0, 2], want0[2, 0], want0[3, 3] = 1.0, 0.5, 0.0, -1.0
    np.testing.assert_allclose(grad[0], want0)
    assert grad[1, 2, 0] == 0.25 and np.count_nonzero(grad[1]) == 1
    # head-cam: grad * F summed over channels = 2 at (0, 1), 1 at (2, 0), -1 at (3, 3) -> clamp, / 2
    cam = np.zeros((4, 4))
    cam[0, 1], cam[2, 0] = 1.0, 0.5
    np.testing.assert_allclose(hm.head_cam_attention(fmap, g, 2), cam, atol=1e-6)
    # head-gradcam: alpha = mean gradient = [0.5 / 16, 0.25 / 16]; 0.5 F0 + 0.25 F1 -> 1 at (0,1), 1 at (2,0)
    gc = np.zeros((4, 4))
    gc[0, 1], gc[2, 0], gc[3, 3] = 1.0, 1.0, 0.5
    np.testing.assert_allclose(hm.head_gradcam_attention(fmap, g, 2), gc, atol=1e-6)


def test_map_kind_choice_and_errors():
    from types import SimpleNamespace

    import pytest

    from sedeploy.core.errors import UserError
    head = {"weights": [0.0] * 8, "shape": [2, 1, 1], "pool": 2}
    info = lambda meta, se: SimpleNamespace(meta=meta, se_outputs=se, feature_map="feature_map", path="m.onnx")
    assert hm.default_kind(info({"head_linear": head}, ["se1"])) == hm.DEFAULT_KIND == "head-cam"
    assert hm.default_kind(info({}, ["se1"])) == "se" and hm.default_kind(info({}, [])) == "spatial-mean"
    outs = {"logits": np.zeros(4, np.float32), "feature_map": np.ones((2, 2, 2), np.float32)}
    with pytest.raises(UserError, match="head_linear"):
        hm.attention("head-cam", outs, info({}, []))
    with pytest.raises(UserError, match="heatmap kind"):
        hm.explain(outs, info({}, []), kind="nope")
    assert hm.explain(outs, info({"head_linear": head}, []), kind=None)["method"] == "head-cam"


def test_heatmap_names_never_collide():
    """a/0.png, b/0.png and c/0_2.png: three different names (b's renamed 0_2 must not be c's own 0_2)."""
    from sedeploy.runtime.infer import InferRun
    run = InferRun.__new__(InferRun)
    InferRun.__init__(run, None, None, None, [], [])
    names = [run._stem(p) for p in ("a/0.png", "b/0.png", "c/0_2.png", "d/0.png", "e/0_2.jpg", "f/x.png")]
    assert names == ["0", "0_2", "0_2_2", "0_3", "0_2_3", "x"]
    assert run._stem("g/X.png") == "X_2"                    # one file with x on a case-blind file system
    assert len(set(names)) == len(names)


def test_a_kind_the_model_cannot_draw_is_refused_before_the_folder_is_made(fm_onnx, run_cli, tmp_path):
    import onnx
    from PIL import Image

    from conftest import assert_one_line_error
    from sedeploy.core import contract
    m = onnx.load(str(fm_onnx))                               # an older export: no head_linear
    keep = [p for p in m.metadata_props if p.key != contract.META_PREFIX + "head_linear"]
    del m.metadata_props[:]
    m.metadata_props.extend(keep)
    old = tmp_path / "old.onnx"
    onnx.save(m, str(old))
    Image.new("L", (32, 32), 90).save(tmp_path / "x.png")
    r = run_cli("infer", tmp_path / "x.png", "--model", old, "--heatmaps", tmp_path / "heat", "--heatmap-kind",
                "head-cam")
    assert_one_line_error(r, "no head_linear", "--heatmap-kind se")
    assert not (tmp_path / "heat").exists()
