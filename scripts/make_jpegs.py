"""A folder of camera-sized JPEGs for the folder-inference benchmark (docs/BENCHMARKS.md, "Edge throughput").

    .venv/bin/python scripts/make_jpegs.py --out runs/jpegs --n 400 [--size 640x480] [--quality 90]

Each file is a real Fashion-MNIST test image, upscaled (bicubic) to --size, made RGB with a little
sensor-like noise (so that the JPEG's entropy coding costs what a photo's does, not what a flat
upscale's does) and saved as a 4:2:0 JPEG, named <index>_<class>.jpg so that top-1 can be checked.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from sedeploy.core.arrays import load_arrays


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--size", default="640x480", help="WxH")
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--noise", type=float, default=6.0, help="std of the added noise, in 0..255 levels")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    w, h = (int(v) for v in a.size.lower().split("x"))
    info, x, y = load_arrays("fashion-mnist", a.data_dir, "test", native=True)
    rng = np.random.default_rng(a.seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for i in rng.permutation(len(y))[:a.n]:
        big = np.asarray(Image.fromarray(x[i, 0]).resize((w, h), Image.BICUBIC), np.float32)
        rgb = big[..., None] + rng.normal(0, a.noise, (h, w, 3))          # (H, W, 3), per-channel noise
        label = info.classes[int(y[i])].lower().replace("/", "-").replace(" ", "-")
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(
            out / f"{int(i):05d}_{label}.jpg", quality=a.quality, subsampling="4:2:0")
    sizes = [p.stat().st_size for p in out.glob("*.jpg")]
    print(f"{len(sizes)} JPEGs of {w}x{h} in {out} (mean {np.mean(sizes) / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
