"""`sedeploy bench`: one honest table of every backend x batch size (after ultralytics' benchmark).

Rows (bench.backends): PyTorch eager, eager channels-last, torch.compile, TorchScript, onnxruntime
CPU fp32 and int8, the ORT-format file, OpenVINO, and on CUDA PyTorch, onnxruntime fp32 and fp16 (IO binding). A
backend that cannot run is listed as skipped with the reason, one that breaks as failed with the
reason; neither stops the table. Per row: file size, p50/p90/p99 latency of one batch, images/s,
top-1 accuracy on the test set (when the data is on disk), max |logits - eager PyTorch logits|
(sedeploy.core.parity.compare) and top-1 agreement with eager PyTorch on real test images, the share of
the CPU's fp32 peak (nominal and measured by SGEMM). The header names the CPU's ISA features that
decide fp32 and int8 speed. torch is imported only for the PyTorch rows, lazily.

run_bench reads as its steps: check_config, resolve_model, load_data, pytorch_reference,
build_backends (each checked for parity and accuracy), time_rounds (with an SGEMM per round), table_rows,
make_header; bench.report formats and summarizes.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from ..core.errors import UserError
from ..core.timing import measure
from .backends import BACKENDS, FP32_CPU, PYTORCH_CPU, Runner, Skip, make_backend, resolve_ckpt, resolve_set
from .backends import first_line as _first_line
from .report import annotate, format_table, headline, write_csv, write_json

__all__ = ["BACKENDS", "PYTORCH_CPU", "BenchConfig", "Row", "run_bench", "model_flops", "format_table",
           "write_csv", "write_json", "resolve_ckpt", "headline"]
Log = Callable[[str], None]


@dataclass
class BenchConfig:
    model: Optional[str] = None                      # model.onnx (found as `infer` finds it), or an export
                                                     # folder / its export.json: a row per artifact of the set
    ckpt: Optional[str] = None                       # checkpoint for the PyTorch rows
    batch_sizes: Tuple[int, ...] = (1, 8, 64)
    backends: Tuple[str, ...] = BACKENDS
    threads: Optional[int] = None                    # CPU threads for every backend (default: all cores)
    warmup: int = 10                                 # untimed runs per row
    min_time: float = 1.0                            # seconds of timed runs per row (at least 10 runs)
    dataset: Optional[str] = None                    # dataset for accuracy/parity (default: the model's)
    data_dir: Optional[str] = None
    limit: Optional[int] = None                      # test images for accuracy (default: all)
    repeats: int = 3                                 # timing rounds over all rows; medians reported


@dataclass
class Row:
    backend: str
    batch: int
    status: str                                      # ok | failed: why | skipped: why
    file: str = ""
    size_mb: Optional[float] = None
    p50_ms: Optional[float] = None
    p90_ms: Optional[float] = None
    p99_ms: Optional[float] = None
    images_per_s: Optional[float] = None
    accuracy: Optional[float] = None
    max_abs_diff: Optional[float] = None
    top1_agreement: Optional[float] = None
    gflops: Optional[float] = None
    peak_pct: Optional[float] = None                 # of the nominal fp32 peak (clock from cpuinfo)
    sgemm_pct: Optional[float] = None                # of the SGEMM rate measured in this run
    note: str = ""                                   # e.g. "int8 not faster than fp32 here (0.92x)"
    verified: Optional[bool] = None                  # the file was verified at export and is unchanged (None:
                                                     # no export.json beside it, or a PyTorch row)


@dataclass
class _Model:
    path: Path
    info: object                                     # runtime.model.ModelInfo
    ckpt: Optional[Path]
    threads: int
    flops: float                                     # per image


@dataclass
class _Data:
    x_test: Optional[np.ndarray]                     # normalized test images, or None
    y_test: Optional[np.ndarray]
    desc: str
    x_par: np.ndarray                                # the parity batch (test images or random)


def model_flops(cfg: dict) -> float:
    """FLOPs per image (2 per multiply-add) of the registry CNNs from their config."""
    c, s = cfg.get("in_channels", 3), cfg.get("input_size", 32)
    macs = 0
    for w in cfg.get("widths", [32, 64, 128]):
        macs += c * w * 9 * s * s                    # 3x3 conv at full resolution
        if cfg.get("se", False):
            r = max(w // cfg.get("se_reduction", 16), 1)
            macs += 2 * w * r + w * s * s // 4        # excite MLP + reweighting after the pool
        c, s = w, s // 2
    macs += c * s * s * cfg.get("hidden", 512) + cfg.get("hidden", 512) * cfg.get("num_classes", 10)
    return 2.0 * macs


# ---------------------------------------------------------------- steps
def check_config(cfg: BenchConfig) -> None:
    bad = [b for b in cfg.backends if b not in BACKENDS]
    if bad or not cfg.backends:
        raise UserError(f"unknown backend {', '.join(bad) or '(none)'}; choose from: {', '.join(BACKENDS)}")
    if not cfg.batch_sizes or any(b <= 0 for b in cfg.batch_sizes):
        raise UserError("--batch-sizes must be positive integers, e.g. 1,8,64")
    from ..runtime.options import check_threads
    check_threads(cfg.threads)
    if cfg.warmup < 0 or cfg.min_time < 0:
        raise UserError("--warmup and --min-time must not be negative")
    if cfg.repeats <= 0:
        raise UserError(f"--repeats must be positive, got {cfg.repeats}")


def resolve_model(cfg: BenchConfig) -> _Model:
    """The ONNX model (as `infer` finds it), its metadata, the checkpoint beside it, FLOPs per image."""
    from ..runtime.model import find_model
    from ..runtime.runners import load_runner
    path = find_model(resolve_set(cfg.model))
    info = load_runner("onnxruntime", path, provider="cpu", threads=cfg.threads).info
    flops = model_flops({**info.meta.get("model_config", {}), "se": bool(info.se_outputs)})
    return _Model(path, info, resolve_ckpt(path, cfg.ckpt), cfg.threads or os.cpu_count() or 1, flops)


def load_data(m: _Model, cfg: BenchConfig, n_par: int = 64) -> _Data:
    """Normalized test images and labels (or why there are none) and the parity batch."""
    from ..core.datasets import normalize_batch
    from ..core.arrays import load_arrays
    meta = m.info.meta
    name = cfg.dataset or meta.get("dataset")
    x = y = None
    try:
        _, x, y = load_arrays(name, cfg.data_dir, "test", ref=meta.get("data"))
        if cfg.limit:
            x, y = x[:cfg.limit], y[:cfg.limit]
        if list(x.shape[1:]) != list(meta["input_size"]):
            desc = f"{name} images {list(x.shape[1:])} do not fit the model input {meta['input_size']}"
            x = y = None
        else:
            x, desc = normalize_batch(x, meta["mean"], meta["std"]), f"{len(y)} {name} test images"
    except UserError as e:
        desc = f"no test data ({str(e).split(';')[0]})"
    x_par = x[:n_par] if x is not None else \
        np.random.default_rng(0).standard_normal((n_par, *m.info.input_size)).astype(np.float32)
    return _Data(x, y, desc, x_par)


def pytorch_reference(m: _Model, data: _Data, log: Log) -> Optional[np.ndarray]:
    """Eager PyTorch logits on the parity batch, whatever rows run; None (logged) without a checkpoint."""
    if m.ckpt is None:
        return None
    try:
        run, _, _ = make_backend("pytorch", m.path, m.ckpt, m.threads, data.x_par)
        return run(data.x_par)
    except Exception as e:  # noqa: BLE001 - parity columns stay empty, with the reason logged
        log(f"no PyTorch reference for parity ({_first_line(e)})")
        return None


def check_outputs(name: str, run: Runner, data: _Data, reference: Optional[np.ndarray]) -> dict:
    """Parity with eager PyTorch (the one parity helper) and top-1 accuracy on the test set."""
    from ..core.parity import compare
    out: dict = {}
    logits = run(data.x_par)
    if reference is not None:
        out["max_abs_diff"] = compare({"logits": reference}, {"logits": logits}, name)[0].max_abs
        out["top1_agreement"] = float(100 * (logits.argmax(1) == reference.argmax(1)).mean())
    if data.x_test is not None:
        bs = 250
        pred = np.concatenate([run(data.x_test[i:i + bs]).argmax(1) for i in range(0, len(data.x_test), bs)])
        out["accuracy"] = float(100 * (pred == data.y_test).mean())
    return out


def build_backends(m: _Model, cfg: BenchConfig, data: _Data, reference: Optional[np.ndarray], log: Log
                   ) -> Tuple[List[Row], list]:
    """-> (rows of skipped/failed backends, [(name, timed runner, row fields)] of those that run)."""
    rows: List[Row] = []
    ready = []
    for name in cfg.backends:
        try:
            run, path, files = make_backend(name, m.path, m.ckpt, cfg.threads, data.x_par[:1])
            base = dict(file=path.name if path else "",
                        size_mb=round(sum(p.stat().st_size for p in files) / 1e6, 3) if files else None)
        except Skip as e:
            rows += [Row(name, b, f"skipped: {e}") for b in cfg.batch_sizes]
            log(f"{name}: skipped ({e})")
            continue
        except Exception as e:  # noqa: BLE001 - a failing backend does not abort the table
            rows += [Row(name, b, f"failed: {_first_line(e)}") for b in cfg.batch_sizes]
            log(f"{name}: failed ({_first_line(e)})")
            continue
        try:
            base.update(check_outputs(name, run, data, reference))
        except Exception as e:  # noqa: BLE001
            rows += [Row(name, b, f"failed: {_first_line(e)}", **base) for b in cfg.batch_sizes]
            log(f"{name}: failed ({_first_line(e)})")
            continue
        ready.append((name, getattr(run, "device_run", run), base))
    return rows, ready


def measure_sgemm(m: _Model, cfg: BenchConfig, best: Optional[dict]) -> dict:
    """The SGEMM rate now (hardware.sgemm_flops, on the rows' threads), or `best` if that was higher."""
    from ..core.hardware import sgemm_flops
    now = sgemm_flops(m.threads, min_time=min(0.3, cfg.min_time))
    return now if best is None or now["flops"] > best["flops"] else best


def time_rounds(ready: list, cfg: BenchConfig, m: _Model, data: _Data, log: Log):
    """`repeats` rounds, each timing every backend x batch in turn for min_time, and an SGEMM;
    -> (samples, errors, the best SGEMM rate).

    Per row the median over rounds is reported, so that a burst of load on a shared machine
    shifts no single backend; the SGEMM is measured in every round, under the same load as the
    rows, and its best round taken as the measured peak (a lower bound of the real one)."""
    inputs = {b: np.ascontiguousarray(np.resize(data.x_par, (b, *data.x_par.shape[1:]))) for b in cfg.batch_sizes}
    samples: Dict[Tuple[str, int], List[dict]] = {}
    errors: Dict[Tuple[str, int], str] = {}
    sgemm = None
    for r in range(cfg.repeats):
        sgemm = measure_sgemm(m, cfg, sgemm)
        for name, timed, _ in ready:
            for b in cfg.batch_sizes:
                if (name, b) in errors:
                    continue
                try:
                    t = measure(lambda: timed(inputs[b]), warmup=cfg.warmup, min_time=cfg.min_time)
                except Exception as e:  # noqa: BLE001
                    errors[(name, b)] = _first_line(e)
                    continue
                samples.setdefault((name, b), []).append(t)
                log(f"round {r + 1}/{cfg.repeats} {name} batch {b}: p50 {t['p50_ms']:.3f} ms")
    return samples, errors, sgemm


def table_rows(m: _Model, cfg: BenchConfig, ready: list, samples: dict, errors: dict, peaks: Dict[str, dict]
               ) -> List[Row]:
    rows = []
    for name, _, base in ready:
        for b in cfg.batch_sizes:
            if (name, b) in errors:
                rows.append(Row(name, b, f"failed: {errors[(name, b)]}", **base))
                continue
            med = {k: float(np.median([t[k] for t in samples[(name, b)]]))
                   for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")}
            ips = b / (med["mean_ms"] / 1e3)
            row = Row(name, b, "ok", **base, p50_ms=med["p50_ms"], p90_ms=med["p90_ms"], p99_ms=med["p99_ms"],
                      images_per_s=ips, gflops=m.flops * ips / 1e9)
            if name in FP32_CPU:                     # fp32 on the CPU: int8 and GPU rows have other peaks
                if peaks["nominal"]["peak_flops"]:
                    row.peak_pct = 100 * m.flops * ips / peaks["nominal"]["peak_flops"]
                row.sgemm_pct = 100 * m.flops * ips / peaks["sgemm"]["flops"]
            rows.append(row)
    return rows


def mark_verified(m: _Model, rows: List[Row]) -> None:
    """With the set's export.json beside the model, each file row says whether its file is one `--backend
    auto` could run (verified at export, every file unchanged); the headline ranks only those."""
    from ..runtime.backend import candidates, manifest_of
    if not manifest_of(m.path).is_file():
        return
    try:
        cands, skipped = candidates(m.path, "auto")
    except UserError:
        return
    ok = {c.path.name for c in cands}
    for r in rows:
        if r.file and r.backend not in PYTORCH_CPU and not r.backend.startswith("pytorch"):
            r.verified = r.file in ok
            if not r.verified and r.status == "ok":
                r.note = (r.note + "; " if r.note else "") + "not a verified, unchanged file of the set"


def make_header(m: _Model, cfg: BenchConfig, data: _Data, peaks: Dict[str, dict]) -> dict:
    import sys
    from ..core.hardware import cpu_name, gpu_name, isa_summary, ort_device
    from ..core.versions import versions
    from ..export.formats import FORMATS
    runtimes = dict.fromkeys(["torch", "openvino"] + [f.runtime_package for f in FORMATS.values()])
    names = ["onnxruntime"] + [p for p in runtimes if p in sys.modules and p != "onnxruntime"]
    return {
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, {m.threads} threads used",
        "isa": isa_summary(), "onnxruntime_sees": ort_device(), "gpu": gpu_name() or "none",
        "versions": versions(*names), "model": str(m.path), "checkpoint": str(m.ckpt) if m.ckpt else None,
        "data": data.desc, "flops_per_image": m.flops, "cpu_peak": peaks["nominal"], "sgemm": peaks["sgemm"],
        "method": f"{cfg.repeats} rounds over all rows; per row and round {cfg.warmup} warm-up runs, then one "
                  f"batch repeatedly for >= {cfg.min_time:g} s (>= 10 runs); p50/p90/p99 over the runs, median over "
                  f"rounds; images/s = batch / mean latency; parity on {len(data.x_par)} "
                  f"{'test images' if data.x_test is not None else 'random inputs'} vs eager PyTorch",
    }


def run_bench(cfg: BenchConfig, log: Log = print) -> dict:
    """-> {"header": {...}, "rows": [Row as dict], "summary": {...}}."""
    check_config(cfg)
    m = resolve_model(cfg)
    data = load_data(m, cfg)
    reference = pytorch_reference(m, data, log)
    rows, ready = build_backends(m, cfg, data, reference, log)
    from ..core.hardware import cpu_peak_flops
    samples, errors, sgemm = time_rounds(ready, cfg, m, data, log)
    peaks = {"nominal": cpu_peak_flops(m.threads), "sgemm": sgemm}
    rows += table_rows(m, cfg, ready, samples, errors, peaks)
    mark_verified(m, rows)
    order = {n: i for i, n in enumerate(cfg.backends)}
    rows.sort(key=lambda r: (order[r.backend], cfg.batch_sizes.index(r.batch)))
    annotate(rows)
    res = {"header": make_header(m, cfg, data, peaks), "rows": [asdict(r) for r in rows]}
    res["summary"] = headline(res["rows"])
    return res
