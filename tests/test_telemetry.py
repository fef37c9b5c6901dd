"""No usage data leaves the machine: onnxruntime's telemetry (on by default in its Linux builds since
1.32: a device id, an event cache under ~/.cache/Microsoft, DNS lookups of its collector) stays off
when sedeploy is imported first, as every sedeploy entry point does. The control run without sedeploy
shows the check can fail (skipped where the installed onnxruntime collects nothing)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import {first}
import numpy as np, onnxruntime as ort
s = ort.InferenceSession({model!r}, providers=["CPUExecutionProvider"])
s.run(None, {{s.get_inputs()[0].name: np.zeros((1, 1, 32, 32), np.float32)}})
"""
CI_VARS = ("CI", "TF_BUILD", "GITHUB_ACTIONS", "BUILD_BUILDID", "ORT_DISABLE_TELEMETRY", "ORT_TELEMETRY_DISABLED")


def run(first: str, model: Path, home: Path) -> set:
    env = {k: v for k, v in os.environ.items() if k not in CI_VARS}     # CI suppresses it: test as a user runs
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"))
    subprocess.run([sys.executable, "-c", SCRIPT.format(first=first, model=str(model))], env=env, check=True,
                   timeout=120)
    return {p.relative_to(home).as_posix() for p in home.rglob("*") if p.is_file()}


def test_onnxruntime_telemetry_is_off_under_sedeploy(fm_onnx, tmp_path):
    control = run("sys", fm_onnx, tmp_path / "plain")
    if not any("Microsoft" in p for p in control):
        pytest.skip("this onnxruntime build collects no telemetry (nothing written without sedeploy either)")
    assert run("sedeploy", fm_onnx, tmp_path / "ours") == set()
