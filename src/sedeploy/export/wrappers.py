"""Modules that give a model the graph contract's outputs (sedeploy.core.contract) for tracing."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn


class ExplainWrapper(nn.Module):
    """(B, C, H, W) -> (logits, se1, ..., seK, feature_map): the contract's full output tuple."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        logits, se, fmap = self.model.forward_explain(x)
        return (logits, *se, fmap)


class LogitsWrapper(nn.Module):
    """(B, C, H, W) -> (logits,): the same graph without the extra outputs (overhead baseline)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor]:
        return (self.model(x),)
