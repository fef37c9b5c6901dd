"""Which out-of-distribution score ('unsure') separates Fashion-MNIST from images the model does not know?

Runs an exported ONNX model (all outputs: logits, se1..3, feature_map) with onnxruntime and, for each score of
sedeploy.runtime.unsure, does what `sedeploy export` does for the one it ships: fits the parameters on images the
run trained on and sets the threshold on the run's validation images (export.exporter.unsure_images: the same
images, drawn again from the checkpoint's recipe). Reports per OOD set AUROC (the unseen test images against the
set) and FAR, the share of the set accepted at that threshold; and the share of test images it accepts. Offline
OOD sets: uniform noise, linear gradients, random shapes, crops of the two photographs of sklearn's
load_sample_images, sklearn's 1,797 8x8 digits upscaled (scikit-learn: `pip install scikit-learn`). CPU only.

  python scripts/unsure_bench.py --ckpt demo/run/best.pt --model demo/run/model.onnx --json /tmp/unsure/bench.json
"""
import argparse
import json
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageDraw

from sedeploy.core import contract
from sedeploy.core.arrays import load_arrays
from sedeploy.core.datasets import normalize_batch
from sedeploy.core.errors import UserError
from sedeploy.runtime import unsure as U


def ood_sets(size: int, n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    sets = {"noise": rng.integers(0, 256, (n, size, size)).astype(np.uint8)}
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    grads = []
    for a in rng.uniform(0, 2 * np.pi, n):
        g = np.cos(a) * xx + np.sin(a) * yy
        grads.append(((g - g.min()) / (np.ptp(g) + 1e-9) * 255).astype(np.uint8))
    sets["gradients"] = np.stack(grads)
    shapes = []
    for _ in range(n):
        im = Image.new("L", (size, size), 0)
        d = ImageDraw.Draw(im)
        for _ in range(rng.integers(1, 4)):
            x0, y0 = rng.integers(0, size - 4, 2)
            x1, y1 = x0 + rng.integers(4, size - x0 + 1), y0 + rng.integers(4, size - y0 + 1)
            f = int(rng.integers(60, 256))
            (d.ellipse if rng.random() < 0.5 else d.rectangle)([int(x0), int(y0), int(x1), int(y1)], fill=f)
        shapes.append(np.asarray(im))
    sets["shapes"] = np.stack(shapes)
    try:
        from sklearn.datasets import load_digits, load_sample_images
        photos = [np.asarray(Image.fromarray(p).convert("L")) for p in load_sample_images().images]
        crops = []
        for i in range(n):
            p = photos[i % len(photos)]
            s = int(rng.integers(64, min(p.shape) // 2))
            y, x = rng.integers(0, p.shape[0] - s), rng.integers(0, p.shape[1] - s)
            crops.append(np.asarray(Image.fromarray(p[y:y + s, x:x + s]).resize((size, size), Image.BILINEAR)))
        sets["photos"] = np.stack(crops)
        dg = load_digits().images
        sets["digits"] = np.stack([np.asarray(Image.fromarray((d * 255 / 16).astype(np.uint8))
                                               .resize((size, size), Image.BILINEAR)) for d in dg])
    except ImportError:
        print("scikit-learn not installed: no photos / digits sets", file=sys.stderr)
    return sets


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="an exported model.onnx with all outputs")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--ckpt", required=True, help="the checkpoint the model was exported from (its recipe gives "
                    "the images it trained on and the validation images it held out)")
    ap.add_argument("--n", type=int, default=2000, help="training images fitted on / validation images calibrated on "
                    "(export's default)")
    ap.add_argument("--n-ood", type=int, default=500)
    ap.add_argument("--accept", type=float, default=0.95)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    from sedeploy.checkpoint import load_checkpoint
    from sedeploy.export.exporter import unsure_images
    try:
        sess = ort.InferenceSession(a.model, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime's own errors (no file, not a model): one line
        raise UserError(f"{a.model}: onnxruntime cannot load it ({str(e).splitlines()[0][:160]}); pass an exported "
                        f"model.onnx") from None
    meta = contract.decode_metadata(sess.get_modelmeta().custom_metadata_map)
    c, h, w = meta["input_size"]
    names = [o.name for o in sess.get_outputs()]

    def run(u8: np.ndarray) -> dict:
        outs = {k: [] for k in names}
        for i in range(0, len(u8), 256):
            x = normalize_batch(u8[i:i + 256].reshape(-1, c, h, w), meta["mean"], meta["std"])
            for k, v in zip(names, sess.run(None, {contract.INPUT_NAME: x})):
                outs[k].append(v)
        return {k: np.concatenate(v) for k, v in outs.items()}

    xfit, yfit, xval, why = unsure_images(load_checkpoint(a.ckpt), a.data_dir, a.n)
    what = "test" if why else "validation"
    _, xte, _ = load_arrays(meta["dataset"], a.data_dir, "test", ref=meta.get("data"))
    fit, val, test = run(xfit), run(xval), run(xte)
    sets = {k: run(v[:, None] if v.ndim == 3 else v) for k, v in ood_sets(h, a.n_ood).items()}
    rows, thresholds = [], {}
    for kind in U.KINDS:
        spec = U.calibrate(kind, fit, yfit, len(meta["classes"]), val, accept=a.accept)
        thresholds[kind] = spec["threshold"]
        ids = U.score(kind, spec["params"], test)
        for name, o in sets.items():
            s = U.score(kind, spec["params"], o)
            rows.append({"score": kind, "ood": name, "n": len(s), "auroc": round(U.auroc(ids, s), 4),
                         "far": round(float((s >= spec["threshold"]).mean()), 4),
                         "test_accepted": round(float((ids >= spec["threshold"]).mean()), 4)})
    print(f"fitted on {len(xfit)} training images, threshold on {len(xval)} {what} images; "
          f"in-distribution: {len(xte)} test images", file=sys.stderr)
    print(f"{'score':8} " + " ".join(f"{n:>16}" for n in sets) + "   test accepted    (AUROC / FAR)")
    for kind in U.KINDS:
        cells = [next(r for r in rows if r["score"] == kind and r["ood"] == n) for n in sets]
        print(f"{kind:8} " + " ".join(f"{r['auroc']:>7.3f} / {r['far']:>6.3f}" for r in cells)
              + f"   {cells[0]['test_accepted']:>12.3f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": a.model, "ckpt": a.ckpt, "accept": a.accept, "fit": len(xfit), "calibrated_on":
                       f"{len(xval)} {what} images", "test": len(xte), "thresholds": thresholds, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:                     # a missing or damaged checkpoint, model or dataset: one line
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
