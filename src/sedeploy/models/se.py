"""Squeeze-and-Excitation block (Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018).

Follows the reference SE-CNN: global average pool -> Linear(C, C/r, no bias) -> ReLU ->
Linear(C/r, C, no bias) -> Sigmoid, then the input is reweighted per channel. Layout after
timm/layers/squeeze_excite.py. `forward_with_weights` also returns the channel weights, which the
export turns into graph outputs; plain `forward` does not keep them (training pays nothing).
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn


class SEBlock(nn.Module):
    def __init__(self, channels: int, reduction: int = 16, min_hidden: int = 1) -> None:
        super().__init__()
        hidden = max(channels // reduction, min_hidden)
        self.fc1 = nn.Linear(channels, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, channels, bias=False)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """Channel weights in (0, 1): (B, C, H, W) -> (B, C)."""
        # squeeze: global average pool, (B, C, H, W) -> (B, C). adaptive_avg_pool2d exports as ONNX
        # GlobalAveragePool, which onnxruntime runs in its blocked layout and quantizes to
        # QLinearGlobalAveragePool (int8 in, int8 out); x.mean((2, 3)) would export as ReduceMean.
        s = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))  # excite: (B, C)

    def forward_with_weights(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        w = self.weights(x)
        return x * w[:, :, None, None], w                    # (B, C, H, W), (B, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weights(x)[:, :, None, None]
