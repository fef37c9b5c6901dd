"""Folder inference speed: `sedeploy infer DIR --json` of this checkout (exact and --fast-decode) against
another checkout (e.g. the code before issue 11), as processes, interleaved, in one run.

    git archive 24d9a33 | tar -x -C /tmp/sedeploy-before
    .venv/bin/python scripts/make_jpegs.py --out runs/jpegs --n 400
    .venv/bin/python scripts/folder_speed.py --folder runs/jpegs --model runs/fm/model.onnx \\
        --baseline /tmp/sedeploy-before/src [--rounds 5] [--small 20]

Every round runs each candidate on the folder and on its first --small images (order rotated per
round), so that steady-state images/s = (N - small) / (t_N - t_small) excludes start-up. Figures
are medians over rounds; ratios are against the baseline. Also prints the model's share of the
time (from infer's summary line) and the fast path's drift on the folder.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")


def run(src: str, folder: str, model: str, extra):
    env = {**os.environ, "PYTHONPATH": src}
    cmd = [sys.executable, "-m", "sedeploy", "infer", folder, "--model", model, "--json", *extra]
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {p.stderr[-500:]}")
    share = re.search(r"the model (\d+) %", p.stderr)
    return dt, len(p.stdout.splitlines()), float(share.group(1)) if share else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--baseline", required=True, help="src/ folder of the checkout to compare against")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--small", type=int, default=20)
    a = ap.parse_args()
    from sedeploy.core.hardware import cpu_name, isa_summary
    files = sorted(Path(a.folder).glob("*.jpg"))
    cands = {"baseline": (a.baseline, []),
             "exact": (SRC, ["--precision", "fp32"]),
             "fast": (SRC, ["--precision", "fp32", "--fast-decode"])}
    with tempfile.TemporaryDirectory() as small:
        for f in files[:a.small]:
            os.symlink(f.resolve(), Path(small) / f.name)
        times = {k: {"full": [], "small": [], "share": []} for k in cands}
        for r in range(a.rounds):
            names = list(cands)
            for k in names[r % 3:] + names[:r % 3]:                  # rotate the order every round
                src, extra = cands[k]
                t_full, n, share = run(src, a.folder, a.model, extra)
                assert n == len(files), (k, n)
                times[k]["full"].append(t_full)
                times[k]["small"].append(run(src, small, a.model, extra)[0])
                if share is not None:
                    times[k]["share"].append(share)
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; {isa_summary()}")
    print(f"folder: {len(files)} files; {a.rounds} rounds; medians\n")
    print(f"{'candidate':<10} {'wall s':>7} {'img/s':>7} {'x base':>7} {'steady img/s':>13} {'x base':>7} "
          f"{'model %':>8}")
    base = None
    for k, t in times.items():
        wall = statistics.median(t["full"])
        steady = statistics.median((len(files) - a.small) / (f - s) for f, s in zip(t["full"], t["small"]))
        base = base or (len(files) / wall, steady)
        share = f"{statistics.median(t['share']):.0f}" if t["share"] else "-"
        print(f"{k:<10} {wall:7.2f} {len(files) / wall:7.0f} {len(files) / wall / base[0]:7.2f} {steady:13.0f} "
              f"{steady / base[1]:7.2f} {share:>8}")
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))  # tests/support
    from support.drift import fast_decode_drift
    from sedeploy.runtime.predictor import Predictor
    d = fast_decode_drift(Predictor(a.model, "cpu", precision="fp32"), files)
    print(f"\nfast decode drift on {d['images']} images: input max {d['max_input_diff_levels']:.1f} / mean "
          f"{d['mean_input_diff_levels']:.2f} levels of 255, predicted-class probability max diff "
          f"{d['max_top_prob_diff']:.4f}, top-1 agreement {100 * d['top1_agreement']:.2f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
