"""Which out-of-distribution score ('unsure') separates Fashion-MNIST from images the model does not know?

Runs an exported ONNX model (all outputs: logits, se1..3, feature_map) with onnxruntime, fits each score of
sedeploy.runtime.unsure on training images, and reports per OOD set AUROC and FAR@95%TPR (the share of OOD
images accepted at the threshold that accepts 95 % of the in-distribution test images). Offline OOD sets:
uniform noise, linear gradients, random shapes, crops of the two photographs of sklearn's load_sample_images,
sklearn's 1,797 8x8 digits upscaled. CPU only.

  python scripts/unsure_bench.py --model demo/run/model.onnx --json /tmp/unsure/bench.json
"""
import argparse
import json
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageDraw

from sedeploy.core import contract
from sedeploy.core.datasets import fmnist_dirs, read_fmnist
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
    ap.add_argument("--fit", type=int, default=5000, help="training images the parameters are fitted on")
    ap.add_argument("--n-ood", type=int, default=500)
    ap.add_argument("--accept", type=float, default=0.95)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    sess = ort.InferenceSession(a.model, providers=["CPUExecutionProvider"])
    meta = contract.decode_metadata(sess.get_modelmeta().custom_metadata_map)
    c, h, w = meta["input_size"]
    mean, std = np.float32(meta["mean"][0]), np.float32(meta["std"][0])
    names = [o.name for o in sess.get_outputs()]

    def run(u8: np.ndarray) -> dict:
        outs = {k: [] for k in names}
        for i in range(0, len(u8), 256):
            x = ((u8[i:i + 256].reshape(-1, 1, h, w).astype(np.float32) / 255) - mean) / std
            for k, v in zip(names, sess.run(None, {contract.INPUT_NAME: x})):
                outs[k].append(v)
        return {k: np.concatenate(v) for k, v in outs.items()}

    dirs = fmnist_dirs(None if a.data_dir is None else __import__("pathlib").Path(a.data_dir))
    xtr, ytr, _ = read_fmnist(dirs, "train", h)
    xte, _, _ = read_fmnist(dirs, "test", h)
    rng = np.random.default_rng(0)
    idx = rng.choice(len(xtr) - 10000, a.fit, replace=False) + 10000    # the demo trains on a 20,000 subset
    fit, val = run(xtr[idx]), run(xte)
    sets = {k: run(v) for k, v in ood_sets(h, a.n_ood).items()}
    rows = []
    for kind in U.KINDS:
        params = U.fit_params(kind, fit, ytr[idx], len(meta["classes"]))
        ids = U.score(kind, params, val)
        for name, o in sets.items():
            s = U.score(kind, params, o)
            rows.append({"score": kind, "ood": name, "n": len(s), "auroc": round(U.auroc(ids, s), 4),
                         "far": round(U.far_at(ids, s, a.accept), 4)})
    print(f"{'score':8} " + " ".join(f"{n:>16}" for n in sets) + "    (AUROC / FAR@95%TPR)")
    for kind in U.KINDS:
        cells = [next(r for r in rows if r["score"] == kind and r["ood"] == n) for n in sets]
        print(f"{kind:8} " + " ".join(f"{r['auroc']:>7.3f} / {r['far']:>6.3f}" for r in cells))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": a.model, "accept": a.accept, "fit": a.fit, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
