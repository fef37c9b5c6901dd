"""Training: learns, checkpoints (weights_only, atomic), exact resume, plots, DDP."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from sedeploy.core.errors import UserError
from sedeploy.training import TrainConfig, build_model, fit, load_checkpoint, save_checkpoint
from sedeploy.training.compare import compare


def cfg(fmnist_dir, out, **kw):
    base = dict(model="se_cnn", dataset="fashion-mnist", data_dir=str(fmnist_dir), epochs=1, out=str(out),
                log_every=0)
    base.update(kw)
    return TrainConfig(**base)


def _expected_val(labels, fraction=0.1):
    """Hand count of a stratified hold-out: round(fraction * n_c) per class, at least 1, never all."""
    counts = np.bincount(np.asarray(labels), minlength=10)
    return int(sum(min(max(int(round(fraction * c)), 1), c - 1) for c in counts if c >= 2))


def test_training_learns_and_writes_outputs(trained_fm, fmnist_dir):
    from sedeploy.core.datasets import read_idx
    labels = read_idx(next(fmnist_dir.glob("train-labels*")))
    n_train = 800 - _expected_val(labels)
    hist = json.loads((trained_fm / "history.json").read_text())
    loss = hist["iter_loss"]
    assert len(loss) == -(-n_train // 64)                      # batches of 64 over the training part only
    assert sum(loss[-3:]) / 3 < 0.7 * sum(loss[:3]) / 3        # loss falls
    assert hist["epochs"][0]["test_acc"] > 30                  # chance is 10 %
    for f in ("best.pt", "last.pt", "epochs.csv", "iterations.csv", "loss_iterations.png", "curves.png",
              "summary.json"):
        assert (trained_fm / f).stat().st_size > 0, f
    assert (trained_fm / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in trained_fm.iterdir() if p.name.endswith(".tmp")]
    head = (trained_fm / "epochs.csv").read_text().splitlines()[0].split(",")
    assert head[:7] == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"]


def test_checkpoint_is_self_describing_and_weights_only(trained_fm, fmnist_dir):
    ck = torch.load(trained_fm / "best.pt", weights_only=True)
    for k in ("model_name", "model_config", "classes", "mean", "std", "input_size", "dataset", "epoch",
              "metrics", "versions", "state_dict", "recipe"):
        assert k in ck, k
    assert ck["input_size"] == [1, 32, 32] and ck["dataset"] == "fashion-mnist" and len(ck["classes"]) == 10
    assert ck["metrics"]["selected_on"] == "val" and ck["recipe"]["val_split"] == 0.1
    # the rebuilt model, scored independently (torchvision resize + normalize), gives the recorded test accuracy
    from torchvision.transforms import functional as TF
    from sedeploy.core.datasets import read_idx
    x = torch.from_numpy(read_idx(next(fmnist_dir.glob("t10k-images*"))).copy()).unsqueeze(1)
    y = torch.from_numpy(read_idx(next(fmnist_dir.glob("t10k-labels*")))).long()
    x = TF.resize(x, [32, 32], antialias=True).float() / 255
    x = (x - ck["mean"][0]) / ck["std"][0]
    with torch.no_grad():
        acc = 100.0 * (build_model(ck)(x).argmax(1) == y).float().mean().item()
    assert abs(acc - ck["metrics"]["test_acc"]) <= 1.0, (acc, ck["metrics"]["test_acc"])  # 2 of 200 may flip
    last = torch.load(trained_fm / "last.pt", weights_only=True)
    assert {"optimizer", "scheduler", "rng", "history", "best"} <= set(last)


def test_stratified_split_is_deterministic_and_per_class():
    from sedeploy.training.data import Split, stratified_split
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 7 + [3] * 1)
    split = Split(torch.arange(len(labels)).view(-1, 1, 1, 1).to(torch.uint8), labels)
    rest, held = stratified_split(split, 0.2, seed=5)
    assert torch.bincount(held.labels, minlength=4).tolist() == [10, 6, 1, 0]   # round(0.2 n_c), >= 1, class 3 kept
    ids_rest, ids_held = set(rest.images.flatten().tolist()), set(held.images.flatten().tolist())
    assert not ids_rest & ids_held and len(ids_rest | ids_held) == len(labels)
    again = stratified_split(split, 0.2, seed=5)[1]
    other = stratified_split(split, 0.2, seed=6)[1]
    assert torch.equal(again.images, held.images) and not torch.equal(other.images, held.images)


@pytest.mark.parametrize("select_on", ["val", "test"])
def test_best_is_chosen_on_the_selection_split(fmnist_dir, tmp_path, select_on):
    r = fit(cfg(fmnist_dir, tmp_path, epochs=3, limit_train=400, limit_test=100, select_on=select_on, seed=1),
            progress=False)
    rows = r.history["epochs"]
    key = f"{select_on}_acc"
    best = max(rows, key=lambda e: (e[key], -e["epoch"]))                 # first epoch with the best score
    ck = load_checkpoint(tmp_path / "best.pt")
    assert ck["epoch"] == best["epoch"] == r.selected["epoch"]
    assert ck["metrics"]["test_acc"] == best["test_acc"] == r.test_acc
    assert ck["metrics"]["selected_on"] == select_on
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["selected"]["split"] == select_on and summary["test_acc"] == best["test_acc"]
    if select_on == "test":
        assert all(e["val_acc"] is None for e in rows)
    else:
        assert all(e["val_acc"] is not None for e in rows)


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


def test_resume_equals_uninterrupted_and_uses_the_saved_rng(fmnist_dir, tmp_path):
    kw = dict(limit_train=256, limit_test=64, seed=3)
    full = fit(cfg(fmnist_dir, tmp_path / "full", epochs=2, **kw), progress=False)
    fit(cfg(fmnist_dir, tmp_path / "part", epochs=1, **kw), progress=False)
    last = tmp_path / "part" / "last.pt"
    saved = last.read_bytes()
    resumed = fit(cfg(fmnist_dir, tmp_path / "part", epochs=2, resume=str(last), **kw), progress=False)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert full.history["iter_loss"] == resumed.history["iter_loss"]
    assert [e["test_acc"] for e in full.history["epochs"]] == [e["test_acc"] for e in resumed.history["epochs"]]
    # the RNG state in last.pt is what the resumed run draws from: another state gives other weights
    last.write_bytes(saved)
    ck = torch.load(last, weights_only=True)
    ck["rng"]["ranks"][0]["aug"] = torch.Generator().manual_seed(999).get_state()
    save_checkpoint(ck, last)
    other = fit(cfg(fmnist_dir, tmp_path / "part", epochs=2, resume=str(last), **kw), progress=False)
    assert not all(torch.equal(a[k], other.model.state_dict()[k]) for k in a)


@pytest.mark.parametrize("change", [dict(batch_size=32), dict(lr=5e-4), dict(seed=4), dict(val_split=0.2),
                                    dict(augment="none"), dict(limit_train=200), dict(model="cnn")])
def test_resume_refuses_another_recipe(fmnist_dir, tmp_path, change):
    kw = dict(limit_train=256, limit_test=64, seed=3)
    fit(cfg(fmnist_dir, tmp_path, epochs=1, **kw), progress=False)
    field = next(iter(change))
    with pytest.raises(UserError, match=f"{field}: .* in the checkpoint, .* now.*--allow-recipe-change"):
        fit(cfg(fmnist_dir, tmp_path, epochs=2, resume=str(tmp_path / "last.pt"), **{**kw, **change}), progress=False)
    if field != "model":  # said explicitly, it goes on from the checkpoint
        r = fit(cfg(fmnist_dir, tmp_path, epochs=2, resume=str(tmp_path / "last.pt"), allow_recipe_change=True,
                    **{**kw, **change}), progress=False)
        assert [e["epoch"] for e in r.history["epochs"]] == [1, 2]


def test_reference_pipeline_trains(fmnist_dir, tmp_path):
    r = fit(cfg(fmnist_dir, tmp_path, pipeline="reference", workers=0, limit_train=128, limit_test=64), progress=False)
    assert len(r.history["iter_loss"]) == 2                  # 128 - 12 held out = 116 -> 2 batches of 64
    assert r.history["iter_loss"][-1] < r.history["iter_loss"][0]


def test_paired_ci_matches_the_t_table():
    from sedeploy.training.compare import paired_ci
    r = paired_ci([1.0, 2.0, 3.0])
    half = 4.302652729911275 / 3 ** 0.5            # t(0.975, df=2) from the published table; sd = 1
    assert r["mean"] == 2.0 and r["sd"] == 1.0
    assert r["ci_low"] == pytest.approx(2 - half, abs=1e-9) and r["ci_high"] == pytest.approx(2 + half, abs=1e-9)
    assert paired_ci([0.5])["ci_low"] is None      # one seed: no interval


@pytest.mark.parametrize("level", [0.95, 0.9])
def test_paired_ci_matches_scipy(level):
    from scipy import stats
    from sedeploy.training.compare import paired_ci
    d = [0.3, -1.2, 2.5, 0.8, 1.1]
    ci = stats.ttest_1samp(d, 0.0).confidence_interval(level)
    r = paired_ci(d, level)
    assert r["mean"] == pytest.approx(0.7) and r["sd"] == pytest.approx(float(np.std(d, ddof=1)))
    assert r["ci_low"] == pytest.approx(ci.low, abs=1e-9) and r["ci_high"] == pytest.approx(ci.high, abs=1e-9)


def test_compare_over_seeds_is_paired_and_resumable(fmnist_dir, tmp_path, monkeypatch):
    base = cfg(fmnist_dir, tmp_path, limit_train=128, limit_test=64)
    res = compare(base, ("cnn", "se_cnn"), seeds=(0, 1), progress=False, log=lambda m: None)
    acc = {(m, s): json.loads((tmp_path / f"seed{s}" / m / "summary.json").read_text())["test_acc"]
           for m in ("cnn", "se_cnn") for s in (0, 1)}
    pm = {m["model"]: m for m in res["per_model"]}
    assert pm["cnn"]["mean"] == pytest.approx((acc["cnn", 0] + acc["cnn", 1]) / 2)
    assert res["paired"][0]["diffs"] == pytest.approx([acc["se_cnn", s] - acc["cnn", s] for s in (0, 1)])
    from scipy import stats
    d, pr = res["paired"][0]["diffs"], res["paired"][0]
    assert pr["mean"] == pytest.approx(np.mean(d))
    if np.std(d) > 0:                               # the interval scipy gives for these two paired seeds
        ci = stats.ttest_1samp(d, 0.0).confidence_interval(0.95)
        assert (pr["ci_low"], pr["ci_high"]) == pytest.approx((ci.low, ci.high))
    else:                                           # equal diffs: a zero-width interval at the mean
        assert pr["ci_low"] == pr["ci_high"] == pytest.approx(pr["mean"])
    assert {r["params"] for r in res["runs"] if r["model"] == "se_cnn"} == {1_150_026}
    for f in ("comparison.json", "comparison.md", "comparison.png"):
        assert (tmp_path / f).stat().st_size > 0
    assert "se_cnn - cnn" in (tmp_path / "comparison.md").read_text()
    # a second call reuses the finished runs instead of training again
    import sedeploy.training.loop as loop
    monkeypatch.setattr(loop, "fit", lambda *a, **k: pytest.fail("retrained a finished run"))
    again = compare(base, ("cnn", "se_cnn"), seeds=(0, 1), progress=False, log=lambda m: None)
    assert again["paired"] == res["paired"]


@pytest.mark.slow
def test_ddp_uneven_data_same_steps_and_exact_counts(fmnist_dir, tmp_path):
    """2 ranks on a training part of 2b+1 samples with batch b: rank 0 would take b+1 samples (2 steps) and
    rank 1 b (1 step) without padding, and wait forever in the second all-reduce."""
    import socket
    from sedeploy.training.data import load_dataset, stratified_split
    _, data = load_dataset("fashion-mnist", str(fmnist_dir))
    limit = 300
    while True:   # pick a limit whose training part is odd (the split is deterministic)
        from sedeploy.training.data import subset
        n = len(stratified_split(subset(data["train"], limit, 0), 0.1, 0)[0].labels)
        if n % 2:
            break
        limit += 1
    batch = (n - 1) // 2
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    script = tmp_path / "ddp_run.py"
    script.write_text(textwrap.dedent(f"""
        import os, torch
        from sedeploy.training import TrainConfig, fit
        r = fit(TrainConfig(model="se_cnn", dataset="fashion-mnist", data_dir={str(fmnist_dir)!r}, epochs=1,
                            out={str(tmp_path / 'out')!r}, limit_train={limit}, limit_test=63, batch_size={batch},
                            log_every=0), progress=False)
        torch.save(r.model.state_dict(), {str(tmp_path)!r} + f"/rank{{os.environ['RANK']}}.pt")
    """))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    try:
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                               "--master_port", str(port), str(script)], capture_output=True, text=True, env=env,
                              timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail("DDP training hung (ranks ran different numbers of steps)")
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    hist = json.loads((tmp_path / "out" / "history.json").read_text())
    assert len(hist["iter_loss"]) == 2                      # ceil((n + 1) / 2 / b) = 2 steps on every rank
    # every validation/test sample counted exactly once: the same weights scored in one process agree
    from sedeploy.models import create_model
    from sedeploy.training.augment import AUGMENT_PRESETS, BatchAugment
    from sedeploy.training.data import subset as sub
    info, data = load_dataset("fashion-mnist", str(fmnist_dir))
    val = stratified_split(sub(data["train"], limit, 0), 0.1, 0)[1]
    test = sub(data["test"], 63, 1)
    model = create_model("se_cnn", in_channels=1, num_classes=10)
    model.load_state_dict(a)
    model.eval()
    aug = BatchAugment(AUGMENT_PRESETS["light"], info.mean, info.std)
    row = hist["epochs"][0]
    assert row["val_n"] == len(val.labels) and row["test_n"] == len(test.labels)   # each sample once, none twice
    for split, key in ((val, "val_acc"), (test, "test_acc")):
        with torch.no_grad():
            correct = (model(aug.normalize(split.images)).argmax(1) == split.labels).sum().item()
        assert row[key] == pytest.approx(100.0 * correct / len(split.labels)), key


def test_selection_and_schedule_follow_validation_not_test(fmnist_dir, tmp_path, monkeypatch):
    """Scripted scores where validation and test disagree: best.pt and the LR drops follow validation."""
    import sedeploy.training.loop as loop
    val = iter([(1.0, 50.0), (0.9, 70.0), (0.95, 60.0), (0.95, 60.0), (0.95, 60.0), (0.95, 60.0)])
    test = iter([(1.0, 90.0), (1.0, 40.0), (1.0, 95.0), (1.0, 30.0), (1.0, 30.0), (1.0, 30.0)])

    def scripted(cfg, st, data, split, device, d):
        loss, acc = next(val) if split is data.val else next(test)
        return {"loss": loss, "acc": acc, "n": len(split.labels)}
    monkeypatch.setattr(loop, "evaluate_split", scripted)
    r = fit(cfg(fmnist_dir, tmp_path, epochs=6, limit_train=128, limit_test=32, patience=1), progress=False)
    assert r.selected["epoch"] == 2 and r.test_acc == 40.0                  # best validation, not best test (3)
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 2
    lrs = [e["lr"] for e in r.history["epochs"]]
    # validation loss best at epoch 2, then 2 epochs without improvement with patience 1 -> halved after epoch 4
    assert lrs == [1e-3, 1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4]


def test_resume_edge_cases(fmnist_dir, tmp_path):
    kw = dict(limit_train=256, limit_test=64, seed=3)
    fit(cfg(fmnist_dir, tmp_path, epochs=2, **kw), progress=False)
    with pytest.raises(UserError, match="already run 2 epochs; pass --epochs above 2"):
        fit(cfg(fmnist_dir, tmp_path, epochs=2, resume=str(tmp_path / "last.pt"), **kw), progress=False)
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    del ck["recipe"]                                                        # a last.pt from an older sedeploy
    save_checkpoint(ck, tmp_path / "old.pt")
    with pytest.raises(UserError, match="no recipe recorded.*--allow-recipe-change"):
        fit(cfg(fmnist_dir, tmp_path, epochs=3, resume=str(tmp_path / "old.pt"), **kw), progress=False)
    fit(cfg(fmnist_dir, tmp_path, epochs=3, resume=str(tmp_path / "old.pt"), allow_recipe_change=True, **kw),
        progress=False)
    assert json.loads((tmp_path / "summary.json").read_text())["recipe_changed"] is True


def test_outputs_respect_the_umask(fmnist_dir, tmp_path):
    import stat
    from sedeploy.export.exporter import ExportOptions, export_checkpoint
    old = os.umask(0o027)
    try:
        fit(cfg(fmnist_dir, tmp_path, limit_train=128, limit_test=32), progress=False)
        export_checkpoint(str(tmp_path / "best.pt"), str(tmp_path), ExportOptions(), log=lambda s: None)
    finally:
        os.umask(old)
    for name in ("best.pt", "last.pt", "summary.json", "history.json", "curves.png", "model.onnx", "model.ts",
                 "export.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name
