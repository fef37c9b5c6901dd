"""The reference CNN and SE-CNN for 32x32 images (the architecture in README "Models").

Three conv blocks Conv3x3 -> BN -> ReLU [-> SE] -> MaxPool2, then flatten -> Linear(512) -> ReLU ->
Dropout(0.5) -> Linear(classes). SE-CNN places one SE block after the ReLU and before the pool of
every block (r = 16). Because SE weights are positive (a sigmoid) and max-pooling commutes with a
positive per-channel scale, pool(x * w) == pool(x) * w exactly, also in floating point (rounding is
monotonic); the blocks reweight after pooling, on a 4x smaller tensor, with identical outputs
(tests/test_models.py checks the equality; the saving is 4x fewer multiplies in the reweighting,
not a measured end-to-end speed-up). Widths, input channels/size, class count and SE reduction
are configurable;
the defaults are the reference. `forward` returns logits only; `forward_explain` also returns each
SE block's channel weights and the last block's SE-reweighted feature map before pooling.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import List, Optional, Tuple

import torch
from torch import nn

from .se import SEBlock


@dataclass
class CNNConfig:
    in_channels: int = 3            # image channels (3 CIFAR-10, 1 Fashion-MNIST)
    input_size: int = 32            # square input side; must be divisible by 2**len(widths)
    num_classes: int = 10
    widths: Tuple[int, ...] = (32, 64, 128)  # conv channels per block
    hidden: int = 512               # width of the first fully connected layer
    dropout: float = 0.5
    se: bool = False                # one SE block per conv block
    se_reduction: int = 16          # SE bottleneck = channels // se_reduction (at least 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, se_reduction: Optional[int]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.se = SEBlock(cout, se_reduction) if se_reduction else None
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.conv(x)))
        if self.se is None:
            return self.pool(x)
        w = self.se.weights(x)[:, :, None, None]               # (B, C, 1, 1), in (0, 1)
        return self.pool(x) * w                                 # == pool(x * w), see module doc

    def forward_explain(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
        """-> (pooled output, SE weights (B, C) or None, SE-reweighted pre-pool map (B, C, H, W))."""
        x = self.relu(self.bn(self.conv(x)))
        if self.se is None:
            return self.pool(x), None, x
        w = self.se.weights(x)                                  # (B, C)
        return self.pool(x) * w[:, :, None, None], w, x * w[:, :, None, None]


class CNN(nn.Module):
    def __init__(self, cfg: CNNConfig) -> None:
        super().__init__()
        n = len(cfg.widths)
        if n == 0 or cfg.input_size % (2 ** n):
            raise ValueError(f"input_size {cfg.input_size} must be divisible by 2**{n}")
        self.cfg = cfg
        chans = [cfg.in_channels, *cfg.widths]
        red = cfg.se_reduction if cfg.se else None
        self.blocks = nn.ModuleList(ConvBlock(chans[i], chans[i + 1], red) for i in range(n))
        side = cfg.input_size // (2 ** n)
        self.head = nn.Sequential(
            nn.Flatten(),                                          # (B, C*h*w)
            nn.Linear(cfg.widths[-1] * side * side, cfg.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, cfg.num_classes),
        )

    @property
    def num_se_blocks(self) -> int:
        return sum(b.se is not None for b in self.blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return self.head(x)                                        # (B, classes)

    def forward_explain(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor], torch.Tensor]:
        """-> (logits, [SE weights per SE block], last block's pre-pool feature map)."""
        se: List[torch.Tensor] = []
        fmap = x
        for b in self.blocks:
            x, w, fmap = b.forward_explain(x)
            if w is not None:
                se.append(w)
        return self.head(x), se, fmap
