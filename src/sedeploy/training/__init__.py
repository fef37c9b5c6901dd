"""Training: datasets, batch augmentation, the reference recipe, checkpoints, plots."""
from ..checkpoint import build_model, load_checkpoint, save_checkpoint
from .loop import TrainConfig, TrainResult, fit

__all__ = ["TrainConfig", "TrainResult", "fit", "load_checkpoint", "save_checkpoint", "build_model"]
