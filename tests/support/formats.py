"""What every edge format's test checks the same way: `infer` on its file equals `infer` on model.onnx
(top-k, probabilities, heatmap channels, PNGs), and its bench row runs on the set."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
from PIL import Image


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
