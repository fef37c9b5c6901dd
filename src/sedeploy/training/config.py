"""Training configuration: the one place for defaults (the CLI reads its defaults from here), the
checks on it, and the recipe fields that a resumed run must share with its checkpoint.

Adding a training option: a field here (with its comment), a click option in cli.py's
`_train_options` (default read from TrainConfig), a check in `validate` if it has a range; it is part
of the resume recipe unless listed in NOT_RECIPE.

Defaults are the reference recipe of the SE-CNN paper this project follows: batch 64, Adam lr 1e-3,
cross entropy, ReduceLROnPlateau(min, patience 3, factor 0.5), 50 epochs. One change from the
reference: the schedule and the choice of best.pt use a validation split held out of the training
set, not the test set (`select_on="test"` restores the reference's way).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from ..core.errors import UserError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")
PIPELINES = ("fast", "reference")
SELECT_ON = ("val", "test")
DEFAULT_AUGMENT = {"cifar10": "reference", "fashion-mnist": "light", "folder": "light"}
# Fields that do not change the weights of an epoch: everything else is part of the recipe that a
# resumed run must share (TrainConfig.recipe), so a new field is checked on resume by default.
NOT_RECIPE = frozenset({"epochs", "out", "resume", "allow_recipe_change", "download", "log_every", "device",
                        "data_dir", "amp", "cache_dir", "compile", "threads", "early_stop"})


@dataclass
class TrainConfig:
    model: str = "se_cnn"              # registry name (sedeploy.models.list_models())
    dataset: str = "cifar10"           # a name in sedeploy.core.datasets.DATASETS
    data_dir: Optional[str] = None     # dataset root (default: ./data, or Debian's copy for fashion-mnist)
    download: bool = False             # let torchvision download the dataset
    epochs: int = 50
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0                      # drives init, subsets, the validation split, order, augmentation, dropout
    device: str = "auto"               # auto | cpu | cuda
    workers: int = 2                   # DataLoader workers (reference pipeline only)
    out: str = "runs/train"            # output directory
    resume: Optional[str] = None       # last.pt to continue from
    allow_recipe_change: bool = False  # resume even if the recipe differs from the checkpoint's
    limit_train: Optional[int] = None  # quick run: use this many training samples (before the validation split)
    limit_test: Optional[int] = None   # quick run: use this many test samples
    val_split: float = 0.1             # stratified share of the training set held out for model selection
    select_on: str = "val"             # val: schedule + best.pt on validation; test: the reference's way
    augment: Optional[str] = None      # reference | light | none (default per dataset: DEFAULT_AUGMENT)
    pipeline: str = "fast"             # fast (batched tensors) | reference (PIL in a DataLoader)
    amp: bool = True                   # mixed precision on CUDA
    precision: str = "fp32"            # fp32 | bf16 (autocast; CPU: only where AVX512-BF16 or AMX runs it)
    compile: bool = False              # torch.compile the training forward/backward (same recipe, fused kernels)
    threads: Optional[int] = None      # torch threads (None: torch's default, one per core)
    early_stop: Optional[int] = None   # stop K epochs after the last gain and LR reduction (loop.stop_early)
    patience: int = 3                  # ReduceLROnPlateau
    factor: float = 0.5
    log_every: int = 100               # batches between log lines (0 = epoch lines only)
    model_config: Dict[str, Any] = field(default_factory=dict)  # overrides of the model config
    test_split: float = 0.1            # folder without a test/ folder: share of each class held out for test
    input_size: Optional[int] = None   # folder: square input side (None: from the data, else 32)
    channels: Optional[int] = None     # folder: 1 or 3 (None: 1 when every image is grey, else 3)
    cache_dir: Optional[str] = None    # folder: decode cache root (None: ~/.cache/sedeploy)

    def augment_name(self) -> str:
        return self.augment or DEFAULT_AUGMENT.get(self.dataset, "light")

    def recipe(self, world_size: int = 1, amp: bool = False, data: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """What decides the weights besides the number of epochs: a resumed run must match it.

        Every field counts except NOT_RECIPE (so a new field is part of the recipe unless it is
        added there); plus what the run resolved: the augmentation preset, whether mixed precision
        was on, the world size and a fingerprint of the data (`data`, from the loop).
        """
        r = {k: v for k, v in self.to_dict().items() if k not in NOT_RECIPE}
        r["augment"] = self.augment_name()
        r["amp"] = amp                                   # effective: amp asked for and running on CUDA
        r["world_size"] = world_size
        if self.select_on != "val":
            r["val_split"] = None                        # unused when selecting on the test set
        if self.select_on != "test":
            r["limit_test"] = None                       # the test set only scores, it never steers
        if self.pipeline != "reference":
            r["workers"] = None                          # worker count only matters to the DataLoader's RNG
        r["data"] = data
        return r

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def validate(cfg: TrainConfig) -> None:
    """Check a config at the boundary; messages name the valid options."""
    from ..core.datasets import DATASETS
    from ..models import list_models
    from .augment import AUGMENT_PRESETS
    _choice("model", cfg.model, list_models())
    _choice("dataset", cfg.dataset, DATASETS)
    _choice("device", cfg.device, DEVICES)
    _choice("pipeline", cfg.pipeline, PIPELINES)
    _choice("select-on", cfg.select_on, SELECT_ON)
    _choice("precision", cfg.precision, PRECISIONS)
    if cfg.augment is not None:
        _choice("augment", cfg.augment, tuple(AUGMENT_PRESETS))
    for name in ("epochs", "batch_size", "limit_train", "limit_test", "threads", "early_stop"):
        v = getattr(cfg, name)
        if v is not None and v <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be a positive number, got {v}")
    if cfg.lr <= 0:
        raise UserError(f"--lr must be positive, got {cfg.lr}")
    if cfg.select_on == "val" and not 0.0 < cfg.val_split < 0.9:
        raise UserError(f"--val-split must be in (0, 0.9), got {cfg.val_split}; "
                        f"use --select-on test to select on the test set (the reference's way)")
    from .data import check_data_options
    check_data_options(cfg)
    if cfg.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise UserError("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu or auto")


def _choice(name: str, value: str, options) -> None:
    if value not in options:
        raise UserError(f"unknown {name} {value!r}; choose one of: {', '.join(options)}")


# Recipe fields added after runs were written, with the value every run before them had: such a run's
# recipe lacks the key and still matches a run that asks for that value.
RECIPE_ADDED = {"precision": "fp32"}


def recipe_differences(saved: Dict[str, Any], now: Dict[str, Any]) -> List[str]:
    """['batch_size: 64 in the checkpoint, 32 now', ...] for every recipe field that differs."""
    def old(k: str) -> Any:
        return saved[k] if k in saved else RECIPE_ADDED.get(k)
    return [f"{k}: {_short(old(k))} in the checkpoint, {_short(now[k])} now" for k in now if old(k) != now[k]]


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."
