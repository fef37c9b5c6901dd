"""Multi-seed comparison of models under one recipe: does SE help, beyond seed noise?

For every seed, each model is trained with that seed (same data split, order and augmentation
streams for every model of a seed), selected on the validation split, and scored on the test set.
Per model: mean and sample standard deviation of test accuracy over seeds. Against the first model
(the baseline, `cnn` by default): the paired difference per seed, its mean, and a 95 % confidence
interval from Student's t with n-1 degrees of freedom (pairing removes the seed-to-seed variation
that both models share). With one seed there is no interval, and the table says so.

Runs land in OUT/seed<k>/<model>/; a run whose summary.json records the same recipe and epochs is
reused, so an interrupted comparison continues where it stopped. Writes OUT/comparison.json,
OUT/comparison.md and OUT/comparison.png.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..core.errors import UserError
from ..core.io import atomic_write_text, ensure_writable_dir
from .config import TrainConfig


def paired_ci(diffs: Sequence[float], level: float = 0.95) -> Dict[str, Optional[float]]:
    """Mean of paired differences with a two-sided Student-t confidence interval (None for n < 2)."""
    from scipy import stats
    n = len(diffs)
    mean = sum(diffs) / n if n else float("nan")
    if n < 2:
        return {"n": n, "mean": mean, "sd": None, "ci_low": None, "ci_high": None, "p_value": None}
    sd = math.sqrt(sum((v - mean) ** 2 for v in diffs) / (n - 1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    p = float(stats.ttest_1samp(diffs, 0.0).pvalue) if sd > 0 else (0.0 if mean != 0 else 1.0)
    return {"n": n, "mean": mean, "sd": sd, "ci_low": mean - half, "ci_high": mean + half, "p_value": p}


def summarize(runs: List[Dict[str, Any]], models: Sequence[str], seeds: Sequence[int]) -> Dict[str, Any]:
    """runs: [{"model", "seed", "test_acc", ...}] -> per-model mean/sd and paired differences vs models[0]."""
    acc = {(r["model"], r["seed"]): r["test_acc"] for r in runs}
    per_model = []
    for m in models:
        vals = [acc[(m, s)] for s in seeds]
        mean = sum(vals) / len(vals)
        sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None
        per_model.append({"model": m, "n": len(vals), "mean": mean, "sd": sd, "test_acc": vals})
    paired = []
    for m in models[1:]:
        diffs = [acc[(m, s)] - acc[(models[0], s)] for s in seeds]
        paired.append({"model": m, "baseline": models[0], "diffs": diffs, **paired_ci(diffs)})
    return {"per_model": per_model, "paired": paired}


def compare(base: TrainConfig, models: Sequence[str] = ("cnn", "se_cnn"), seeds: Sequence[int] = (0,),
            progress: bool = True, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Train every model for every seed (or reuse finished runs); write and return the comparison."""
    from ..models import list_models
    from .loop import fit
    bad = [m for m in models if m not in list_models()]
    if bad or len(models) < 1:
        raise UserError(f"unknown model {', '.join(bad) or '(none)'}; choose from: {', '.join(list_models())}")
    if len(set(seeds)) != len(seeds) or not seeds:
        raise UserError(f"--seeds must be distinct integers, got {list(seeds)}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("compare runs one process per seed, not under torchrun; start one `sedeploy compare "
                        "--seeds K` per seed into the same --out, then once more with all seeds for the table")
    out = ensure_writable_dir(base.out, option="--out")
    runs = []
    for seed in seeds:
        for name in models:
            cfg = dataclasses.replace(base, model=name, seed=seed, out=str(out / f"seed{seed}" / name), resume=None)
            summary = _finished(cfg)
            if summary is None:
                log(f"== {name}, seed {seed} ==")
                r = fit(cfg, progress=progress)
                summary = {"test_acc": r.test_acc, "selected": r.selected, "params": r.params,
                           "seconds_per_epoch": r.seconds_per_epoch}
            else:
                log(f"== {name}, seed {seed}: reusing the finished run in {cfg.out} ==")
            runs.append({"model": name, "seed": seed, "test_acc": summary["test_acc"],
                         "val_acc": summary["selected"]["val_acc"], "best_epoch": summary["selected"]["epoch"],
                         "params": summary["params"], "seconds_per_epoch": summary["seconds_per_epoch"]})
    result = {"dataset": base.dataset, "epochs": base.epochs, "seeds": list(seeds), "models": list(models),
              "selected_on": base.select_on, "recipe": {k: v for k, v in base.recipe().items()
                                                        if k not in ("model", "seed")},
              "runs": runs, **summarize(runs, models, seeds)}
    atomic_write_text(out / "comparison.json", json.dumps(result, indent=2))
    atomic_write_text(out / "comparison.md", format_table(result) + "\n")
    plot_comparison(result, out / "comparison.png")
    return result


def _finished(cfg: TrainConfig) -> Optional[Dict[str, Any]]:
    """summary.json of a completed run of exactly this recipe and length, else None."""
    p = Path(cfg.out) / "summary.json"
    try:
        s = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if s.get("final", {}).get("epoch") != cfg.epochs or s.get("recipe_changed"):
        return None
    import torch
    from .loop import data_fingerprint, make_data, resolve_device
    amp = cfg.amp and resolve_device(cfg.device).type == "cuda"
    now = cfg.recipe(1, amp, data_fingerprint(cfg, make_data(cfg, torch.device("cpu"))))  # same data, same split
    return s if s.get("recipe") == now else None


def _fmt(v: Optional[float], spec: str = ".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def format_table(res: Dict[str, Any]) -> str:
    sel = "validation" if res["selected_on"] == "val" else "test"
    lines = [f"{res['dataset']}, {res['epochs']} epochs, seeds {', '.join(map(str, res['seeds']))}; "
             f"best.pt chosen on {sel} accuracy, scored on the test set", "",
             "| model | seeds | test acc mean (%) | sd | per seed |", "|---|---:|---:|---:|---|"]
    for m in res["per_model"]:
        lines.append(f"| {m['model']} | {m['n']} | {m['mean']:.2f} | {_fmt(m['sd'])} | "
                     f"{', '.join(f'{v:.2f}' for v in m['test_acc'])} |")
    if res["paired"]:
        lines += ["", "| difference | mean (points) | 95 % CI | p (t-test) | per seed |", "|---|---:|---|---:|---|"]
        for p in res["paired"]:
            ci = "n/a (one seed)" if p["ci_low"] is None else f"[{p['ci_low']:+.2f}, {p['ci_high']:+.2f}]"
            lines.append(f"| {p['model']} - {p['baseline']} | {p['mean']:+.2f} | {ci} | {_fmt(p['p_value'], '.3f')} | "
                         f"{', '.join(f'{v:+.2f}' for v in p['diffs'])} |")
    return "\n".join(lines)


def plot_comparison(res: Dict[str, Any], path: Path) -> Path:
    """Left: test accuracy per seed and model with the mean. Right: paired differences with the 95 % CI."""
    from .plots import _pyplot, _save
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for i, m in enumerate(res["per_model"]):
        a1.scatter([i] * len(m["test_acc"]), m["test_acc"], alpha=0.7)
        a1.hlines(m["mean"], i - 0.25, i + 0.25, colors="k")
    a1.set_xticks(range(len(res["per_model"])), [m["model"] for m in res["per_model"]])
    a1.set(ylabel="test accuracy (%)", title=f"{res['dataset']}, {len(res['seeds'])} seed(s)")
    for i, p in enumerate(res["paired"]):
        a2.scatter([i] * len(p["diffs"]), p["diffs"], alpha=0.7)
        if p["ci_low"] is not None:
            a2.errorbar([i], [p["mean"]], yerr=[[p["mean"] - p["ci_low"]], [p["ci_high"] - p["mean"]]],
                        fmt="ks", capsize=6, label="mean, 95 % CI")
    a2.axhline(0, color="grey", lw=0.8)
    a2.set_xticks(range(len(res["paired"])), [f"{p['model']} - {p['baseline']}" for p in res["paired"]])
    a2.set(ylabel="paired difference (points)", title="Difference to the baseline")
    if any(p["ci_low"] is not None for p in res["paired"]):
        a2.legend()
    for a in (a1, a2):
        a.grid(alpha=0.3)
    return _save(fig, path)


__all__ = ["compare", "summarize", "paired_ci", "format_table", "plot_comparison"]
