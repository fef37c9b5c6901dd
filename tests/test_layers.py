"""The layering is a checked rule: import-linter's contracts (setup.cfg [importlinter]) hold on the
package, and fail on a copy of it with a violation planted (torch in the runtime, training in the
core, an import cycle), so the check itself is known to bite."""
from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / "setup.cfg"


def lint_imports(pythonpath: Path, config: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", code, "--config", str(config), "--no-cache"],
                          capture_output=True, text=True, env=env, timeout=300, cwd=str(pythonpath))


def test_contracts_are_declared():
    cfg = configparser.ConfigParser()
    cfg.read(SETUP)
    types = {cfg[s]["type"] for s in cfg.sections() if s.startswith("importlinter:contract:")}
    assert types == {"layers", "forbidden", "acyclic_siblings"}
    forbidden = cfg["importlinter:contract:device-side"]["forbidden_modules"].split()
    assert {"torch", "onnx", "sedeploy.training", "sedeploy.export"} <= set(forbidden)


def test_contracts_hold():
    proc = lint_imports(ROOT / "src", SETUP)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory):
    base = tmp_path_factory.mktemp("layers")
    shutil.copytree(ROOT / "src" / "sedeploy", base / "sedeploy", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(SETUP, base / "setup.cfg")
    return base


def _plant(base: Path, rel: str, line: str, in_function: bool) -> str:
    path = base / "sedeploy" / rel
    old = path.read_text()
    # a lazy import inside a function counts as much as one at the top
    extra = f"\n\ndef _planted():\n    {line}\n" if in_function else f"\n{line}\n"
    path.write_text(old + extra)
    return old


DEVICE, LAYERS, CYCLE = "never imports torch", "Layers", "No import cycle"


@pytest.mark.parametrize("rel, line, contracts", [
    ("runtime/explain.py", "import torch", {DEVICE}),
    ("serve/batcher.py", "from ..export import exporter", {DEVICE, LAYERS}),       # and upward
    ("core/parity.py", "from ..runtime import model", {LAYERS, CYCLE}),    # runtime imports core
    ("core/folder/__init__.py", "from ..arrays import load_arrays", {CYCLE}),     # the old datasets <-> folder
])
def test_a_planted_violation_breaks_a_contract(package_copy, rel, line, contracts):
    old = _plant(package_copy, rel, line, in_function=True)
    try:
        proc = lint_imports(package_copy, package_copy / "setup.cfg")
    finally:
        (package_copy / "sedeploy" / rel).write_text(old)
    assert proc.returncode != 0, proc.stdout[-2000:]
    cfg = configparser.ConfigParser()
    cfg.read(SETUP)
    names = [cfg[s]["name"] for s in cfg.sections() if s.startswith("importlinter:contract:")]
    joined = " ".join(proc.stdout.split())  # the report wraps long contract names
    broken = [n for n in names if f"{n} BROKEN" in joined]
    assert {c for c in contracts for n in broken if c in n} == contracts, proc.stdout[-2000:]
    assert len(broken) == len(contracts), proc.stdout[-2000:]


# ---------------------------------------------------------------- what import-linter cannot see
DEVICE_SIDE = ("core", "runtime", "serve")


def _forbidden() -> set:
    cfg = configparser.ConfigParser()
    cfg.read(SETUP)
    return set(cfg["importlinter:contract:device-side"]["forbidden_modules"].split())


def _dynamic_imports(path: Path):
    """Literal module names given to importlib.import_module / __import__ in a file: (line, name)."""
    import ast
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                yield node.lineno, node.args[0].value


def test_no_dynamic_import_of_a_forbidden_module_on_the_device_side():
    """import-linter reads import statements only: a literal importlib.import_module("torch") in the
    runtime would slip through it, so the device side's literal dynamic imports are checked here."""
    forbidden = _forbidden()
    bad = [f"{p.relative_to(ROOT)}:{line} imports {name}"
           for part in DEVICE_SIDE for p in sorted((ROOT / "src" / "sedeploy" / part).rglob("*.py"))
           for line, name in _dynamic_imports(p)
           if any(name == f or name.startswith(f + ".") for f in forbidden)]
    assert not bad, bad


def test_the_check_of_dynamic_imports_bites(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("import importlib\ndef f():\n    importlib.import_module('torch.nn')\n    __import__('onnx')\n")
    assert [n for _, n in _dynamic_imports(p)] == ["torch.nn", "onnx"]


def test_runners_need_no_forbidden_package():
    """The runner registry imports each runtime by name at run time: none may be torch or onnx."""
    from sedeploy.runtime.runners import RUNNERS
    forbidden = _forbidden()
    assert not [n for n, impl in RUNNERS.items() if impl.requires.split(".")[0] in forbidden]


# ExecuTorch's Python runtime links libtorch and takes torch tensors: its runner lives in sedeploy.torch_runners,
# above the runtime and forbidden to the device side, which keeps its contract without any exception.
def test_no_exception_to_the_contracts_and_the_torch_runner_lives_outside_the_device_side():
    cfg = configparser.ConfigParser()
    cfg.read(SETUP)
    assert not [s for s in cfg.sections() if s.startswith("importlinter:contract:")
                and cfg[s].get("ignore_imports", "").strip()]
    assert "sedeploy.torch_runners" in cfg["importlinter:contract:device-side"]["forbidden_modules"].split()
    from sedeploy.runtime.runners import RUNNERS
    assert RUNNERS["executorch"].target.startswith("sedeploy.torch_runners.") and "torch" in RUNNERS["executorch"].hint
    assert not (ROOT / "src" / "sedeploy" / "runtime" / "runners" / "executorch.py").exists()


def test_a_torch_import_in_a_device_side_runner_breaks_the_contract(package_copy):
    """`import torch` planted (inside a function, as the ExecuTorch runner has it) in the ncnn runner breaks
    the device-side contract: no runner under runtime/ may bring torch."""
    old = _plant(package_copy, "runtime/runners/ncnn.py", "import torch", in_function=True)
    try:
        proc = lint_imports(package_copy, package_copy / "setup.cfg")
    finally:
        (package_copy / "sedeploy" / "runtime/runners/ncnn.py").write_text(old)
    assert proc.returncode != 0 and DEVICE in " ".join(proc.stdout.split()), proc.stdout[-2000:]
