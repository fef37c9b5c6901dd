"""Batch augmentation on uint8 tensors, and the reference's per-image PIL pipeline for comparison.

The reference recipe (the SE-CNN paper's CIFAR-10 training) is RandomCrop(32, padding=4), RandomHorizontalFlip,
ColorJitter(.2, .2, .2, .1), RandomRotation(15), ToTensor, Normalize, each image through PIL in a
DataLoader. `BatchAugment` draws the same distributions per sample but applies them to a whole
batch at once, on whichever device holds it:
- crop, flip and rotation are composed into one affine map per sample and applied with a single
  `grid_sample` (nearest, zero fill, as RandomRotation's default); one difference from the
  sequential version: pixels rotated in from just outside the crop window come from the image
  instead of the crop's zero padding;
- colour jitter applies brightness, contrast, saturation, hue in that fixed order (torchvision
  draws a random order); saturation and hue are no-ops on 1-channel images, as in torchvision.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    pad: int = 4              # RandomCrop padding (pixels); 0 = no crop
    hflip: bool = True        # RandomHorizontalFlip(p=0.5)
    brightness: float = 0.2   # ColorJitter factors (0 = off)
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.1
    rotation: float = 15.0    # RandomRotation(degrees); 0 = off


AUGMENT_PRESETS = {
    "reference": AugmentConfig(),
    "light": AugmentConfig(pad=2, hflip=True, brightness=0, contrast=0, saturation=0, hue=0, rotation=0),
    "none": AugmentConfig(pad=0, hflip=False, brightness=0, contrast=0, saturation=0, hue=0, rotation=0),
}


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g) * (hi - lo) + lo


def _grey(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W), ITU-R 601-2 luma as torchvision."""
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Hue rotation of RGB in [0,1] by shift (B,) in turns, through HSV."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(maxc == r, ((g - b) / safe) % 6,
                    torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4)) / 6
    h = torch.where(delta > 0, h, torch.zeros_like(h))
    h = (h + shift[:, None, None]) % 1.0
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    v = maxc
    # HSV -> RGB, vectorized: k = (n + 6h) mod 6, c = v - v*s*max(0, min(k, 4-k, 1))
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device)[None, :, None, None]
    k = (n + h[:, None] * 6) % 6
    return v[:, None] - (v * s)[:, None] * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


class BatchAugment:
    """Augment a uint8 batch (B, C, H, W) -> normalized float32 batch, per-sample random params."""

    def __init__(self, cfg: AugmentConfig, mean: Sequence[float], std: Sequence[float]) -> None:
        self.cfg = cfg
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 or [0,1] float batch -> normalized float32."""
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        c = self.cfg
        b, ch, hgt, wid = x.shape
        x = x.float().div_(255)                                     # (B, C, H, W) in [0, 1]
        if c.pad or c.hflip or c.rotation:
            x = self._geometry(x, g)
        if ch == 3 or c.brightness or c.contrast:
            x = self._colour(x, g)
        return self.normalize(x)

    def _geometry(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        c = self.cfg
        b, _, h, w = x.shape
        # translation in pixels from the crop offset: output pixel p reads input p + (off - pad)
        tx = torch.randint(0, 2 * c.pad + 1, (b,), generator=g).float() - c.pad
        ty = torch.randint(0, 2 * c.pad + 1, (b,), generator=g).float() - c.pad
        flip = (torch.rand(b, generator=g) < 0.5) if c.hflip else torch.zeros(b, dtype=torch.bool)
        ang = _uniform(b, -c.rotation, c.rotation, g) * (math.pi / 180)
        cos, sin = torch.cos(ang), torch.sin(ang)
        sx = torch.where(flip, -1.0, 1.0)
        # theta maps output coords (normalized [-1,1]) to input coords: rotate, flip, translate
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0] = cos * sx
        theta[:, 0, 1] = -sin * sx * (h / w)
        theta[:, 1, 0] = sin * (w / h)
        theta[:, 1, 1] = cos
        theta[:, 0, 2] = tx * 2 / w
        theta[:, 1, 2] = ty * 2 / h
        grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)

    def _colour(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        c = self.cfg
        b, ch = x.shape[:2]
        dev = x.device

        def factor(strength: float) -> torch.Tensor:
            return _uniform(b, 1 - strength, 1 + strength, g).clamp_min(0).to(dev).view(b, 1, 1, 1)

        if c.brightness:
            x = (x * factor(c.brightness)).clamp_(0, 1)
        if c.contrast:
            grey = _grey(x) if ch == 3 else x
            m = grey.mean(dim=(1, 2, 3), keepdim=True)
            f = factor(c.contrast)
            x = (f * x + (1 - f) * m).clamp_(0, 1)
        if ch == 3 and c.saturation:
            f = factor(c.saturation)
            x = (f * x + (1 - f) * _grey(x)).clamp_(0, 1)
        if ch == 3 and c.hue:
            x = _adjust_hue(x, _uniform(b, -c.hue, c.hue, g).to(dev))
        return x


def reference_transform(cfg: AugmentConfig, mean: Sequence[float], std: Sequence[float], train: bool = True,
                        size: int = 32):
    """The reference's torchvision PIL pipeline for the same AugmentConfig (for comparison runs)."""
    from torchvision import transforms as T
    ops = []
    if train:
        if cfg.pad:
            ops.append(T.RandomCrop(size, padding=cfg.pad))
        if cfg.hflip:
            ops.append(T.RandomHorizontalFlip())
        if cfg.brightness or cfg.contrast or cfg.saturation or cfg.hue:
            ops.append(T.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue))
        if cfg.rotation:
            ops.append(T.RandomRotation(cfg.rotation))
    ops += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(ops)


class PILDataset(torch.utils.data.Dataset):
    """Serves a uint8 (N, C, H, W) split as PIL images through a transform (the reference's way)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
        self.images = images.numpy()
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image
        a = self.images[i]
        img = Image.fromarray(a[0]) if a.shape[0] == 1 else Image.fromarray(a.transpose(1, 2, 0))
        return self.transform(img), self.labels[i]
