"""Folder inference: input order, bounded memory, streaming, a closed pipe, the fast decode path's drift,
the progress bar."""
import json
import os
import random
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import learnable_images
from support.drift import fast_decode_drift
from sedeploy.cli_output import Progress
from sedeploy.runtime.pipeline import ordered_map
from sedeploy.runtime.predictor import Predictor
from sedeploy.core.decode import ImageError, load_image

SRC = str(Path(__file__).resolve().parents[1] / "src")


def write_jpegs(d: Path, n: int, size=(320, 240), seed: int = 0):
    """Camera-like colour JPEGs: the learnable images upscaled, with per-channel noise, 4:2:0."""
    d.mkdir(parents=True, exist_ok=True)
    x, y = learnable_images(n, 28, 1, seed)
    rng = np.random.default_rng(seed)
    files = []
    for i in range(n):
        big = np.asarray(Image.fromarray(x[i]).resize(size, Image.BICUBIC), np.float32)
        rgb = np.clip(big[..., None] + rng.normal(0, 6, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
        files.append(d / f"{i:03d}_{int(y[i])}.jpg")
        Image.fromarray(rgb).save(files[-1], quality=90, subsampling="4:2:0")
    return files


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    return write_jpegs(tmp_path_factory.mktemp("jpegs"), 48)


# ---------------------------------------------------------------- ordered_map
def test_ordered_map_order_window_and_laziness():
    lock, live, peak, pulled = threading.Lock(), [0], [0], []

    def items():
        for i in range(80):
            pulled.append(i)
            yield i

    def work(i):
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        time.sleep(random.random() * 0.004)          # finish out of order
        return i * i

    out = []
    for v in ordered_map(work, items(), workers=3, window=5):
        with lock:
            live[0] -= 1                              # taken by the consumer
        out.append(v)
        assert len(pulled) - len(out) <= 5            # the input is read only as far as the window
    assert out == [i * i for i in range(80)]
    assert 1 < peak[0] <= 5                           # in parallel, never beyond the window


def test_ordered_map_close_cancels_the_rest():
    calls = []
    gen = ordered_map(lambda i: (calls.append(i), time.sleep(0.01), i)[2], range(1000), workers=2, window=4)
    assert next(gen) == 0
    gen.close()
    assert len(calls) <= 5                            # the window, not the 1000 items


# ---------------------------------------------------------------- Predictor over a folder
def test_parallel_results_match_sequential_in_input_order(fm_onnx, jpegs, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    inputs = jpegs[:10] + [bad] + jpegs[10:30] + [tmp_path / "gone.jpg"] + jpegs[30:]
    seq = list(Predictor(fm_onnx, "cpu", workers=0).predict_iter(inputs, topk=3, batch_size=7))
    par = list(Predictor(fm_onnx, "cpu", workers=3).predict_iter(inputs, topk=3, batch_size=7))
    assert len(par) == len(inputs)
    for inp, s, p in zip(inputs, seq, par):
        if isinstance(s, ImageError):
            assert isinstance(p, ImageError) and p.path == str(inp)
        else:
            assert p.image == s.image == str(inp)
            np.testing.assert_array_equal(p.probs, s.probs)      # the exact path: bit for bit


@pytest.mark.parametrize("keep", [False, True])
def test_memory_is_bounded_by_the_window(fm_onnx, jpegs, monkeypatch, keep):
    lock, live, peak = threading.Lock(), [0], [0]
    original_load = Predictor.load

    def counting_load(self, image):
        im = original_load(self, image)
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])

        def freed():
            with lock:
                live[0] -= 1
        weakref.finalize(im, freed)
        return im

    monkeypatch.setattr(Predictor, "load", counting_load)
    p = Predictor(fm_onnx, "cpu", workers=2)
    window, batch = 6, 4
    n = 0
    for r in p.predict_iter(jpegs * 3, topk=1, batch_size=batch, keep_originals=keep, window=window):
        assert (r.original is not None) == keep
        n += 1
        del r
    assert n == 3 * len(jpegs)
    if keep:   # originals live in the window and the batch being filled, no more
        assert 2 < peak[0] <= window + batch + 1
    else:      # dropped as soon as preprocessed: at most one per decoding thread
        assert peak[0] <= 2


def test_first_result_streams_before_the_folder_is_read(fm_onnx, jpegs):
    pulled = []

    def paths():
        for f in jpegs * 4:
            pulled.append(f)
            yield f

    it = Predictor(fm_onnx, "cpu", workers=2).predict_iter(paths(), batch_size=4, window=6)
    first = next(it)
    assert first.image == str(jpegs[0])
    assert len(pulled) <= 4 + 6 < 4 * len(jpegs)
    it.close()


# ---------------------------------------------------------------- fast decode
def test_fast_decode_reduces_and_drift_is_bounded(fm_onnx, jpegs):
    assert load_image(jpegs[0], 1).size == (320, 240)
    fast = load_image(jpegs[0], 1, fast_size=(32, 32))
    assert fast.mode == "L" and fast.size == (80, 60)        # DCT-scaled 1/4, grey from the decoder
    d = fast_decode_drift(Predictor(fm_onnx, "cpu"), jpegs)
    assert d["images"] == len(jpegs)
    assert 0 < d["max_input_diff_levels"] <= 16 and d["mean_input_diff_levels"] <= 1.5
    assert d["top1_agreement"] >= 0.9


def test_fast_decode_cli_matches_exact_top1_mostly(run_cli, fm_onnx, jpegs):
    folder = str(jpegs[0].parent)
    exact = [json.loads(x) for x in run_cli("infer", folder, "--model", fm_onnx, "--json").out.splitlines()]
    r = run_cli("infer", folder, "--model", fm_onnx, "--json", "--fast-decode")
    fast = [json.loads(x) for x in r.out.splitlines()]
    assert [x["image"] for x in fast] == [x["image"] for x in exact] == [str(f) for f in jpegs]
    agree = np.mean([a["top"][0]["index"] == b["top"][0]["index"] for a, b in zip(exact, fast)])
    assert agree >= 0.9
    assert "images/s" in r.err and "fast decode" in r.err and "\r" not in r.err   # no bar off a terminal


# ---------------------------------------------------------------- streaming output
def test_closed_pipe_stops_quietly_with_valid_lines(fm_onnx, tmp_path):
    files = write_jpegs(tmp_path / "many", 160, size=(64, 48))
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "sedeploy", "infer", str(tmp_path / "many"), "--model",
                             str(fm_onnx), "--json", "--topk", "10", "--batch-size", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    lines = [proc.stdout.readline() for _ in range(3)]          # like `| head -n 3`
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    recs = [json.loads(x) for x in lines]
    assert [x["image"] for x in recs] == [str(f) for f in files[:3]]
    assert proc.returncode == 141, err                      # 128 + SIGPIPE, as Unix tools end
    assert "Traceback" not in err and "BrokenPipe" not in err and "error" not in err


def test_progress_bar_only_on_a_terminal():
    class Tty:
        def __init__(self, tty):
            self.text, self.tty = "", tty

        def isatty(self):
            return self.tty

        def write(self, s):
            self.text += s

        def flush(self):
            pass

    on, off = Tty(True), Tty(False)
    for stream in (on, off):
        bar = Progress(50, stream=stream, interval=0)
        for _ in range(50):
            bar.update()
        bar.close()
    assert off.text == ""
    assert "\r" in on.text and "50/50" in on.text and "100%" in on.text
    assert on.text.endswith("\r") and on.text.rstrip("\r").endswith(" ")   # close() erased the line
