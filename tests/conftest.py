"""Shared fixtures: synthetic datasets in the real on-disk formats, tiny trained checkpoints, CLI runner."""
from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from sedeploy.cli import main


def pytest_collection_modifyitems(config, items):
    """`gpu` tests are skipped, with the reason, where torch sees no CUDA GPU (torch imported only then)."""
    gpu = [it for it in items if "gpu" in it.keywords]
    if not gpu:
        return
    try:
        import torch
        why = None if torch.cuda.is_available() else "no CUDA GPU (torch.cuda.is_available() is False)"
    except ImportError:
        why = "torch is not installed"
    if why:
        for it in gpu:
            it.add_marker(pytest.mark.skip(reason=f"gpu test: {why}"))


def write_idx(path: Path, arr: np.ndarray, gz: bool = True) -> None:
    """Write an idx file as the original Fashion-MNIST files are laid out."""
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def learnable_images(n: int, size: int, channels: int, seed: int):
    """Class k = a bright 6x6 patch at a class-specific spot on noise: learnable in one epoch."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = rng.integers(0, 60, (n, size, size, channels)).astype(np.uint8) if channels > 1 else \
        rng.integers(0, 60, (n, size, size)).astype(np.uint8)
    for i, k in enumerate(y):
        r, c = 2 + (k // 5) * (size // 2), 2 + (k % 5) * (size // 6)
        x[i, r:r + 6, c:c + 6] = 255
    return x, y


@pytest.fixture(scope="session")
def fmnist_dir(tmp_path_factory) -> Path:
    """A synthetic Fashion-MNIST folder (idx .gz files, 28x28), 800 train / 200 test."""
    d = tmp_path_factory.mktemp("fmnist")
    for split, n, seed in (("train", 800, 0), ("t10k", 200, 1)):
        x, y = learnable_images(n, 28, 1, seed)
        write_idx(d / f"{split}-images-idx3-ubyte", x)
        write_idx(d / f"{split}-labels-idx1-ubyte", y)
    return d


def write_cifar(root: Path, n_per_batch: int = 20, seed: int = 0) -> Path:
    """A synthetic cifar-10-batches-py folder in the real pickle format (5 train batches + test)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x, y = learnable_images(n_per_batch, 32, 3, int(rng.integers(1 << 30)))
        d = {"batch_label": name, "labels": [int(v) for v in y],
             "data": x.transpose(0, 3, 1, 2).reshape(n_per_batch, -1), "filenames": [f"{i}.png" for i in range(n_per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(d, f)
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]}
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f)
    return root


@pytest.fixture(scope="session")
def trained_fm(tmp_path_factory, fmnist_dir) -> Path:
    """A tiny se_cnn trained for one epoch on the synthetic Fashion-MNIST; returns its run dir."""
    from sedeploy.training import TrainConfig, fit
    out = tmp_path_factory.mktemp("run_fm")
    fit(TrainConfig(model="se_cnn", dataset="fashion-mnist", data_dir=str(fmnist_dir), epochs=1, out=str(out),
                    log_every=0), progress=False)
    return out


class CliResult:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err


@pytest.fixture
def run_cli(capsys):
    """Run `sedeploy ARGS` in-process through the real entry point (error handling included)."""
    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        cap = capsys.readouterr()
        return CliResult(code, cap.out, cap.err)
    return run


def assert_one_line_error(res: CliResult, *needles: str, code: int = 2) -> None:
    assert res.code == code, (res.code, res.err)
    lines = [ln for ln in res.err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.err
    assert lines[0].startswith("error:"), res.err
    assert "Traceback" not in res.err
    for n in needles:
        assert n.lower() in lines[0].lower(), (n, lines[0])


def assert_parity(ref: dict, got: dict, atol: float, rtol: float = 0.0, what: str = "candidate") -> None:
    """Every output of ref matched by got within |diff| <= atol + rtol |ref|, through the one parity helper."""
    from sedeploy.core.parity import compare
    assert list(got) == list(ref), (list(got), list(ref))
    rows = compare(ref, got, what, atol=atol, rtol=rtol)
    bad = [f"{r.output}: max abs {r.max_abs:.3g}" for r in rows if not r.ok]
    assert not bad, f"{what} differs beyond {atol:g} + {rtol:g}|ref|: {', '.join(bad)}"


@pytest.fixture(scope="session")
def fm_onnx(trained_fm, fmnist_dir, tmp_path_factory) -> Path:
    """The tiny trained se_cnn exported to ONNX (dynamic batch, SE + feature map outputs), its 'unsure'
    threshold calibrated on the synthetic data it was trained on (never on whatever is installed)."""
    from sedeploy.export.exporter import ExportOptions, export_checkpoint
    d = tmp_path_factory.mktemp("fm_onnx")
    export_checkpoint(str(trained_fm / "best.pt"), str(d), ExportOptions(formats=("onnx",), data_dir=str(fmnist_dir)),
                      log=lambda s: None)
    return d / "model.onnx"
