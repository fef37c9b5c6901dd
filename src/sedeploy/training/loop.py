"""Training loop: the reference recipe with model selection on a validation split, exact resume, DDP.

`fit` reads as its steps: check the config, load the data and split off the validation set, build
the model/optimizer/schedule (or restore them from last.pt), then per epoch train, evaluate on the
validation and test sets, step ReduceLROnPlateau on the selection split's loss and save. best.pt is
the epoch with the best accuracy on the selection split (validation by default; `select_on="test"`
is the reference's way); the test figures of other epochs stay in the history for the curves only.

Randomness lives in three streams: the training order (same on every rank), the augmentation
(per rank) and torch's global generator (dropout, per rank). Their states are saved in last.pt for
every rank and restored on resume, so k epochs + resume to N gives the weights of N in one go.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from ..core.errors import UserError
from ..core.io import atomic_write_text, ensure_writable_dir
from ..models import count_parameters, create_model, model_config
from ..splits import labels_sha256
from .augment import AUGMENT_PRESETS, BatchAugment, PILDataset, reference_transform
from .config import TrainConfig, recipe_differences, validate
from .data import Split, folder_options, load_dataset, stratified_split, subset, write_data_files
from .distributed import Dist, all_sum, gather, init_distributed, shard, sync_buffers

Batches = Iterator[Tuple[torch.Tensor, torch.Tensor]]

__all__ = ["TrainConfig", "TrainResult", "fit", "evaluate"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(name)


# ---------------------------------------------------------------- batches
def iterate_fast(split: Split, aug: BatchAugment, batch_size: int, order: torch.Tensor, g_aug: torch.Generator,
                 device: torch.device, train: bool) -> Batches:
    """Yield (x float normalized, y) batches of split[order]; train=True augments."""
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        x = split.images[idx].to(device, non_blocking=True)
        y = split.labels[idx].to(device, non_blocking=True)
        x = aug(x, g_aug) if train else aug.normalize(x)
        yield x.contiguous(memory_format=torch.channels_last), y


def iterate_reference(split: Split, transform, batch_size: int, workers: int, order: torch.Tensor,
                      device: torch.device) -> Batches:
    """The reference's way: per-image PIL transforms in a DataLoader (its RNG: torch's global one)."""
    ds = PILDataset(split.images, split.labels, transform)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=order.tolist(), num_workers=workers,
                                         persistent_workers=False, pin_memory=device.type == "cuda")
    for x, y in loader:
        yield x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last), y.to(device)


# ---------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches, d: Dist = Dist(), device: torch.device = torch.device("cpu"),
             amp: bool = False) -> Dict[str, float]:
    """Loss and accuracy over this rank's batches, summed over ranks (each sample counted once)."""
    model = getattr(model, "module", model)  # never the DDP wrapper: no collective per batch
    model.eval()
    loss_sum, correct, count = 0.0, 0.0, 0.0
    for x, y in batches:
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        count += len(y)
    loss_sum, correct, count = all_sum([loss_sum, correct, count], d, device)
    return {"loss": loss_sum / max(count, 1), "acc": 100.0 * correct / max(count, 1), "n": int(count)}


# ---------------------------------------------------------------- state
@dataclass
class Data:
    info: Any                          # sedeploy.core.datasets.DatasetInfo
    train: Split
    val: Optional[Split]               # None when selecting on the test set
    test: Split
    aug: BatchAugment
    aug_name: str
    ref: Optional[Dict[str, Any]] = None  # where a folder's data and split files are (into the checkpoint)


@dataclass
class Rng:
    """The three random streams; get()/set() move their states through last.pt."""
    order: torch.Generator
    aug: torch.Generator

    @classmethod
    def seeded(cls, seed: int, d: Dist) -> "Rng":
        torch.manual_seed(seed * 7_919 + 1 + d.rank)                      # dropout stream, per rank
        return cls(torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed * 1_000_003 + 1 + d.rank))

    def get(self) -> Dict[str, torch.Tensor]:
        s = {"order": self.order.get_state(), "aug": self.aug.get_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            s["cuda"] = torch.cuda.get_rng_state()
        return s

    def set(self, s: Dict[str, torch.Tensor]) -> None:
        self.order.set_state(s["order"])
        self.aug.set_state(s["aug"])
        torch.set_rng_state(s["torch"])
        if "cuda" in s and torch.cuda.is_available():
            torch.cuda.set_rng_state(s["cuda"])


@dataclass
class State:
    model: nn.Module
    opt: torch.optim.Optimizer
    sched: Any
    scaler: Any
    rng: Rng
    history: Dict[str, Any] = field(default_factory=lambda: {"iter_loss": [], "epochs": []})
    start_epoch: int = 1
    best: Dict[str, Any] = field(default_factory=lambda: {"epoch": 0, "acc": -1.0})
    forward: Any = None                # what the training step calls: the model, or its compiled version


@dataclass
class TrainResult:
    out: Path
    selected: Dict[str, Any]           # the chosen epoch: split it was chosen on, epoch, val/test figures
    final: Dict[str, Any]              # the last epoch's history row
    history: Dict[str, Any]
    params: int
    seconds_per_epoch: float
    model: nn.Module                   # the last epoch's model (unwrapped from DDP), in eval mode

    @property
    def test_acc(self) -> float:
        """Test accuracy of the selected model (best.pt)."""
        return self.selected["test_acc"]


def _log(msg: str, d: Dist) -> None:
    if d.main:
        print(msg, flush=True)


# ---------------------------------------------------------------- steps
def load_resume(cfg: TrainConfig, allow_finished: bool = False) -> Optional[Dict[str, Any]]:
    """last.pt to continue from (its recipe is checked once the data is loaded: check_recipe).
    allow_finished: a run that already has all its epochs only writes its summary again (compare)."""
    if not cfg.resume:
        return None
    ck = load_checkpoint(cfg.resume)
    if "optimizer" not in ck:
        raise UserError(f"{cfg.resume} has no optimizer state (a best.pt?); resume from last.pt")
    if ck["epoch"] > cfg.epochs or (ck["epoch"] == cfg.epochs and not allow_finished):
        raise UserError(f"{cfg.resume} has already run {ck['epoch']} epochs; pass --epochs above {ck['epoch']} "
                        f"to continue it (or train a shorter run into another --out)")
    past = early_stop_epoch(cfg, (ck.get("history") or {}).get("epochs", []))
    if past is not None and past < ck["epoch"]:
        raise UserError(f"{cfg.resume} ran to epoch {ck['epoch']}, past epoch {past} where --early-stop "
                        f"{cfg.early_stop} ends this run, so its selected epoch could differ; train it again "
                        f"into another --out, or resume it without --early-stop")
    return ck


def saved_recipe_differences(ck: Dict[str, Any], now: Dict[str, Any]) -> List[str]:
    """How a checkpoint's recorded recipe differs from `now` ([] when it does not)."""
    saved = ck.get("recipe")
    if not isinstance(saved, dict):
        return ["no recipe recorded (written by an older sedeploy)"]
    return recipe_differences(saved, now)


def check_recipe(cfg: TrainConfig, ck: Optional[Dict[str, Any]], now: Dict[str, Any]) -> bool:
    """Refuse a resume whose recipe differs, unless allow_recipe_change; -> True when it differs."""
    if ck is None:
        return False
    diffs = saved_recipe_differences(ck, now)
    if diffs and not cfg.allow_recipe_change:
        raise UserError(f"{cfg.resume} was trained with another recipe ({'; '.join(diffs)}); pass the same "
                        f"options, or --allow-recipe-change to resume anyway (not an exact resume)")
    return bool(diffs) or bool(ck.get("recipe_changed"))


def data_fingerprint(cfg: TrainConfig, data: "Data") -> Dict[str, Any]:
    """Sizes and a hash of the labels that steer training: another copy or subset of the data differs."""
    steer = [data.train] + ([data.val] if data.val is not None else [data.test])
    return {"n_train": len(data.train.labels), "n_select": len(steer[1].labels),
            "labels_sha256": labels_sha256(*(sp.labels for sp in steer))}


def make_data(cfg: TrainConfig, device: torch.device, d: Dist = Dist(), progress: bool = False,
              out: Optional[Path] = None, loaded: Optional[Tuple[Any, Dict[str, Any]]] = None) -> Data:
    """Load the dataset (a folder: index, split, decode cache), subset it, hold out the validation split.
    loaded: load_dataset's (info, splits) for cfg, when the caller has them already."""
    info, splits = loaded or load_dataset(cfg.dataset, cfg.data_dir, cfg.download, folder=folder_options(cfg),
                                          progress=progress and d.main, log=lambda m: _log(m, d))
    ref = write_data_files(info, out) if out is not None and d.main else None   # a folder's split.json, skipped.json
    train = subset(splits["train"], cfg.limit_train, cfg.seed)
    test = subset(splits["test"], cfg.limit_test, cfg.seed + 1)
    val = None
    if cfg.select_on == "val":
        if splits.get("val") is not None:          # the dataset brings its own validation split
            val = splits["val"]
        else:
            train, val = stratified_split(train, cfg.val_split, cfg.seed)
        if len(val.labels) == 0:
            raise UserError(f"the validation split is empty ({len(train.labels)} training samples); "
                            f"raise --val-split or --limit-train")
    if device.type == "cuda" and cfg.pipeline == "fast":   # keep the whole dataset on the GPU
        train, test = (Split(s.images.to(device), s.labels.to(device)) for s in (train, test))
        val = Split(val.images.to(device), val.labels.to(device)) if val is not None else None
    aug_name = cfg.augment_name()
    return Data(info, train, val, test, BatchAugment(AUGMENT_PRESETS[aug_name], info.mean, info.std), aug_name, ref)


def make_state(cfg: TrainConfig, data: Data, device: torch.device, d: Dist,
               resume: Optional[Dict[str, Any]], amp: bool = False) -> State:
    torch.manual_seed(cfg.seed)                                           # same initial weights on every rank
    mcfg = {"in_channels": data.info.input_size[0], "input_size": data.info.input_size[1],
            "num_classes": len(data.info.classes), **cfg.model_config}
    # channels_last: oneDNN and cuDNN pick their NHWC convolution kernels for it
    model = create_model(cfg.model, **mcfg).to(device, memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", patience=cfg.patience, factor=cfg.factor)
    st = State(model, opt, sched, torch.amp.GradScaler("cuda", enabled=amp), Rng.seeded(cfg.seed, d))
    if resume is not None:
        model.load_state_dict(resume["state_dict"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        if "scaler" in resume and amp:
            st.scaler.load_state_dict(resume["scaler"])
        st.history, st.start_epoch = resume["history"], resume["epoch"] + 1
        st.best = dict(resume.get("best") or {"epoch": resume["epoch"], "acc": -1.0})
        ranks = resume.get("rng", {}).get("ranks")
        if ranks:
            st.rng.set(ranks[d.rank] if d.rank < len(ranks) else ranks[0])
        else:  # an older last.pt (only with --allow-recipe-change): fresh streams, not an exact resume
            _log(f"warning: {cfg.resume} holds no per-rank RNG state; the resumed run is not exact", d)
        _log(f"resumed from {cfg.resume} at epoch {st.start_epoch}", d)
    if d.world > 1:
        st.model = nn.parallel.DistributedDataParallel(model)
    st.forward = compile_model(st.model) if cfg.compile else st.model
    return st


def compile_model(model: nn.Module):
    """torch.compile for training: the forward and backward become fused kernels (inductor; C++ on CPU).

    fallback_random keeps dropout on torch's own generator, so a compiled run draws the same masks as an
    eager one and resumes exactly. The first steps pay the compilation (about a minute on 2 cores).
    """
    import logging
    import torch._inductor.config as inductor_config
    inductor_config.fallback_random = True
    if not torch.cuda.is_available():   # inductor's C++ build finds a CUDA folder and warns of no CUDA runtime:
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)   # true, and beside the point on CPU
    return torch.compile(model, dynamic=False)


def autocast_dtype(cfg: TrainConfig, device: torch.device, amp: bool) -> Optional[torch.dtype]:
    """The training forward's autocast dtype: fp16 for CUDA mixed precision, bf16 when asked, else None."""
    if amp:
        return torch.float16
    return torch.bfloat16 if cfg.precision == "bf16" else None


def train_epoch(cfg: TrainConfig, st: State, data: Data, device: torch.device, d: Dist, epoch: int,
                progress: bool) -> Dict[str, float]:
    order = shard(torch.randperm(len(data.train.labels), generator=st.rng.order), d, pad=True)
    if cfg.pipeline == "fast":
        batches = iterate_fast(data.train, data.aug, cfg.batch_size, order, st.rng.aug, device, True)
    else:
        tf = reference_transform(AUGMENT_PRESETS[data.aug_name], data.info.mean, data.info.std, train=True,
                                 size=data.info.input_size[1])
        batches = iterate_reference(data.train, tf, cfg.batch_size, cfg.workers, order, device)
    n_batches = -(-len(order) // cfg.batch_size)
    bar = _progress_bar(n_batches, f"epoch {epoch}/{cfg.epochs}") if progress and d.main else None
    dtype = autocast_dtype(cfg, device, st.scaler.is_enabled())
    st.model.train()
    # per-step losses and the correct count stay on the device; one host sync per log line and epoch
    losses: List[torch.Tensor] = []
    sizes: List[int] = []
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for i, (x, y) in enumerate(batches, 1):
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = st.forward(x)
            loss = F.cross_entropy(logits.float(), y)
        st.opt.zero_grad(set_to_none=True)
        st.scaler.scale(loss).backward()
        st.scaler.step(st.opt)
        st.scaler.update()
        losses.append(loss.detach())
        sizes.append(len(y))
        correct += (logits.argmax(1) == y).sum()
        shown = bar is not None and (i % 20 == 0 or i == n_batches)
        if shown or (bar is None and cfg.log_every and i % cfg.log_every == 0):
            li = losses[-1].item()
            if bar is not None:
                bar.set_postfix(loss=f"{li:.3f}")
            else:
                _log(f"  epoch {epoch} batch {i}/{n_batches} loss {li:.4f}", d)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    step_loss = torch.stack(losses).cpu().double() if losses else torch.zeros(0, dtype=torch.float64)
    st.history["iter_loss"].extend(step_loss.tolist())
    loss_sum = float((step_loss * torch.tensor(sizes, dtype=torch.float64)).sum())
    loss_sum, corr, n = all_sum([loss_sum, float(correct.item()), float(sum(sizes))], d, device)
    return {"loss": loss_sum / max(n, 1), "acc": 100.0 * corr / max(n, 1), "count": n}


def evaluate_split(cfg: TrainConfig, st: State, data: Data, split: Split, device: torch.device,
                   d: Dist) -> Dict[str, float]:
    order = shard(torch.arange(len(split.labels)), d, pad=False)
    if cfg.pipeline == "fast":
        batches = iterate_fast(split, data.aug, 256, order, st.rng.aug, device, False)
    else:
        tf = reference_transform(AUGMENT_PRESETS[data.aug_name], data.info.mean, data.info.std, train=False,
                                 size=data.info.input_size[1])
        batches = iterate_reference(split, tf, 256, cfg.workers, order, device)
    return evaluate(st.model, batches, d, device, st.scaler.is_enabled())


def save(cfg: TrainConfig, st: State, data: Data, out: Path, d: Dist, epoch: int, improved: bool,
         rng_states: List[Dict[str, torch.Tensor]], n_params: int, recipe: Dict[str, Any], changed: bool) -> None:
    """best.pt when the selection metric improved, last.pt (+ optimizer, schedule, RNG of every rank)."""
    if not d.main:
        return
    row = st.history["epochs"][-1]
    metrics = {k: row[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")}
    metrics.update(params=n_params, selected_on=cfg.select_on, best_epoch=st.best["epoch"])
    info = data.info
    base = make_checkpoint(st.model, cfg.model, model_config(getattr(st.model, "module", st.model)), epoch=epoch,
                           metrics=metrics, classes=info.classes, mean=info.mean, std=info.std,
                           input_size=info.input_size, dataset=info.name, data=data.ref,
                           extra={"train_config": _jsonable(cfg.to_dict()), "recipe": recipe,
                                  "recipe_changed": changed})
    if improved:
        save_checkpoint(base, out / "best.pt")
    last = dict(base, optimizer=st.opt.state_dict(), scheduler=st.sched.state_dict(), best=dict(st.best),
                rng={"ranks": rng_states}, history=st.history)
    if st.scaler.is_enabled():
        last["scaler"] = st.scaler.state_dict()
    save_checkpoint(last, out / "last.pt")
    write_history(st.history, out)


def check_precision(cfg: TrainConfig, device: torch.device) -> None:
    """bf16 on a CPU only where it runs in hardware: elsewhere torch emulates it, slower than fp32. On CUDA
    (also reached through --device auto) bf16 and fp16 mixed precision exclude each other."""
    if cfg.precision == "bf16" and cfg.amp and device.type == "cuda":
        raise UserError("--precision bf16 and CUDA mixed precision (fp16) are two choices; pass --no-amp with "
                        "--precision bf16, or drop --precision")
    if cfg.precision == "bf16" and device.type == "cpu":
        from ..core.hardware import cpu_name, has_bf16
        if not has_bf16():
            raise UserError(f"--precision bf16: this CPU ({cpu_name()}) has neither AVX512-BF16 nor AMX, so bf16 "
                            f"would be emulated and slower than fp32; train with --precision fp32")


EARLY_STOP_RULE = "lr-drop-then-patience"  # recorded in summary.json, for the reader (reuse replays the rule)


def stop_early(cfg: TrainConfig, st: State, epoch: int) -> bool:
    """True when, after `epoch`, the run has converged by the --early-stop K rule: the selection accuracy has
    not improved for K epochs, and within them the schedule has reduced the learning rate and then had its own
    patience + 1 epochs without a new best. A plateau at one learning rate never stops a run: the schedule has
    not had its say yet (ReduceLROnPlateau follows the loss, which can keep falling while accuracy stalls)."""
    if not cfg.early_stop or epoch - st.best["epoch"] < cfg.early_stop:
        return False
    lr = cfg.lr
    for r in st.history["epochs"]:
        if r["epoch"] > epoch - cfg.patience - 1:
            break
        if r["lr"] < lr and r["epoch"] > st.best["epoch"]:
            return True
        lr = r["lr"]
    return False


def early_stop_epoch(cfg: TrainConfig, rows: List[Dict[str, Any]]) -> Optional[int]:
    """The epoch after which the --early-stop rule (stop_early, replayed over a saved history) ends the run,
    or None when it does not within `rows` (or there is no --early-stop). A saved run is judged by today's
    rule and K, whatever it was trained under."""
    if not cfg.early_stop:
        return None
    key = "val_acc" if cfg.select_on == "val" else "test_acc"
    replay = SimpleNamespace(best={"epoch": 0, "acc": -1.0}, history={"epochs": []})
    for r in rows:
        if r.get(key) is not None and r[key] > replay.best["acc"]:          # strictly better, as in _fit
            replay.best = {"epoch": r["epoch"], "acc": r[key]}
        replay.history["epochs"].append(r)
        if stop_early(cfg, replay, r["epoch"]):
            return r["epoch"]
    return None


def fit(cfg: TrainConfig, progress: bool = True, allow_finished: bool = False) -> TrainResult:
    """Train per cfg, write checkpoints, history and plots to cfg.out; returns the summary."""
    validate(cfg)
    device = resolve_device(cfg.device)
    check_precision(cfg, device)
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _fit(cfg, device, progress, allow_finished)
    finally:
        torch.set_num_threads(threads)                                    # the caller's setting, as it was


def _fit(cfg: TrainConfig, device: torch.device, progress: bool, allow_finished: bool) -> TrainResult:
    d = init_distributed(device)
    out = Path(cfg.out)
    ensure_writable_dir(out, option="--out")                              # every rank: no rank-0-only failure
    resume = load_resume(cfg, allow_finished)
    data = make_data(cfg, device, d, progress, out)
    amp = cfg.amp and device.type == "cuda"
    recipe = cfg.recipe(d.world, amp, data_fingerprint(cfg, data))
    changed = check_recipe(cfg, resume, recipe)
    st = make_state(cfg, data, device, d, resume, amp)
    n_params = count_parameters(st.model)
    sel = "validation" if data.val is not None else "test (the reference's way)"
    _log(f"{cfg.model} ({n_params:,} params, input {'x'.join(map(str, data.info.input_size))}) on {data.info.name} [{len(data.train.labels)} train / "
         f"{len(data.val.labels) if data.val is not None else 0} val / {len(data.test.labels)} test, "
         f"{data.info.source}], device {device}, world {d.world}, augment {data.aug_name}, pipeline {cfg.pipeline}, "
         f"{cfg.precision}{' (CUDA fp16 autocast)' if amp else ''}{', compiled' if cfg.compile else ''}, "
         f"{torch.get_num_threads()} threads, "
         f"selecting on {sel}", d)
    epoch_times: List[float] = []
    for epoch in range(st.start_epoch, cfg.epochs + 1):
        if stop_early(cfg, st, epoch - 1):                                # also a resumed run that had stopped
            break
        t0 = time.perf_counter()
        tr = train_epoch(cfg, st, data, device, d, epoch, progress)
        sync_buffers(st.model, d)                                         # one model to score and save
        va = evaluate_split(cfg, st, data, data.val, device, d) if data.val is not None else None
        te = evaluate_split(cfg, st, data, data.test, device, d)
        chosen = va if va is not None else te
        st.sched.step(chosen["loss"])
        dt = time.perf_counter() - t0
        epoch_times.append(dt)
        improved = chosen["acc"] > st.best["acc"]
        if improved:
            st.best = {"epoch": epoch, "acc": chosen["acc"]}
        st.history["epochs"].append({
            "epoch": epoch, "train_loss": tr["loss"], "train_acc": tr["acc"],
            "val_loss": va["loss"] if va else None, "val_acc": va["acc"] if va else None,
            "test_loss": te["loss"], "test_acc": te["acc"], "lr": st.opt.param_groups[0]["lr"],
            "val_n": va["n"] if va else None, "test_n": te["n"],
            "seconds": dt, "images_per_s": tr["count"] / dt, "selected_on": cfg.select_on})
        _log(f"epoch {epoch:3d}/{cfg.epochs}  train loss {tr['loss']:.4f} acc {tr['acc']:6.2f}%  "
             + (f"val loss {va['loss']:.4f} acc {va['acc']:6.2f}%  " if va else "")
             + f"test acc {te['acc']:6.2f}%  lr {st.opt.param_groups[0]['lr']:.2e}  {dt:6.1f}s "
             f"({tr['count'] / dt:.0f} img/s){'  *best' if improved else ''}", d)
        failure = None
        try:
            save(cfg, st, data, out, d, epoch, improved, gather(st.rng.get(), d), n_params, recipe, changed)
        except Exception as e:  # noqa: BLE001 - rank 0's disk error must stop every rank, not hang them
            failure = e
        if all_sum([1.0 if failure else 0.0], d, device)[0]:
            if failure is not None:
                raise failure
            raise UserError("rank 0 could not save the checkpoint; see its error above")
        if epoch < cfg.epochs and stop_early(cfg, st, epoch):
            _log(f"stopping early: {'validation' if cfg.select_on == 'val' else 'test'} accuracy has not improved "
                 f"for {cfg.early_stop} epochs, and not in the {cfg.patience + 1} after the learning rate was reduced "
                 f"(best {st.best['acc']:.2f}% at epoch {st.best['epoch']})", d)
    result = finish(cfg, st, data, out, d, n_params, epoch_times, recipe, changed)
    if d.world > 1:
        import torch.distributed as dist
        dist.destroy_process_group()
    return result


def finish(cfg: TrainConfig, st: State, data: Data, out: Path, d: Dist, n_params: int,
           epoch_times: List[float], recipe: Dict[str, Any], changed: bool) -> TrainResult:
    """The selected epoch's figures, plots and summary.json."""
    rows = st.history["epochs"]
    best_row = next((r for r in rows if r["epoch"] == st.best["epoch"]), rows[-1] if rows else {})
    selected = {"split": cfg.select_on, "val_split": cfg.val_split if cfg.select_on == "val" else None,
                "epoch": best_row.get("epoch"), "val_acc": best_row.get("val_acc"),
                "test_acc": best_row.get("test_acc"), "test_loss": best_row.get("test_loss")}
    seconds = [r["seconds"] for r in rows] or epoch_times          # every epoch, also those before a resume
    result = TrainResult(out, selected, rows[-1] if rows else {}, st.history, n_params,
                         sum(seconds) / max(len(seconds), 1), getattr(st.model, "module", st.model).eval())
    if d.main:
        from .plots import plot_history
        plot_history(st.history, out)
        summary = {"model": cfg.model, "dataset": data.info.name, "params": n_params, "selected": selected,
                   "test_acc": selected["test_acc"], "final": result.final,
                   "seconds_per_epoch": result.seconds_per_epoch, "out": str(out), "recipe": recipe,
                   "early_stop": cfg.early_stop, "early_stop_rule": EARLY_STOP_RULE,
                   "stopped_early": bool(rows) and rows[-1]["epoch"] < cfg.epochs,
                   "recipe_changed": changed}
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    return result


def _progress_bar(total: int, desc: str):
    """A tqdm bar on a terminal; None when stderr is not one (logs then get periodic lines)."""
    from tqdm import tqdm
    bar = tqdm(total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True, disable=None)
    return None if bar.disable else bar


def _jsonable(d: Dict[str, Any]) -> Dict[str, Any]:
    return json.loads(json.dumps(d, default=str))


def write_history(history: Dict[str, Any], out: Path) -> None:
    """history.json, epochs.csv and iterations.csv (atomic). Test columns of unselected epochs are for
    the curves only: the model is chosen on the column named in selected_on."""
    atomic_write_text(out / "history.json", json.dumps(history))
    cols = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "lr", "seconds",
            "images_per_s", "selected_on"]

    def cell(v) -> str:
        return "" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v)
    lines = [",".join(cols)] + [",".join(cell(r.get(c)) for c in cols) for r in history["epochs"]]
    atomic_write_text(out / "epochs.csv", "\n".join(lines) + "\n")
    it = ["iteration,loss"] + [f"{i},{v:.6g}" for i, v in enumerate(history["iter_loss"], 1)]
    atomic_write_text(out / "iterations.csv", "\n".join(it) + "\n")
