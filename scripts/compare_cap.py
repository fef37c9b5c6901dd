"""What a comparison would have said with a lower epoch cap: for each cap, every run's epoch is selected again
among its first `cap` epochs (highest validation accuracy, the earliest on a tie, as training selects best.pt)
and the paired test-accuracy difference recomputed (sedeploy.training.compare.paired_ci). Reads each run's
history.json only; runs that stopped before a cap are unchanged by it.

  python scripts/compare_cap.py runs/converged --caps 30,40,50 --json /tmp/cap.json
"""
import argparse
import json
import sys
from pathlib import Path

from sedeploy.training.compare import paired_ci


def select(rows: list, cap: int) -> dict:
    """The epoch training would have kept had it stopped at `cap`: the first with the highest val_acc."""
    best = None
    for r in rows:
        if r["epoch"] <= cap and r.get("val_acc") is not None and (best is None or r["val_acc"] > best["val_acc"]):
            best = r
    if best is None:
        raise SystemExit(f"error: no epoch with a validation accuracy within the first {cap}")
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="a `sedeploy compare --out` folder (seed<N>/<model>/history.json)")
    ap.add_argument("--caps", default="30,40,50")
    ap.add_argument("--models", default="se_cnn,cnn", help="candidate,baseline")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    try:
        caps = [int(c) for c in a.caps.split(",")]
        assert all(c > 0 for c in caps)
    except (ValueError, AssertionError):
        ap.error(f"--caps takes positive epoch counts separated by commas, e.g. 30,40,50; got {a.caps!r}")
    models = a.models.split(",")
    if len(models) != 2 or not all(models):
        ap.error(f"--models takes two model names, candidate,baseline, e.g. se_cnn,cnn; got {a.models!r}")
    cand, base = models
    out = Path(a.out)
    seeds = sorted(int(p.name[4:]) for p in out.glob("seed*") if p.name[4:].isdigit()
                   and all((p / m / "history.json").is_file() for m in (cand, base)))
    if not seeds:
        print(f"error: no seed folder in {out} has both {cand}/history.json and {base}/history.json", file=sys.stderr)
        return 2
    try:
        hist = {(s, m): json.loads((out / f"seed{s}" / m / "history.json").read_text())["epochs"]
                for s in seeds for m in (cand, base)}
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"error: a history.json in {out} cannot be read ({type(e).__name__}: {e}); is it a compare folder?",
              file=sys.stderr)
        return 2
    rows = []
    for cap in caps:
        sel = {k: select(v, cap) for k, v in hist.items()}
        diffs = [sel[(s, cand)]["test_acc"] - sel[(s, base)]["test_acc"] for s in seeds]
        p = paired_ci(diffs)
        rows.append({"cap": cap, "seeds": seeds, "diffs": diffs, **p,
                     "epochs": {f"seed{s} {m}": sel[(s, m)]["epoch"] for s in seeds for m in (cand, base)}})
        ci = "n/a" if p["ci_low"] is None else f"[{p['ci_low']:+.2f}, {p['ci_high']:+.2f}]"
        print(f"cap {cap:>3}: {cand} - {base} {p['mean']:+.2f} points, 95 % CI {ci}; per seed "
              + ", ".join(f"{d:+.2f}" for d in diffs))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
