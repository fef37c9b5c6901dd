"""Heatmap arithmetic on literal cases worked out by hand (no call back into the code under test)."""
import numpy as np

from sedeploy.runtime import explain as hm


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
