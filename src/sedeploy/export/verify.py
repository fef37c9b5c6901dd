"""Verification run by every export: onnx.checker (full), then eager PyTorch vs TorchScript vs ONNX
(raw and simplified, through onnxruntime) on a fixed batch, every output compared."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import onnx
import torch

from ..core.errors import UserError
from ..core.parity import ParityRow, compare
from .onnx_export import MAX_OPSET, MIN_OPSET


def check_onnx(path: Path, what: str = "exported") -> None:
    """onnx.checker with full shape inference; a graph it rejects is a UserError naming the fix."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        kind = "shape inference" if isinstance(e, onnx.shape_inference.InferenceError) else "onnx.checker"
        fix = "export with --no-simplify" if what == "simplified" else f"try another --opset ({MIN_OPSET}..{MAX_OPSET})"
        raise UserError(f"{kind} rejects the {what} ONNX graph ({_first_line(e)}); {fix}; "
                        f"nothing was written") from None


def _first_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:200]


def run_onnx(path: Path, x: np.ndarray, providers: Sequence[str] = ("CPUExecutionProvider",)) -> Dict[str, np.ndarray]:
    import onnxruntime as ort
    from ..runtime.runners.ort import session_options
    sess = ort.InferenceSession(str(path), session_options(), providers=list(providers))
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: x})))


def run_torch(module: torch.nn.Module, x: np.ndarray, names: List[str]) -> Dict[str, np.ndarray]:
    with torch.no_grad():
        outs = module(torch.from_numpy(x))
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    return {n: o.numpy() for n, o in zip(names, outs)}


def verification_batch(ckpt: dict, n: int = 16, data_dir=None, seed: int = 0) -> tuple:
    """-> (float32 batch, description): real test images if the dataset is on disk, else seeded noise."""
    from ..core.datasets import normalize_batch
    from ..core.arrays import load_arrays
    try:
        _, x, _ = load_arrays(ckpt["dataset"], data_dir, "test", ref=ckpt.get("data"))
        if list(x.shape[1:]) == list(ckpt["input_size"]):
            return normalize_batch(x[:n], ckpt["mean"], ckpt["std"]), f"{len(x[:n])} {ckpt['dataset']} test images"
    except UserError:
        pass
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *ckpt["input_size"])).astype(np.float32), f"{n} seeded random inputs"


def parity_all(reference: Dict[str, np.ndarray], candidates: Dict[str, Dict[str, np.ndarray]]) -> List[ParityRow]:
    rows: List[ParityRow] = []
    for backend, got in candidates.items():
        rows += compare(reference, got, backend)
    return rows
