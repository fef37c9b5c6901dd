"""Multi-seed comparison of models under one recipe: does SE help, beyond seed noise?

For every seed, each model is trained with that seed (same data split, order and augmentation
streams for every model of a seed), selected on the validation split, and scored on the test set.
Per model: mean and sample standard deviation of test accuracy over seeds. Against the first model
(the baseline, `cnn` by default): the paired difference per seed, its mean, and a 95 % confidence
interval from Student's t with n-1 degrees of freedom (pairing removes the seed-to-seed variation
that both models share). With one seed there is no interval, and the table says so.

Runs land in OUT/seed<k>/<model>/; a run whose summary.json records the same recipe and epochs is
reused, and an unfinished one (its last.pt) is resumed from its last epoch, exactly, so an interrupted
comparison continues where it stopped. `jobs` > 1 trains that many runs at once in separate processes,
the cores split between them (each run's log in its folder: train.log). Writes OUT/comparison.json,
OUT/comparison.md, OUT/comparison.png and OUT/curves.png (the selection accuracy of every run per epoch).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
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
            progress: bool = True, log: Callable[[str], None] = print, jobs: int = 1) -> Dict[str, Any]:
    """Train every model for every seed (or reuse finished runs, resume unfinished ones); write and
    return the comparison."""
    from ..models import list_models
    bad = [m for m in models if m not in list_models()]
    if bad or len(models) < 1:
        raise UserError(f"unknown model {', '.join(bad) or '(none)'}; choose from: {', '.join(list_models())}")
    if len(set(models)) != len(models):
        raise UserError(f"--models must be distinct, got {','.join(models)}")
    if len(set(seeds)) != len(seeds) or not seeds:
        raise UserError(f"--seeds must be distinct integers, got {list(seeds)}")
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("compare runs one process per seed, not under torchrun; start one `sedeploy compare "
                        "--seeds K` per seed into the same --out, then once more with all seeds for the table")
    out = ensure_writable_dir(base.out, option="--out")
    summaries: Dict[tuple, Dict[str, Any]] = {}
    todo: List[TrainConfig] = []
    loads: Dict[tuple, Any] = {}            # the dataset, loaded once for every run's recipe check
    for seed in seeds:
        for name in models:
            cfg = dataclasses.replace(base, model=name, seed=seed, out=str(out / f"seed{seed}" / name), resume=None)
            summary = finished_run(cfg, loads)
            if summary is not None:
                log(f"== {name}, seed {seed}: reusing the finished run in {cfg.out} ==")
                summaries[(name, seed)] = summary
                continue
            last = Path(cfg.out) / "last.pt"
            if last.is_file():
                diffs = recipe_mismatch(cfg, loads)     # before any run starts: compare has no --allow-recipe-change
                if diffs:
                    raise UserError(f"{cfg.out} was started with another recipe ({'; '.join(diffs)}); run compare "
                                    f"with the options it was started with, or choose another --out")
                cfg = dataclasses.replace(cfg, resume=str(last))
            todo.append(cfg)
    loads.clear()                           # not held while the runs train
    if jobs > 1 and len(todo) > 1:
        if base.download and base.dataset != "folder":   # download once here, not by every process at once
            from .data import load_dataset
            load_dataset(base.dataset, base.data_dir, download=True, progress=progress)
        summaries.update(run_parallel(todo, jobs, log))
    else:
        for cfg in todo:
            log(f"== {cfg.model}, seed {cfg.seed}{' (resuming ' + cfg.resume + ')' if cfg.resume else ''} ==")
            summaries[(cfg.model, cfg.seed)] = _run_one(cfg, progress)
    runs = [_run_row(name, seed, summaries[(name, seed)]) for seed in seeds for name in models]
    result = {"dataset": base.dataset, "epochs": base.epochs, "early_stop": base.early_stop, "seeds": list(seeds),
              "models": list(models), "selected_on": base.select_on,
              "recipe": {k: v for k, v in base.recipe().items() if k not in ("model", "seed")},
              "runs": runs, **summarize(runs, models, seeds)}
    atomic_write_text(out / "comparison.json", json.dumps(result, indent=2))
    atomic_write_text(out / "comparison.md", format_table(result) + "\n")
    plot_comparison(result, out / "comparison.png")
    plot_curves(result, out, out / "curves.png")
    return result


def status(base: TrainConfig, models: Sequence[str] = ("cnn", "se_cnn"), seeds: Sequence[int] = (0,),
           log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Where a comparison stands, without training: each run finished / in progress (its epochs, best
    selection accuracy so far) / not started; OUT/curves.png redrawn; the table over the seeds whose runs
    have all finished (`complete_seeds`), written as OUT/comparison-partial.md when that is not every seed."""
    out = Path(base.out)
    if not out.is_dir():
        raise UserError(f"{out} does not exist; start the comparison without --status first")
    runs, done = [], {}
    loads: Dict[tuple, Any] = {}
    for seed in seeds:
        for name in models:
            cfg = dataclasses.replace(base, model=name, seed=seed, out=str(out / f"seed{seed}" / name), resume=None)
            s = finished_run(cfg, loads)
            try:
                rows = json.loads((Path(cfg.out) / "history.json").read_text())["epochs"]
            except (OSError, json.JSONDecodeError, KeyError):
                rows = []
            key = "val_acc" if base.select_on == "val" else "test_acc"
            best = max((r for r in rows if r.get(key) is not None), key=lambda r: r[key], default=None)
            if s is not None:
                state = "finished"
            elif rows or (Path(cfg.out) / "last.pt").is_file():
                diffs = recipe_mismatch(cfg, loads)
                state = f"another recipe ({'; '.join(diffs)})" if diffs else "in progress"
            else:
                state = "not started"
            runs.append({"model": name, "seed": seed, "state": state, "epochs_done": len(rows),
                         "best_epoch": best["epoch"] if best else None, "best_selection_acc": best[key] if best else None,
                         "test_acc": s["test_acc"] if s else None})
            if s is not None:
                done[(name, seed)] = s
            log(f"seed {seed} {name:>8}: {state}" + (f", {len(rows)} epoch(s), best {key.split('_')[0]} "
                                                      f"{best[key]:.2f}% at epoch {best['epoch']}" if best else ""))
    complete = [sd for sd in seeds if all((m, sd) in done for m in models)]
    res: Dict[str, Any] = {"dataset": base.dataset, "epochs": base.epochs, "early_stop": base.early_stop,
                           "seeds": list(seeds), "models": list(models), "selected_on": base.select_on,
                           "status": runs, "complete_seeds": complete}
    if complete:
        part = [_run_row(m, sd, done[(m, sd)]) for sd in complete for m in models]
        table = {**res, "seeds": complete, "runs": part, **summarize(part, models, complete)}
        res["partial"] = {k: table[k] for k in ("per_model", "paired")}
        if len(complete) < len(seeds):
            atomic_write_text(out / "comparison-partial.md",
                              f"Partial: {len(complete)} of {len(seeds)} seeds finished.\n\n" + format_table(table) + "\n")
    plot_curves({**res, "runs": [{"model": r["model"], "seed": r["seed"], "best_epoch": r["best_epoch"]}
                                 for r in runs]}, out, out / "curves.png")
    return res


def _run_row(model: str, seed: int, s: Dict[str, Any]) -> Dict[str, Any]:
    """A finished run's row of the comparison, from its summary.json."""
    return {"model": model, "seed": seed, "test_acc": s["test_acc"], "val_acc": s["selected"]["val_acc"],
            "best_epoch": s["selected"]["epoch"], "epochs_run": (s.get("final") or {}).get("epoch"),
            "stopped_early": s.get("stopped_early", False), "params": s["params"],
            "seconds_per_epoch": s["seconds_per_epoch"]}


def _run_one(cfg: TrainConfig, progress: bool) -> Dict[str, Any]:
    """Train (or resume) one run; -> its summary as summary.json holds it."""
    from .loop import fit
    fit(cfg, progress=progress, allow_finished=True)                  # one process: it writes summary.json
    return json.loads((Path(cfg.out) / "summary.json").read_text())


def _child(cfg: TrainConfig) -> Dict[str, Any]:
    """A --jobs process (one per run): its output goes to the run's train.log, the file descriptors too,
    so that torch's and the compiler's messages land there."""
    import sys
    log_path = Path(cfg.out) / "train.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2), sys.stdout, sys.stderr)
    with open(log_path, "a", buffering=1) as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        sys.stdout = sys.stderr = f
        try:
            return _run_one(cfg, progress=False)
        finally:
            f.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            sys.stdout, sys.stderr = saved[2], saved[3]


def run_parallel(todo: List[TrainConfig], jobs: int, log: Callable[[str], None]) -> Dict[tuple, Dict[str, Any]]:
    """Run the configs `jobs` at a time in spawned processes, cores split evenly between them."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    threads = max(1, (os.cpu_count() or 1) // jobs)
    todo = [c if c.threads else dataclasses.replace(c, threads=threads) for c in todo]
    done: Dict[tuple, Dict[str, Any]] = {}
    errors: List[str] = []
    # a fresh process per run: nothing (threads, compiler state, generators) carries from one run to the next
    fresh = {"max_tasks_per_child": 1} if sys.version_info >= (3, 11) else {}  # before 3.11: workers are reused
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"), **fresh) as pool:
        futures = {}
        for cfg in todo:
            futures[pool.submit(_child, cfg)] = cfg
            log(f"== {cfg.model}, seed {cfg.seed}{' (resuming)' if cfg.resume else ''}: queued, {cfg.threads} "
                f"thread(s), log {Path(cfg.out) / 'train.log'} ==")
        for fut in as_completed(futures):
            cfg = futures[fut]
            try:
                s = fut.result()
            except Exception as e:  # noqa: BLE001 - one failed run is reported; the others finish
                errors.append(f"{cfg.model} seed {cfg.seed}: {e} (log: {Path(cfg.out) / 'train.log'})")
                log(f"== {cfg.model}, seed {cfg.seed}: failed: {e} ==")
                continue
            done[(cfg.model, cfg.seed)] = s
            log(f"== {cfg.model}, seed {cfg.seed}: done, test {s['test_acc']:.2f}% (epoch "
                f"{s['selected']['epoch']} of {(s.get('final') or {}).get('epoch')}) ==")
    if errors:
        raise UserError(f"{len(errors)} run(s) failed, the others are kept and reused next time: {errors[0]}")
    return done


def finished_run(cfg: TrainConfig, loads: Optional[Dict[tuple, Any]] = None) -> Optional[Dict[str, Any]]:
    """summary.json of a completed run of exactly this recipe, else None. Completed: it ran cfg.epochs, or the
    epoch where today's --early-stop rule, replayed over its history, ends it (a run trained without the rule,
    under another K or another rule counts only if it ends where this one would). loads: see _recipe_now."""
    out = Path(cfg.out)
    try:
        s = json.loads((out / "summary.json").read_text())
        rows = json.loads((out / "history.json").read_text())["epochs"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return None
    from .loop import early_stop_epoch
    stop = early_stop_epoch(cfg, rows)
    expected = stop if stop is not None and stop < cfg.epochs else cfg.epochs
    ran = (s.get("final") or {}).get("epoch")
    if ran != expected or len(rows) != ran or s.get("recipe_changed"):
        return None
    from .config import recipe_differences
    return s if isinstance(s.get("recipe"), dict) and not recipe_differences(s["recipe"], _recipe_now(cfg, loads)) else None


def _recipe_now(cfg: TrainConfig, loads: Optional[Dict[tuple, Any]] = None) -> Dict[str, Any]:
    """The recipe a run of cfg records (the data fingerprint included: same data, same split). loads: a dict
    the caller keeps across runs, so that the dataset is read once, not once per run (Fashion-MNIST: ~8 s)."""
    import torch
    from .data import folder_options, load_dataset
    from .loop import data_fingerprint, make_data, resolve_device
    amp = cfg.amp and resolve_device(cfg.device).type == "cuda"
    key = (cfg.dataset, cfg.data_dir, cfg.download, repr(folder_options(cfg)) if cfg.dataset == "folder" else None)
    if loads is not None and key not in loads:
        loads[key] = load_dataset(cfg.dataset, cfg.data_dir, cfg.download, folder=folder_options(cfg), progress=False)
    loaded = loads.get(key) if loads is not None else None
    return cfg.recipe(1, amp, data_fingerprint(cfg, make_data(cfg, torch.device("cpu"), loaded=loaded)))


def recipe_mismatch(cfg: TrainConfig, loads: Optional[Dict[tuple, Any]] = None) -> List[str]:
    """How the unfinished run in cfg.out (its last.pt) was trained differently from cfg; [] when it was not,
    or when there is no last.pt to resume."""
    last = Path(cfg.out) / "last.pt"
    if not last.is_file():
        return []
    from ..checkpoint import load_checkpoint
    from .loop import saved_recipe_differences
    try:
        ck = load_checkpoint(last)
    except UserError:                       # a damaged last.pt: its own run fails and is reported, the others train
        return []
    return saved_recipe_differences(ck, _recipe_now(cfg, loads))


def _fmt(v: Optional[float], spec: str = ".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def _rule(k: int) -> str:
    """The --early-stop rule in words (loop.stop_early), for the table and the curves."""
    return f"--early-stop {k}: {k} epochs without a gain, an LR cut and patience + 1 after it"


def format_table(res: Dict[str, Any]) -> str:
    sel = "validation" if res["selected_on"] == "val" else "test"
    length = f"{res['epochs']} epochs"
    if res.get("early_stop"):
        length = f"up to {res['epochs']} epochs, stopped by {_rule(res['early_stop'])}"
    lines = [f"{res['dataset']}, {length}, seeds {', '.join(map(str, res['seeds']))}; "
             f"best.pt chosen on {sel} accuracy, scored on the test set", "",
             "| model | seeds | test acc mean (%) | sd | per seed |", "|---|---:|---:|---:|---|"]
    for m in res["per_model"]:
        lines.append(f"| {m['model']} | {m['n']} | {m['mean']:.2f} | {_fmt(m['sd'])} | "
                     f"{', '.join(f'{v:.2f}' for v in m['test_acc'])} |")
    runs = res.get("runs", [])
    if runs and runs[0].get("epochs_run") is not None:
        lines += ["", "Epochs run / selected per seed: " + "; ".join(
            f"{m['model']} " + ", ".join(f"{r['epochs_run']}/{r['best_epoch']}" for r in runs if r["model"] == m["model"])
            for m in res["per_model"])]
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


def plot_curves(res: Dict[str, Any], out: Path, path: Path) -> Path:
    """The selection accuracy of every run per epoch (from each run's history.json), one colour per model,
    with the epoch each run selected marked: where the curves flatten is where training has converged."""
    from .plots import _pyplot, _save
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    key = "val_acc" if res["selected_on"] == "val" else "test_acc"
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, m in enumerate(res["models"]):
        for j, seed in enumerate(res["seeds"]):
            try:
                rows = json.loads((out / f"seed{seed}" / m / "history.json").read_text())["epochs"]
            except (OSError, json.JSONDecodeError, KeyError):
                continue
            xs = [r["epoch"] for r in rows if r.get(key) is not None]
            ys = [r[key] for r in rows if r.get(key) is not None]
            ax.plot(xs, ys, color=colours[i % len(colours)], lw=1, alpha=0.8, label=m if j == 0 else None)
            best = next((r for r in res["runs"] if r["model"] == m and r["seed"] == seed), None)
            if best and best["best_epoch"] in xs:
                ax.plot([best["best_epoch"]], [ys[xs.index(best["best_epoch"])]], "o", color=colours[i % len(colours)],
                        ms=4)
    stop = f"\n{_rule(res['early_stop'])}" if res.get("early_stop") else ""
    ax.set(xlabel="epoch", ylabel=f"{'validation' if key == 'val_acc' else 'test'} accuracy (%)")
    ax.set_title(f"{res['dataset']}, {len(res['seeds'])} seed(s) per model\ndot: the selected epoch{stop}",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


__all__ = ["compare", "status", "summarize", "paired_ci", "format_table", "plot_comparison", "plot_curves", "finished_run",
           "run_parallel"]
