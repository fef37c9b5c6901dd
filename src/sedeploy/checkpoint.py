"""Self-describing checkpoints (after nanoGPT's train.py), saved atomically, loaded untrusted.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so that
`torch.load(weights_only=True)` accepts it: a checkpoint from someone else cannot run code.
It carries everything needed to rebuild and use the model without the training code's
arguments: model name and config, class names, mean/std, input size, dataset (and for a folder
dataset where its data and split file are), epoch, metrics, versions. `last.pt` adds optimizer, scheduler and RNG state for an exact resume.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import nn

from .core.errors import UserError
from .core.io import atomic_write
from .models import create_model
from .core.versions import versions

FORMAT = "sedeploy-checkpoint"
FORMAT_VERSION = 1
# What export, infer metadata and resume read from every checkpoint, with the type each must have.
REQUIRED = {"model_name": str, "model_config": dict, "state_dict": dict, "classes": list, "mean": list,
            "std": list, "input_size": list, "dataset": str}


def make_checkpoint(model: nn.Module, model_name: str, model_config: Dict[str, Any], *, classes, mean, std,
                    input_size, dataset: str, epoch: int, metrics: Dict[str, Any],
                    extra: Optional[Dict[str, Any]] = None, data: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    ckpt = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_name": model_name,
        "model_config": dict(model_config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "classes": list(classes),
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "input_size": [int(i) for i in input_size],
        "dataset": dataset,
        "data": data,          # where the data is (folder datasets: path, split file, seed), else None
        "epoch": int(epoch),
        "metrics": dict(metrics),
        "versions": versions("torch", "torchvision"),
    }
    if extra:
        ckpt.update(extra)
    return ckpt


def save_checkpoint(ckpt: Dict[str, Any], path: Path) -> Path:
    """Atomic: a crash during the save leaves the previous file intact."""
    return atomic_write(path, lambda tmp: torch.save(ckpt, tmp))


def load_checkpoint(path, map_location: str = "cpu") -> Dict[str, Any]:
    """Load an untrusted checkpoint with weights_only=True; bad files raise UserError."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist; pass the best.pt/last.pt written by `sedeploy train`")
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a directory; pass the .pt file inside it")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        text = str(e)
        if "GLOBAL" in text or "global" in text:  # a class or function reference: code, refused
            raise UserError(f"refusing to load {path}: it contains code or objects that weights_only loading "
                            f"refuses (an untrusted pickle); only plain sedeploy checkpoints are accepted") from None
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}); "
                        f"pass a file written by `sedeploy train`") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not a sedeploy checkpoint (no '{FORMAT}' header); "
                        f"pass a file written by `sedeploy train`")
    return ckpt


def check_fields(ckpt: Dict[str, Any], path: str = "checkpoint") -> None:
    """Every field that rebuilding and exporting read is there, with its type; else UserError."""
    missing = [k for k in REQUIRED if k not in ckpt]
    wrong = [k for k, t in REQUIRED.items() if k in ckpt and not isinstance(ckpt[k], t)]
    if missing or wrong:
        what = (f"lacks {', '.join(missing)}" if missing else "") + ("; " if missing and wrong else "") + \
               (f"has the wrong type for {', '.join(wrong)}" if wrong else "")
        raise UserError(f"{path} is a damaged or edited sedeploy checkpoint: it {what}; "
                        f"pass the best.pt/last.pt written by `sedeploy train`, or train again")


def build_model(ckpt: Dict[str, Any], path: str = "checkpoint") -> nn.Module:
    """Rebuild the model from a checkpoint dict; missing fields, unknown names or mismatched weights raise
    UserError."""
    check_fields(ckpt, path)
    try:
        model = create_model(ckpt["model_name"], **ckpt["model_config"])
    except (ValueError, TypeError) as e:
        raise UserError(f"{path}: {e}") from None
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else (first[0] if first else "")
        raise UserError(f"{path}: weights do not fit model {ckpt['model_name']!r} with its config "
                        f"({detail[:160]}); pass the checkpoint `sedeploy train` wrote for it") from None
    return model.eval()


