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
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from ..core.errors import UserError
from ..core.hardware import cpu_flags, cpu_name, isa_summary
from ..core.io import file_sha256
from ..core.versions import installed
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
    recorded `verified` came from exports that verified every format they wrote."""
    facts = (doc.get("formats") or {}).get(fmt) or {}
    return facts.get("verified", True) is True


def _base(kind: str) -> str:
    """export.json file kind -> its format: int8 -> onnx, tflite-int8 -> tflite."""
    return "onnx" if kind in ("int8", "fp16") else kind[:-len("-int8")] if kind.endswith("-int8") else kind


def _built_for_another_machine(doc: dict, kind: str) -> Optional[str]:
    """The ORT format's Fixed-style file bakes in the layout of the machine it was converted on."""
    facts = (doc.get("formats") or {}).get(_base(kind)) or {}
    built, here = facts.get("machine"), platform.machine()
    if _base(kind) == "ort" and built and built != here:
        return f"converted for {built} ({facts.get('target_platform')}); this machine is {here}"
    return None


def candidates(model: Path, precision: str) -> Tuple[List[Candidate], Dict[str, str]]:
    """-> (the set's runnable, verified, unmodified files of the precisions asked for, {kind: why not}).
    Every file export.json lists for a kind (the .bin beside an .xml, a sidecar) must be there unchanged."""
    doc = read_set(model)
    root = manifest_of(model).parent
    by_suffix = supported_suffixes()
    groups: Dict[str, List[dict]] = {}
    for f in doc["files"]:
        if isinstance(f, dict) and isinstance(f.get("path"), str) and "/" not in f["path"] and \
                f["path"] not in ("", ".", ".."):
            groups.setdefault(str(f.get("format", "")), []).append(f)
    out: List[Candidate] = []
    skipped: Dict[str, str] = {}
    for kind, files in groups.items():
        main = next((f for f in files if (root / f["path"]).suffix.lower() in by_suffix), None)
        if kind == "fp16" or main is None:
            continue                              # fp16 (a GPU variant), torchscript, Core ML: no runner here
        path = root / main["path"]
        runner = by_suffix[path.suffix.lower()]
        prec = "int8" if kind == "int8" or kind.endswith("-int8") else "fp32"
        if (prec == "fp32" and precision == "int8") or (prec == "int8" and precision == "fp32"):
            continue
        missing = [f["path"] for f in files if not (root / f["path"]).is_file()]
        changed = [f["path"] for f in files if f["path"] not in missing
                   and f.get("sha256") != file_sha256(root / f["path"])]
        if not _verified(doc, _base(kind)):
            skipped[kind] = "not verified at export (" + str(((doc.get("formats") or {}).get(_base(kind)) or {})
                                                              .get("not_verified", "no record")) + ")"
        elif missing:
            skipped[kind] = f"{missing[0]} is missing"
        elif changed:
            skipped[kind] = f"{changed[0]} differs from what export.json recorded (sha256)"
        elif _built_for_another_machine(doc, kind):
            skipped[kind] = _built_for_another_machine(doc, kind)
        elif not installed(RUNNERS[runner].requires):
            skipped[kind] = f"{RUNNERS[runner].requires} is not installed ({RUNNERS[runner].hint})"
        else:
            out.append(Candidate(kind, path, runner, prec))
    return out, skipped


Measure = Callable[[List[Candidate], Optional[int], int], Dict[str, object]]   # kind -> ms, or why it failed


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
    runners, failed = {}, {}
    for c in cands:                 # a file that does not load is no candidate; the others still compete
        try:
            runners[c.kind] = load_runner(c.runner, c.path, provider="cpu", threads=threads, spin=False)
        except Exception as e:  # noqa: BLE001 - the runtime's own error, reported as the reason
            failed[c.kind] = "could not be loaded: " + (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
    if not runners:
        return failed
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
    return {**failed, **{k: 1e3 * statistics.median(v) for k, v in blocks.items()}}


def cache_path() -> Path:
    return precision_cache().with_name("backend.json")


def cache_key(model: Path, cands: List[Candidate], threads: Optional[int], batch: int) -> str:
    from ..core.versions import versions
    flags = hashlib.sha256(" ".join(sorted(cpu_flags())).encode()).hexdigest()[:16]
    pkgs = {RUNNERS[c.runner].requires.split(".")[0] for c in cands}     # distributions, not modules
    pkgs = sorted(pkgs | ({"torch"} if "executorch" in pkgs else set()))   # ExecuTorch runs on torch
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
    precision = precision or "fp32"            # None: the file as given, i.e. fp32 (never a silent int8)
    cands, skipped = candidates(model, precision)
    root = manifest_of(model).parent
    runnable = sorted({_base(c.kind) for c in cands})
    choices = f"choose from: auto, file{''.join(', ' + k for k in runnable)}"
    if backend != "auto":
        want = [c for c in cands if _base(c.kind) == backend]
        if not want:
            in_set = {_base(str(f.get("format", ""))) for f in read_set(model)["files"] if isinstance(f, dict)}
            q = "int8" if precision == "int8" else ""
            if backend not in in_set:
                raise UserError(f"--backend {backend}: the set at {root} has no {backend} file; {choices}")
            kind = ("int8" if backend == "onnx" else f"{backend}-int8") if q else backend
            why = skipped.get(kind) or (f"it has no {q} {backend} file: `sedeploy export --formats {backend} --int8`"
                                        if q and kind not in {str(f.get('format')) for f in read_set(model)["files"]
                                                              if isinstance(f, dict)}
                                        else "no runner of sedeploy runs its files on this machine")
            raise UserError(f"--backend {backend}: the set's {backend} file cannot run here ({why}); {choices}")
        c = want[0]
        return BackendChoice(c.path, c.runner, c.precision, c.kind, f"--backend {backend}", skipped=skipped)
    if not cands:
        raise UserError(f"--backend auto: no verified file of the set at {root} can run here ("
                        + "; ".join(f"{k}: {v}" for k, v in skipped.items()) + "); re-export the set or pass --model FILE")
    if provider == "cuda" or (provider == "auto" and _cuda()):
        onnx = next((c for c in cands if c.kind == "onnx"), None)
        if onnx is None:
            raise UserError("--backend auto on CUDA runs the set's fp32 model.onnx: export --formats onnx and run "
                            "without --precision int8, or pass --provider cpu")
        return BackendChoice(onnx.path, onnx.runner, "fp32", "onnx", "CUDA: onnxruntime fp32", skipped=skipped)
    if len(cands) == 1:
        c = cands[0]
        return BackendChoice(c.path, c.runner, c.precision, c.kind, f"the only runnable file of the set ({c.kind})",
                             skipped=skipped)
    cache = cache or cache_path()
    key = cache_key(model, cands, threads, batch)
    entry = _load_cache(cache).get(key)
    cached = _valid_entry(entry, {c.kind for c in cands})
    if not cached:
        got = (measure_fn or measure)(cands, threads, batch)
        skipped.update({k: v for k, v in got.items() if isinstance(v, str)})       # failed to load
        ms = {k: float(v) for k, v in got.items() if not isinstance(v, str)}
        if not ms:
            raise UserError(f"--backend auto: no file of the set at {root} could be loaded ("
                            + "; ".join(f"{k}: {v}" for k, v in skipped.items()) + ")")
        entry = {"ms": ms, "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"), "isa": isa_summary()}
        if len(ms) == len(cands):
            _save_cache(cache, key, entry)     # a choice made without a file that failed to load is not kept
    live = [c for c in cands if c.kind in entry["ms"]]
    winner, why = pick(live, entry["ms"])
    how = f"cached {entry.get('measured_at', '')} in {cache}" if cached else "measured now"
    return BackendChoice(winner.path, winner.runner, winner.precision, winner.kind,
                         f"{why} (batch {batch}, {cpu_name()}; {how})", dict(entry["ms"]), cached, skipped)


def _valid_entry(entry: object, kinds: set) -> bool:
    """A cache entry holding a positive, finite time for exactly these candidates (else measure again)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("ms"), dict) or set(entry["ms"]) != kinds:
        return False
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
               for v in entry["ms"].values())


def _cuda() -> bool:
    import onnxruntime as ort
    return "CUDAExecutionProvider" in ort.get_available_providers()
