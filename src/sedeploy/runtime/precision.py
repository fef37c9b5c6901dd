"""Which precision runs faster on this machine: fp32 (model.onnx) or int8 (model.int8.onnx beside it).

int8 speed is a property of the CPU, not of the model: 1.9-2.2x fp32 with AVX-512 VNNI, 1.2x or
even 0.56x on a Xeon without VNNI (issue 11). So `auto` measures both files briefly where it runs,
on the batch size it will run, interleaved (timing.interleaved), and takes int8 only when it is
clearly faster (MIN_GAIN). An int8 file exists only if it passed the export's accuracy gate, so
the choice is between two models that both may ship. The choice is remembered per (model files'
sha256, CPU name and flags, onnxruntime version, threads, batch) in a small JSON cache,
$XDG_CACHE_HOME/sedeploy/precision.json (~/.cache/... by default), written atomically; delete it
to measure again. Used by `infer --precision` and meant for `serve`.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

from ..core import contract
from ..core.errors import UserError
from ..core.io import atomic_write_text, file_sha256
from ..core.hardware import cpu_flags, cpu_name, has_vnni, isa_summary

PRECISIONS = ("auto", "fp32", "int8")
MIN_GAIN = 1.10      # int8 must be >= 10 % faster: a smaller gain is within this noise and costs accuracy
Measure = Callable[[Path, Path, Optional[int], int], Dict[str, float]]


@dataclass
class PrecisionChoice:
    precision: str                    # "fp32" or "int8"
    path: Path                        # the file to load
    reason: str                       # one line for the user: what was chosen and why
    fp32_ms: Optional[float] = None   # measured p50 latency of one batch, when measured
    int8_ms: Optional[float] = None
    cached: bool = False              # the choice came from the cache

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def int8_sibling(model: Path) -> Path:
    """model.onnx -> model.int8.onnx (what `sedeploy export --int8` writes beside it); model.ort ->
    model.int8.ort, so that a file format given is never swapped for another."""
    return model.with_name(model.stem + ".int8" + model.suffix)


def cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sedeploy" / "precision.json"


def cache_key(fp32: Path, int8: Path, threads: Optional[int], batch: int) -> str:
    from ..core.versions import versions
    from .runners import RUNNERS, supported_suffixes
    flags = hashlib.sha256(" ".join(sorted(cpu_flags())).encode()).hexdigest()[:16]
    runtime = RUNNERS[supported_suffixes().get(fp32.suffix.lower(), "onnxruntime")].requires.split(".")[0]
    pkgs = [runtime] + (["torch"] if runtime == "executorch" else [])       # the runtime that timed the pair
    ver = ", ".join(f"{k} {v}" for k, v in versions(*pkgs).items() if k in pkgs)
    return "|".join([file_sha256(fp32)[:16], file_sha256(int8)[:16], cpu_name(), f"flags {flags}",
                     ver, f"threads {threads or os.cpu_count()}", f"batch {batch}"])


def _load_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}                       # absent or damaged: measure again, rewrite it whole


def _save_cache(path: Path, key: str, entry: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _load_cache(path)
        data[key] = entry
        atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))
    except OSError:
        pass                            # a read-only home: the choice is made again next time


def measure_pair(fp32: Path, int8: Path, threads: Optional[int], batch: int, budget_s: float = 0.6
                 ) -> Dict[str, float]:
    """p50 ms of one batch for each file, interleaved rounds within ~budget_s, on random normal inputs."""
    import numpy as np
    from ..core.timing import interleaved
    runners = {k: _load(p, threads) for k, p in (("fp32", fp32), ("int8", int8))}
    info = runners["fp32"].info
    batch = info.fixed_batch or batch                  # a fixed-batch export runs its own batch
    x = np.random.default_rng(0).standard_normal((batch, *info.input_size)).astype(np.float32)
    fns = {k: (lambda r=r: r.run(x)) for k, r in runners.items()}
    start = time.perf_counter()
    for fn in fns.values():                            # first runs: allocation, thread start-up
        fn()
        fn()
    per_pair = max((time.perf_counter() - start) / 2, 1e-4)
    rounds = int(min(10, max(3, budget_s / (3 * per_pair))))    # >= 3 rounds even on a slow machine
    t = interleaved(fns, warmup=0, rounds=rounds, per_round=3)
    return {f"{k}_ms": v["p50_ms"] for k, v in t.items()}


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")


def choose_precision(model: Path, precision: str = "auto", provider: str = "cpu", threads: Optional[int] = None,
                     batch: int = 32, cache: Optional[Path] = None, measure: Measure = measure_pair,
                     min_gain: float = MIN_GAIN) -> PrecisionChoice:
    """fp32, int8, or the faster of the two here (auto); UserError when int8 is asked for and absent."""
    check_precision(precision)
    model = Path(model)
    for variant in ("int8", "fp16"):              # model.int8.onnx, model.int8.tflite, model.fp16.onnx
        if f".{variant}." in model.name:
            return PrecisionChoice(variant, model, f"{model.name} was given explicitly")
    int8 = int8_sibling(model)
    if precision == "fp32":
        return PrecisionChoice("fp32", model, "--precision fp32")
    if not int8.is_file():
        if precision == "int8":
            raise UserError(f"--precision int8: no {int8.name} beside {model}; "
                            f"run `sedeploy export --ckpt best.pt --int8` (or use --precision fp32)")
        return PrecisionChoice("fp32", model, f"no {int8.name} beside the model (export --int8 makes one)")
    if precision == "int8":
        if not same_checkpoint(model, int8):
            raise UserError(f"--precision int8: {int8.name} beside {model} was exported from another checkpoint; "
                            f"re-export with `sedeploy export --ckpt best.pt --int8 --force` (or use --precision fp32)")
        return PrecisionChoice("int8", int8, "--precision int8")
    if _wants_cuda(provider):
        return PrecisionChoice("fp32", model, "int8 is a CPU path; fp32 on CUDA")
    return _auto(model, int8, threads, batch, cache or cache_path(), measure, min_gain)


def _load(path: Path, threads: Optional[int]):
    """A model file on the runner its suffix names (model.onnx, model.int8.tflite), on the CPU."""
    from .runners import load_runner, supported_suffixes
    return load_runner(supported_suffixes().get(path.suffix.lower(), "onnxruntime"), path, provider="cpu",
                       threads=threads)


def checkpoint_of(path: Path) -> Optional[str]:
    """The checkpoint_sha256 an exported file records in its metadata (None when it records none)."""
    if path.suffix.lower() not in (".onnx", ".ort"):
        try:
            return _load(path, None).info.meta.get("checkpoint_sha256")   # None: no process-wide pool reset
        except Exception:  # noqa: BLE001 - unreadable: loading it for real reports the problem
            return None
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL   # only the metadata is read
    try:
        props = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
        return contract.decode_metadata(props).get("checkpoint_sha256")
    except Exception:  # noqa: BLE001 - unreadable: loading it for real reports the problem
        return None


def same_checkpoint(model: Path, int8: Path) -> bool:
    """An fp32 model and the int8 file beside it come from one checkpoint (or say nothing about it):
    never run an int8 model of another training run in place of the model the user named."""
    a, b = checkpoint_of(model), checkpoint_of(int8)
    return a is None or b is None or a == b


def _wants_cuda(provider: str) -> bool:
    if provider == "cuda":
        return True
    if provider != "auto":
        return False
    import onnxruntime as ort
    return "CUDAExecutionProvider" in ort.get_available_providers()


def _auto(model: Path, int8: Path, threads: Optional[int], batch: int, cache: Path, measure: Measure,
          min_gain: float) -> PrecisionChoice:
    key = cache_key(model, int8, threads, batch)
    entry = _load_cache(cache).get(key)
    # the key holds both files' sha256: an entry with pair_checked was measured on this very pair
    cached = isinstance(entry, dict) and {"fp32_ms", "int8_ms", "pair_checked"} <= set(entry)
    if not cached:
        if not same_checkpoint(model, int8):
            return PrecisionChoice("fp32", model, f"{int8.name} was exported from another checkpoint than "
                                   f"{model.name} (re-export with --int8 --force); fp32")
        t = measure(model, int8, threads, batch)
        entry = {"fp32_ms": float(t["fp32_ms"]), "int8_ms": float(t["int8_ms"]), "pair_checked": True,
                 "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"), "isa": isa_summary()}
        _save_cache(cache, key, entry)
    speedup = entry["fp32_ms"] / entry["int8_ms"]
    pick = "int8" if speedup >= min_gain else "fp32"
    vnni = "with" if has_vnni() else "without"
    how = f"cached {entry.get('measured_at', '')} in {cache}" if cached else "measured now"
    if pick == "int8":
        why = f"int8 runs {speedup:.2f}x fp32 here"
    else:
        why = f"int8 runs {speedup:.2f}x fp32 here, below the {min_gain:.2f}x worth its accuracy cost"
    reason = f"{why} (batch {batch}, {cpu_name()} {vnni} VNNI; {how})"
    return PrecisionChoice(pick, int8 if pick == "int8" else model, reason, entry["fp32_ms"], entry["int8_ms"],
                           cached)
