"""Which images a run trained on and which it held out, as indices into a dataset's training split.

Training draws them (training.data: the seeded --limit-train subset, then the stratified validation
split); export finds the same ones again from a checkpoint's recipe, to calibrate the 'unsure'
threshold on the validation images the run selected on and never trained on. One implementation, so
the two cannot drift (torch's seeded generator: the draw is the same on every machine and rank).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch


def subset_indices(n: int, limit: Optional[int], seed: int) -> Optional[torch.Tensor]:
    """Indices of a seeded random subset of `limit` of n samples; None: all of them."""
    if not limit or limit >= n:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit]


def stratified_indices(labels: torch.Tensor, fraction: float, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """-> (rest, held_out) indices, both sorted: `fraction` of every class held out, chosen by seed.

    Each class keeps at least one sample on each side when it has two or more, so a small class
    cannot vanish from either part."""
    g = torch.Generator().manual_seed(seed * 7_919 + 104_729)
    labels = labels.cpu()
    held = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = int(round(fraction * len(idx)))
        k = min(max(k, 1), len(idx) - 1) if len(idx) >= 2 else 0
        held.append(idx[:k])
    held_idx = torch.sort(torch.cat(held)).values if held else torch.zeros(0, dtype=torch.int64)
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[held_idx] = False
    return torch.nonzero(keep).flatten(), held_idx


def run_split(recipe: Dict[str, Any], labels: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """-> (trained_on, validation) indices into the full training split whose labels are given, as the
    run with this recipe (a checkpoint's "recipe") drew them; validation None when the run selected on
    the test split (no validation held out)."""
    seed = int(recipe.get("seed", 0))
    sub = subset_indices(len(labels), recipe.get("limit_train"), seed)
    idx = sub if sub is not None else torch.arange(len(labels))
    if recipe.get("select_on", "val") != "val":
        return idx, None
    rest, held = stratified_indices(labels[idx], float(recipe.get("val_split", 0.1)), seed)
    return idx[rest], idx[held]


def labels_sha256(*labels: Any) -> str:
    """The hash of the labels that steered a run (its training part, then its selection part) that a
    checkpoint's recipe keeps (recipe["data"]["labels_sha256"]): another copy or subset of the data differs."""
    import hashlib
    h = hashlib.sha256()
    for lab in labels:
        h.update((lab.cpu().numpy() if isinstance(lab, torch.Tensor) else lab).astype("int64").tobytes())
    return h.hexdigest()[:16]
