"""Write Fashion-MNIST (or CIFAR-10) as a folder of PNG files, the layout `sedeploy train --dataset folder`
reads: OUT/train/<class>/<index>.png and OUT/test/<class>/<index>.png, native size.

    PYTHONPATH=src .venv/bin/python scripts/fmnist_to_folder.py data/fmnist-png
    PYTHONPATH=src .venv/bin/python scripts/fmnist_to_folder.py /tmp/fm-small --limit 1000
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))  # tests/support

from sedeploy.core.errors import UserError
from support.folder_write import write_image_folder  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("out", help="output folder (must not exist, or be empty)")
ap.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "cifar10"])
ap.add_argument("--data-dir", default=None, help="dataset root [Debian's Fashion-MNIST copy]")
ap.add_argument("--limit", type=int, default=None, help="first N images of each split")
a = ap.parse_args()
t = time.perf_counter()
try:
    counts = write_image_folder(a.dataset, a.out, a.data_dir, a.limit)
except UserError as e:
    sys.exit(f"error: {e}")
print(f"wrote {counts['train']} train and {counts['test']} test PNG files to {a.out} in {time.perf_counter() - t:.1f} s")
