"""Export a checkpoint: model.onnx (simplified), model.ts, model.ort, ..., export.json, every
artifact verified in its own runtime on every output.

One plug-in module per format (export.formats: a registry, imported lazily), each building its
files and running them in its own runtime; this wrapper iterates the plan, reports sizes,
verifies, and writes the manifest (after ultralytics' exporter): plan -> build each format ->
verify each -> manifest, all staged in a folder beside the destination and moved in together by
commit.py (export.json last), so a failed or interrupted export leaves the previous set as it
was and a successful --force replaces all of it.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from .. import __version__
from ..core import contract
from ..core.errors import UserError
from ..core.commit import commit_files, recover, release_dir, stage_dir
from ..core.io import atomic_write_text, ensure_writable_dir, file_sha256, path_bytes, path_sha256
from ..core.parity import ATOL, RTOL, format_table
from ..core.versions import versions
from ..checkpoint import build_model, load_checkpoint
from .formats import DEFAULT, FORMATS, BuildContext, build_order, format_module, parse_formats
from .onnx_export import MAX_OPSET, MIN_OPSET
from .verify import check_onnx, parity_all, run_onnx, run_torch, verification_batch
from .wrappers import ExplainWrapper, LogitsWrapper

MANIFEST = "export.json"
VARIANTS = (".int8.onnx", ".fp16.onnx")   # --int8 / --half, derived from the verified ONNX file


@dataclass
class ExportOptions:
    formats: Tuple[str, ...] = DEFAULT  # which artifacts to write (export.formats names; "all")
    opset: int = 17                     # ONNX opset
    batch: Optional[int] = None         # None: dynamic batch axis; else a fixed batch size
    tflite_batch_sizes: Tuple[int, ...] = (1, 64)   # tflite (no dynamic batch): one signature per size; --batch N: N
    simplify: bool = True               # run onnxsim (failure fails the export)
    web_runtime: Optional[str] = None   # web: onnxruntime-web's npm tarball or dist/ folder (None: cache, else npm)
    web_webgpu: bool = False            # web: also ship WebGPU's runtime files
    force: bool = False                 # overwrite existing outputs
    extras: bool = True                 # SE weights + feature map outputs (False: logits only)
    verify_n: int = 16                  # verification batch size (dynamic exports)
    stem: str = "model"                 # output file stem (model.onnx, model.ts)
    int8: bool = False                  # also write <stem>.int8.onnx (static int8)
    calib: int = 512                    # training images for int8 calibration
    half: bool = False                  # also write <stem>.fp16.onnx (float16, float32 I/O)
    data_dir: Optional[str] = None      # dataset root (calibration / verification images)
    int8_eval: int = 1000               # labelled test images the int8 gate scores fp32 and int8 on
    int8_min_agreement: float = 98.0    # gate: top-1 agreement of int8 with fp32, in %
    int8_max_drop: float = 1.0          # gate: accuracy points int8 may lose against fp32
    int8_se_atol: float = 0.1           # gate: max |SE weight difference| int8 vs fp32 (weights are in (0, 1))
    int8_allow_unlabelled: bool = False  # gate on agreement alone when no labelled test images are on disk
    unsure_accept: float = 0.95         # 'unsure' threshold: share of held-out in-distribution images accepted
    unsure_kind: str = "maha"           # out-of-distribution score (runtime/unsure.py KINDS; BENCHMARKS chose maha)
    unsure_n: int = 2000                # training images the score is fitted on / validation images it is calibrated on
    overhead: bool = False              # measure the latency cost of the extra outputs (into export.json)


def validate_options(opts: ExportOptions) -> ExportOptions:
    """The options checked; -> them with --formats resolved (registry names in build order)."""
    opts = replace(opts, formats=parse_formats(opts.formats))
    if not MIN_OPSET <= opts.opset <= MAX_OPSET:
        raise UserError(f"--opset {opts.opset} is not supported; choose {MIN_OPSET}..{MAX_OPSET}")
    if opts.batch is not None and opts.batch <= 0:
        raise UserError(f"--batch must be 'dynamic' or a positive integer, got {opts.batch}")
    if not opts.tflite_batch_sizes or any(not isinstance(b, int) or b <= 0 for b in opts.tflite_batch_sizes):
        raise UserError(f"--batch-sizes must be positive integers, e.g. 1,64; got {list(opts.tflite_batch_sizes)}")
    if opts.half and "onnx" not in opts.formats:
        raise UserError("--half derives from the ONNX export; include onnx in --formats")
    if opts.int8:
        kinds = {n: FORMATS[n].int8 for n in opts.formats}
        if not any(kinds.values()):
            with_int8 = ", ".join(n for n, f in FORMATS.items() if f.int8)
            raise UserError(f"--int8: none of {', '.join(opts.formats)} has an int8 variant; add one of "
                            f"{with_int8} to --formats, or drop --int8")
        derived = [n for n, k in kinds.items() if k == "onnx" and n != "onnx"]
        if derived and "onnx" not in opts.formats:
            raise UserError(f"--int8 for {', '.join(derived)} derives from the ONNX int8 graph; include onnx "
                            f"in --formats")
    if not 0 < opts.unsure_accept <= 1:                     # NaN fails this too (click's FloatRange lets it by)
        raise UserError(f"--unsure-accept is the share of held-out images to accept, in (0, 1]; got "
                        f"{opts.unsure_accept}")
    if opts.int8 and opts.calib <= 0:
        raise UserError(f"--calib must be positive, got {opts.calib}")
    if opts.int8 and opts.int8_eval <= 0:
        raise UserError(f"--int8-eval must be positive, got {opts.int8_eval}")
    if not 0 <= opts.int8_min_agreement <= 100:
        raise UserError(f"--int8-min-agreement is a percentage in [0, 100], got {opts.int8_min_agreement}")
    if opts.int8_max_drop < 0:
        raise UserError(f"--int8-max-drop is in accuracy points and cannot be negative, got {opts.int8_max_drop}")
    return opts


def build_metadata(ckpt: dict, model, names: List[str], sha: str, opset: Optional[int],
                   precision: str = "fp32", unsure: Optional[dict] = None) -> Dict[str, object]:
    n_se = model.num_se_blocks
    return {
        "format_version": contract.FORMAT_VERSION,
        "classes": ckpt["classes"], "mean": ckpt["mean"], "std": ckpt["std"], "input_size": ckpt["input_size"],
        "model_name": ckpt["model_name"], "model_config": ckpt["model_config"],
        "output_names": names, "se_outputs": [n for n in names if n in contract.se_output_names(n_se)],
        "feature_map": contract.FEATURE_MAP if contract.FEATURE_MAP in names else None,
        "dataset": ckpt["dataset"], "data": ckpt.get("data"), "test_accuracy": ckpt.get("metrics", {}).get("test_acc"),
        "checkpoint_sha256": sha, "versions": versions("torch", "onnx", "onnxruntime", "onnxsim"), "opset": opset,
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "precision": precision,
        "head_linear": head_linear(model),
        "unsure": unsure,
    }


def head_linear(model) -> Optional[dict]:
    """The head's two linear layers multiplied, W2 @ W1 (classes, C*s*s), over the last block's pooled
    features (the ReLU between them left out: runtime.explain's head maps), rounded to 5 significant
    digits; None for a model without that head (Flatten, Linear, ReLU, Dropout, Linear after max-pools)."""
    head = getattr(model, "head", None)
    blocks = getattr(model, "blocks", None)
    if not isinstance(head, torch.nn.Sequential) or blocks is None or len(head) != 5 or \
            not isinstance(head[1], torch.nn.Linear) or not isinstance(head[4], torch.nn.Linear):
        return None
    c = blocks[-1].conv.out_channels
    side = int(round((head[1].in_features / c) ** 0.5))
    with torch.no_grad():
        g = (head[4].weight.double() @ head[1].weight.double()).float().numpy()
    return {"weights": [float(f"{v:.5g}") for v in g.ravel()], "shape": [c, side, side],
            "pool": int(blocks[-1].pool.kernel_size)}


@dataclass
class Job:
    """One export in progress: what was loaded, where it goes, what was measured."""
    ckpt_path: Path
    ckpt: dict
    model: torch.nn.Module
    opts: ExportOptions
    out: Path
    manifest_path: Path
    names: List[str]
    sha: str
    tmp: Path = Path()
    facts: Dict[str, dict] = field(default_factory=dict)   # format -> how it was converted (export.json)
    ctx: Optional[BuildContext] = None                       # the format plug-ins' shared state, once built
    overhead: Optional[dict] = None
    timings: Dict[str, float] = field(default_factory=dict)
    nodes: Dict[str, int] = field(default_factory=dict)
    gate: Dict[str, object] = field(default_factory=dict)
    unsure: Optional[dict] = None                            # the calibrated 'unsure' score (metadata + export.json)
    unsure_inputs: Optional[np.ndarray] = None               # the held-out images its threshold was set on (normalized)
    unsure_variant: Optional[dict] = None                    # while a variant is stamped: its own spec (threshold)
    variant_specs: Dict[str, dict] = field(default_factory=dict)   # variant -> its own spec (export.json)


def export_checkpoint(ckpt_path: str, out_dir: Optional[str] = None, opts: ExportOptions = ExportOptions(),
                      log: Callable[[str], None] = print) -> dict:
    """Run the whole export; returns the manifest (also written as export.json)."""
    opts = validate_options(opts)
    t_start = time.perf_counter()
    # the folders this export creates (--out and any missing parents): a failure removes those left empty
    created = [d for d in (Path(out_dir).absolute(), *Path(out_dir).absolute().parents) if not d.exists()] \
        if out_dir else []
    job = plan(Path(ckpt_path), out_dir, opts, log)
    job.tmp = stage_dir(job.out)
    try:
        x, batch_desc = verification_batch(job.ckpt, opts.batch or opts.verify_n, opts.data_dir)
        wrapper = ExplainWrapper(job.model) if opts.extras else LogitsWrapper(job.model)
        reference = run_torch(wrapper, x, job.names)
        job.unsure = calibrate_unsure(job, wrapper, log) if opts.extras else None
        candidates, built = build_artifacts(job, wrapper, x)
        rows = verify(job, reference, candidates, batch_desc, log)
        variants = _variants(job, built, reference, x, log) if opts.int8 or opts.half else {}
        staged = stage(job, built, variants)
        if opts.overhead:
            job.overhead = overhead(job, log)
        job.timings["total"] = time.perf_counter() - t_start
        manifest = write_manifest(job, staged, rows, batch_desc)
        install(job, staged)
    except BaseException:
        release_dir(job.tmp)
        for d in created:                                     # a failed export leaves no empty folder behind
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        raise
    release_dir(job.tmp)
    report(job, manifest, log)
    return manifest


def overhead(job: Job, log: Callable[[str], None]) -> dict:
    """The full and a logits-only graph (ONNX, dynamic batch) exported into the staging folder, timed
    against each other by overhead.py; the result goes into export.json."""
    from .overhead import measure_overhead
    d = job.tmp / "overhead"
    for stem, extras in (("full", True), ("logits", False)):
        export_checkpoint(str(job.ckpt_path), str(d), ExportOptions(formats=("onnx",), extras=extras, stem=stem),
                          log=lambda m: None)
    return measure_overhead(d / "full.onnx", d / "logits.onnx", log=log)


def export_set(out: Path, stem: str) -> List[Path]:
    """Every file an export with this stem may write (its set), whether there or not; export.json last."""
    manifest = MANIFEST if stem == "model" else f"{stem}.export.json"
    suffixes = [s for f in FORMATS.values() for s in (f.suffix, *f.side_files)] + list(VARIANTS)
    return [out / f"{stem}{s}" for s in suffixes] + [out / manifest]


def plan(ckpt_path: Path, out_dir: Optional[str], opts: ExportOptions, log: Callable[[str], None] = print) -> Job:
    """Load the checkpoint, rebuild the model, decide the output files; refuse to overwrite without force.

    Any file of the previous set counts: with --force the whole set is replaced, so no model.int8.onnx
    of an older export stays beside a new model.onnx."""
    ckpt = load_checkpoint(ckpt_path)
    model = build_model(ckpt, str(ckpt_path))
    out = ensure_writable_dir(Path(out_dir) if out_dir else ckpt_path.parent, option="--out")
    recover(out, log)                                         # an export killed mid-commit: finish or undo it
    manifest_path = export_set(out, opts.stem)[-1]
    existing = [p for p in export_set(out, opts.stem) if p.exists()]
    if existing and not opts.force:
        raise UserError(f"{existing[0]} already exists; pass --force to overwrite or --out to write elsewhere")
    names = contract.output_names(model.num_se_blocks, opts.extras)
    return Job(ckpt_path, ckpt, model, opts, out, manifest_path, names, file_sha256(ckpt_path))


def unsure_images(ckpt: dict, data_dir: Optional[str] = None, n: int = 2000
                  ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """-> (fit images, their labels, held-out images, why they are test images: "" when they are the run's
    validation images) for the 'unsure' score: the validation images the run selected best.pt on and never trained on, found
    again from the checkpoint's recipe (sedeploy.splits: the draw training made; a folder's own val split)
    and checked against the recipe's label hash; the parameters are fitted on images it trained on. Test
    images instead, with the reason, when the run held out no validation split (--select-on test), the
    checkpoint has no recipe (those versions selected on test) or its recipe changed on resume (earlier
    epochs may have trained on today's validation images). Raises UserError when the images are not on
    disk, do not fit the model, or are not the ones the run drew from. n: at most this many of each."""
    from ..core.arrays import load_arrays
    from ..splits import labels_sha256, run_split
    rng = np.random.default_rng(0)
    pick = lambda idx: np.sort(rng.permutation(idx)[:n])
    _, xtr, ytr = load_arrays(ckpt["dataset"], data_dir, "train", ref=ckpt.get("data"))
    if list(xtr.shape[1:]) != list(ckpt["input_size"]):
        raise UserError(f"training images are {list(xtr.shape[1:])}, the model takes {ckpt['input_size']}")
    labels = torch.from_numpy(ytr.astype(np.int64))
    recipe = ckpt.get("recipe")

    def on_test(trained: np.ndarray, why: str):
        _, xte, _ = load_arrays(ckpt["dataset"], data_dir, "test", ref=ckpt.get("data"))
        fit = pick(trained)
        return xtr[fit], ytr[fit], xte[pick(np.arange(len(xte)))], why

    if not isinstance(recipe, dict):
        return on_test(np.arange(len(ytr)), "the checkpoint has no recipe (its version selected on test images)")
    try:
        trained, val = run_split(recipe, labels)
    except (TypeError, ValueError, AttributeError, RuntimeError, IndexError) as e:
        raise UserError(f"the checkpoint's recipe is damaged ({type(e).__name__}: {str(e)[:80]})") from None
    if ckpt.get("recipe_changed"):
        return on_test(trained.numpy(), "its recipe changed on resume (earlier epochs may have trained on its "
                                        "validation images)")
    if val is None:
        return on_test(trained.numpy(), "the run held out no validation split (--select-on test)")
    held_x, held_y = xtr[val.numpy()], ytr[val.numpy()]
    if ckpt["dataset"] == "folder":                             # a folder brings its own val split when it has one
        try:
            _, held_x, held_y = load_arrays("folder", data_dir, "val", ref=ckpt.get("data"))
            trained = run_split({**recipe, "select_on": "test"}, labels)[0]   # all of train (--limit-train's subset)
        except UserError as e:
            if "has no val images" not in str(e):
                raise
    trained = trained.numpy()
    data = recipe.get("data")
    want = data.get("labels_sha256") if isinstance(data, dict) else None
    if want and labels_sha256(ytr[trained], held_y) != want:
        raise UserError("the training images on disk are not the ones this run drew its validation split from "
                        "(their labels differ from the checkpoint's); pass --data-dir with that copy")
    fit, held = pick(trained), pick(np.arange(len(held_y)))
    return xtr[fit], ytr[fit], held_x[held], ""


def calibrate_unsure(job: Job, wrapper: torch.nn.Module, log: Callable[[str], None]) -> Optional[dict]:
    """The 'unsure' score (runtime/unsure.py): parameters fitted on images the run trained on, threshold
    on its validation images (unsure_images) so that opts.unsure_accept of them are accepted. No data on
    disk: None (no flag), logged."""
    from ..core.datasets import normalize_batch
    from ..runtime import unsure
    opts, ckpt = job.opts, job.ckpt
    try:
        xfit, yfit, xheld, why = unsure_images(ckpt, opts.data_dir, opts.unsure_n)
    except UserError as e:
        log(f"unsure: not calibrated ({e})")
        return None
    what = "test" if why else "validation"
    if why:
        log(f"unsure: the threshold is set on test images: {why}")
    norm = lambda u8: normalize_batch(u8, ckpt["mean"], ckpt["std"])
    job.unsure_inputs = norm(xheld)
    held_out = run_torch(wrapper, job.unsure_inputs, job.names)
    spec = unsure.calibrate(opts.unsure_kind, run_torch(wrapper, norm(xfit), job.names), yfit,
                            len(ckpt["classes"]), held_out, accept=opts.unsure_accept,
                            calibrated_on=f"{len(xfit)} training / {len(xheld)} {what} images")
    got = float((unsure_score(spec, held_out) >= spec["threshold"]).mean())
    log(f"unsure: {spec['kind']} threshold {spec['threshold']:.4g} accepts {got:.1%} of {len(xheld)} {what} images "
        f"(asked: {opts.unsure_accept:.1%})")
    if len(xheld) < 200:
        log(f"unsure: warning: {len(xheld)} held-out images set the threshold; with fewer than 200 the accepted share "
            f"on new images can differ by several points")
    return spec


def variant_unsure(job: Job, outputs: Dict[str, np.ndarray], what: str,
                   log: Callable[[str], None] = lambda m: None) -> dict:
    """The 'unsure' spec for a variant (int8, fp16): the same score, its threshold set again on the variant's
    own outputs for the same held-out images, so that it accepts the same share (quantization moves the
    scores: the fp32 threshold would flag in-distribution images)."""
    from ..runtime import unsure
    spec = job.unsure
    scores = unsure_score(spec, outputs)
    try:
        t = unsure.threshold_for(scores, spec["accept"])
    except ValueError as e:
        raise UserError(f"the {what} model's 'unsure' scores on held-out images: {e}; nothing was written") from None
    log(f"unsure: {what} threshold {t:.4g} (fp32: {spec['threshold']:.4g}) accepts {(scores >= t).mean():.1%} of "
        f"{len(scores)} held-out images")
    return {**spec, "threshold": t, "calibrated_on": f"{spec['calibrated_on']}; threshold on the {what} model"}


def unsure_score(spec: dict, outputs: Dict[str, np.ndarray]) -> np.ndarray:
    from ..runtime import unsure
    return unsure.score(spec["kind"], spec["params"], outputs)


def _stamp_onnx(path: Path, spec: dict) -> None:
    """An ONNX variant's sedeploy.unsure property set to its own spec (the file is rewritten in place)."""
    import onnx
    model = onnx.load(str(path))
    key = contract.META_PREFIX + "unsure"
    props = [(p.key, p.value) for p in model.metadata_props if p.key != key]
    del model.metadata_props[:]
    for k, v in props + [(key, json.dumps(spec))]:
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))


def build_artifacts(job: Job, wrapper: torch.nn.Module, x: np.ndarray
                    ) -> Tuple[Dict[str, Dict[str, np.ndarray]], Dict[str, List[Path]]]:
    """Every format of the plan (and those it derives from) built in job.tmp by its plug-in, then run
    in its own runtime on x; -> (outputs by parity-table label, files by format)."""
    opts = job.opts
    meta = lambda opset: contract.encode_metadata(build_metadata(job.ckpt, job.model, job.names, job.sha, opset,
                                                                       unsure=job.unsure_variant or job.unsure))
    ctx = job.ctx = BuildContext(wrapper, torch.from_numpy(x[:opts.batch] if opts.batch else x[:2]), job.tmp,
                                 opts.stem, job.names, meta, opts.opset, opts.batch, opts.simplify,
                                 batch_sizes=tuple(opts.tflite_batch_sizes), web_runtime=opts.web_runtime,
                                 web_webgpu=opts.web_webgpu, facts=job.facts, timings=job.timings, nodes=job.nodes)
    candidates: Dict[str, Dict[str, np.ndarray]] = {}
    for name in build_order(opts.formats):
        plugin = format_module(name)
        t = time.perf_counter()
        ctx.built[name] = plugin.build(ctx)
        job.timings[name] = time.perf_counter() - t          # the one place each format is timed
        got = plugin.outputs(ctx, ctx.built[name], x)
        facts = ctx.facts.setdefault(name, {})
        if not got and not facts.get("not_verified"):
            raise UserError(f"format {name} was built but could not be run to verify it; nothing was written")
        facts["verified"] = bool(got)                         # not verified: built, validated, never picked to run
        candidates.update(got)
    return candidates, ctx.built


def verify(job: Job, reference: Dict[str, np.ndarray], candidates: Dict[str, Dict[str, np.ndarray]],
           batch_desc: str, log: Callable[[str], None]) -> List:
    """Every candidate against eager PyTorch on every output; a failure raises before anything is written."""
    rows = parity_all(reference, candidates)
    log(f"parity vs eager PyTorch on {batch_desc} (pass: |diff| <= {ATOL:g} + {RTOL:g}*|ref|):")
    log(format_table(rows))
    failed = [r for r in rows if not r.ok]
    if failed:
        worst = max(failed, key=lambda r: r.max_abs)
        raise UserError(f"parity check failed: {worst.backend} output {worst.output} differs by "
                        f"{worst.max_abs:.3g} (tolerance {ATOL:g} + {RTOL:g}*|ref|); nothing was written")
    return rows


Staged = Dict[str, Tuple[str, Path]]   # installed file name -> (format or variant, file in job.tmp)


def stage(job: Job, built: Dict[str, List[Path]], variants: Dict[str, List[Path]]) -> Staged:
    """The verified files of the requested formats and variants: what the commit moves in. A format
    built only because another derives from it (onnx for ort alone) is not installed."""
    staged: Staged = {}
    for name in job.opts.formats:
        staged.update({p.name: (name, p) for p in built[name]})
    staged.update({p.name: (kind, p) for kind, paths in variants.items() for p in paths})
    return staged


def write_manifest(job: Job, staged: Staged, rows: List, batch_desc: str) -> dict:
    """export.json into job.tmp: each file by its final name, with its size and sha256 (a reader checks
    a set against it; a folder artifact, model.mlpackage: core.io.path_sha256 over its files), what was verified (a row per artifact and output), how each format was
    converted, the int8 gate, the overhead measured, timings and options."""
    opts, nodes = job.opts, job.nodes
    manifest = {
        "sedeploy": __version__, "checkpoint": str(job.ckpt_path), "checkpoint_sha256": job.sha,
        "model_name": job.ckpt["model_name"], "output_names": job.names,
        "opset": opts.opset if "onnx" in build_order(opts.formats) else None, "batch": opts.batch or "dynamic",
        "simplified": bool(opts.simplify and "onnx" in build_order(opts.formats)),
        "files": [{"format": kind, "path": name, "bytes": path_bytes(p), "sha256": path_sha256(p)}
                  for name, (kind, p) in staged.items()],
        "formats": {name: job.facts.get(name, {}) for name in opts.formats},
        "nodes": nodes, "verification": {"batch": batch_desc, "atol": ATOL, "rtol": RTOL,
                                         "rows": [r.to_dict() for r in rows]},
        "int8_gate": job.gate or None,
        "unsure": None if job.unsure is None else {
            **{k: v for k, v in job.unsure.items() if k != "params"},
            "variants": {name: spec["threshold"] for name, spec in job.variant_specs.items()}},
        "overhead": job.overhead,
        "timings_s": {k: round(v, 4) for k, v in job.timings.items()},
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(opts).items()},
    }
    atomic_write_text(job.tmp / job.manifest_path.name, json.dumps(manifest, indent=2))
    manifest["manifest_path"] = str(job.manifest_path)
    return manifest


def install(job: Job, staged: Staged) -> None:
    """Move the staged set in together, export.json last (commit.py); files of the old set that the new
    one lacks (an old model.int8.onnx when this export has no --int8) go with the old set."""
    files = {name: path for name, (_, path) in staged.items()}
    files[job.manifest_path.name] = job.tmp / job.manifest_path.name
    commit_files(job.out, files, job.manifest_path.name, stale=[p.name for p in export_set(job.out, job.opts.stem)])


def report(job: Job, manifest: dict, log: Callable[[str], None]) -> None:
    """The lines a user reads once the set is in place."""
    nodes = job.nodes
    for f in manifest["files"]:
        log(f"wrote {job.out / f['path']} ({f['bytes'] / 1e6:.2f} MB)")
    if nodes:
        log(f"onnx nodes: {nodes.get('raw')} -> {nodes.get('simplified', nodes.get('raw'))} after simplification"
            if "simplified" in nodes else f"onnx nodes: {nodes['raw']} (not simplified)")
    for name, facts in manifest["formats"].items():
        if not facts.get("verified", True):
            log(f"{name}: built and validated, NOT verified here ({facts.get('not_verified')}); "
                f"infer, bench and --backend auto never pick it")
    log(f"wrote {job.manifest_path}; export took {job.timings['total']:.2f} s")


FP16_ATOL, FP16_RTOL = 2e-2, 2e-2  # float16 keeps ~3 decimal digits


def _variants(job: Job, built: Dict[str, List[Path]], reference: Dict[str, np.ndarray], x: np.ndarray,
              log: Callable[[str], None]) -> Dict[str, List[Path]]:
    """int8 / fp16 variants of the verified fp32 artifacts: int8 through its gate (the ONNX graph's, and
    each native int8 format's against its own fp32 file), fp16 through parity."""
    from ..core.parity import compare
    from .quantize import calibration_images, convert_fp16, quantize_int8
    opts, ckpt, tmp = job.opts, job.ckpt, job.tmp
    out: Dict[str, List[Path]] = {}
    fp32 = built["onnx"][0] if "onnx" in opts.formats else None     # --half needs onnx (validate_options)
    if opts.int8:
        meta = {"dataset": ckpt["dataset"], "data": ckpt.get("data"), "mean": ckpt["mean"], "std": ckpt["std"]}
        calib = calibration_images(meta, opts.calib, opts.data_dir)
        if fp32 is not None:
            t = time.perf_counter()
            q = quantize_int8(fp32, tmp / f"{opts.stem}.int8.onnx", calib)
            job.timings["int8"] = time.perf_counter() - t
            check_onnx(q, "int8")
            _check_contract(reference, run_onnx(q, x), "int8")
            if job.unsure is not None:
                job.variant_specs["int8"] = variant_unsure(job, onnx_runs(q, opts.batch)(job.unsure_inputs), "int8",
                                                           log)
                _stamp_onnx(q, job.variant_specs["int8"])                # model.int8.ort is converted from q
            job.gate.update(int8_gate(onnx_runs(fp32, opts.batch), onnx_runs(q, opts.batch), ckpt, opts, log))
            out["int8"] = [q]
            out.update(_derived_int8(job, q, x, log))
        out.update(_native_int8(job, calib, reference, x, log))
    if opts.half:
        t = time.perf_counter()
        h = convert_fp16(fp32, tmp / f"{opts.stem}.fp16.onnx")
        job.timings["fp16"] = time.perf_counter() - t
        check_onnx(h, "fp16")
        got, how = _run_fp16(h, x)
        if job.unsure is not None:
            # on CPU, in chunks the graph takes: the same arithmetic wherever the export runs (tests re-measure it)
            run16 = lambda path, chunk: _run_fp16(path, chunk, cpu_only=True)[0]
            job.variant_specs["fp16"] = variant_unsure(job, _run_chunks(h, job.unsure_inputs, opts.batch, run16),
                                                       "fp16", log)
            _stamp_onnx(h, job.variant_specs["fp16"])
        _check_contract(reference, got, "fp16")
        rows = compare(reference, got, f"fp16 ({how})", atol=FP16_ATOL, rtol=FP16_RTOL)
        log(format_table(rows))
        bad = [r for r in rows if not r.ok]
        if bad:
            raise UserError(f"fp16 parity failed: output {bad[0].output} differs by {bad[0].max_abs:.3g} "
                            f"(tolerance {FP16_ATOL:g} + {FP16_RTOL:g}*|ref|); nothing was written")
        out["fp16"] = [h]
    return out


def _derived_int8(job: Job, q: Path, x: np.ndarray, log: Callable[[str], None]) -> Dict[str, Path]:
    """The int8 files of the formats derived from ONNX (model.int8.ort), converted from the gated int8
    graph and run in their own runtime against it: the same graph, so within the fp32 tolerance."""
    from ..core.parity import compare
    ref = run_onnx(q, x)
    out: Dict[str, Path] = {}
    for name in job.opts.formats:
        fmt = FORMATS[name]
        if not (fmt.int8 == "onnx" and name != "onnx"):
            continue
        plugin = format_module(name)
        paths = plugin.build_int8(job.ctx, q)
        got = next(iter(plugin.outputs(job.ctx, paths, x).values()))
        rows = compare(ref, got, f"{name} int8")
        log(f"{paths[0].name} vs {q.name} (pass: |diff| <= {ATOL:g} + {RTOL:g}*|ref|):")
        log(format_table(rows))
        bad = [r for r in rows if not r.ok]
        if bad:
            raise UserError(f"{paths[0].name} differs from {q.name}: output {bad[0].output} by {bad[0].max_abs:.3g} "
                            f"(tolerance {ATOL:g} + {RTOL:g}*|ref|); nothing was written")
        job.gate.setdefault("derived", []).extend(r.to_dict() for r in rows)
        out[f"{name}-int8"] = paths
        if "int8" in job.variant_specs:             # converted from the stamped int8 graph: its threshold
            job.variant_specs[f"{name}-int8"] = job.variant_specs["int8"]
    return out


def _native_int8(job: Job, calib: np.ndarray, reference: Dict[str, np.ndarray], x: np.ndarray,
                 log: Callable[[str], None]) -> Dict[str, List[Path]]:
    """The int8 files of the formats with their own quantizer (LiteRT, ExecuTorch): calibrated on the
    same training images as the ONNX graph, run in their own runtime, and gated against the format's
    own verified fp32 artifact by the same gate (recorded in export.json under formats.<name>.int8_gate)."""
    out: Dict[str, List[Path]] = {}
    ctx = job.ctx
    for name in job.opts.formats:
        if FORMATS[name].int8 != "native":
            continue
        plugin = format_module(name)
        t = time.perf_counter()
        paths = plugin.build_int8(ctx, calib)
        job.timings[f"{name}-int8"] = time.perf_counter() - t
        fp32_paths = ctx.built[name]
        run32 = lambda xs, p=plugin, f=fp32_paths: next(iter(p.outputs(ctx, f, xs).values()))
        run8 = lambda xs, p=plugin, f=paths: next(iter(p.outputs(ctx, f, xs).values()))
        _check_contract(reference, run8(x), f"{name} int8")
        if job.unsure is not None:                  # its own threshold, stamped into the file (or built again)
            before = run8(job.unsure_inputs)
            spec = job.unsure_variant = variant_unsure(job, before, f"{name} int8", log)
            try:
                restamp = getattr(plugin, "restamp", None)
                rebuilt = restamp(ctx, paths) if restamp else plugin.build_int8(ctx, calib)
            finally:
                job.unsure_variant = None
            if [p.name for p in rebuilt] != [p.name for p in paths]:
                raise UserError(f"{name} int8: the stamped files differ from the built ones; nothing was written")
            after = run8(job.unsure_inputs)         # the threshold belongs to the first build: the same model?
            if any(not np.allclose(after[k], before[k], rtol=RTOL, atol=ATOL) for k in before):
                raise UserError(f"{name} int8 built a second time (to carry its own 'unsure' threshold) gives other "
                                f"outputs: its quantizer is not deterministic here; export {name} without --int8, "
                                f"and report it; nothing was written")
            job.variant_specs[f"{name}-int8"] = spec
        gate = int8_gate(run32, run8, job.ckpt, job.opts, log, what=f"{name} int8")
        ctx.facts.setdefault(name, {})["int8_gate"] = gate
        ctx.facts[name]["int8"] = paths[0].name
        out[f"{name}-int8"] = paths
    return out


def _check_contract(reference: Dict[str, np.ndarray], got: Dict[str, np.ndarray], what: str) -> None:
    if list(got) != list(reference) or any(got[k].shape != reference[k].shape or got[k].dtype != np.float32
                                           for k in reference):
        raise UserError(f"{what} graph breaks the contract: outputs {list(got)} do not match "
                        f"{list(reference)} as float32; nothing was written")


def _run_fp16(path: Path, x: np.ndarray, cpu_only: bool = False) -> Tuple[Dict[str, np.ndarray], str]:
    """onnxruntime CUDA if present (unless cpu_only), else CPU, else onnx's reference evaluator (CPU has few
    fp16 kernels)."""
    import onnxruntime as ort
    cuda = "CUDAExecutionProvider" in ort.get_available_providers() and not cpu_only
    providers = ["CUDAExecutionProvider"] if cuda else []
    for prov in providers + ["CPUExecutionProvider"]:
        try:
            return run_onnx(path, x, (prov,)), f"onnxruntime {prov.replace('ExecutionProvider', '')}"
        except Exception:  # noqa: BLE001 - no fp16 kernel on this provider: next
            continue
    from onnx.reference import ReferenceEvaluator
    import onnx
    model = onnx.load(str(path))
    ev = ReferenceEvaluator(model)
    names = [o.name for o in model.graph.output]
    return dict(zip(names, ev.run(None, {model.graph.input[0].name: x}))), "onnx reference evaluator"


Runs = Callable[[np.ndarray], Dict[str, np.ndarray]]     # a batch of any size -> every output by name


def onnx_runs(path: Path, batch: Optional[int]) -> Runs:
    """An ONNX file on onnxruntime CPU as a Runs function (a fixed-batch graph gets padded chunks)."""
    return lambda xs: _run_chunks(path, xs, batch)


def int8_gate(run32: Runs, run8: Runs, ckpt: dict, opts: ExportOptions, log: Callable[[str], None],
              what: str = "int8") -> Dict[str, object]:
    """Score fp32 and int8 on labelled test images; refuse the int8 model below the thresholds.

    Agreement is the share of images where both give the same top-1 class; the accuracy drop is
    fp32 accuracy minus int8 accuracy in points; the SE outputs (which drive the heatmaps) must stay
    within int8_se_atol of fp32's. Without labelled test images the export is refused unless
    int8_allow_unlabelled, and then agreement is measured on the verification inputs alone.
    """
    from ..core.datasets import normalize_batch
    from ..core.arrays import load_arrays
    from ..core.parity import compare
    try:
        _, xs, ys = load_arrays(ckpt["dataset"], opts.data_dir, "test", ref=ckpt.get("data"))
        if list(xs.shape[1:]) != list(ckpt["input_size"]):
            raise UserError(f"test images are {list(xs.shape[1:])}, the model takes {ckpt['input_size']}")
        idx = np.random.default_rng(0).permutation(len(xs))[:opts.int8_eval]
        x, y, images = normalize_batch(xs[idx], ckpt["mean"], ckpt["std"]), ys[idx], f"{len(idx)} test images"
    except UserError as e:
        if not opts.int8_allow_unlabelled:
            raise UserError(f"the int8 gate needs labelled {ckpt['dataset']} test images ({str(e).split(';')[0]}); "
                            f"pass --data-dir, or --int8-allow-unlabelled to gate on agreement alone") from None
        x, images = verification_batch(ckpt, opts.verify_n, opts.data_dir)
        y = None
    o32, o8 = run32(x), run8(x)
    p32, p8 = o32["logits"].argmax(1), o8["logits"].argmax(1)
    se = {k: v for k, v in o32.items() if k.startswith("se")}
    se_diff = max((r.max_abs for r in compare(se, o8, "int8")), default=0.0)
    res: Dict[str, object] = {"images": images, "agreement": float((p32 == p8).mean() * 100), "se_max_abs": se_diff,
                              "min_agreement": opts.int8_min_agreement, "max_drop": opts.int8_max_drop,
                              "se_atol": opts.int8_se_atol}
    if y is not None:
        res.update(fp32_acc=float((p32 == y).mean() * 100), int8_acc=float((p8 == y).mean() * 100))
        res["drop"] = res["fp32_acc"] - res["int8_acc"]
    log(f"{what} gate on {images}: agreement with fp32 {res['agreement']:.2f}% (min {opts.int8_min_agreement:g})"
        + (f", accuracy {res['int8_acc']:.2f}% vs fp32 {res['fp32_acc']:.2f}% (drop {res['drop']:+.2f}, max "
           f"{opts.int8_max_drop:g})" if y is not None else ", no labels: accuracy not checked")
        + f", SE weights max |diff| {se_diff:.3g} (max {opts.int8_se_atol:g})")
    refusal = int8_refusal(res, opts)
    if refusal:
        raise UserError(refusal if what == "int8" else f"{what}: {refusal}")
    res["passed"] = True
    return res


def int8_refusal(res: Dict[str, object], opts: ExportOptions) -> Optional[str]:
    """The gate's verdict on its measured figures: None to accept, else why int8 is refused (first check
    that fails: agreement, then accuracy drop when labelled, then SE weights). Each threshold is inclusive."""
    fix = "calibrate on more images (--calib), relax the threshold, or export without --int8; nothing was written"
    what = res["images"]
    if res["agreement"] < opts.int8_min_agreement:
        return (f"int8 model refused: top-1 agreement with fp32 {res['agreement']:.2f}% < "
                f"{opts.int8_min_agreement:g}% (--int8-min-agreement) on {what}; {fix}")
    if "drop" in res and res["drop"] > opts.int8_max_drop:
        return (f"int8 model refused: accuracy {res['int8_acc']:.2f}% is {res['drop']:.2f} points below "
                f"fp32 ({res['fp32_acc']:.2f}%) on {what}, more than --int8-max-drop {opts.int8_max_drop:g}; {fix}")
    if res["se_max_abs"] > opts.int8_se_atol:
        return (f"int8 model refused: its SE weights differ from fp32's by up to {res['se_max_abs']:.3g} "
                f"(--int8-se-atol {opts.int8_se_atol:g}), so its heatmaps would mislead; {fix}")
    return None


def _run_chunks(path: Path, x: np.ndarray, batch: Optional[int],
                run: Callable[[Path, np.ndarray], Dict[str, np.ndarray]] = run_onnx) -> Dict[str, np.ndarray]:
    """Every output over x in chunks the graph accepts (a fixed-batch graph gets padded chunks)."""
    step = batch or 256
    parts: List[Dict[str, np.ndarray]] = []
    for i in range(0, len(x), step):
        chunk = x[i:i + step]
        n = len(chunk)
        if batch and n < batch:                               # pad the last chunk to the fixed batch
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
        parts.append({k: v[:n] for k, v in run(path, chunk).items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
