"""What every edge format's test does the same way: export the tiny model as onnx + the format, check that
`infer` on its file equals `infer` on model.onnx (top-k, probabilities, heatmap channels, PNGs), and that its
bench row runs on the set (status, file, size of all its files, agreement with onnxruntime)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Sequence, Tuple

import numpy as np
from PIL import Image


def export_set(trained_fm: Path, fmnist_dir: Path, out: Path, fmt: str, **options) -> Path:
    """The tiny trained model exported as model.onnx + FORMAT into OUT (calibration data: fmnist_dir)."""
    from sedeploy.export.exporter import ExportOptions, export_checkpoint
    export_checkpoint(str(trained_fm / "best.pt"), str(out),
                      ExportOptions(formats=("onnx", fmt), data_dir=str(fmnist_dir), **options), log=lambda s: None)
    return out


def onnx_weight_bytes(path: Path) -> int:
    """Bytes of an ONNX file's initializers (its weights, without the metadata the file also carries)."""
    import onnx
    from onnx import numpy_helper
    return sum(numpy_helper.to_array(t).nbytes for t in onnx.load(str(path)).graph.initializer)


def assert_infer_equals_onnx(run_cli, set_dir: Path, suffix: str, provider: str, tmp_path: Path) -> None:
    """Three odd-sized grey images through `infer --heatmaps --json` on model.onnx and on model.<suffix>."""
    rng = np.random.default_rng(2)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (30, 26), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    recs = {}
    for s in ("onnx", suffix):
        r = run_cli("infer", tmp_path, "--model", set_dir / f"model.{s}", "--heatmaps", tmp_path / s, "--json",
                    "--topk", "3")
        assert r.code == 0, r.err
        recs[s] = [json.loads(line) for line in r.out.splitlines()]
    assert len(recs["onnx"]) == 3
    for a, b in zip(recs["onnx"], recs[suffix]):
        assert b["provider"] == provider
        assert [t["index"] for t in a["top"]] == [t["index"] for t in b["top"]]
        assert all(abs(x["prob"] - y["prob"]) <= 1e-4 for x, y in zip(a["top"], b["top"]))
        assert a["heatmaps"]["top_channels"] == b["heatmaps"]["top_channels"]
        assert Image.open(b["heatmaps"]["files"]["heatmap"]).format == "PNG"


def bench_rows(run_cli, set_dir: Path, backends: str, data_dir: Path) -> Dict[Tuple[str, int], dict]:
    """`bench --model SET` on the given rows at batch 1 and 3, quickly: (backend, batch) -> row."""
    r = run_cli("bench", "--model", set_dir, "--backends", backends, "--batch-sizes", "1,3", "--warmup", "1",
                "--min-time", "0", "--repeats", "1", "--data-dir", data_dir, "--limit", "40", "--json")
    assert r.code == 0, r.err
    return {(x["backend"], x["batch"]): x for x in json.loads(r.out)["rows"]}


def assert_bench_row(run_cli, set_dir: Path, fmt: str, files: Sequence[str], data_dir: Path, atol: float) -> dict:
    """FORMAT's bench row on the set runs, names its first file, counts all FILES in its size, agrees with
    onnxruntime's row (outputs within ATOL, same accuracy) and is marked verified from export.json."""
    by = bench_rows(run_cli, set_dir, f"ort-cpu,{fmt}", data_dir)
    row, ref = by[(fmt, 1)], by[("ort-cpu", 1)]
    assert by[(fmt, 3)]["status"] == "ok" and row["file"] == files[0]
    assert row["size_mb"] == round(sum((set_dir / f).stat().st_size for f in files) / 1e6, 3)
    assert by[(fmt, 3)]["max_abs_diff"] <= atol and row["accuracy"] == ref["accuracy"]
    assert row["verified"] is True and ref["verified"] is True
    return by
