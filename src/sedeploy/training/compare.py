"""The reference's comparison: CNN vs SE-CNN, same seed and recipe, one table.

Trains each model into OUT/<model>/ and writes OUT/comparison.json and OUT/comparison.md with
model, parameters, best and final test accuracy, and time per epoch.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Dict, List, Sequence

from ..errors import UserError, atomic_write_text, ensure_writable_dir
from .loop import TrainConfig, fit


def compare(base: TrainConfig, models: Sequence[str] = ("cnn", "se_cnn"), progress: bool = True) -> List[Dict]:
    from ..models import list_models
    bad = [m for m in models if m not in list_models()]
    if bad or not models:
        raise UserError(f"unknown model {', '.join(bad) or '(none)'}; choose from: {', '.join(list_models())}")
    out = ensure_writable_dir(base.out)
    rows = []
    for name in models:
        r = fit(dataclasses.replace(base, model=name, out=str(out / name), resume=None), progress=progress)
        rows.append({"model": name, "params": r.params, "best_test_acc": round(r.best_acc, 2),
                     "final_test_acc": round(r.final.get("test_acc", float("nan")), 2),
                     "epochs": len(r.history["epochs"]), "seconds_per_epoch": round(r.seconds_per_epoch, 1)})
    atomic_write_text(out / "comparison.json", json.dumps({"dataset": base.dataset, "seed": base.seed,
                                                            "rows": rows}, indent=2))
    atomic_write_text(out / "comparison.md", format_table(rows) + "\n")
    return rows


def format_table(rows: List[Dict]) -> str:
    head = "| model | parameters | best test acc (%) | final test acc (%) | epochs | s / epoch |"
    sep = "|---|---:|---:|---:|---:|---:|"
    body = [f"| {r['model']} | {r['params']:,} | {r['best_test_acc']:.2f} | {r['final_test_acc']:.2f} | "
            f"{r['epochs']} | {r['seconds_per_epoch']:.1f} |" for r in rows]
    return "\n".join([head, sep, *body])
