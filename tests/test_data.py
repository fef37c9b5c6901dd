"""Datasets in their real on-disk formats, written by the tests; batch augmentation."""
import pickle

import numpy as np
import pytest
import torch

from conftest import write_cifar, write_idx
from sedeploy.core.errors import UserError
from sedeploy.training.augment import AUGMENT_PRESETS, BatchAugment
from sedeploy.core.datasets import CIFAR10_CLASSES, read_cifar_batch
from sedeploy.training.data import load_dataset


def test_cifar10_pickles_roundtrip(tmp_path):
    root = write_cifar(tmp_path, n_per_batch=12)
    info, data = load_dataset("cifar10", str(root))
    assert info.classes == CIFAR10_CLASSES and info.input_size == (3, 32, 32)
    assert data["train"].images.shape == (60, 3, 32, 32) and data["test"].images.shape == (12, 3, 32, 32)
    with open(root / "cifar-10-batches-py" / "test_batch", "rb") as f:
        raw = pickle.load(f)
    expect = torch.from_numpy(raw["data"].reshape(-1, 3, 32, 32))
    assert torch.equal(data["test"].images, expect)
    assert data["test"].labels.tolist() == raw["labels"]
    assert data["train"].images.dtype == torch.uint8


def test_cifar10_refuses_code_in_pickle(tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    with open(folder / "b", "wb") as f:
        pickle.dump({"data": Evil(), "labels": [1]}, f)
    with pytest.raises(UserError, match="not a CIFAR-10 batch"):
        read_cifar_batch(folder / "b")


def test_cifar10_missing_names_fix(tmp_path):
    with pytest.raises(UserError, match="--download"):
        load_dataset("cifar10", str(tmp_path))


def test_fmnist_idx_reader(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (30, 28, 28)).astype(np.uint8)
    y = rng.integers(0, 10, 30)
    for split in ("train", "t10k"):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte", x, gz=split == "train")
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte", y, gz=split == "train")
    info, data = load_dataset("fashion-mnist", str(tmp_path))
    assert info.input_size == (1, 32, 32) and len(info.classes) == 10
    tr = data["train"]
    assert tr.images.shape == (30, 1, 32, 32) and tr.labels.tolist() == y.tolist()
    # 28 -> 32 with PIL bilinear, as the runtime resizes
    from PIL import Image
    ref = np.asarray(Image.fromarray(x[3]).resize((32, 32), Image.BILINEAR))
    assert np.array_equal(tr.images[3, 0].numpy(), ref)
    assert torch.equal(data["test"].images, tr.images)


def test_fmnist_corrupt_idx(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"garbage!")
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"garbage!")
    with pytest.raises(UserError, match="not a valid idx"):
        load_dataset("fashion-mnist", str(tmp_path), splits=("train",))


def test_unknown_dataset():
    with pytest.raises(UserError, match="cifar10, fashion-mnist"):
        load_dataset("imagenet")


@pytest.mark.parametrize("preset", list(AUGMENT_PRESETS))
@pytest.mark.parametrize("channels", [1, 3])
def test_batch_augment(preset, channels):
    mean, std = [0.5] * channels, [0.25] * channels
    aug = BatchAugment(AUGMENT_PRESETS[preset], mean, std)
    x = torch.randint(0, 256, (16, channels, 32, 32), dtype=torch.uint8)
    out = aug(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.float32
    lo, hi = (0 - 0.5) / 0.25, (1 - 0.5) / 0.25
    assert out.min() >= lo - 1e-5 and out.max() <= hi + 1e-5
    same = aug(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, same)                                  # seeded: reproducible
    plain = aug.normalize(x)
    if preset == "none":
        torch.testing.assert_close(out, plain)
    else:
        assert not torch.allclose(out, plain)                      # it does change images


def test_hue_shift_matches_torchvision():
    from torchvision.transforms import functional as TF
    from sedeploy.training.augment import _adjust_hue
    x = torch.rand(4, 3, 8, 8)
    for s in (-0.1, 0.05):
        ours = _adjust_hue(x, torch.full((4,), s))
        ref = torch.stack([TF.adjust_hue(im, s) for im in x])
        torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def test_light_augment_is_exactly_a_crop_and_flip():
    """Every output is one of the 50 images numpy makes by hand: shift by (dy, dx) in [-2, 2] with zero
    fill, optionally mirrored; both flip states and all five offsets occur."""
    import numpy as np
    aug = BatchAugment(AUGMENT_PRESETS["light"], [0.0], [1.0])
    x = torch.randint(1, 256, (256, 1, 32, 32), dtype=torch.uint8)
    out = (aug(x, torch.Generator().manual_seed(3)) * 255).round().to(torch.uint8).numpy()[:, 0]
    flips, offsets = set(), set()
    for img, o in zip(x.numpy()[:, 0], out):
        padded = np.pad(img, 2)
        found = [(dy, dx, f) for dy in range(-2, 3) for dx in range(-2, 3) for f in (False, True)
                 if np.array_equal(o, (np.fliplr if f else (lambda a: a))(padded[2 + dy:34 + dy, 2 + dx:34 + dx]))]
        assert found, "output is not a 2-pixel crop (+ flip) of its input"
        flips |= {f for _, _, f in found}
        offsets |= {dx for _, dx, _ in found}
    assert flips == {False, True} and offsets == {-2, -1, 0, 1, 2}
