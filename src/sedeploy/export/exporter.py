"""Export a checkpoint: model.onnx (simplified), model.ts, export.json, verified on every output.

One function per format (torchscript.py, onnx_export.py), each returning the written path; this
wrapper times them, reports sizes, verifies, and writes the manifest (after ultralytics'
exporter). Files are built in a temporary folder beside the destination and moved into place
only after verification passed, so a failed export leaves nothing behind.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from .. import __version__, contract
from ..errors import UserError, atomic_write_text, ensure_writable_dir
from ..versions import versions
from ..parity import ATOL, RTOL, format_table
from ..checkpoint import build_model, file_sha256, load_checkpoint
from .onnx_export import export_onnx, node_count
from .simplify import simplify_onnx
from .torchscript import export_torchscript, load_torchscript
from .verify import check_onnx, parity_all, run_onnx, run_torch, verification_batch
from .wrappers import ExplainWrapper, LogitsWrapper

FORMATS = ("onnx", "torchscript")
FILENAMES = {"onnx": "model.onnx", "torchscript": "model.ts", "manifest": "export.json"}
MIN_OPSET, MAX_OPSET = 11, 20


@dataclass
class ExportOptions:
    formats: Tuple[str, ...] = FORMATS  # which artifacts to write
    opset: int = 17                     # ONNX opset
    batch: Optional[int] = None         # None: dynamic batch axis; else a fixed batch size
    simplify: bool = True               # run onnxsim (failure fails the export)
    force: bool = False                 # overwrite existing outputs
    extras: bool = True                 # SE weights + feature map outputs (False: logits only)
    verify_n: int = 16                  # verification batch size (dynamic exports)
    stem: str = "model"                 # output file stem (model.onnx, model.ts)
    int8: bool = False                  # also write <stem>.int8.onnx (static int8)
    calib: int = 512                    # training images for int8 calibration
    half: bool = False                  # also write <stem>.fp16.onnx (float16, float32 I/O)
    data_dir: Optional[str] = None      # dataset root (calibration / verification images)


def validate_options(opts: ExportOptions) -> None:
    bad = [f for f in opts.formats if f not in FORMATS]
    if bad or not opts.formats:
        raise UserError(f"unknown format {', '.join(bad) or '(none)'}; choose from: {', '.join(FORMATS)}")
    if not MIN_OPSET <= opts.opset <= MAX_OPSET:
        raise UserError(f"--opset {opts.opset} is not supported; choose {MIN_OPSET}..{MAX_OPSET}")
    if opts.batch is not None and opts.batch <= 0:
        raise UserError(f"--batch must be 'dynamic' or a positive integer, got {opts.batch}")
    if (opts.int8 or opts.half) and "onnx" not in opts.formats:
        raise UserError("--int8 and --half derive from the ONNX export; include onnx in --formats")
    if opts.int8 and opts.calib <= 0:
        raise UserError(f"--calib must be positive, got {opts.calib}")


def build_metadata(ckpt: dict, model, names: List[str], sha: str, opset: Optional[int],
                   precision: str = "fp32") -> Dict[str, object]:
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
    }


def export_checkpoint(ckpt_path: str, out_dir: Optional[str] = None, opts: ExportOptions = ExportOptions(),
                      log: Callable[[str], None] = print) -> dict:
    """Run the whole export; returns the manifest (also written as export.json)."""
    validate_options(opts)
    t_start = time.perf_counter()
    ckpt_path = Path(ckpt_path)
    ckpt = load_checkpoint(ckpt_path)
    model = build_model(ckpt, str(ckpt_path))
    out = ensure_writable_dir(Path(out_dir) if out_dir else ckpt_path.parent)
    targets = {f: out / f"{opts.stem}{Path(FILENAMES[f]).suffix}" for f in opts.formats}
    if opts.int8:
        targets["int8"] = out / f"{opts.stem}.int8.onnx"
    if opts.half:
        targets["fp16"] = out / f"{opts.stem}.fp16.onnx"
    manifest_path = out / (FILENAMES["manifest"] if opts.stem == "model" else f"{opts.stem}.export.json")
    existing = [p for p in [*targets.values(), manifest_path] if p.exists()]
    if existing and not opts.force:
        raise UserError(f"{existing[0]} already exists; pass --force to overwrite or --out to write elsewhere")

    names = contract.output_names(model.num_se_blocks, opts.extras)
    wrapper = ExplainWrapper(model) if opts.extras else LogitsWrapper(model)
    x, batch_desc = verification_batch(ckpt, opts.batch or opts.verify_n, opts.data_dir)
    example = torch.from_numpy(x[:opts.batch] if opts.batch else x[:2])
    sha = file_sha256(ckpt_path)
    timings: Dict[str, float] = {}
    nodes: Dict[str, int] = {}
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=str(out)))
    try:
        reference = run_torch(wrapper, x, names)
        candidates: Dict[str, Dict[str, np.ndarray]] = {}
        if "torchscript" in opts.formats:
            t = time.perf_counter()
            meta = contract.encode_metadata(build_metadata(ckpt, model, names, sha, None))
            ts_path = export_torchscript(wrapper, example, tmp / "model.ts", meta)
            timings["torchscript"] = time.perf_counter() - t
            reloaded, _ = load_torchscript(ts_path, ())
            candidates["torchscript"] = run_torch(reloaded, x, names)
        if "onnx" in opts.formats:
            t = time.perf_counter()
            meta = contract.encode_metadata(build_metadata(ckpt, model, names, sha, opts.opset))
            raw = export_onnx(wrapper, example, tmp / "raw.onnx", names, opts.opset, opts.batch is None, meta)
            timings["onnx_export"] = time.perf_counter() - t
            check_onnx(raw)
            candidates["onnx raw"] = run_onnx(raw, x)
            final = raw
            if opts.simplify:
                t = time.perf_counter()
                final = tmp / "simplified.onnx"
                nodes["raw"], nodes["simplified"] = simplify_onnx(raw, final)
                timings["simplify"] = time.perf_counter() - t
                check_onnx(final)
                candidates["onnx simplified"] = run_onnx(final, x)
            else:
                import onnx
                nodes["raw"] = node_count(onnx.load(str(raw)))
        rows = parity_all(reference, candidates)
        timings["verify_total"] = time.perf_counter() - t_start - sum(timings.values())
        log(f"parity vs eager PyTorch on {batch_desc} (pass: |diff| <= {ATOL:g} + {RTOL:g}*|ref|):")
        log(format_table(rows))
        failed = [r for r in rows if not r.ok]
        if failed:
            worst = max(failed, key=lambda r: r.max_abs)
            raise UserError(f"parity check failed: {worst.backend} output {worst.output} differs by "
                            f"{worst.max_abs:.3g} (tolerance {ATOL:g}); nothing was written")
        variants = _variants(final, tmp, ckpt, opts, reference, x, timings, log) if opts.int8 or opts.half else {}
        # verified: move into place
        written = {}
        if "torchscript" in opts.formats:
            os.replace(tmp / "model.ts", targets["torchscript"])
            written["torchscript"] = targets["torchscript"]
        if "onnx" in opts.formats:
            os.replace(final, targets["onnx"])
            written["onnx"] = targets["onnx"]
        for kind, path in variants.items():
            os.replace(path, targets[kind])
            written[kind] = targets[kind]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    timings["total"] = time.perf_counter() - t_start
    manifest = {
        "sedeploy": __version__, "checkpoint": str(ckpt_path), "checkpoint_sha256": sha,
        "model_name": ckpt["model_name"], "output_names": names, "opset": opts.opset if "onnx" in opts.formats else None,
        "batch": opts.batch or "dynamic", "simplified": bool(opts.simplify and "onnx" in opts.formats),
        "files": [{"format": f, "path": p.name, "bytes": p.stat().st_size, "sha256": file_sha256(p)}
                  for f, p in written.items()],
        "nodes": nodes, "verification": {"batch": batch_desc, "atol": ATOL, "rtol": RTOL,
                                         "rows": [r.to_dict() for r in rows]},
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(opts).items()},
    }
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2))
    for f in manifest["files"]:
        log(f"wrote {out / f['path']} ({f['bytes'] / 1e6:.2f} MB)")
    if nodes:
        log(f"onnx nodes: {nodes.get('raw')} -> {nodes.get('simplified', nodes.get('raw'))} after simplification"
            if "simplified" in nodes else f"onnx nodes: {nodes['raw']} (not simplified)")
    log(f"wrote {manifest_path}; export took {timings['total']:.2f} s")
    manifest["manifest_path"] = str(manifest_path)
    return manifest


def _variants(fp32: Path, tmp: Path, ckpt: dict, opts: ExportOptions, reference: Dict[str, np.ndarray],
              x: np.ndarray, timings: Dict[str, float], log: Callable[[str], None]) -> Dict[str, Path]:
    """int8 / fp16 variants of the verified fp32 graph, each checked against eager PyTorch."""
    from ..parity import compare
    from .quantize import calibration_images, convert_fp16, quantize_int8
    out: Dict[str, Path] = {}
    if opts.int8:
        t = time.perf_counter()
        meta = {"dataset": ckpt["dataset"], "data": ckpt.get("data"), "mean": ckpt["mean"], "std": ckpt["std"]}
        q = quantize_int8(fp32, tmp / "model.int8.onnx", calibration_images(meta, opts.calib, opts.data_dir))
        timings["int8"] = time.perf_counter() - t
        check_onnx(q)
        got = run_onnx(q, x)
        _check_contract(reference, got, "int8")
        agree = float((got["logits"].argmax(1) == reference["logits"].argmax(1)).mean() * 100)
        diff = float(np.abs(got["logits"] - reference["logits"]).max())
        log(f"int8 ({opts.calib} calibration images): top-1 agreement with PyTorch {agree:.1f}% on {len(x)} inputs, "
            f"max |logit diff| {diff:.3g}")
        out["int8"] = q
    if opts.half:
        t = time.perf_counter()
        h = convert_fp16(fp32, tmp / "model.fp16.onnx")
        timings["fp16"] = time.perf_counter() - t
        check_onnx(h)
        got, how = _run_fp16(h, x)
        _check_contract(reference, got, "fp16")
        rows = compare(reference, got, f"fp16 ({how})", atol=FP16_ATOL, rtol=FP16_RTOL)
        log(format_table(rows))
        bad = [r for r in rows if not r.ok]
        if bad:
            raise UserError(f"fp16 parity failed: output {bad[0].output} differs by {bad[0].max_abs:.3g} "
                            f"(tolerance {FP16_ATOL:g} + {FP16_RTOL:g}*|ref|); nothing was written")
        out["fp16"] = h
    return out


FP16_ATOL, FP16_RTOL = 2e-2, 2e-2  # float16 keeps ~3 decimal digits


def _check_contract(reference: Dict[str, np.ndarray], got: Dict[str, np.ndarray], what: str) -> None:
    if list(got) != list(reference) or any(got[k].shape != reference[k].shape or got[k].dtype != np.float32
                                           for k in reference):
        raise UserError(f"{what} graph breaks the contract: outputs {list(got)} do not match "
                        f"{list(reference)} as float32; nothing was written")


def _run_fp16(path: Path, x: np.ndarray) -> Tuple[Dict[str, np.ndarray], str]:
    """onnxruntime CUDA if present, else CPU, else onnx's reference evaluator (CPU has few fp16 kernels)."""
    import onnxruntime as ort
    providers = ["CUDAExecutionProvider"] if "CUDAExecutionProvider" in ort.get_available_providers() else []
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
