"""Training: datasets, batch augmentation, the reference recipe, comparisons, plots (needs torch).

Names are imported lazily, so that `sedeploy.training.config` (the defaults the CLI reads) can be
imported without torch.
"""
from importlib import import_module

_EXPORTS = {"TrainConfig": ".config", "TrainResult": ".loop", "fit": ".loop",
            "load_checkpoint": "..checkpoint", "save_checkpoint": "..checkpoint", "build_model": "..checkpoint"}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name], __name__), name)
