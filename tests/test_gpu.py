"""CUDA paths: mixed-precision training, the CUDA provider, the CUDA bench rows, fp16 on the GPU.

Every test here is marked `gpu`: without a CUDA GPU (torch) or onnxruntime's CUDAExecutionProvider
they are skipped with the reason (see conftest.py), so a CPU run shows them as skipped, never as
passed. `make test-gpu` runs just these where a GPU exists.
"""
import json

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


def _ort_cuda_or_skip():
    import onnxruntime as ort
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"onnxruntime has no CUDAExecutionProvider (providers: {ort.get_available_providers()})")


def test_cuda_training_with_mixed_precision(fmnist_dir, tmp_path):
    import torch
    from sedeploy.training import TrainConfig, fit
    r = fit(TrainConfig(model="se_cnn", dataset="fashion-mnist", data_dir=str(fmnist_dir), epochs=2, out=str(tmp_path),
                        device="cuda", amp=True, log_every=0), progress=False)
    loss = r.history["iter_loss"]
    assert sum(loss[-3:]) < 0.7 * sum(loss[:3]) and r.test_acc > 30
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert "scaler" in last and last["scaler"]["scale"] > 0                      # AMP was on
    assert all(t.device.type == "cpu" for t in last["state_dict"].values())      # checkpoints load anywhere
    assert "cuda" in last["rng"]["ranks"][0]                                     # the CUDA RNG is resumed too


def test_cuda_provider_matches_cpu(trained_fm, tmp_path):
    _ort_cuda_or_skip()
    from PIL import Image
    from sedeploy.export.exporter import ExportOptions, export_checkpoint
    from sedeploy.runtime.predictor import Predictor
    export_checkpoint(str(trained_fm / "best.pt"), str(tmp_path), ExportOptions(formats=("onnx",)), log=lambda s: None)
    rng = np.random.default_rng(0)
    files = []
    for i in range(6):
        p = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 30), dtype=np.uint8)).save(p)
        files.append(p)
    gpu = Predictor(tmp_path / "model.onnx", "cuda")
    assert gpu.provider == "CUDAExecutionProvider"
    cpu = Predictor(tmp_path / "model.onnx", "cpu")
    for a, b in zip(gpu.predict(files), cpu.predict(files)):
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-4, rtol=0)
        for k in a.outputs:
            np.testing.assert_allclose(a.outputs[k], b.outputs[k], atol=1e-3, rtol=1e-3, err_msg=k)


def test_infer_cli_on_cuda(run_cli, trained_fm, tmp_path):
    _ort_cuda_or_skip()
    from PIL import Image
    run_cli("export", "--ckpt", trained_fm / "best.pt", "--out", tmp_path, "--formats", "onnx")
    Image.new("L", (28, 28), 200).save(tmp_path / "x.png")
    r = run_cli("infer", tmp_path / "x.png", "--model", tmp_path / "model.onnx", "--provider", "cuda", "--json")
    assert r.code == 0, r.err
    rec = json.loads(r.out.strip().splitlines()[0])
    assert rec["provider"] == "CUDAExecutionProvider"


def test_cuda_bench_rows(trained_fm, fmnist_dir, tmp_path):
    _ort_cuda_or_skip()
    from sedeploy.bench import BenchConfig, run_bench
    from sedeploy.export.exporter import ExportOptions, export_checkpoint
    man = export_checkpoint(str(trained_fm / "best.pt"), str(tmp_path),
                            ExportOptions(half=True, data_dir=str(fmnist_dir)), log=lambda s: None)
    assert "fp16" in {f["format"] for f in man["files"]}                       # passed its parity gate on CUDA
    res = run_bench(BenchConfig(model=str(tmp_path / "model.onnx"), batch_sizes=(1, 16), warmup=2, min_time=0.05,
                                repeats=1, backends=("pytorch", "pytorch-cuda", "ort-cuda", "ort-cuda-fp16"),
                                data_dir=str(fmnist_dir)), log=lambda s: None)
    by = {(r["backend"], r["batch"]): r for r in res["rows"]}
    for b in ("pytorch-cuda", "ort-cuda", "ort-cuda-fp16"):
        for n in (1, 16):
            assert by[(b, n)]["status"] == "ok", by[(b, n)]
    assert by[("ort-cuda", 16)]["max_abs_diff"] < 1e-3 and by[("pytorch-cuda", 16)]["max_abs_diff"] < 1e-3
    assert by[("ort-cuda-fp16", 16)]["max_abs_diff"] < 5e-2 and by[("ort-cuda-fp16", 16)]["top1_agreement"] >= 98
