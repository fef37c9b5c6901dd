"""Training: learns, checkpoints (weights_only, atomic), exact resume, plots, DDP."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sedeploy.errors import UserError
from sedeploy.training import TrainConfig, build_model, fit, load_checkpoint, save_checkpoint
from sedeploy.training.compare import compare


def cfg(fmnist_dir, out, **kw):
    base = dict(model="se_cnn", dataset="fashion-mnist", data_dir=str(fmnist_dir), epochs=1, out=str(out),
                log_every=0)
    base.update(kw)
    return TrainConfig(**base)


def test_training_learns_and_writes_outputs(trained_fm):
    hist = json.loads((trained_fm / "history.json").read_text())
    loss = hist["iter_loss"]
    assert len(loss) == 13                                     # 800 / 64 batches
    assert sum(loss[-3:]) / 3 < 0.7 * sum(loss[:3]) / 3        # loss falls
    assert hist["epochs"][0]["test_acc"] > 50                  # chance is 10 %
    for f in ("best.pt", "last.pt", "epochs.csv", "iterations.csv", "loss_iterations.png", "curves.png",
              "summary.json"):
        assert (trained_fm / f).stat().st_size > 0, f
    assert (trained_fm / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in trained_fm.iterdir() if p.name.endswith(".tmp")]


def test_checkpoint_is_self_describing_and_weights_only(trained_fm):
    ck = torch.load(trained_fm / "best.pt", weights_only=True)
    for k in ("model_name", "model_config", "classes", "mean", "std", "input_size", "dataset", "epoch",
              "metrics", "versions", "state_dict"):
        assert k in ck, k
    assert ck["input_size"] == [1, 32, 32] and ck["dataset"] == "fashion-mnist" and len(ck["classes"]) == 10
    model = build_model(ck)
    x = torch.randn(3, 1, 32, 32)
    from sedeploy.models import create_model
    ref = create_model(ck["model_name"], **ck["model_config"])
    ref.load_state_dict(ck["state_dict"])
    torch.testing.assert_close(model(x), ref.eval()(x), rtol=0, atol=0)
    last = torch.load(trained_fm / "last.pt", weights_only=True)
    assert {"optimizer", "scheduler", "rng", "history"} <= set(last)


def test_atomic_save_survives_crash(tmp_path, monkeypatch):
    path = tmp_path / "best.pt"
    save_checkpoint({"format": "sedeploy-checkpoint", "v": torch.ones(3)}, path)
    before = path.read_bytes()
    real_save = torch.save

    def crashing_save(obj, f, *a, **k):
        Path(f).write_bytes(b"partial")
        raise KeyboardInterrupt("killed mid-save")
    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"format": "sedeploy-checkpoint", "v": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == before
    assert load_checkpoint(path)["v"].sum() == 3
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]       # no temporary left behind


def test_untrusted_checkpoint_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    p = tmp_path / "evil.pt"
    torch.save({"format": "sedeploy-checkpoint", "x": Evil()}, p)
    with pytest.raises(UserError, match="refusing to load"):
        load_checkpoint(p)
    q = tmp_path / "plain.pt"
    torch.save({"weights": torch.ones(2)}, q)
    with pytest.raises(UserError, match="not a sedeploy checkpoint"):
        load_checkpoint(q)


def test_resume_equals_uninterrupted(fmnist_dir, tmp_path):
    kw = dict(limit_train=256, limit_test=64, seed=3)
    full = fit(cfg(fmnist_dir, tmp_path / "full", epochs=2, **kw), progress=False)
    fit(cfg(fmnist_dir, tmp_path / "part", epochs=1, **kw), progress=False)
    resumed = fit(cfg(fmnist_dir, tmp_path / "part", epochs=2, resume=str(tmp_path / "part" / "last.pt"), **kw),
                  progress=False)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert full.history["iter_loss"] == resumed.history["iter_loss"]
    assert [e["test_acc"] for e in full.history["epochs"]] == [e["test_acc"] for e in resumed.history["epochs"]]


def test_reference_pipeline_trains(fmnist_dir, tmp_path):
    r = fit(cfg(fmnist_dir, tmp_path, pipeline="reference", workers=0, limit_train=128, limit_test=64), progress=False)
    assert len(r.history["iter_loss"]) == 2 and r.final["test_acc"] >= 0


def test_compare_writes_table(fmnist_dir, tmp_path):
    rows = compare(cfg(fmnist_dir, tmp_path, limit_train=128, limit_test=64), progress=False)
    assert [r["model"] for r in rows] == ["cnn", "se_cnn"]
    assert rows[1]["params"] - rows[0]["params"] == 32 * 2 * 2 + 64 * 4 * 2 + 128 * 8 * 2
    table = (tmp_path / "comparison.md").read_text()
    assert "se_cnn" in table and "parameters" in table
    assert json.loads((tmp_path / "comparison.json").read_text())["rows"] == rows


@pytest.mark.slow
def test_ddp_two_cpu_ranks_identical_weights(fmnist_dir, tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(textwrap.dedent(f"""
        import os, torch
        from sedeploy.training import TrainConfig, fit
        r = fit(TrainConfig(model="se_cnn", dataset="fashion-mnist", data_dir={str(fmnist_dir)!r}, epochs=1,
                            out={str(tmp_path / 'out')!r}, limit_train=256, limit_test=64, log_every=0), progress=False)
        torch.save(r.model.state_dict(), {str(tmp_path)!r} + f"/rank{{os.environ['RANK']}}.pt")
    """))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29531", str(script)], capture_output=True, text=True, env=env,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # only rank 0 wrote; 256 samples over 2 ranks of batch 64 = 2 steps each
    hist = json.loads((tmp_path / "out" / "history.json").read_text())
    assert len(hist["iter_loss"]) == 2 and (tmp_path / "out" / "best.pt").exists()
    start = torch.load(tmp_path / "out" / "last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(start[k], a[k]) for k in a)
