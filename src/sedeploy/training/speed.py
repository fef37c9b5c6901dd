"""Training throughput, in one run: the data pipelines, then the training step's configurations.

Pipelines (the same model, augmentation and batch size, full training steps):
- `reference`: each image decoded to PIL and augmented by torchvision transforms in a DataLoader with
  workers, NCHW model, as in the source; `reference+cl`: the same with the channels-last model;
- `fast`: sedeploy's: the split is a uint8 tensor, whole batches augmented as tensors, channels-last.

Step configurations on the fast pipeline (what `train --compile/--precision/--threads` run):
`+compile` (torch.compile: fused inductor kernels), `+bf16` (autocast to bfloat16; only where the CPU has
AVX512-BF16 or AMX, or on CUDA), `+compile+bf16`, and `xN` rows: N processes of one thread each, started
together, their images/s summed (what `compare --jobs N` gets from N cores).

Every row is timed in `rounds` interleaved rounds after a warm-up (the machine's noise hits every row
alike); the median round is reported. Each row also gives its arithmetic rate (FLOPs of a training step,
counted by torch's FlopCounterMode, times images/s) as a share of the matrix-multiply rate measured in
the same run with the same threads (fp32 SGEMM; bf16 GEMM for bf16 rows). `breakdown` profiles the
eager fp32 step: the share of its time in convolutions and matrix multiplies, and the images/s it would
reach if every other op (batch norm, ReLU, pooling, SE, optimizer, ...) took no time.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from queue import Empty
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import torch
import torch.nn.functional as F

from ..core.datasets import CIFAR10_MEAN, CIFAR10_STD
from ..core.errors import UserError
from ..core.hardware import cpu_name, has_bf16
from ..models import create_model
from .augment import AUGMENT_PRESETS, BatchAugment, reference_transform
from .data import Split, load_dataset
from .loop import compile_model, iterate_fast, iterate_reference, resolve_device

WARMUP = 5
STEPS = ("compile", "bf16", "compile+bf16")   # step configurations beside plain `fast`
GEMM_OPS = ("aten::convolution_backward", "aten::mkldnn_convolution", "aten::convolution", "aten::_convolution",
            "aten::cudnn_convolution", "aten::mm", "aten::addmm", "aten::bmm")


@dataclass
class Runner:
    """One row: a model, its optimizer and step function, and an endless batch iterator."""
    name: str
    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    batches: Iterator
    device: torch.device
    bf16: bool = False

    def time(self, n: int) -> float:
        """images/s over n steps."""
        done = 0
        t0 = time.perf_counter()
        for _ in range(n):
            x, y = next(self.batches)
            self.step(x, y)
            done += len(y)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return done / (time.perf_counter() - t0)


def _cycle(make: Callable[[], Iterator]) -> Iterator:
    while True:
        yield from make()


def make_step(model: torch.nn.Module, device: torch.device, bf16: bool, compiled: bool,
              lr: float = 1e-3) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A training step as loop.train_epoch runs it: forward (autocast when bf16), backward, Adam."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    forward = compile_model(model) if compiled else model
    model.train()

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(forward(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss
    return step


def step_flops(model_name: str, shape: Sequence[int], classes: int, batch_size: int) -> float:
    """FLOPs of one training step (forward + backward) per image, counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode
    m = create_model(model_name, in_channels=shape[0], input_size=shape[1], num_classes=classes)
    x = torch.randn(batch_size, *shape)
    y = torch.zeros(batch_size, dtype=torch.long)
    with FlopCounterMode(display=False) as fc:
        F.cross_entropy(m(x), y).backward()
    return fc.get_total_flops() / batch_size


def gemm_rate(dtype: torch.dtype, device: torch.device, n: int = 1024, seconds: float = 0.5) -> float:
    """Measured n x n matrix-multiply rate in FLOP/s (the best of repeated timings)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    for _ in range(3):
        a @ b
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def breakdown(step: Callable, batches: Iterator, n: int = 10) -> Dict[str, float]:
    """Share of the step's time in convolutions/matmuls, from torch's profiler (self CPU time), and the
    share of the wall time spent getting the batch (gathering, augmenting, normalizing: the data path)."""
    # kineto (the profiler's C++ side) logs its start and stop, and on a CPU-only machine a failed GPU
    # count, to stderr; it reads its level at the profiler's first use in a process. KINETO_LOG_LEVEL set by
    # the user wins; ours is taken back after, for whatever else in the process profiles.
    quiet = "KINETO_LOG_LEVEL" not in os.environ
    if quiet:
        os.environ["KINETO_LOG_LEVEL"] = "6"
    from torch.profiler import ProfilerActivity, profile
    sync = torch.cuda.synchronize if torch.cuda.is_available() and torch.cuda.is_initialized() else (lambda: None)
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0, data = time.perf_counter(), 0.0
            for _ in range(n):
                sync()                                          # the step's queued GPU work is not the data's
                t1 = time.perf_counter()
                x, y = next(batches)
                sync()
                data += time.perf_counter() - t1
                step(x, y)
            wall = time.perf_counter() - t0
    finally:
        if quiet:
            os.environ.pop("KINETO_LOG_LEVEL", None)
    ev = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in ev)
    gemm = sum(e.self_cpu_time_total for e in ev if e.key in GEMM_OPS)
    share = gemm / total if total else 0.0
    return {"gemm_share": share, "steps": n, "wall_s": wall, "data_share": data / wall if wall else 0.0}


def _parallel_worker(args: Dict[str, Any], barrier, queue) -> None:
    """One process of an xN row: one thread, the same step, started with the others."""
    torch.set_num_threads(1)
    try:
        r = _runner(args["name"], args["model"], args["split"], args["augment"], args["mean"], args["std"],
                    args["classes"], args["batch_size"], torch.device("cpu"), args["bf16"], args["compiled"], seed=args["rank"])
        r.time(WARMUP)
        barrier.wait(timeout=600)
        queue.put(("ok", r.time(args["batches"])))
    except Exception as e:  # noqa: BLE001 - reported by the parent as the row's status
        barrier.abort()                                   # the others stop waiting for this one
        queue.put(("error", f"{type(e).__name__}: {e}"))


def _runner(name: str, model: str, split: Split, augment: str, mean, std, classes: int, batch_size: int,
            dev: torch.device, bf16: bool, compiled: bool, seed: int = 0, workers: int = 0) -> Runner:
    torch.manual_seed(0)
    shape = split.images.shape[1:]
    m = create_model(model, in_channels=shape[0], input_size=shape[1], num_classes=classes)
    m = m.to(dev, memory_format=torch.contiguous_format if name == "reference" else torch.channels_last)
    cfg = AUGMENT_PRESETS[augment]
    n = len(split.labels)
    g = torch.Generator().manual_seed(seed)
    if name.startswith("reference"):
        tf = reference_transform(cfg, mean, std, train=True, size=shape[1])

        def make() -> Iterator:
            order = torch.randperm(n, generator=g)
            it = iterate_reference(split, tf, batch_size, workers, order, dev)
            return ((x.contiguous(), y) for x, y in it) if name == "reference" else it   # the source feeds NCHW
    else:
        s = Split(split.images.to(dev), split.labels.to(dev))
        aug = BatchAugment(cfg, mean, std)

        def make() -> Iterator:
            return iterate_fast(s, aug, batch_size, torch.randperm(n, generator=g), g, dev, True)
    return Runner(name, make_step(m, dev, bf16, compiled), _cycle(make), dev, bf16)


def bench_pipelines(dataset: str = "fashion-mnist", data_dir: Optional[str] = None, model: str = "se_cnn",
                    augment: str = "reference", batch_size: int = 64, batches: int = 60, workers: int = 2,
                    device: str = "auto", rgb: bool = False, steps: Sequence[str] = STEPS, rounds: int = 3,
                    parallel: Optional[int] = None, log: Callable[[str], None] = lambda m: None) -> Dict[str, Any]:
    if augment not in AUGMENT_PRESETS:
        raise UserError(f"unknown augmentation {augment!r}; choose one of: {', '.join(AUGMENT_PRESETS)}")
    if batches <= 0 or batch_size <= 0 or rounds <= 0:
        raise UserError("--batches, --batch-size and --rounds must be positive")
    bad = [s for s in steps if s not in STEPS]
    if bad:
        raise UserError(f"unknown step configuration {', '.join(bad)}; choose from: {', '.join(STEPS)}")
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
                        f"lower --batches or --batch-size (warm-up takes {WARMUP} batches)")
    split = Split(split.images[:need], split.labels[:need])          # cycled: every round draws a new order
    classes = len(info.classes)
    bf16_ok = dev.type == "cuda" or has_bf16()
    notes: List[str] = []
    if not bf16_ok and any("bf16" in s for s in steps):
        notes.append(f"bf16 rows skipped: {cpu_name()} has neither AVX512-BF16 nor AMX (bf16 would be emulated)")
    configs = [("reference", False, False), ("reference+cl", False, False), ("fast", False, False)]
    configs += [(f"fast+{s}", "bf16" in s, "compile" in s) for s in steps if bf16_ok or "bf16" not in s]

    runners, warmup_s = [], {}
    for name, bf16, compiled in configs:
        log(f"preparing {name}{' (compiling)' if compiled else ''}")
        r = _runner(name, model, split, augment, mean, std, classes, batch_size, dev, bf16, compiled, workers=workers)
        t0 = time.perf_counter()
        r.time(WARMUP)                                  # compiles, warms oneDNN's kernel cache and the workers
        warmup_s[name] = time.perf_counter() - t0
        runners.append(r)
    times: Dict[str, List[float]] = {r.name: [] for r in runners}
    for k in range(rounds):
        log(f"round {k + 1}/{rounds}")
        for r in runners:
            times[r.name].append(r.time(batches))
    flops = step_flops(model, split.images.shape[1:], classes, min(batch_size, 8))
    rates = {"fp32": gemm_rate(torch.float32, dev)}
    if bf16_ok:
        rates["bf16"] = gemm_rate(torch.bfloat16, dev)
    rows = [{**_row(r.name, times[r.name], batches, flops, rates, r.bf16), "warmup_s": warmup_s[r.name]}
            for r in runners]                           # warm-up: WARMUP steps, torch.compile's compilation included
    fast = next(r for r in runners if r.name == "fast")
    br = breakdown(fast.step, fast.batches)
    fast_ips = rows[2]["images_per_s"]
    br["bound_images_per_s"] = fast_ips / br["gemm_share"] if br["gemm_share"] else None
    del runners
    n_par = parallel if parallel is not None else (os.cpu_count() or 1) if dev.type == "cpu" else 0
    if n_par > 1:
        for name, bf16, compiled in [c for c in configs if c[0].startswith("fast")]:
            log(f"{name} x{n_par} processes")
            rows.append(_parallel_row(name, n_par, model, split, augment, mean, std, classes, batch_size, batches,
                                      bf16, compiled, flops, rates))
    base = rows[2]["images_per_s"]
    for r in rows:
        if r.get("images_per_s"):
            r["x_fast"] = r["images_per_s"] / base
            r["x_reference"] = r["images_per_s"] / rows[0]["images_per_s"]
    best = max((r for r in rows if r.get("images_per_s")), key=lambda r: r["images_per_s"])
    machine = f"{cpu_name()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, device {dev}"
    if dev.type == "cuda":
        machine += f" ({torch.cuda.get_device_name()})"
    return {"rows": rows, "speedup": rows[2]["images_per_s"] / rows[0]["images_per_s"],
            "best": best["pipeline"], "best_x_fast": best["images_per_s"] / base, "machine": machine,
            "batch_size": batch_size, "augment": augment, "model": model, "rounds": rounds,
            "input": list(split.images.shape[1:]), "workers": workers, "flops_per_image": flops,
            "gemm_gflops": {k: v / 1e9 for k, v in rates.items()}, "breakdown": br, "notes": notes}


def _row(name: str, ips: List[float], batches: int, flops: float, rates: Dict[str, float],
         bf16: bool) -> Dict[str, Any]:
    """Median images/s of the rounds, its arithmetic rate, its share of the measured GEMM rate of its own
    precision (bf16 rows: the bf16 GEMM rate) and of the fp32 SGEMM rate (every row: one yardstick)."""
    med = statistics.median(ips)
    rate = rates["bf16" if bf16 else "fp32"]
    return {"pipeline": name, "images_per_s": med, "min": min(ips), "max": max(ips), "batches": batches,
            "processes": 1, "gflops": flops * med / 1e9, "gemm_share": flops * med / rate,
            "gemm_rate": "bf16" if bf16 else "fp32", "sgemm_share": flops * med / rates["fp32"]}


def _parallel_row(name: str, n: int, model: str, split: Split, augment: str, mean, std, classes: int,
                  batch_size: int, batches: int, bf16: bool, compiled: bool, flops: float,
                  rates: Dict[str, float]) -> Dict[str, Any]:
    """n one-thread processes of the same step at once; images/s summed, the GEMM share against the rate
    measured with all threads (the same cores)."""
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    args = {"name": name, "model": model, "split": split, "augment": augment, "mean": mean, "std": std,
            "classes": classes, "batch_size": batch_size, "batches": batches, "bf16": bf16, "compiled": compiled}
    procs = [ctx.Process(target=_parallel_worker, args=(dict(args, rank=i), barrier, queue), daemon=True)
             for i in range(n)]
    for p in procs:
        p.start()
    results = []
    deadline = time.monotonic() + 1200
    while len(results) < n and time.monotonic() < deadline:
        try:
            results.append(queue.get(timeout=1))
        except Empty:                                      # a process that died without a word (memory?)
            if not any(p.is_alive() for p in procs) and queue.empty():
                break
    for p in procs:
        p.join(timeout=60)
        if p.is_alive():
            p.kill()
    if len(results) < n:
        codes = [p.exitcode for p in procs]
        results.append(("error", f"{n - len(results)} of {n} processes gave no result (exit codes {codes})"))
    errors = [m for s, m in results if s != "ok"]
    label = f"{name} x{n}"
    if errors:
        return {"pipeline": label, "images_per_s": None, "processes": n, "status": errors[0]}
    total = sum(v for _, v in results)
    row = _row(label, [total], batches, flops, rates, bf16)
    row["processes"] = n
    row["per_process"] = [v for _, v in results]
    return row
