"""Training loop: the reference recipe, fast batch pipeline, exact resume, optional DDP.

Recipe (SPEC section 1): batch 64, Adam lr 1e-3, cross entropy, ReduceLROnPlateau(min, patience 3,
factor 0.5) stepped on the epoch's test loss, 50 epochs; per-iteration loss and per-epoch
train/test accuracy and loss are recorded. Randomness is derived from (seed, epoch, rank) at the
start of every epoch, so a run resumed from last.pt continues exactly as an uninterrupted one.
Under `torchrun --nproc_per_node N` it runs DistributedDataParallel (gloo on CPU, nccl on CUDA):
every rank draws the same permutation and takes its own shard; only rank 0 writes.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError, atomic_write_text, ensure_writable_dir
from ..models import count_parameters, create_model, list_models, model_config
from .augment import AUGMENT_PRESETS, BatchAugment, PILDataset, reference_transform
from ..checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from .data import DATASETS, Split, check_data_options, folder_options, load_dataset, subset, write_data_files

DEFAULT_AUGMENT = {"cifar10": "reference", "fashion-mnist": "light", "folder": "light"}


@dataclass
class TrainConfig:
    model: str = "se_cnn"              # registry name
    dataset: str = "cifar10"           # cifar10 | fashion-mnist | folder
    data_dir: Optional[str] = None     # dataset root (default: ./data, or Debian's copy for fashion-mnist)
    download: bool = False             # let torchvision download the dataset
    epochs: int = 50
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"               # auto | cpu | cuda
    workers: int = 2                   # DataLoader workers (reference pipeline only)
    out: str = "runs/train"            # output directory
    resume: Optional[str] = None       # last.pt to continue from
    limit_train: Optional[int] = None  # quick run: use this many training samples
    limit_test: Optional[int] = None   # quick run: use this many test samples
    augment: Optional[str] = None      # reference | light | none (default per dataset)
    pipeline: str = "fast"             # fast (batched tensors) | reference (PIL in a DataLoader)
    amp: bool = True                   # mixed precision on CUDA
    patience: int = 3                  # ReduceLROnPlateau
    factor: float = 0.5
    log_every: int = 100               # batches between log lines (0 = epoch lines only)
    model_config: Dict[str, Any] = field(default_factory=dict)  # overrides of the model config
    val_split: float = 0.1             # share of each class held out for validation
    test_split: float = 0.1            # folder without a test/ folder: share of each class held out for test
    input_size: Optional[int] = None   # folder: square input side (None: from the data, else 32)
    channels: Optional[int] = None     # folder: 1 or 3 (None: 1 when every image is grey, else 3)
    cache_dir: Optional[str] = None    # folder: decode cache root (None: ~/.cache/sedeploy)


def validate(cfg: TrainConfig) -> None:
    if cfg.model not in list_models():
        raise UserError(f"unknown model {cfg.model!r}; choose one of: {', '.join(list_models())}")
    if cfg.dataset not in DATASETS:
        raise UserError(f"unknown dataset {cfg.dataset!r}; choose one of: {', '.join(DATASETS)}")
    if cfg.epochs <= 0:
        raise UserError(f"--epochs must be a positive number, got {cfg.epochs}")
    if cfg.batch_size <= 0:
        raise UserError(f"--batch-size must be a positive number, got {cfg.batch_size}")
    if cfg.lr <= 0:
        raise UserError(f"--lr must be positive, got {cfg.lr}")
    if cfg.augment is not None and cfg.augment not in AUGMENT_PRESETS:
        raise UserError(f"unknown augmentation {cfg.augment!r}; choose one of: {', '.join(AUGMENT_PRESETS)}")
    if cfg.pipeline not in ("fast", "reference"):
        raise UserError(f"unknown pipeline {cfg.pipeline!r}; choose fast or reference")
    for name in ("limit_train", "limit_test"):
        v = getattr(cfg, name)
        if v is not None and v <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {v}")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise UserError(f"unknown device {cfg.device!r}; choose auto, cpu or cuda")
    check_data_options(cfg)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu or auto")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


# ---------------------------------------------------------------- distributed
@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return Dist(dist.get_rank(), dist.get_world_size())


def _all_sum(values: List[float], d: Dist, device: torch.device) -> List[float]:
    if d.world == 1:
        return values
    import torch.distributed as dist
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


# ---------------------------------------------------------------- batches
def _epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 101 + stream)


def iterate_fast(split: Split, aug: BatchAugment, batch_size: int, g_order: torch.Generator,
                 g_aug: torch.Generator, device: torch.device, d: Dist, train: bool):
    """Yield (x float normalized, y) batches from a uint8 split; train=True shuffles and augments."""
    n = len(split.labels)
    order = torch.randperm(n, generator=g_order) if train else torch.arange(n)
    order = order[d.rank::d.world]
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        x = split.images[idx].to(device, non_blocking=True)
        y = split.labels[idx].to(device, non_blocking=True)
        x = aug(x, g_aug) if train else aug.normalize(x)
        yield x.contiguous(memory_format=torch.channels_last), y


def iterate_reference(split: Split, transform, batch_size: int, workers: int, g_order: torch.Generator,
                      device: torch.device, d: Dist, train: bool):
    """The reference's way: per-image PIL transforms in a DataLoader."""
    ds = PILDataset(split.images, split.labels, transform)
    n = len(ds)
    order = (torch.randperm(n, generator=g_order) if train else torch.arange(n))[d.rank::d.world].tolist()
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=order, num_workers=workers,
                                         persistent_workers=False, pin_memory=device.type == "cuda")
    for x, y in loader:
        yield x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last), y.to(device)


# ---------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: nn.Module, batches, d: Dist = Dist(), device: torch.device = torch.device("cpu"),
             amp: bool = False) -> Dict[str, float]:
    model.eval()
    loss_sum, correct, count = 0.0, 0.0, 0.0
    for x, y in batches:
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        count += len(y)
    loss_sum, correct, count = _all_sum([loss_sum, correct, count], d, device)
    return {"loss": loss_sum / max(count, 1), "acc": 100.0 * correct / max(count, 1)}


# ---------------------------------------------------------------- fit
@dataclass
class TrainResult:
    out: Path
    best_acc: float
    final: Dict[str, float]
    history: Dict[str, Any]
    params: int
    seconds_per_epoch: float
    model: nn.Module  # the trained model (unwrapped from DDP), in eval mode


def _log(msg: str, d: Dist) -> None:
    if d.main:
        print(msg, flush=True)


def fit(cfg: TrainConfig, progress: bool = True) -> TrainResult:
    """Train per cfg, write checkpoints, history and plots to cfg.out; returns the summary."""
    validate(cfg)
    device = resolve_device(cfg.device)
    d = init_distributed(device)
    out = Path(cfg.out)
    if d.main:
        ensure_writable_dir(out)

    resume_ckpt = None
    if cfg.resume:
        resume_ckpt = load_checkpoint(cfg.resume)
        if "optimizer" not in resume_ckpt:
            raise UserError(f"{cfg.resume} has no optimizer state (a best.pt?); resume from last.pt")
        if resume_ckpt["model_name"] != cfg.model or resume_ckpt["dataset"] != cfg.dataset:
            raise UserError(f"{cfg.resume} is a {resume_ckpt['model_name']} on {resume_ckpt['dataset']}; "
                            f"resume with --model {resume_ckpt['model_name']} --dataset {resume_ckpt['dataset']}")

    info, data = load_dataset(cfg.dataset, cfg.data_dir, cfg.download, folder=folder_options(cfg),
                              progress=progress and d.main, log=lambda m: _log(m, d))
    data_ref = write_data_files(info, out) if d.main else None   # a folder's split.json, skipped.json
    train_split = subset(data["train"], cfg.limit_train, cfg.seed)
    test_split = subset(data["test"], cfg.limit_test, cfg.seed + 1)
    aug_name = cfg.augment or DEFAULT_AUGMENT[cfg.dataset]
    aug_cfg = AUGMENT_PRESETS[aug_name]
    aug = BatchAugment(aug_cfg, info.mean, info.std)
    if device.type == "cuda" and cfg.pipeline == "fast":   # keep the whole dataset on the GPU
        train_split = Split(train_split.images.to(device), train_split.labels.to(device))
        test_split = Split(test_split.images.to(device), test_split.labels.to(device))

    torch.manual_seed(cfg.seed)
    mcfg = {"in_channels": info.input_size[0], "input_size": info.input_size[1],
            "num_classes": len(info.classes), **cfg.model_config}
    # channels_last: oneDNN/cuDNN convolutions run ~1.7x faster in NHWC here (docs/BENCHMARKS.md)
    model = create_model(cfg.model, **mcfg).to(device, memory_format=torch.channels_last)
    mcfg = model_config(model)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", patience=cfg.patience, factor=cfg.factor)
    amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    history: Dict[str, Any] = {"iter_loss": [], "epochs": []}
    start_epoch, best_acc = 1, -1.0
    if resume_ckpt is not None:
        model.load_state_dict(resume_ckpt["state_dict"])
        opt.load_state_dict(resume_ckpt["optimizer"])
        sched.load_state_dict(resume_ckpt["scheduler"])
        if "scaler" in resume_ckpt and amp:
            scaler.load_state_dict(resume_ckpt["scaler"])
        history = resume_ckpt["history"]
        start_epoch = resume_ckpt["epoch"] + 1
        best_acc = resume_ckpt["metrics"].get("best_acc", -1.0)
        torch.set_rng_state(resume_ckpt["rng"]["torch"])
        _log(f"resumed from {cfg.resume} at epoch {start_epoch}", d)
    if d.world > 1:
        model = nn.parallel.DistributedDataParallel(model)

    n_params = count_parameters(model)
    _log(f"{cfg.model} ({n_params:,} params, input {'x'.join(map(str, info.input_size))}) on {info.name} "
         f"[{len(train_split.labels)} train / {len(test_split.labels)} test, {info.source}], device {device}, world {d.world}, "
         f"augment {aug_name}, pipeline {cfg.pipeline}", d)
    ref_train_tf = reference_transform(aug_cfg, info.mean, info.std, train=True, size=info.input_size[1])
    ref_test_tf = reference_transform(aug_cfg, info.mean, info.std, train=False, size=info.input_size[1])
    meta = dict(classes=info.classes, mean=info.mean, std=info.std, input_size=info.input_size,
                dataset=info.name, data=data_ref)
    epoch_times: List[float] = []
    n_batches = -(-len(train_split.labels[d.rank::d.world]) // cfg.batch_size)

    for epoch in range(start_epoch, cfg.epochs + 1):
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed * 7919 + epoch * 31 + d.rank)          # dropout stream per epoch
        g_order = _epoch_generator(cfg.seed, epoch, 0)                    # same on every rank
        g_aug = _epoch_generator(cfg.seed, epoch, 1 + d.rank)
        if cfg.pipeline == "fast":
            batches = iterate_fast(train_split, aug, cfg.batch_size, g_order, g_aug, device, d, True)
        else:
            batches = iterate_reference(train_split, ref_train_tf, cfg.batch_size, cfg.workers, g_order, device,
                                        d, True)
        bar = None
        if progress and d.main:
            from tqdm import tqdm
            bar = tqdm(total=n_batches, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, file=sys.stderr,
                       dynamic_ncols=True, disable=None)          # None: off when stderr is not a terminal
            bar = None if bar.disable else bar
        model.train()
        loss_sum, count = 0.0, 0.0
        correct = torch.zeros((), dtype=torch.int64, device=device)  # summed on the device: no extra sync
        for i, (x, y) in enumerate(batches, 1):
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            li = loss.item()
            history["iter_loss"].append(li)
            loss_sum += li * len(y)
            correct += (logits.argmax(1) == y).sum()
            count += len(y)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{li:.3f}")
            if cfg.log_every and i % cfg.log_every == 0 and bar is None:
                _log(f"  epoch {epoch} batch {i}/{n_batches} loss {li:.4f}", d)
        if bar is not None:
            bar.close()
        loss_sum, correct, count = _all_sum([loss_sum, float(correct.item()), count], d, device)
        train_m = {"loss": loss_sum / max(count, 1), "acc": 100.0 * correct / max(count, 1)}
        if cfg.pipeline == "fast":
            tb = iterate_fast(test_split, aug, 256, g_order, g_aug, device, d, False)
        else:
            tb = iterate_reference(test_split, ref_test_tf, 256, cfg.workers, g_order, device, d, False)
        test_m = evaluate(model, tb, d, device, amp)
        sched.step(test_m["loss"])
        dt = time.perf_counter() - t0
        epoch_times.append(dt)
        row = {"epoch": epoch, "train_loss": train_m["loss"], "train_acc": train_m["acc"],
               "test_loss": test_m["loss"], "test_acc": test_m["acc"], "lr": opt.param_groups[0]["lr"],
               "seconds": dt, "images_per_s": count / dt}
        history["epochs"].append(row)
        improved = test_m["acc"] > best_acc
        best_acc = max(best_acc, test_m["acc"])
        _log(f"epoch {epoch:3d}/{cfg.epochs}  train loss {train_m['loss']:.4f} acc {train_m['acc']:6.2f}%  "
             f"test loss {test_m['loss']:.4f} acc {test_m['acc']:6.2f}%  lr {row['lr']:.2e}  "
             f"{dt:6.1f}s ({row['images_per_s']:.0f} img/s){'  *best' if improved else ''}", d)
        if d.main:
            metrics = {"test_acc": test_m["acc"], "test_loss": test_m["loss"], "train_acc": train_m["acc"],
                       "train_loss": train_m["loss"], "best_acc": best_acc, "params": n_params}
            base = make_checkpoint(model, cfg.model, mcfg, epoch=epoch, metrics=metrics, **meta,
                                   extra={"train_config": _jsonable(asdict(cfg))})
            if improved:
                save_checkpoint(base, out / "best.pt")
            last = dict(base, optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                        rng={"torch": torch.get_rng_state()}, history=history)
            if amp:
                last["scaler"] = scaler.state_dict()
            save_checkpoint(last, out / "last.pt")
            write_history(history, out)

    final = history["epochs"][-1] if history["epochs"] else {}
    result = TrainResult(out, best_acc, final, history, n_params,
                         sum(epoch_times) / max(len(epoch_times), 1), getattr(model, "module", model).eval())
    if d.main:
        from .plots import plot_history
        plot_history(history, out)
        summary = {"model": cfg.model, "dataset": info.name, "params": n_params, "best_acc": best_acc,
                   "final": final, "seconds_per_epoch": result.seconds_per_epoch, "out": str(out)}
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    return result


def _jsonable(d: Dict[str, Any]) -> Dict[str, Any]:
    return json.loads(json.dumps(d, default=str))


def write_history(history: Dict[str, Any], out: Path) -> None:
    """history.json, epochs.csv and iterations.csv (atomic)."""
    atomic_write_text(out / "history.json", json.dumps(history))
    cols = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds", "images_per_s"]
    lines = [",".join(cols)] + [",".join(f"{r[c]:.6g}" if isinstance(r[c], float) else str(r[c]) for c in cols)
                                for r in history["epochs"]]
    atomic_write_text(out / "epochs.csv", "\n".join(lines) + "\n")
    it = ["iteration,loss"] + [f"{i},{v:.6g}" for i, v in enumerate(history["iter_loss"], 1)]
    atomic_write_text(out / "iterations.csv", "\n".join(it) + "\n")
