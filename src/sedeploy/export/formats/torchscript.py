"""The `torchscript` format: <stem>.ts traced by torch.jit with the metadata as extra files
(export.torchscript), reloaded and run by PyTorch for verification."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np

from . import BuildContext


def build(ctx: BuildContext) -> List[Path]:
    from ..torchscript import export_torchscript
    return [export_torchscript(ctx.wrapper, ctx.example, ctx.tmp / f"{ctx.stem}.ts", ctx.metadata(None))]


def outputs(ctx: BuildContext, paths: List[Path], x: np.ndarray) -> Dict[str, Dict[str, np.ndarray]]:
    """The saved file reloaded (not the traced module in memory) and run eagerly."""
    from ..torchscript import load_torchscript
    from ..verify import run_torch
    reloaded, _ = load_torchscript(paths[0], ())
    return {"torchscript": run_torch(reloaded, x, ctx.names)}
