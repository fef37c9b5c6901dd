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
from ..parity import ATOL, RTOL, format_table
from ..training.checkpoint import build_model, file_sha256, load_checkpoint
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


def validate_options(opts: ExportOptions) -> None:
    bad = [f for f in opts.formats if f not in FORMATS]
    if bad or not opts.formats:
        raise UserError(f"unknown format {', '.join(bad) or '(none)'}; choose from: {', '.join(FORMATS)}")
    if not MIN_OPSET <= opts.opset <= MAX_OPSET:
        raise UserError(f"--opset {opts.opset} is not supported; choose {MIN_OPSET}..{MAX_OPSET}")
    if opts.batch is not None and opts.batch <= 0:
        raise UserError(f"--batch must be 'dynamic' or a positive integer, got {opts.batch}")


def build_metadata(ckpt: dict, model, names: List[str], sha: str, opset: Optional[int],
                   precision: str = "fp32") -> Dict[str, object]:
    import onnx
    import onnxruntime
    n_se = model.num_se_blocks
    versions = {"sedeploy": __version__, "torch": str(torch.__version__), "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__}
    try:
        import onnxsim
        versions["onnxsim"] = onnxsim.__version__
    except ImportError:
        pass
    return {
        "format_version": contract.FORMAT_VERSION,
        "classes": ckpt["classes"], "mean": ckpt["mean"], "std": ckpt["std"], "input_size": ckpt["input_size"],
        "model_name": ckpt["model_name"], "model_config": ckpt["model_config"],
        "output_names": names, "se_outputs": [n for n in names if n in contract.se_output_names(n_se)],
        "feature_map": contract.FEATURE_MAP if contract.FEATURE_MAP in names else None,
        "dataset": ckpt["dataset"], "test_accuracy": ckpt.get("metrics", {}).get("test_acc"),
        "checkpoint_sha256": sha, "versions": versions, "opset": opset,
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
    manifest_path = out / (FILENAMES["manifest"] if opts.stem == "model" else f"{opts.stem}.export.json")
    existing = [p for p in [*targets.values(), manifest_path] if p.exists()]
    if existing and not opts.force:
        raise UserError(f"{existing[0]} already exists; pass --force to overwrite or --out to write elsewhere")

    names = contract.output_names(model.num_se_blocks, opts.extras)
    wrapper = ExplainWrapper(model) if opts.extras else LogitsWrapper(model)
    x, batch_desc = verification_batch(ckpt, opts.batch or opts.verify_n)
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
            import onnx
            nodes["raw"] = node_count(onnx.load(str(raw)))
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
        rows = parity_all(reference, candidates)
        timings["verify_total"] = time.perf_counter() - t_start - sum(timings.values())
        log(f"parity vs eager PyTorch on {batch_desc} (pass: |diff| <= {ATOL:g} + {RTOL:g}*|ref|):")
        log(format_table(rows))
        failed = [r for r in rows if not r.ok]
        if failed:
            worst = max(failed, key=lambda r: r.max_abs)
            raise UserError(f"parity check failed: {worst.backend} output {worst.output} differs by "
                            f"{worst.max_abs:.3g} (tolerance {ATOL:g}); nothing was written")
        # verified: move into place
        written = {}
        if "torchscript" in opts.formats:
            os.replace(tmp / "model.ts", targets["torchscript"])
            written["torchscript"] = targets["torchscript"]
        if "onnx" in opts.formats:
            os.replace(final, targets["onnx"])
            written["onnx"] = targets["onnx"]
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
