"""TorchScript export by tracing, with the contract's metadata as extra files."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Dict

import torch
from torch import nn


def trace(module: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """`module` traced on `example` (what model.ts holds, and what coremltools converts)."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # jit's deprecation notices; tracing is checked by verify
        return torch.jit.trace(module.eval(), example, check_trace=False)


def export_torchscript(module: nn.Module, example: torch.Tensor, path: Path, metadata: Dict[str, str]) -> Path:
    """Trace `module` on `example` and save to `path` with metadata as `_extra_files`."""
    trace(module, example).save(str(path), _extra_files=dict(metadata))
    return path


def load_torchscript(path: Path, keys) -> tuple:
    """-> (module, {key: text}) reading the given extra-file keys back."""
    extra = {k: "" for k in keys}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return m.eval(), extra
