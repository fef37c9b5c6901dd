"""CLI paths for training: help, a quick run, and every bad input as a one-line error."""
import json

import pytest

from conftest import assert_one_line_error


def test_help_lists_commands(run_cli):
    r = run_cli("--help")
    assert r.code == 0
    for c in ("train", "compare", "features", "bench-train", "export", "infer", "bench", "samples", "faithfulness"):
        assert c in r.out
    r = run_cli("train", "--help")
    assert r.code == 0 and "Examples" in r.out


def test_train_quick_json(run_cli, fmnist_dir, tmp_path):
    r = run_cli("train", "--dataset", "fashion-mnist", "--data-dir", fmnist_dir, "--epochs", "1",
                "--limit-train", "128", "--limit-test", "64", "--out", tmp_path, "--no-progress", "--json")
    assert r.code == 0, r.err
    s = json.loads(r.out)                        # stdout is the JSON alone: the epoch lines went to stderr
    assert "train loss" in r.err and "params" in r.err
    hist = json.loads((tmp_path / "history.json").read_text())["epochs"]
    assert s["params"] == 1_150_026 and s["selected"]["split"] == "val" and s["selected"]["epoch"] == 1
    assert s["test_acc"] == hist[0]["test_acc"] and s["selected"]["val_acc"] == hist[0]["val_acc"]
    assert (tmp_path / "best.pt").exists()


def test_features_png(run_cli, trained_fm, tmp_path):
    from PIL import Image
    img = tmp_path / "x.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(img)
    r = run_cli("features", "--ckpt", trained_fm / "best.pt", img, "--out", tmp_path / "f", "--channels", "4")
    assert r.code == 0, r.err
    png = tmp_path / "f" / "x_features.png"
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args,needles", [
    (["--model", "resnet"], ["--model", "'resnet' is not one of", "'cnn', 'se_cnn'"]),
    (["--dataset", "imagenet"], ["--dataset", "'cifar10', 'fashion-mnist'"]),
    (["--epochs", "0"], ["--epochs", "x>=1"]),
    (["--batch-size", "-1"], ["--batch-size"]),
    (["--augment", "heavy"], ["'reference', 'light', 'none'"]),
    (["--device", "tpu"], ["'auto', 'cpu', 'cuda'"]),
    (["--select-on", "train"], ["'val', 'test'"]),
    (["--val-split", "0.95"], ["--val-split", "(0, 0.9)", "--select-on test"]),
    (["--epochs", "many"], ["--epochs"]),
])
def test_train_bad_options(run_cli, tmp_path, args, needles):
    r = run_cli("train", "--dataset", "fashion-mnist", "--out", tmp_path, *args)
    assert_one_line_error(r, *needles)


def test_train_missing_data_dir(run_cli, tmp_path):
    r = run_cli("train", "--dataset", "fashion-mnist", "--data-dir", tmp_path / "nope", "--out", tmp_path / "o")
    assert_one_line_error(r, "does not exist")
    r = run_cli("train", "--dataset", "cifar10", "--data-dir", tmp_path, "--out", tmp_path / "o")
    assert_one_line_error(r, "CIFAR-10 not found", "--download")


def test_train_unwritable_out(run_cli, fmnist_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run_cli("train", "--dataset", "fashion-mnist", "--data-dir", fmnist_dir, "--out", blocker / "sub")
    assert_one_line_error(r, "cannot create output directory")


def test_resume_not_a_checkpoint(run_cli, fmnist_dir, tmp_path):
    bad = tmp_path / "last.pt"
    bad.write_text("not a checkpoint")
    r = run_cli("train", "--dataset", "fashion-mnist", "--data-dir", fmnist_dir, "--out", tmp_path / "o",
                "--resume", bad)
    assert_one_line_error(r, "not a readable PyTorch checkpoint")
    r = run_cli("train", "--dataset", "fashion-mnist", "--data-dir", fmnist_dir, "--out", tmp_path / "o",
                "--resume", tmp_path / "missing.pt")
    assert_one_line_error(r, "does not exist")


def test_resume_from_best_refused(run_cli, trained_fm, fmnist_dir, tmp_path):
    r = run_cli("train", "--dataset", "fashion-mnist", "--data-dir", fmnist_dir, "--out", tmp_path,
                "--resume", trained_fm / "best.pt")
    assert_one_line_error(r, "resume from last.pt")


def test_internal_error_exits_3_not_1(run_cli, monkeypatch, fmnist_dir, tmp_path):
    """A crash is told apart from 'some images failed' (1) and from bad input (2)."""
    import sedeploy.training.loop as loop

    def boom(*a, **k):
        raise RuntimeError("simulated bug")
    monkeypatch.setattr(loop, "fit", boom)
    r = run_cli("train", "--dataset", "fashion-mnist", "--data-dir", fmnist_dir, "--out", tmp_path)
    assert_one_line_error(r, "RuntimeError", "simulated bug", "--debug", code=3)


def test_bench_train_bad_options_are_one_line_errors(run_cli):
    import torch
    if not torch.cuda.is_available():
        assert_one_line_error(run_cli("bench-train", "--device", "cuda"), "--device cuda", "no CUDA GPU")
    r = run_cli("bench-train", "--workers", "-1")
    assert r.code == 2 and "--workers" in r.err and "Traceback" not in r.err
