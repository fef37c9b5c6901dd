"""Which artifact of an export set runs: `--backend file|auto|<format>` of `infer` and `serve`.

An export set (a folder `sedeploy export` wrote, its export.json listing every file with its sha256
and what was verified) may hold the same model for several runtimes: model.onnx (onnxruntime),
model.ort, model.xml (OpenVINO), model.tflite (LiteRT), model.pte (ExecuTorch), model.ncnn.param
(NCNN), and int8 variants that passed the export's gate. Which one is fastest is a property of the
CPU (and of the batch size), not of the model, so `auto` measures, as `--precision auto` does:

  * candidates: the set's files whose format was verified at export in its own runtime (never a
    built-but-unverified one such as Core ML off macOS), whose bytes still match export.json, and
    whose runtime is installed here; fp32 files, plus the gated int8 files unless --precision fp32
    (only those with --precision int8);
  * each candidate is loaded as `infer --model FILE` loads it and timed on the batch size it will
    run, alone in short blocks that alternate over three rounds (`measure`), median of one batch;
  * the fastest fp32 file wins only if it beats onnxruntime fp32 (model.onnx) by MIN_GAIN_FP32,
    so that noise never trades the reference runtime for another; an int8 file wins only if it
    beats the chosen fp32 file by precision.MIN_GAIN (int8 costs some accuracy).

The choice is cached per (export.json sha256, CPU name and flags, runtime versions, threads,
batch) in $XDG_CACHE_HOME/sedeploy/backend.json; delete it to measure again. `<format>` picks that
format's file of the set (verified, bytes checked) without measuring; `file` (the default) runs the
file given, by its suffix.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from ..core.errors import UserError
from ..core.hardware import cpu_flags, cpu_name, isa_summary
from ..core.io import file_sha256
from .precision import MIN_GAIN, _load_cache, _save_cache, cache_path as precision_cache
from .runners import RUNNERS, load_runner, supported_suffixes

MIN_GAIN_FP32 = 1.05          # another fp32 runtime must beat onnxruntime fp32 by 5 %: below is noise
MANIFEST = "export.json"


@dataclass
class Candidate:
    kind: str                 # the export.json file kind: "onnx", "ort", "int8", "tflite-int8", ...
    path: Path
    runner: str               # runtime.runners name that loads it
    precision: str            # "fp32" or "int8"


@dataclass
class BackendChoice:
    path: Path                # the file to load
    runner: str               # the runner that loads it
    precision: str            # "fp32" or "int8"
    kind: str                 # its kind in the set
    reason: str               # one line for the user
    timings_ms: Dict[str, float] = field(default_factory=dict)   # p50 per kind, when measured
    cached: bool = False
    skipped: Dict[str, str] = field(default_factory=dict)        # kind -> why it was not a candidate

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def manifest_of(model: Path) -> Path:
    """--model as given (an export folder, its export.json, or a file of the set) -> the set's manifest."""
    if model.is_dir():
        return model / MANIFEST
    if model.name.endswith(".json"):
        return model
    stem = model.name.split(".")[0]
    return model.parent / (MANIFEST if stem == "model" else f"{stem}.{MANIFEST}")


def read_set(model: Path) -> dict:
    man = manifest_of(model)
    try:
        doc = json.loads(man.read_text())
        if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
            raise ValueError("no file list")
        return doc
    except (OSError, ValueError) as e:
        why = "is missing" if isinstance(e, OSError) else "is not an export.json"
        raise UserError(f"--backend needs the export set's {man.name} beside the model ({man} {why}); pass "
                        f"--model EXPORT_DIR (a folder `sedeploy export` wrote) or use --backend file") from None


def _verified(doc: dict, fmt: str) -> bool:
    """Whether the export verified this format in its own runtime. Sets written before export.json
    recorded `verified` hold only formats that were always verified (onnx, ort)."""
    facts = (doc.get("formats") or {}).get(fmt) or {}
    if "verified" in facts:
        return facts["verified"] is True
    return fmt in ("onnx", "ort")


def candidates(model: Path, precision: str) -> Tuple[List[Candidate], Dict[str, str]]:
    """-> (the set's runnable, verified, unmodified files of the precisions asked for, {kind: why not})."""
    doc = read_set(model)
    root = manifest_of(model).parent
    by_suffix = supported_suffixes()
    out: List[Candidate] = []
    skipped: Dict[str, str] = {}
    for f in doc["files"]:
        if not isinstance(f, dict) or not isinstance(f.get("path"), str) or "/" in f["path"]:
            continue
        kind, path = str(f.get("format", "")), root / f["path"]
        int8 = kind == "int8" or kind.endswith("-int8")
        base = "onnx" if kind == "int8" else kind[:-len("-int8")] if int8 else kind
        prec = "int8" if int8 else "fp32"
        runner = by_suffix.get(path.suffix.lower())
        if kind == "fp16" or runner is None:
            continue                              # fp16 (a GPU variant), torchscript, side files: not candidates
        if path.name != f["path"] or (prec == "fp32" and precision == "int8") or \
                (prec == "int8" and precision == "fp32"):
            continue
        if not _verified(doc, base):
            skipped[kind] = "not verified at export (" + str(((doc.get("formats") or {}).get(base) or {})
                                                              .get("not_verified", "no record")) + ")"
        elif not path.is_file():
            skipped[kind] = f"{path.name} is missing"
        elif f.get("sha256") != file_sha256(path):
            skipped[kind] = f"{path.name} differs from what export.json recorded (sha256)"
        elif not _installed(RUNNERS[runner].requires):
            skipped[kind] = f"{RUNNERS[runner].requires} is not installed ({RUNNERS[runner].hint})"
        else:
            out.append(Candidate(kind, path, runner, prec))
    return out, skipped


def _installed(package: str) -> bool:
    import importlib.util
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


Measure = Callable[[List[Candidate], Optional[int], int], Dict[str, float]]


def measure(cands: List[Candidate], threads: Optional[int], batch: int, budget_s: float = 2.0,
            rounds: int = 3) -> Dict[str, float]:
    """ms of one batch per candidate (median over rounds of each block's median), each loaded as infer
    loads it (onnxruntime without spin-waiting, as infer runs it beside its decoding threads).

    Blocks, not call-by-call interleaving: several runtimes keep their threads busy-waiting for a while
    after a run (OpenMP in NCNN, onnxruntime's spinning pool), which would be charged to whichever
    candidate runs next. Each block starts with two untimed runs and times the candidate alone for
    budget_s / (rounds x candidates) (at least 3 runs); the rounds alternate the candidates, so a burst
    of load on a shared machine shifts no single one."""
    import statistics
    runners = {c.kind: load_runner(c.runner, c.path, provider="cpu", threads=threads, spin=False) for c in cands}
    shape = next(iter(runners.values())).info.input_size
    x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
    per_block = budget_s / (rounds * len(runners))
    blocks: Dict[str, List[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for k, r in runners.items():
            r.run(x)
            r.run(x)
            times: List[float] = []
            end = time.perf_counter() + per_block
            while len(times) < 3 or time.perf_counter() < end:
                t = time.perf_counter()
                r.run(x)
                times.append(time.perf_counter() - t)
            blocks[k].append(statistics.median(times))
    return {k: 1e3 * statistics.median(v) for k, v in blocks.items()}


def cache_path() -> Path:
    return precision_cache().with_name("backend.json")


def cache_key(model: Path, cands: List[Candidate], threads: Optional[int], batch: int) -> str:
    from ..core.versions import versions
    flags = hashlib.sha256(" ".join(sorted(cpu_flags())).encode()).hexdigest()[:16]
    pkgs = sorted({RUNNERS[c.runner].requires for c in cands})
    return "|".join([file_sha256(manifest_of(model))[:16], ",".join(sorted(c.kind for c in cands)), cpu_name(),
                     f"flags {flags}", json.dumps(versions(*pkgs), sort_keys=True),
                     f"threads {threads or os.cpu_count()}", f"batch {batch}"])


def pick(cands: List[Candidate], ms: Dict[str, float]) -> Tuple[Candidate, str]:
    """The measured rule: the fastest fp32 file if it beats onnxruntime fp32 by MIN_GAIN_FP32, then int8
    if it beats that by MIN_GAIN; -> (the winner, why)."""
    fp32 = [c for c in cands if c.precision == "fp32"]
    int8 = [c for c in cands if c.precision == "int8"]
    best = None
    why = ""
    if fp32:
        ref = next((c for c in fp32 if c.kind == "onnx"), None)
        fastest = min(fp32, key=lambda c: ms[c.kind])
        if ref is None or fastest is ref:
            best, why = fastest, f"{fastest.kind} fastest fp32 ({ms[fastest.kind]:.3f} ms)"
        elif ms[ref.kind] / ms[fastest.kind] >= MIN_GAIN_FP32:
            best, why = fastest, (f"{fastest.kind} {ms[ref.kind] / ms[fastest.kind]:.2f}x onnxruntime fp32 "
                                  f"({ms[fastest.kind]:.3f} vs {ms[ref.kind]:.3f} ms)")
        else:
            best, why = ref, (f"onnx: {fastest.kind} only {ms[ref.kind] / ms[fastest.kind]:.2f}x onnxruntime fp32, "
                              f"below the {MIN_GAIN_FP32:.2f}x that is not noise")
    if int8:
        q = min(int8, key=lambda c: ms[c.kind])
        if best is None:
            return q, f"{q.kind} fastest int8 ({ms[q.kind]:.3f} ms)"
        gain = ms[best.kind] / ms[q.kind]
        if gain >= MIN_GAIN:
            return q, f"{q.kind} {gain:.2f}x the best fp32 ({best.kind}: {why})"
        return best, f"{why}; best int8 {q.kind} only {gain:.2f}x, below {MIN_GAIN:.2f}x worth its accuracy cost"
    return best, why


def choose_backend(model: Path, backend: str = "auto", precision: Optional[str] = "auto", provider: str = "cpu",
                   threads: Optional[int] = None, batch: int = 32, cache: Optional[Path] = None,
                   measure_fn: Measure = None) -> BackendChoice:
    """`auto` or a format name -> the file of the set at `model` to load, its runner and why."""
    model = Path(model)
    precision = precision or "auto"
    cands, skipped = candidates(model, precision)
    if backend != "auto":
        want = [c for c in cands if c.kind in (backend, f"{backend}-int8") or (backend == "onnx" and c.kind == "int8")]
        want = [c for c in want if c.precision == ("int8" if precision == "int8" else "fp32")]
        if not want:
            why = skipped.get(backend if precision != "int8" else ("int8" if backend == "onnx" else f"{backend}-int8"))
            kinds = sorted({"onnx" if c.kind == "int8" else c.kind.replace("-int8", "") for c in cands})
            raise UserError(f"--backend {backend}: the set at {manifest_of(model).parent} has no "
                            f"{'int8 ' if precision == 'int8' else ''}{backend} file that can run here"
                            + (f" ({why})" if why else "") + f"; choose from: auto, file, {', '.join(kinds)}, "
                            f"or export it with `sedeploy export --formats {backend}`"
                            f"{' --int8' if precision == 'int8' else ''}")
        c = want[0]
        return BackendChoice(c.path, c.runner, c.precision, c.kind, f"--backend {backend}", skipped=skipped)
    if not cands:
        raise UserError(f"--backend auto: no verified file of the set at {manifest_of(model).parent} can run here ("
                        + "; ".join(f"{k}: {v}" for k, v in skipped.items()) + "); re-export the set or pass --model FILE")
    if provider == "cuda" or (provider == "auto" and _cuda()):
        onnx = next((c for c in cands if c.kind == "onnx"), None)
        if onnx is None:
            raise UserError("--backend auto on CUDA runs model.onnx, which the set lacks; export --formats onnx")
        return BackendChoice(onnx.path, onnx.runner, "fp32", "onnx", "CUDA: onnxruntime fp32", skipped=skipped)
    if len(cands) == 1:
        c = cands[0]
        return BackendChoice(c.path, c.runner, c.precision, c.kind, f"the only runnable file of the set ({c.kind})",
                             skipped=skipped)
    cache = cache or cache_path()
    key = cache_key(model, cands, threads, batch)
    entry = _load_cache(cache).get(key)
    cached = isinstance(entry, dict) and isinstance(entry.get("ms"), dict) and set(entry["ms"]) == {c.kind for c in cands}
    if not cached:
        ms = (measure_fn or measure)(cands, threads, batch)
        entry = {"ms": {k: float(v) for k, v in ms.items()}, "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "isa": isa_summary()}
        _save_cache(cache, key, entry)
    winner, why = pick(cands, entry["ms"])
    how = f"cached {entry.get('measured_at', '')} in {cache}" if cached else "measured now"
    return BackendChoice(winner.path, winner.runner, winner.precision, winner.kind,
                         f"{why} (batch {batch}, {cpu_name()}; {how})", dict(entry["ms"]), cached, skipped)


def _cuda() -> bool:
    import onnxruntime as ort
    return "CUDAExecutionProvider" in ort.get_available_providers()
