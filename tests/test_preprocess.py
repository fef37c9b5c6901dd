"""Decoding (core/decode.py) and normalization (runtime/preprocess.py) on images made here, pixel by pixel:
modes, transparency, EXIF, the fast path's sizes, every refusal's whole message, the CLI's input expansion.
No model: fast enough to run for every mutant (docs/MUTATION.md)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from sedeploy.core import decode as D
from sedeploy.runtime.pipeline import expand_inputs
from sedeploy.runtime.preprocess import normalize, preprocess


def png(im: Image.Image, **kw) -> bytes:
    b = io.BytesIO()
    im.save(b, "PNG", **kw)
    return b.getvalue()


# ---------------------------------------------------------------- modes
def test_float_and_16bit_images_to_8bit():
    f = Image.fromarray(np.array([[0.0, 0.5], [1.0, np.nan]], np.float32), "F")
    assert np.asarray(D.to_model_mode(f, 1)).tolist() == [[0, 128], [255, 0]]     # [0, 1] floats scaled by 255
    f = Image.fromarray(np.array([[2.0, 100.4], [300.0, -5.0]], np.float32), "F")
    assert np.asarray(D.to_model_mode(f, 1)).tolist() == [[2, 100], [255, 0]]     # above 1: already 0..255
    i16 = Image.fromarray(np.array([[0, 257], [65535, 32896]], np.uint16))
    assert np.asarray(D.to_model_mode(i16, 1)).tolist() == [[0, 1], [255, 128]]   # / 257
    i32 = Image.fromarray(np.array([[514, 70000]], np.int32))
    assert np.asarray(D.to_model_mode(i32, 1)).tolist() == [[2, 255]]
    assert np.asarray(D.to_model_mode(i16, 3)).shape == (2, 2, 3)
    empty = Image.new("F", (0, 0))
    assert D.to_model_mode(empty, 1).size == (0, 0)


def test_transparency_is_composited_on_the_background():
    rgba = Image.new("RGBA", (2, 1))
    rgba.putpixel((0, 0), (200, 100, 50, 255))          # opaque: kept
    rgba.putpixel((1, 0), (200, 100, 50, 0))            # transparent: the background shows
    assert list(D.to_model_mode(rgba, 3).getdata()) == [(200, 100, 50), (0, 0, 0)]
    assert list(D.to_model_mode(rgba, 3, (255, 255, 255)).getdata()) == [(200, 100, 50), (255, 255, 255)]
    la = Image.new("LA", (1, 1), (90, 0))
    assert D.to_model_mode(la, 1, (128, 128, 128)).getpixel((0, 0)) == 128 and D.to_model_mode(la, 1).mode == "L"
    p = Image.new("P", (2, 1))
    p.putpalette([10, 20, 30, 200, 0, 0] + [0] * 762)
    p.putpixel((0, 0), 0)
    p.putpixel((1, 0), 1)
    assert list(D.to_model_mode(p, 3).getdata()) == [(10, 20, 30), (200, 0, 0)]
    p.info["transparency"] = 0                          # palette index 0 transparent
    assert list(D.to_model_mode(p, 3, (255, 255, 255)).getdata()) == [(255, 255, 255), (200, 0, 0)]


def test_other_modes_and_channels():
    rgb = Image.new("RGB", (1, 1), (255, 0, 0))
    assert D.to_model_mode(rgb, 1).getpixel((0, 0)) == 76                 # ITU-R 601 luma of pure red
    assert D.to_model_mode(rgb, 3) is rgb                                  # already right: untouched
    grey = Image.new("L", (1, 1), 7)
    assert D.to_model_mode(grey, 3).getpixel((0, 0)) == (7, 7, 7) and D.to_model_mode(grey, 1) is grey
    cmyk = Image.new("CMYK", (1, 1), (0, 255, 255, 0))
    assert D.to_model_mode(cmyk, 3).getpixel((0, 0)) == (255, 0, 0)
    one = Image.new("1", (1, 1), 1)
    assert D.to_model_mode(one, 1).getpixel((0, 0)) == 255 and D.to_model_mode(one, 3).mode == "RGB"


# ---------------------------------------------------------------- files and refusals
def test_file_refusals_name_the_file(tmp_path):
    with pytest.raises(D.ImageError) as e:
        D.load_image(tmp_path / "gone.png", 1)
    assert str(e.value) == f"{tmp_path / 'gone.png'}: no such file" and e.value.path == str(tmp_path / "gone.png")
    with pytest.raises(D.ImageError) as e:
        D.load_image(tmp_path, 1)
    assert str(e.value) == f"{tmp_path}: is a directory, not an image"
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(D.ImageError) as e:
        D.load_image(tmp_path / "zero.png", 1)
    assert str(e.value) == f"{tmp_path / 'zero.png'}: empty file (0 bytes), not an image"
    with pytest.raises(D.ImageError) as e:
        D.decode_image(b"", "up.png", 1)
    assert str(e.value) == "up.png: empty file (0 bytes), not an image" and e.value.path == "up.png"
    assert D.ImageError("m").path is None


def test_decode_refusals():
    data = png(Image.new("L", (4, 3)))
    with pytest.raises(D.ImageError) as e:
        D.decode_image(data, "x.png", 1, max_pixels=11)
    assert str(e.value) == "x.png: 4x3 pixels exceeds the 11-pixel limit (decompression bomb?); downscale it first"
    assert D.decode_image(data, "x.png", 1, max_pixels=12).size == (4, 3)          # the limit is inclusive
    with pytest.raises(D.ImageError) as e:
        D.decode_image(b"hello, not an image", "t.jpg", 1)
    assert str(e.value) == "t.jpg: not an image Pillow can read"
    big = png(Image.new("L", (64, 64), 9))
    with pytest.raises(D.ImageError) as e:
        D.decode_image(big[:len(big) // 2], "cut.png", 1)
    assert str(e.value).startswith("cut.png: corrupt or truncated image (") and str(e.value).endswith(")")
    with pytest.raises(D.ImageError, match="image is too large"):
        with D._open_checked(io.BytesIO(data), "b.png", 100):
            raise Image.DecompressionBombError("x")
    assert str(D.MAX_PIXELS) == "40000000"


def test_opened_is_lazy_and_checked(tmp_path):
    (tmp_path / "a.png").write_bytes(png(Image.new("RGB", (5, 4))))
    with D.opened(tmp_path / "a.png") as im:
        assert im.size == (5, 4)
    with pytest.raises(D.ImageError, match="exceeds the 19-pixel limit"):
        with D.opened(tmp_path / "a.png", max_pixels=19):
            pass


def test_exif_orientation_is_applied():
    a = np.zeros((2, 3), np.uint8)
    a[0, 0] = 255                                            # top-left of a 3 wide, 2 high image
    im = Image.fromarray(a, "L")
    exif = Image.Exif()
    exif[0x0112] = 6                                         # "rotate 90 CW to view"
    out = D.decode_image(png(im, exif=exif), "r.png", 1)
    assert out.size == (2, 3) and np.asarray(out)[0, 1] == 255 and np.asarray(out).sum() == 255
    exif[0x0112] = 1
    assert D.decode_image(png(im, exif=exif), "u.png", 1).size == (3, 2)


def test_fast_path_sizes():
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8), "RGB")
    b = io.BytesIO()
    rgb.save(b, "JPEG", quality=90)
    jpg = b.getvalue()
    assert D.decode_image(jpg, "j", 3).size == (256, 256)                       # exact path: full size
    fast = D.decode_image(jpg, "j", 3, fast_size=(32, 32))
    assert fast.size == (32, 32) and fast.mode == "RGB"                          # DCT 1/8: never below 32
    assert D.decode_image(jpg, "j", 3, fast_size=(32, 48)).size == (64, 64)     # the larger side decides
    assert D.decode_image(jpg, "j", 1, fast_size=(64, 64)).mode == "L"
    p = png(rgb)
    assert D.decode_image(p, "p", 3, fast_size=(32, 32)).size == (64, 64)      # box-reduced by 4: 2x the size
    assert D.decode_image(p, "p", 3, fast_size=(32, 64)).size == (128, 128)    # factor from the tighter side
    assert D.decode_image(p, "p", 3, fast_size=(100, 100)).size == (256, 256)  # factor 1: not reduced
    assert D.decode_image(p, "p", 3, fast_size=(64, 64)).size == (128, 128)    # factor exactly 2


def test_resize_and_layout(tmp_path):
    im = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4) * 20, "L")
    assert D.resize(im, (3, 4)) is im
    r = D.resize(im, (6, 2))                                   # (H, W)
    assert r.size == (2, 6) and np.array_equal(np.asarray(r), np.asarray(im.resize((2, 6), Image.BILINEAR)))
    rgb = Image.new("RGB", (2, 1), (10, 20, 30))
    c = D.to_chw(rgb)
    assert c.shape == (3, 1, 2) and c[:, 0, 1].tolist() == [10, 20, 30] and c.dtype == np.uint8
    assert D.to_chw(im).shape == (1, 3, 4)
    (tmp_path / "g.png").write_bytes(png(Image.new("RGBA", (8, 8), (0, 0, 0, 0))))
    a = D.load_chw(tmp_path / "g.png", 3, (4, 2), background=(1, 2, 3))
    assert a.shape == (3, 4, 2) and a[:, 0, 0].tolist() == [1, 2, 3] and a.flags.c_contiguous
    assert D.load_chw(tmp_path / "g.png", 1, (4, 2)).shape == (1, 4, 2)
    assert D.BACKGROUNDS == {"black": (0, 0, 0), "white": (255, 255, 255), "grey": (128, 128, 128)}


# ---------------------------------------------------------------- normalization and inputs
def test_normalize_per_channel():
    rgb = Image.new("RGB", (2, 1), (255, 0, 51))
    x = normalize(rgb, [0.5, 0.0, 0.2], [0.25, 0.5, 0.1])
    assert x.dtype == np.float32 and x.shape == (3, 1, 2) and x.flags.c_contiguous
    np.testing.assert_allclose(x[:, 0, 0], [2.0, 0.0, 0.0], atol=1e-6)
    grey = normalize(Image.new("L", (1, 1), 51), [0.1], [0.5])
    np.testing.assert_allclose(grey, [[[0.2]]], atol=1e-6)


def test_preprocess_mode_size_and_values():
    im = Image.new("RGBA", (6, 4), (255, 255, 255, 255))
    x = preprocess(im, [1, 2, 3], [0.5], [0.5])
    assert x.shape == (1, 2, 3) and np.allclose(x, 1.0)
    x = preprocess(Image.new("L", (3, 2), 0), [3, 2, 3], [0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    assert x.shape == (3, 2, 3) and np.allclose(x, -1.0)


def test_expand_inputs(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    for n in ("b.png", "A.JPG", "c.txt", "d.webp"):
        (d / n).write_bytes(b"x")
    (d / "sub.png").mkdir()
    paths, errors = expand_inputs([str(d)])
    assert [p.name for p in paths] == ["A.JPG", "b.png", "d.webp"] and errors == []
    (tmp_path / "empty").mkdir()
    paths, errors = expand_inputs([str(tmp_path / "empty"), str(d / "*.png"), str(tmp_path / "none*.png"),
                                   str(tmp_path / "gone.png")])
    assert [p.name for p in paths] == ["b.png", "gone.png"]
    assert [str(e) for e in errors] == [f"{tmp_path / 'empty'}: directory has no images (.png, .jpg, .jpeg, .bmp, ...)",
                                        f"{tmp_path / 'none*.png'}: pattern matches no files"]
    assert errors[0].path == str(tmp_path / "empty") and errors[1].path == str(tmp_path / "none*.png")
    literal = tmp_path / "x[1].png"
    literal.write_bytes(b"x")
    assert expand_inputs([str(literal)])[0] == [literal]         # an existing name with glob characters
    deep = tmp_path / "imgs" / "deep"
    deep.mkdir()
    (deep / "e.png").write_bytes(b"x")
    assert [p.name for p in expand_inputs([str(tmp_path / "**" / "e.png")])[0]] == ["e.png"]
    assert [p.name for p in expand_inputs([str(d / "?.png")])[0]] == ["b.png"]


# ---------------------------------------------------------------- cases that killed surviving mutants
def test_runtime_normalization_is_bit_exact_with_trainings():
    """The runtime's float32 arithmetic is the training side's (core.datasets.normalize_batch), bit for bit."""
    from sedeploy.core.datasets import normalize_batch
    px = np.arange(256, dtype=np.uint8).reshape(16, 16)
    rgb = Image.fromarray(np.stack([px, px[::-1], px.T], -1), "RGB")
    mean, std = [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]
    got = normalize(rgb, mean, std)
    want = normalize_batch(D.to_chw(rgb)[None], mean, std)[0]
    assert got.dtype == want.dtype == np.float32 and np.array_equal(got, want)


def test_more_float_images():
    f = Image.fromarray(np.array([[0.7, 0.25]], np.float32), "F")
    assert np.asarray(D.to_model_mode(f, 1)).tolist() == [[178, 64]]        # 178.5 rounds half to even
    f = Image.fromarray(np.array([[1.5, 0.5]], np.float32), "F")
    assert np.asarray(D.to_model_mode(f, 1)).tolist() == [[2, 0]]           # max 1.5 > 1: not scaled


def test_premultiplied_and_palette_alpha_modes():
    white = (255, 255, 255)
    assert D.to_model_mode(Image.new("RGBa", (1, 1), (10, 20, 30, 0)), 3).getpixel((0, 0)) == (0, 0, 0)
    pa = Image.new("PA", (1, 1))
    pa.putpalette([10, 20, 30] * 256)
    pa.putpixel((0, 0), (0, 0))                                              # index 0, alpha 0
    assert D.to_model_mode(pa, 3, white).getpixel((0, 0)) == white
    two = D.decode_image(png(Image.new("RGBA", (1, 1), (9, 9, 9, 0))), "t.png", 3, background=white)
    assert two.getpixel((0, 0)) == white                                    # decode_image passes the background on


def test_error_paths_name_the_input(tmp_path):
    d = tmp_path / "dir.png"
    d.mkdir()
    (tmp_path / "zero.png").write_bytes(b"")
    for p in (d, tmp_path / "zero.png"):
        with pytest.raises(D.ImageError) as e:
            D.load_image(p, 1)
        assert e.value.path == str(p)
    (tmp_path / "t.png").write_text("text")
    with pytest.raises(D.ImageError) as e:
        with D.opened(tmp_path / "t.png"):
            pass
    assert str(e.value) == f"{tmp_path / 't.png'}: not an image Pillow can read" and e.value.path == str(tmp_path / "t.png")
    with pytest.raises(D.ImageError) as e:
        D.load_image(tmp_path / "t.png", 1)
    assert str(e.value) == f"{tmp_path / 't.png'}: not an image Pillow can read"
    (tmp_path / "big.png").write_bytes(png(Image.new("L", (256, 256))))
    assert D.load_image(tmp_path / "big.png", 1, fast_size=(32, 32)).size == (64, 64)   # fast path passed on


def test_exif_mirror_orientation():
    a = np.zeros((1, 3), np.uint8)
    a[0, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 2                                                        # mirrored horizontally
    out = np.asarray(D.decode_image(png(Image.fromarray(a, "L"), exif=exif), "m.png", 1))
    assert out.tolist() == [[0, 0, 255]]


def test_fast_jpeg_grey_comes_from_the_luma_channel():
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8), "RGB")
    b = io.BytesIO()
    rgb.save(b, "JPEG", quality=90)
    jpg = b.getvalue()
    with Image.open(io.BytesIO(jpg)) as ref:
        ref.draft("L", (32, 32))
        want = np.asarray(ref.convert("L"))
    got = np.asarray(D.decode_image(jpg, "j", 1, fast_size=(32, 32)))
    assert np.array_equal(got, want)
    with Image.open(io.BytesIO(jpg)) as im:                 # the decoder itself is asked for luma only (speed)
        D._draft(im, 1, (32, 32))
        assert (im.mode, im.size) == ("L", (32, 32))
    with Image.open(io.BytesIO(jpg)) as im:
        D._draft(im, 3, (32, 32))
        assert (im.mode, im.size) == ("RGB", (32, 32))
    with Image.open(io.BytesIO(png(rgb))) as im:            # not a JPEG: untouched
        D._draft(im, 1, (32, 32))
        assert (im.mode, im.size) == ("RGB", (128, 128))
    colour = np.asarray(D.decode_image(jpg, "j", 3, fast_size=(32, 32)))
    assert colour.shape == (32, 32, 3) and not np.array_equal(colour[..., 0], colour[..., 1])   # still colour
    grey_jpg = io.BytesIO()
    rgb.convert("L").save(grey_jpg, "JPEG")
    assert D.decode_image(grey_jpg.getvalue(), "g", 1, fast_size=(32, 32)).size == (32, 32)


def test_fast_reduce_uses_each_side():
    tall = png(Image.new("RGB", (128, 256)))
    assert D.decode_image(tall, "t", 3, fast_size=(32, 32)).size == (64, 128)   # factor min(2, 4) = 2
    assert D.decode_image(tall, "t", 3, fast_size=(32, 64)).size == (64, 128)   # factor min(2, 2) = 2
    wide = png(Image.new("RGB", (256, 128)))
    assert D.decode_image(wide, "w", 3, fast_size=(16, 64)).size == (256, 128)  # min(8, 1): not reduced


def test_expand_several_dirs_and_odd_names(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / f"{sub}.png").write_bytes(b"x")
    paths, errors = expand_inputs([str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "gone_X.png")])
    assert [p.name for p in paths] == ["a.png", "b.png", "gone_X.png"] and errors == []


def test_ycbcr_grey_is_the_rgb_luma():
    """Every mode reaches grey through RGB (one luma definition): YCbCr's own Y channel differs by up to 66 levels."""
    rng = np.random.default_rng(0)
    ycc = Image.frombytes("YCbCr", (16, 16), rng.integers(0, 255, 16 * 16 * 3, dtype=np.uint8).tobytes())
    assert np.array_equal(np.asarray(D.to_model_mode(ycc, 1)), np.asarray(ycc.convert("RGB").convert("L")))


def test_preprocessor_follows_the_models_metadata(tmp_path):
    from sedeploy.runtime.preprocess import Preprocessor
    white = (255, 255, 255)
    p = Preprocessor([3, 32, 32], [0.5, 0.5, 0.5], [0.5, 0.5, 0.5], white)
    clear = Image.new("RGBA", (4, 4), (9, 9, 9, 0))
    assert p.load(clear).mode == "RGB" and p.load(clear).getpixel((0, 0)) == white      # a PIL image
    (tmp_path / "big.png").write_bytes(png(Image.new("RGBA", (256, 256), (9, 9, 9, 0))))
    assert p.load(tmp_path / "big.png").size == (256, 256) and p.load(tmp_path / "big.png").getpixel((0, 0)) == white
    fast = Preprocessor([1, 32, 16], [0.5], [0.5], white, fast_decode=True)
    got = fast.load(tmp_path / "big.png")
    assert got.size == (64, 64) and got.mode == "L" and got.getpixel((0, 0)) == 255    # (W, H) = (16, 32): min(8, 4)
    up = p.decode(png(clear), "u.png")
    assert up.mode == "RGB" and up.getpixel((0, 0)) == white
    grey = Preprocessor([1, 4, 4], [0.5], [0.5], (0, 0, 0))
    assert grey.decode(png(clear)).mode == "L" and grey.load(clear).mode == "L"        # the model's channels
    with pytest.raises(D.ImageError) as e:
        p.decode(b"")
    assert str(e.value) == "upload: empty file (0 bytes), not an image"
    x = p.to_input(Image.new("RGB", (8, 4), white))
    assert x.shape == (3, 32, 32) and x.dtype == np.float32 and np.allclose(x, 1.0)
