"""Training throughput of the reference pipeline vs sedeploy's batch pipeline, in one run.

Reference: each image decoded to PIL and augmented by torchvision transforms in a DataLoader with
workers, as in the source. sedeploy: the split is a uint8 tensor; whole batches are augmented as
tensors (augment.BatchAugment). Both time full training steps (forward, backward, Adam) of the
same model, augmentation and batch size after a warm-up.
"""
from __future__ import annotations

import os
import time
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F

from ..core.errors import UserError
from ..models import create_model
from ..core.hardware import cpu_name
from .augment import AUGMENT_PRESETS, BatchAugment, reference_transform
from ..core.datasets import CIFAR10_MEAN, CIFAR10_STD
from .data import Split, load_dataset
from .loop import iterate_fast, iterate_reference, resolve_device

WARMUP = 5


def _time_steps(model, batches, n: int, opt) -> float:
    model.train()
    it = iter(batches)
    done, t0 = 0, 0.0
    for i in range(WARMUP + n):
        if i == WARMUP:
            t0 = time.perf_counter()
        try:
            x, y = next(it)
        except StopIteration:
            break
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if x.is_cuda:
            torch.cuda.synchronize()
        done += len(y) if i >= WARMUP else 0
    return done / (time.perf_counter() - t0)


def bench_pipelines(dataset: str = "fashion-mnist", data_dir: Optional[str] = None, model: str = "se_cnn",
                    augment: str = "reference", batch_size: int = 64, batches: int = 60, workers: int = 2,
                    device: str = "auto", rgb: bool = False) -> Dict[str, Any]:
    if augment not in AUGMENT_PRESETS:
        raise UserError(f"unknown augmentation {augment!r}; choose one of: {', '.join(AUGMENT_PRESETS)}")
    if batches <= 0 or batch_size <= 0:
        raise UserError("--batches and --batch-size must be positive")
    dev = resolve_device(device)
    info, data = load_dataset(dataset, data_dir, splits=("train",))
    split = data["train"]
    mean, std = info.mean, info.std
    if rgb and split.images.shape[1] == 1:
        split = Split(split.images.expand(-1, 3, -1, -1).contiguous(), split.labels)
        mean, std = CIFAR10_MEAN, CIFAR10_STD
    need = (batches + WARMUP) * batch_size
    if len(split.labels) < need:
        raise UserError(f"{dataset} has {len(split.labels)} images, fewer than the {need} the run needs; "
                        f"lower --batches")
    split = Split(split.images[:need], split.labels[:need])
    cfg = AUGMENT_PRESETS[augment]
    rows = []
    # reference: the source's pipeline and NCHW model; reference+cl: the same with sedeploy's
    # channels_last model (to separate the layout's share from the data pipeline's); fast: sedeploy.
    for name in ("reference", "reference+cl", "fast"):
        torch.manual_seed(0)
        m = create_model(model, in_channels=split.images.shape[1], input_size=split.images.shape[2],
                         num_classes=len(info.classes))
        m = m.to(dev, memory_format=torch.contiguous_format if name == "reference" else torch.channels_last)
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        # the same shuffled order for every pipeline, drawn as fit draws it (loop.train_epoch)
        order = torch.randperm(need, generator=torch.Generator().manual_seed(0))
        if name.startswith("reference"):
            tf = reference_transform(cfg, mean, std, train=True, size=split.images.shape[2])
            it = iterate_reference(split, tf, batch_size, workers, order, dev)
        else:
            s = Split(split.images.to(dev), split.labels.to(dev))
            it = iterate_fast(s, BatchAugment(cfg, mean, std), batch_size, order, torch.Generator().manual_seed(1),
                              dev, True)
        if name == "reference":
            it = ((x.contiguous(), y) for x, y in it)  # the source feeds NCHW
        rows.append({"pipeline": name, "images_per_s": _time_steps(m, it, batches, opt), "batches": batches})
    machine = f"{cpu_name()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, device {dev}"
    if dev.type == "cuda":
        machine += f" ({torch.cuda.get_device_name()})"
    return {"rows": rows, "speedup": rows[-1]["images_per_s"] / rows[0]["images_per_s"], "machine": machine,
            "batch_size": batch_size, "augment": augment, "model": model,
            "input": list(split.images.shape[1:]), "workers": workers}
