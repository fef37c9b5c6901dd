"""Mutation score of the modules whose mistakes are silent (issue 14): reruns docs/MUTATION.md's figures.

For each module: copy src/, tests/, setup.cfg into a scratch folder, add a [mutmut] section that
mutates that module alone and runs only the fast tests that cover it, run `mutmut run` (niced: the
machine is shared), then read mutmut's own counts and list every surviving mutant with its diff.
Usage: python scripts/mutation.py [--only parity,contract] [--jobs 2] [--work /tmp/sedeploy-mutation]
Needs mutmut 3 (pip install 'mutmut>=3.3'); the tool's folders live under --work, never in the repo.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# module -> (files to mutate, pytest selection: the fast, socket-free tests that cover it)
MODULES = {
    "parity": (["src/sedeploy/core/parity.py"], ["tests/test_parity_contract.py"]),
    "contract": (["src/sedeploy/core/contract.py"], ["tests/test_parity_contract.py"]),
    "protocol": (["src/sedeploy/serve/protocol.py"], ["tests/test_protocol.py", "tests/test_serve.py", "-k", "protocol"]),
    "batcher": (["src/sedeploy/serve/batcher.py"], ["tests/test_batcher.py", "tests/test_serve.py", "-k",
                                                  "batcher or take_batch"]),
    "split": (["src/sedeploy/core/folder/split.py"], ["tests/test_split.py"]),
    "int8 gate": (["src/sedeploy/export/exporter.py"], ["tests/test_int8_gate.py"]),
    "preprocess": (["src/sedeploy/core/decode.py", "src/sedeploy/runtime/preprocess.py"], ["tests/test_preprocess.py"]),
    "heatmap": (["src/sedeploy/runtime/explain.py"], ["tests/test_heatmap.py", "tests/test_faithfulness.py"]),
}
# Where only some functions of a file count (mutmut names mutants by function): the int8 gate is one
# function of exporter.py; of explain.py the heatmap arrays count (the PNG layout, runtime/render.py, is
# not measured: pixel offsets and captions, mistakes one sees).
ONLY_FUNCTIONS = {"int8 gate": ("int8_refusal",),
                  "heatmap": ("normalize01", "se_attention", "spatial_mean_scores", "spatial_mean_attention",
                              "top_channels", "upsample", "colormap")}


# the batcher's tests wait for real (up to 2 s): a mutant that hangs is stopped at 3x, not mutmut's 15x
EXTRA = {"batcher": ["timeout_multiplier = 3.0"]}


def config(files, selection, extra=()) -> str:
    lines = ["", "[mutmut]", "source_paths = src", *extra, "only_mutate ="] + [f"    {f}" for f in files]
    lines += ["pytest_add_cli_args_test_selection ="] + [f"    {a}" for a in selection]
    lines += ["pytest_add_cli_args =", "    -p", "    no:cacheprovider", "    -m", "    not slow", "    -q",
              "    -x", "    --timeout=120"]
    return "\n".join(lines) + "\n"


def run_module(name: str, work: Path, jobs: int) -> dict:
    files, selection = MODULES[name]
    d = work / name.replace(" ", "_")
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    for part in ("src", "tests"):
        shutil.copytree(ROOT / part, d / part, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (d / "setup.cfg").write_text((ROOT / "setup.cfg").read_text() + config(files, selection, EXTRA.get(name, ())))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    mutmut = [sys.executable, "-m", "mutmut"]
    keep = ONLY_FUNCTIONS.get(name)
    module = files[0][len("src/"):-len(".py")].replace("/", ".")
    only = [f"{module}.x_{fn}__mutmut_*" for fn in keep] if keep else []
    with open(d / "mutmut-run.log", "w") as log:          # mutmut's progress bar: kept out of the summary
        subprocess.run(["nice", "-n", "10", *mutmut, "run", "--max-children", str(jobs), *only], cwd=d, env=env,
                       stdout=log, stderr=subprocess.STDOUT, check=False)
    print(f"{name}: mutmut done (log: {d / 'mutmut-run.log'})", flush=True)
    out = subprocess.run([*mutmut, "results", "--all", "true"], cwd=d, env=env, capture_output=True, text=True).stdout
    status = {}
    for line in out.splitlines():
        if ":" in line and line.strip().startswith("sedeploy"):
            k, v = line.strip().rsplit(":", 1)
            status[k.strip()] = v.strip()
    left_out = 0
    if keep:
        mine = {k: v for k, v in status.items() if any(f".x_{fn}__mutmut_" in k for fn in keep)}
        left_out, status = len(status) - len(mine), mine
    counts = {s: list(status.values()).count(s) for s in sorted(set(status.values()))}
    killed = counts.get("killed", 0) + counts.get("timeout", 0)
    tested = sum(v for k, v in counts.items() if k not in ("skipped", "not checked"))
    survivors = {k: subprocess.run([*mutmut, "show", k], cwd=d, env=env, capture_output=True, text=True).stdout
                 for k, v in status.items() if v == "survived"}
    return {"module": name, "files": files, "tests": selection, "counts": counts, "mutants": len(status),
            "score": round(100 * killed / tested, 1) if tested else None, "survivors": survivors,
            "not_counted": left_out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(MODULES), help="comma-separated module names")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/sedeploy-mutation"))
    ap.add_argument("--json", type=Path, help="also write the results here")
    a = ap.parse_args()
    results = [run_module(m.strip(), a.work, a.jobs) for m in a.only.split(",")]
    print(f"\n{'module':<12} {'mutants':>7} {'killed':>6} {'survived':>8} {'timeout':>7} {'score':>6}")
    for r in results:
        c = r["counts"]
        print(f"{r['module']:<12} {r['mutants']:>7} {c.get('killed', 0):>6} {c.get('survived', 0):>8} "
              f"{c.get('timeout', 0):>7} {r['score']!s:>6}")
    for r in results:
        for k, diff in r["survivors"].items():
            print(f"\n--- survived: {k}\n{diff}")
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
