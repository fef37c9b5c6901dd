"""The bf16 gate: does training with bf16 autocast reach the validation accuracy of fp32, over seeds?

For each seed, the same run (model, data subset, split, order, augmentation, dropout: all from the seed)
is trained twice, fp32 and --precision bf16, one thread each, two at a time. Reports per seed the
selected validation and test accuracy and seconds per epoch, and the paired bf16 - fp32 difference with
its 95 % CI (Student t). The gate is an equivalence test: it passes when the whole interval lies within
+-(--tolerance) points, so bf16 is shown to change the result by less than that (a wide interval that merely
contains 0, from too few or too noisy runs, does not pass). Finished runs are reused (rerun to continue).

  python scripts/bf16_gate.py --seeds 0,1,2,3 --limit-train 12000 --epochs 4 --out runs/bf16-gate
"""
import argparse
import dataclasses
import json
import sys
from pathlib import Path

from sedeploy.core.hardware import cpu_name, has_bf16
from sedeploy.core.io import atomic_write_text
from sedeploy.training import TrainConfig
from sedeploy.training.compare import finished_run, run_parallel, paired_ci


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="se_cnn")
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--limit-train", type=int, default=12000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--tolerance", type=float, default=0.5, help="largest |mean difference| in points")
    ap.add_argument("--out", default="runs/bf16-gate")
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    if not has_bf16():
        print(f"{cpu_name()} has neither AVX512-BF16 nor AMX: bf16 training is refused here, nothing to gate",
              file=sys.stderr)
        return 2
    seeds = [int(s) for s in a.seeds.split(",")]
    out = Path(a.out)
    base = TrainConfig(model=a.model, dataset="fashion-mnist", epochs=a.epochs, limit_train=a.limit_train,
                       log_every=0, threads=1)
    todo, done, loads = [], {}, {}
    for seed in seeds:
        for prec in ("fp32", "bf16"):
            c = dataclasses.replace(base, seed=seed, precision=prec, out=str(out / f"seed{seed}" / prec))
            s = finished_run(c, loads)
            if s is not None:
                done[(prec, seed)] = s
            else:
                todo.append(dataclasses.replace(c, resume=str(Path(c.out) / "last.pt"))
                            if (Path(c.out) / "last.pt").is_file() else c)
    # run_parallel keys by (model, seed): run one precision at a time through it
    for prec in ("fp32", "bf16"):
        part = [c for c in todo if c.precision == prec]
        if part:
            for (_, seed), s in run_parallel(part, a.jobs, lambda m: print(m, file=sys.stderr)).items():
                done[(prec, seed)] = s
    rows = []
    for seed in seeds:
        f, b = done[("fp32", seed)], done[("bf16", seed)]
        rows.append({"seed": seed, "fp32_val": f["selected"]["val_acc"], "bf16_val": b["selected"]["val_acc"],
                     "fp32_test": f["test_acc"], "bf16_test": b["test_acc"],
                     "fp32_s_per_epoch": f["seconds_per_epoch"], "bf16_s_per_epoch": b["seconds_per_epoch"]})
    val = paired_ci([r["bf16_val"] - r["fp32_val"] for r in rows])
    test = paired_ci([r["bf16_test"] - r["fp32_test"] for r in rows])
    # equivalence, not "no significant difference": the whole 95 % CI within +-tolerance, so a noisy,
    # underpowered run cannot pass by having a wide interval that contains 0
    passed = val["ci_low"] is not None and -a.tolerance < val["ci_low"] and val["ci_high"] < a.tolerance
    res = {"cpu": cpu_name(), "model": a.model, "limit_train": a.limit_train, "epochs": a.epochs, "rows": rows,
           "val_diff": val, "test_diff": test, "tolerance": a.tolerance, "passed": passed}
    atomic_write_text(out / "gate.json", json.dumps(res, indent=2))
    print(f"{a.model}, Fashion-MNIST {a.limit_train} training images, {a.epochs} epochs, {cpu_name()}")
    print("| seed | val fp32 | val bf16 | test fp32 | test bf16 | s/epoch fp32 | s/epoch bf16 |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['seed']} | {r['fp32_val']:.2f} | {r['bf16_val']:.2f} | {r['fp32_test']:.2f} | "
              f"{r['bf16_test']:.2f} | {r['fp32_s_per_epoch']:.1f} | {r['bf16_s_per_epoch']:.1f} |")
    for name, d in (("validation", val), ("test", test)):
        ci = "n/a" if d["ci_low"] is None else f"[{d['ci_low']:+.2f}, {d['ci_high']:+.2f}]"
        print(f"bf16 - fp32, {name}: {d['mean']:+.2f} points, 95 % CI {ci}")
    print(f"gate (the 95 % CI of the validation difference within +-{a.tolerance}): {'PASSED' if passed else 'FAILED'}")
    return 0 if passed else 1


if __name__ == "__main__":
    from sedeploy.core.errors import UserError
    try:
        sys.exit(main())
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
