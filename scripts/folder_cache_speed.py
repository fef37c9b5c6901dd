"""Speed of the folder dataset (docs/BENCHMARKS.md, "Your own images"):

1. decode + cache throughput on a folder of 640x480 JPEGs: first run (index + decode, 1 and all
   threads, each into a fresh cache) vs a run that hits the cache, images/s;
2. training steps fed from the memory-mapped cache vs from the built-in loader's in-RAM tensor, on
   the same images (Fashion-MNIST written as PNGs by scripts/fmnist_to_folder.py), interleaved.

    PYTHONPATH=src .venv/bin/python scripts/folder_cache_speed.py --jpegs /tmp/jpegs --n 2000 \
        --fm-folder /tmp/fm-png --cache /tmp/speed-cache
"""
import argparse
import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sedeploy.core.folder import FolderOptions, load_folder
from sedeploy.core.hardware import cpu_name


def make_jpegs(out: Path, n: int, classes: int = 10) -> None:
    """n 640x480 JPEGs (quality 90) in `classes` folders, photo-like in size and noise: class k is a
    colour grating at angle k * 180 / classes degrees (random frequency and phase), so a model can
    learn it at 64x64."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:480, 0:640].astype(np.float32)
    for i in range(n):
        k = i % classes
        d = out / f"c{k}"
        d.mkdir(parents=True, exist_ok=True)
        theta = np.pi * k / classes
        f, phase = rng.uniform(0.02, 0.05), rng.uniform(0, 2 * np.pi)
        wave = f * (xx * np.cos(theta) + yy * np.sin(theta)) + phase
        a = np.stack([127 + 90 * np.sin(wave + c * 2.1) for c in range(3)], -1)    # (480, 640, 3)
        a += rng.normal(0, 20, a.shape)
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(d / f"{i:05d}.jpg", quality=90)


def timed_load(folder: Path, cache: Path, workers: int, size: int):
    t = time.perf_counter()
    fd = load_folder(str(folder), FolderOptions(cache_dir=str(cache), input_size=size, workers=workers),
                     progress=False, log=lambda m: None)
    return time.perf_counter() - t, fd


def train_steps(images, labels, batches: int, repeats: int) -> float:
    """Median images/s of full training steps (se_cnn, light augmentation, batch 64) over `images`."""
    import torch
    from sedeploy.models import create_model
    from sedeploy.training.augment import AUGMENT_PRESETS, BatchAugment
    from sedeploy.training.data import Split
    from sedeploy.training.loop import Dist, iterate_fast
    from sedeploy.training.speed import _time_steps
    rates = []
    for r in range(repeats):
        torch.manual_seed(0)
        m = create_model("se_cnn", in_channels=images.shape[1], input_size=images.shape[2]).to(
            memory_format=torch.channels_last)
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        it = iterate_fast(Split(images, labels), BatchAugment(AUGMENT_PRESETS["light"], (0.5,), (0.25,)), 64,
                          torch.Generator().manual_seed(r), torch.Generator().manual_seed(1), torch.device("cpu"),
                          Dist(), True)
        rates.append(_time_steps(m, it, batches, opt))
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jpegs", required=True, help="folder of 640x480 JPEGs (written when absent)")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=64, help="input size the JPEGs are decoded to")
    ap.add_argument("--fm-folder", default=None, help="Fashion-MNIST PNG folder for the training-step comparison")
    ap.add_argument("--cache", required=True, help="scratch cache root (emptied)")
    ap.add_argument("--batches", type=int, default=60)
    a = ap.parse_args()
    jpegs, cache = Path(a.jpegs), Path(a.cache)
    print(f"{cpu_name()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    if not jpegs.exists():
        t = time.perf_counter()
        make_jpegs(jpegs, a.n)
        print(f"wrote {a.n} JPEGs 640x480 in {time.perf_counter() - t:.1f} s")
    for f in jpegs.rglob("*.jpg"):      # into the OS page cache first: decoding is measured, not the disk
        f.read_bytes()
    rates = {1: [], os.cpu_count(): []}
    for _ in range(2):                  # interleaved rounds, each into a fresh cache
        for workers in rates:
            shutil.rmtree(cache, ignore_errors=True)
            dt, fd = timed_load(jpegs, cache, workers, a.size)
            n = fd.decoded.decoded
            rates[workers].append(n / dt)
            print(f"first run, {workers} thread(s): {n} images in {dt:.2f} s = {n / dt:.0f} img/s end to end "
                  f"(decode + resize + write {fd.decoded.seconds:.2f} s = {n / fd.decoded.seconds:.0f} img/s)")
    for workers, r in rates.items():
        print(f"first run, {workers} thread(s): median {statistics.median(r):.0f} img/s (index + decode + resize + write)")
    dt, fd = timed_load(jpegs, cache, 0, a.size)
    n = sum(len(y) for _, y in fd.arrays.values())
    assert fd.decoded.hit
    print(f"cache hit: {n} images in {dt:.3f} s = {n / dt:.0f} img/s (index check + map)")
    if a.fm_folder:
        import torch
        from sedeploy.core.arrays import load_arrays
        _, fd = timed_load(Path(a.fm_folder), cache, 0, 32)
        x, y = fd.arrays["train"]
        _, xb, yb = load_arrays("fashion-mnist", None, "train")
        cached = (torch.from_numpy(x), torch.from_numpy(y))                   # memory-mapped
        builtin = (torch.from_numpy(xb[:len(y)].copy()), torch.from_numpy(yb[:len(y)].copy()))  # in RAM
        rows = {"cache (memmap)": [], "built-in (RAM)": []}
        for _ in range(3):                                                    # interleaved rounds
            rows["cache (memmap)"].append(train_steps(*cached, a.batches, 1))
            rows["built-in (RAM)"].append(train_steps(*builtin, a.batches, 1))
        for k, v in rows.items():
            print(f"training steps from {k}: median {statistics.median(v):.0f} img/s (rounds: "
                  f"{', '.join(f'{r:.0f}' for r in v)})")
        print(f"cache / built-in: x{statistics.median(rows['cache (memmap)']) / statistics.median(rows['built-in (RAM)']):.2f}")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
