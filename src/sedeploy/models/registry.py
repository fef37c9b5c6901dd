"""Model registry: create models by name (after timm/models/_registry.py).

The CLI and the checkpoint loader only ever use `create_model(name, **cfg)`; they never import
model classes. A checkpoint stores the name and the config, which is all this needs.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List

from torch import nn

from .cnn import CNN, CNNConfig

_REGISTRY: Dict[str, Callable[..., nn.Module]] = {}
_DESCRIPTIONS: Dict[str, str] = {}


def register_model(name: str, description: str = ""):
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = fn
        _DESCRIPTIONS[name] = description
        return fn
    return deco


def list_models() -> List[str]:
    return sorted(_REGISTRY)


def describe_model(name: str) -> str:
    return _DESCRIPTIONS[name]


def create_model(name: str, **cfg: Any) -> nn.Module:
    """Build a registered model; unknown names or config keys raise ValueError naming the valid ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    return _REGISTRY[name](**cfg)


def _cnn_config(se: bool, cfg: Dict[str, Any]) -> CNNConfig:
    cfg = dict(cfg)
    cfg.pop("se", None)  # implied by the name
    valid = set(CNNConfig.__dataclass_fields__)
    bad = set(cfg) - valid
    if bad:
        raise ValueError(f"unknown config keys {sorted(bad)}; valid: {', '.join(sorted(valid))}")
    if "widths" in cfg:
        cfg["widths"] = tuple(cfg["widths"])
    return CNNConfig(se=se, **cfg)


@register_model("cnn", "reference CNN: 3 x (conv3x3-BN-ReLU-maxpool) + FC 512 + dropout (1.15 M params)")
def cnn(**cfg: Any) -> CNN:
    return CNN(_cnn_config(False, cfg))


@register_model("se_cnn", "reference CNN with an SE block (r=16) after each ReLU, before pooling")
def se_cnn(**cfg: Any) -> CNN:
    return CNN(_cnn_config(True, cfg))


def model_config(model: nn.Module) -> Dict[str, Any]:
    """The kwargs that rebuild `model` with create_model (its name is stored separately)."""
    d = model.cfg.to_dict()
    d.pop("se")
    return d


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
