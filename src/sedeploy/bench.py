"""`sedeploy bench`: one honest table of every backend x batch size (after ultralytics' benchmark).

Rows: PyTorch eager, TorchScript, onnxruntime CPU fp32 and int8, and on CUDA PyTorch, onnxruntime
fp32 and fp16 (with IO binding). A backend that cannot run is listed as skipped with the reason, one
that breaks as failed with the reason; neither stops the table. Per row: file size, p50/p90/p99
latency of one batch, images/s, top-1 accuracy on the test set (when the data is on disk), max
|logits - eager PyTorch logits| and top-1 agreement with eager PyTorch on real test images.
torch is imported only for the PyTorch/TorchScript rows and the CUDA probe, lazily.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from .errors import UserError, atomic_write_text
from .timing import cpu_name, cpu_peak_flops, measure

BACKENDS = ("pytorch", "torchscript", "ort-cpu", "ort-cpu-int8", "pytorch-cuda", "ort-cuda", "ort-cuda-fp16")
Runner = Callable[[np.ndarray], np.ndarray]


@dataclass
class BenchConfig:
    model: Optional[str] = None                      # model.onnx (found as `infer` finds it)
    ckpt: Optional[str] = None                       # checkpoint for the PyTorch rows
    batch_sizes: Tuple[int, ...] = (1, 8, 64)
    backends: Tuple[str, ...] = BACKENDS
    threads: Optional[int] = None                    # CPU threads for torch and onnxruntime (default: all cores)
    warmup: int = 10                                 # untimed runs per row
    min_time: float = 1.0                            # seconds of timed runs per row (at least 10 runs)
    data: Optional[str] = None                       # dataset for accuracy/parity (default: the model's)
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
    peak_pct: Optional[float] = None


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


# ---------------------------------------------------------------- backends
def _ort_session(path: Path, providers: List[str], threads: Optional[int]):
    from .runtime.session import session_options
    import onnxruntime as ort
    return ort.InferenceSession(str(path), session_options(threads), providers=providers)


def _ort_cpu(path: Path, threads: Optional[int]) -> Runner:
    s = _ort_session(path, ["CPUExecutionProvider"], threads)
    name = s.get_inputs()[0].name
    return lambda x: s.run(None, {name: x})[0]


def _ort_cuda(path: Path) -> Runner:
    import onnxruntime as ort
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise _Skip("onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
    s = _ort_session(path, ["CUDAExecutionProvider"], None)
    if s.get_providers()[0] != "CUDAExecutionProvider":
        raise _Skip("CUDAExecutionProvider did not start (CUDA/cuDNN libraries or GPU missing)")
    inp = s.get_inputs()[0].name
    outs = [o.name for o in s.get_outputs()]
    state: Dict[str, object] = {}

    def run(x: np.ndarray) -> np.ndarray:
        # IO binding: input copied to the GPU once per shape, outputs stay on the device; only
        # logits come back to the host for parity/accuracy.
        key = x.shape
        if state.get("key") != key or state.get("host") is not x:
            b = s.io_binding()
            b.bind_ortvalue_input(inp, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
            for o in outs:
                b.bind_output(o, "cuda")
            state.update(key=key, host=x, binding=b)
        b = state["binding"]
        s.run_with_iobinding(b)
        return b.get_outputs()[0]

    def run_host(x: np.ndarray) -> np.ndarray:
        return run(x).numpy()
    run_host.device_run = run  # timing uses the device-resident path
    return run_host


class _Skip(Exception):
    pass


def _torch_runner(model, device: str, threads: Optional[int]) -> Runner:
    import torch
    if threads:
        torch.set_num_threads(threads)
    model = model.to(device).eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = model(torch.from_numpy(x).to(device))
            out = out[0] if isinstance(out, (tuple, list)) else out
            if device == "cuda":
                torch.cuda.synchronize()
            return out.float().cpu().numpy()
    return run


def _sibling(model: Path, name: str) -> Path:
    return model.parent / name


def resolve_ckpt(model: Path, ckpt: Optional[str]) -> Optional[Path]:
    """--ckpt, else the checkpoint recorded in export.json beside the model, else best.pt beside it."""
    if ckpt:
        return Path(ckpt)
    manifest = _sibling(model, "export.json")
    if manifest.exists():
        try:
            p = Path(json.loads(manifest.read_text()).get("checkpoint", ""))
            if p.is_file():
                return p
        except (json.JSONDecodeError, OSError):
            pass
    best = _sibling(model, "best.pt")
    return best if best.exists() else None


def make_backend(name: str, model: Path, ckpt: Optional[Path], threads: Optional[int]) -> Tuple[Runner, Optional[Path]]:
    """-> (runner, file). Raises _Skip with the reason when the backend cannot run here."""
    if name in ("pytorch", "pytorch-cuda", "torchscript"):
        try:
            import torch
        except ImportError:
            raise _Skip("torch is not installed (pip install sedeploy[full])") from None
        if name == "pytorch-cuda" and not torch.cuda.is_available():
            raise _Skip("no CUDA GPU (torch.cuda.is_available() is False)")
        if name == "torchscript":
            ts = _sibling(model, model.stem + ".ts")
            if not ts.exists():
                raise _Skip(f"no {ts.name} beside the model (export with --formats onnx,torchscript)")
            from .export.torchscript import load_torchscript
            m, _ = load_torchscript(ts, ())
            return _torch_runner(m, "cpu", threads), ts
        if ckpt is None:
            raise _Skip("no checkpoint (pass --ckpt)")
        from .checkpoint import build_model, load_checkpoint
        m = build_model(load_checkpoint(ckpt), str(ckpt))
        return _torch_runner(m, "cuda" if name.endswith("cuda") else "cpu", threads), ckpt
    files = {"ort-cpu": model.name, "ort-cpu-int8": model.stem + ".int8.onnx", "ort-cuda": model.name,
             "ort-cuda-fp16": model.stem + ".fp16.onnx"}
    path = _sibling(model, files[name])
    if not path.exists():
        flag = {"ort-cpu-int8": "--int8", "ort-cuda-fp16": "--half"}.get(name, "")
        raise _Skip(f"no {path.name} (run sedeploy export {flag})".replace("  ", " "))
    if name.startswith("ort-cuda"):
        return _ort_cuda(path), path
    return _ort_cpu(path, threads), path


# ---------------------------------------------------------------- data
def test_data(meta: dict, cfg: BenchConfig) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], str]:
    """-> (normalized images, labels, description), or (None, None, why) when no data is on disk."""
    from .datasets import load_arrays, normalize_batch
    name = cfg.data or meta.get("dataset")
    try:
        _, x, y = load_arrays(name, cfg.data_dir, "test", ref=meta.get("data"))
    except UserError as e:
        return None, None, f"no test data ({str(e).split(';')[0]})"
    if cfg.limit:
        x, y = x[:cfg.limit], y[:cfg.limit]
    if list(x.shape[1:]) != list(meta["input_size"]):
        return None, None, f"{name} images {list(x.shape[1:])} do not fit the model input {meta['input_size']}"
    return normalize_batch(x, meta["mean"], meta["std"]), y, f"{len(y)} {name} test images"


def _batched(run: Runner, x: np.ndarray, bs: int = 250) -> np.ndarray:
    return np.concatenate([run(x[i:i + bs]) for i in range(0, len(x), bs)])


# ---------------------------------------------------------------- bench
def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict:
    from .runtime.session import create_session, find_model, model_info
    bad = [b for b in cfg.backends if b not in BACKENDS]
    if bad or not cfg.backends:
        raise UserError(f"unknown backend {', '.join(bad) or '(none)'}; choose from: {', '.join(BACKENDS)}")
    if not cfg.batch_sizes or any(b <= 0 for b in cfg.batch_sizes):
        raise UserError("--batch-sizes must be positive integers, e.g. 1,8,64")
    if cfg.threads is not None and cfg.threads <= 0:
        raise UserError(f"--threads must be positive, got {cfg.threads}")
    if cfg.warmup < 0 or cfg.min_time < 0:
        raise UserError("--warmup and --min-time must not be negative")
    if cfg.repeats <= 0:
        raise UserError(f"--repeats must be positive, got {cfg.repeats}")
    model = find_model(cfg.model)
    sess, _ = create_session(model, "cpu", cfg.threads)
    info = model_info(sess, model)
    del sess
    ckpt = resolve_ckpt(model, cfg.ckpt)
    x_test, y_test, data_desc = test_data(info.meta, cfg)
    rng = np.random.default_rng(0)
    n_par = 64
    x_par = x_test[:n_par] if x_test is not None else rng.standard_normal((n_par, *info.input_size)).astype(np.float32)
    flops = model_flops({**info.meta.get("model_config", {}), "se": bool(info.se_outputs)})
    peak = cpu_peak_flops(cfg.threads or os.cpu_count())
    threads = cfg.threads or os.cpu_count()

    reference: Optional[np.ndarray] = None          # eager PyTorch logits on x_par, whatever rows run
    if ckpt is not None:
        try:
            ref_run, _ = make_backend("pytorch", model, ckpt, cfg.threads)
            reference = ref_run(x_par)
        except Exception as e:  # noqa: BLE001 - parity columns stay empty, with the reason logged
            log(f"no PyTorch reference for parity ({str(e).splitlines()[0][:120]})")
    rows: List[Row] = []
    ready = []  # (name, timed runner, row fields) of the backends that prepared and verified
    for name in cfg.backends:
        try:
            run, path = make_backend(name, model, ckpt, cfg.threads)
        except _Skip as e:
            rows += [Row(name, b, f"skipped: {e}") for b in cfg.batch_sizes]
            log(f"{name}: skipped ({e})")
            continue
        except Exception as e:  # noqa: BLE001 - a failing backend does not abort the table
            rows += [Row(name, b, f"failed: {_first_line(e)}") for b in cfg.batch_sizes]
            log(f"{name}: failed ({_first_line(e)})")
            continue
        base = dict(file=path.name if path else "", size_mb=round(path.stat().st_size / 1e6, 3) if path else None)
        try:
            logits = run(x_par)
            if reference is not None:
                base["max_abs_diff"] = float(np.abs(logits.astype(np.float64) - reference).max())
                base["top1_agreement"] = float(100 * (logits.argmax(1) == reference.argmax(1)).mean())
            if x_test is not None:
                base["accuracy"] = float(100 * (_batched(run, x_test).argmax(1) == y_test).mean())
        except Exception as e:  # noqa: BLE001
            rows += [Row(name, b, f"failed: {_first_line(e)}", **base) for b in cfg.batch_sizes]
            log(f"{name}: failed ({_first_line(e)})")
            continue
        ready.append((name, getattr(run, "device_run", run), base))

    # Timing: `repeats` rounds, each timing every backend x batch in turn for min_time; per row the
    # median over rounds, so that a burst of load on this shared machine shifts no single backend.
    inputs = {b: np.ascontiguousarray(np.resize(x_par, (b, *x_par.shape[1:]))) for b in cfg.batch_sizes}
    samples: Dict[Tuple[str, int], List[dict]] = {}
    errors: Dict[Tuple[str, int], str] = {}
    for r in range(cfg.repeats):
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
    for name, _, base in ready:
        for b in cfg.batch_sizes:
            if (name, b) in errors:
                rows.append(Row(name, b, f"failed: {errors[(name, b)]}", **base))
                continue
            med = {k: float(np.median([t[k] for t in samples[(name, b)]])) for k in ("p50_ms", "p90_ms", "p99_ms",
                                                                                     "mean_ms")}
            ips = b / (med["mean_ms"] / 1e3)
            row = Row(name, b, "ok", **base, p50_ms=med["p50_ms"], p90_ms=med["p90_ms"], p99_ms=med["p99_ms"],
                      images_per_s=ips, gflops=flops * ips / 1e9)
            if name in ("pytorch", "torchscript", "ort-cpu") and peak["peak_flops"]:  # fp32 on the CPU
                row.peak_pct = 100 * flops * ips / peak["peak_flops"]
            rows.append(row)
    order = {n: i for i, n in enumerate(cfg.backends)}
    rows.sort(key=lambda r: (order[r.backend], cfg.batch_sizes.index(r.batch)))
    import sys
    from .versions import versions as version_dict
    versions = version_dict("onnxruntime", *(["torch"] if "torch" in sys.modules else []))
    header = {
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, {threads} threads used",
        "versions": versions, "model": str(model), "checkpoint": str(ckpt) if ckpt else None,
        "data": data_desc, "flops_per_image": flops, "cpu_peak": peak,
        "method": f"{cfg.repeats} rounds over all rows; per row and round {cfg.warmup} warm-up runs, then one "
                  f"batch repeatedly for >= {cfg.min_time:g} s (>= 10 runs); p50/p90/p99 over the runs, median over "
                  f"rounds; images/s = batch / mean latency; "
                  f"parity on {len(x_par)} {'test images' if x_test is not None else 'random inputs'} vs eager PyTorch",
    }
    return {"header": header, "rows": [asdict(r) for r in rows]}


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__


def _fmt(v, spec: str, empty: str = "-") -> str:
    return empty if v is None else format(v, spec)


def format_table(res: dict) -> str:
    h = res["header"]
    lines = [f"sedeploy bench  {h['model']}",
             f"machine: {h['machine']}",
             "versions: " + ", ".join(f"{k} {v}" for k, v in h["versions"].items()),
             f"timing: {h['method']}",
             f"accuracy: {h['data']};  FLOPs/image {h['flops_per_image'] / 1e6:.1f} M;  CPU fp32 peak "
             f"{h['cpu_peak']['peak_flops'] / 1e9:.0f} GFLOP/s ({h['cpu_peak']['formula']})", ""]
    cols = f"{'backend':<14}{'batch':>6} {'size MB':>8} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'img/s':>10} " \
           f"{'top-1 %':>8} {'max|dlogit|':>12} {'agree %':>8} {'%peak':>6}  status"
    lines += [cols, "-" * len(cols)]
    for r in res["rows"]:
        lines.append(
            f"{r['backend']:<14}{r['batch']:>6} {_fmt(r['size_mb'], '8.2f'):>8} {_fmt(r['p50_ms'], '9.3f'):>9} "
            f"{_fmt(r['p90_ms'], '9.3f'):>9} {_fmt(r['p99_ms'], '9.3f'):>9} {_fmt(r['images_per_s'], '10,.0f'):>10} "
            f"{_fmt(r['accuracy'], '8.2f'):>8} {_fmt(r['max_abs_diff'], '12.2e'):>12} "
            f"{_fmt(r['top1_agreement'], '8.1f'):>8} {_fmt(r['peak_pct'], '6.1f'):>6}  {r['status']}")
    return "\n".join(lines)


def write_csv(res: dict, path: str) -> None:
    import csv
    import io
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(Row.__dataclass_fields__))
    w.writeheader()
    for r in res["rows"]:
        w.writerow(r)
    atomic_write_text(path, buf.getvalue())


def write_json(res: dict, path: str) -> None:
    atomic_write_text(path, json.dumps(res, indent=2))
