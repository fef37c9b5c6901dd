"""The bench's report: int8 notes, the headline ratios, the text table, CSV and JSON files.

The headline compares onnxruntime fp32 with the best PyTorch row at each batch size (eager,
channels-last, torch.compile or TorchScript, whichever ran fastest here), not with the slowest,
and int8 with fp32 on the same CPU; the int8 rows say plainly when int8 is not faster here.
"""
from __future__ import annotations

import json
from typing import Dict, List, Optional

from ..core.io import atomic_write_text
from .backends import ARTIFACT_ROWS, PYTORCH_CPU

# The rows that run a deployable file of the set (not PyTorch, not the GPU): the headline names the fastest
ARTIFACTS = ("ort-cpu", "ort-format", "ort-cpu-int8", "ort-format-int8") + tuple(ARTIFACT_ROWS)

INT8_NOISE = 1.10     # int8/fp32 below this is "about the same" on a shared machine, not a gain


def _ips(rows, backend: str, batch: int) -> Optional[float]:
    for r in rows:
        r = r if isinstance(r, dict) else r.__dict__
        if r["backend"] == backend and r["batch"] == batch and r["status"] == "ok":
            return r["images_per_s"]
    return None


def int8_note(ratio: float) -> str:
    if ratio < 1.0:
        return f"int8 NOT faster than fp32 here ({ratio:.2f}x): use fp32 on this CPU"
    if ratio < INT8_NOISE:
        return f"int8 about as fast as fp32 here ({ratio:.2f}x, within noise)"
    return f"int8 {ratio:.2f}x fp32"


def annotate(rows: list) -> None:
    """Fill the int8 rows' note with their speed against their fp32 file at the same batch size."""
    fp32_of = {"ort-cpu-int8": "ort-cpu", "ort-format-int8": "ort-format",
               **{n: n[:-len("-int8")] for n, (_, q) in ARTIFACT_ROWS.items() if q}}
    for r in rows:
        if r.backend in fp32_of and r.status == "ok":
            fp32 = _ips(rows, fp32_of[r.backend], r.batch)
            if fp32:
                r.note = int8_note(r.images_per_s / fp32)


def headline(rows: List[dict]) -> Dict[str, dict]:
    """{batch: {ort_fp32, best_pytorch, best_pytorch_backend, ort_vs_best_pytorch, int8_vs_fp32,
    ort_format_vs_onnx (images/s of model.ort over model.onnx, both on onnxruntime)}}."""
    out = {}
    for b in sorted({r["batch"] for r in rows}):
        ort = _ips(rows, "ort-cpu", b)
        torch_rows = {n: _ips(rows, n, b) for n in PYTORCH_CPU}
        torch_rows = {n: v for n, v in torch_rows.items() if v}
        best = max(torch_rows, key=torch_rows.get) if torch_rows else None
        int8 = _ips(rows, "ort-cpu-int8", b)
        ortf = _ips(rows, "ort-format", b)
        arts = {n: _ips(rows, n, b) for n in ARTIFACTS}
        arts = {n: v for n, v in arts.items() if v and _agrees(rows, n, b)}
        fastest = max(arts, key=arts.get) if arts else None
        out[str(b)] = {"fastest_artifact": fastest, "fastest_artifact_ips": arts.get(fastest),
                       "fastest_vs_best_pytorch": arts[fastest] / torch_rows[best] if fastest and best else None,
                       "fastest_vs_ort_fp32": arts[fastest] / ort if fastest and ort else None,
                       "ort_fp32": ort, "best_pytorch_backend": best,
                       "best_pytorch": torch_rows.get(best) if best else None,
                       "ort_vs_best_pytorch": ort / torch_rows[best] if ort and best else None,
                       "int8_vs_fp32": int8 / ort if int8 and ort else None,
                       "ort_format_vs_onnx": ortf / ort if ortf and ort else None}
    return out


def _agrees(rows, backend: str, batch: int, min_agreement: float = 98.0) -> bool:
    """A row whose top-1 agreement with eager PyTorch was measured and is at least min_agreement % (the
    int8 gate's default), or was not measured (no checkpoint): a file that disagrees is never 'fastest'."""
    for r in rows:
        r = r if isinstance(r, dict) else r.__dict__
        if r["backend"] == backend and r["batch"] == batch:
            if r.get("verified") is False:           # not verified at export, or changed since
                return False
            return r.get("top1_agreement") is None or r["top1_agreement"] >= min_agreement
    return False


def _fmt(v, spec: str, empty: str = "-") -> str:
    return empty if v is None else format(v, spec)


def format_table(res: dict) -> str:
    h = res["header"]
    sg = h["sgemm"]
    lines = [f"sedeploy bench  {h['model']}",
             f"machine: {h['machine']};  GPU: {h['gpu']}",
             f"ISA: {h['isa']}" + (f";  onnxruntime sees: {h['onnxruntime_sees']}" if h.get("onnxruntime_sees")
                                   else ""),
             "versions: " + ", ".join(f"{k} {v}" for k, v in h["versions"].items()),
             f"timing: {h['method']}",
             f"accuracy: {h['data']};  FLOPs/image {h['flops_per_image'] / 1e6:.1f} M",
             f"fp32 peak: nominal {h['cpu_peak']['peak_flops'] / 1e9:.0f} GFLOP/s ({h['cpu_peak']['formula']}); "
             f"measured SGEMM {sg['flops'] / 1e9:.0f} GFLOP/s ({sg['library']}, {sg['n']}x{sg['n']})", ""]
    cols = f"{'backend':<16}{'batch':>6} {'size MB':>8} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'img/s':>10} " \
           f"{'top-1 %':>8} {'max|dlogit|':>12} {'agree %':>8} {'%peak':>6} {'%sgemm':>7}  status"
    lines += [cols, "-" * len(cols)]
    for r in res["rows"]:
        status = r["status"] + (f"; {r['note']}" if r.get("note") else "")
        lines.append(
            f"{r['backend']:<16}{r['batch']:>6} {_fmt(r['size_mb'], '8.2f'):>8} {_fmt(r['p50_ms'], '9.3f'):>9} "
            f"{_fmt(r['p90_ms'], '9.3f'):>9} {_fmt(r['p99_ms'], '9.3f'):>9} {_fmt(r['images_per_s'], '10,.0f'):>10} "
            f"{_fmt(r['accuracy'], '8.2f'):>8} {_fmt(r['max_abs_diff'], '12.2e'):>12} "
            f"{_fmt(r['top1_agreement'], '8.1f'):>8} {_fmt(r['peak_pct'], '6.1f'):>6} "
            f"{_fmt(r.get('sgemm_pct'), '7.1f'):>7}  {status}")
    lines += [""] + summary_lines(res.get("summary", {}))
    return "\n".join(lines)


def summary_lines(summary: Dict[str, dict]) -> List[str]:
    lines = []
    for b, s in summary.items():
        parts = []
        if s.get("fastest_artifact"):
            vs = [f"{s[k]:.2f}x {what}" for k, what in (("fastest_vs_best_pytorch", "the best PyTorch row"),
                                                         ("fastest_vs_ort_fp32", "onnxruntime fp32")) if s.get(k)]
            parts.append(f"fastest file: {s['fastest_artifact']} ({s['fastest_artifact_ips']:,.0f} img/s"
                         + (f", {', '.join(vs)}" if vs else "") + ")")
        if s["ort_vs_best_pytorch"]:
            parts.append(f"onnxruntime fp32 {s['ort_vs_best_pytorch']:.2f}x the best PyTorch row "
                         f"({s['best_pytorch_backend']})")
        if s["int8_vs_fp32"]:
            parts.append(int8_note(s["int8_vs_fp32"]))
        if s.get("ort_format_vs_onnx"):
            parts.append(f"model.ort {s['ort_format_vs_onnx']:.2f}x model.onnx (images/s, both on onnxruntime)")
        if parts:
            lines.append(f"batch {b}: " + "; ".join(parts))
    return lines


def write_csv(res: dict, path: str) -> None:
    import csv
    import io
    buf = io.StringIO()
    rows = res["rows"]
    w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["backend"])
    w.writeheader()
    for r in rows:
        w.writerow(r)
    atomic_write_text(path, buf.getvalue())


def to_json(res: dict) -> str:
    return json.dumps(res, indent=2, default=str)


def write_json(res: dict, path: str) -> None:
    atomic_write_text(path, to_json(res))
