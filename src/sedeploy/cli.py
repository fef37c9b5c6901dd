"""The `sedeploy` command line: a thin click layer over the library.

Each command parses and validates its options, calls the library, and prints. Heavy imports
(torch, onnx) happen inside the commands that need them, so `sedeploy --help` and
`sedeploy infer` start without torch. Bad input raises UserError: one line on stderr, exit 2,
no traceback unless --debug.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import click

from .errors import UserError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="sedeploy")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """sedeploy: train, export, verify, explain and measure SE-attention image classifiers.

    \b
    Typical flow:
      sedeploy train --dataset fashion-mnist --epochs 10 --out runs/fm
      sedeploy export --ckpt runs/fm/best.pt
      sedeploy infer shirt.png --model runs/fm/model.onnx --heatmaps heat/
      sedeploy bench --ckpt runs/fm/best.pt
    """
    ctx.obj = {"debug": debug}


def _dump_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


# ---------------------------------------------------------------- train
def _train_options(f):
    opts = [
        click.option("--model", "model", default="se_cnn", show_default=True, help="Model name (cnn, se_cnn)."),
        click.option("--dataset", default="cifar10", show_default=True,
                     help="cifar10, fashion-mnist, or folder (your own images in --data-dir)."),
        click.option("--data-dir", default=None, help="Dataset root [cifar10: ./data; fashion-mnist: Debian's copy; "
                                                   "folder: PATH/<class>/* or PATH/{train,val,test}/<class>/*]."),
        click.option("--input-size", type=int, default=None,
                     help="folder: square input side, a multiple of 8 [the images' own if all share one, else 32]."),
        click.option("--color", type=click.Choice(["auto", "grey", "rgb"]), default="auto", show_default=True,
                     help="folder: input channels; auto = grey (1) when every image is grey, else RGB (3)."),
        click.option("--val-split", type=float, default=0.1, show_default=True,
                     help="Share of each class held out for validation (folder without val/)."),
        click.option("--test-split", type=float, default=0.1, show_default=True,
                     help="folder without test/: share of each class held out for test."),
        click.option("--cache-dir", default=None,
                     help="folder: where decoded images are cached [$SEDEPLOY_CACHE or ~/.cache/sedeploy]."),
        click.option("--download", is_flag=True, help="Let torchvision download the dataset (needs internet)."),
        click.option("--epochs", type=int, default=50, show_default=True),
        click.option("--batch-size", type=int, default=64, show_default=True),
        click.option("--lr", type=float, default=1e-3, show_default=True),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda."),
        click.option("--workers", type=int, default=2, show_default=True,
                     help="DataLoader workers (reference pipeline only)."),
        click.option("--limit-train", type=int, default=None, help="Quick run: train on this many samples."),
        click.option("--limit-test", type=int, default=None, help="Quick run: test on this many samples."),
        click.option("--augment", default=None, help="reference, light or none [cifar10: reference, "
                                                   "fashion-mnist: light]."),
        click.option("--pipeline", default="fast", show_default=True,
                     help="fast (batched tensor augmentation) or reference (PIL per image in a DataLoader)."),
        click.option("--no-amp", is_flag=True, help="Disable mixed precision on CUDA."),
        click.option("--no-progress", is_flag=True, help="No progress bar."),
        click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _train_config(kw: dict, out: str, resume: Optional[str] = None):
    from .training.loop import TrainConfig
    return TrainConfig(model=kw["model"], dataset=kw["dataset"], data_dir=kw["data_dir"], download=kw["download"],
                       epochs=kw["epochs"], batch_size=kw["batch_size"], lr=kw["lr"], seed=kw["seed"],
                       device=kw["device"], workers=kw["workers"], out=out, resume=resume,
                       limit_train=kw["limit_train"], limit_test=kw["limit_test"], augment=kw["augment"],
                       pipeline=kw["pipeline"], amp=not kw["no_amp"], val_split=kw["val_split"],
                       test_split=kw["test_split"], input_size=kw["input_size"],
                       channels={"grey": 1, "rgb": 3}.get(kw["color"]), cache_dir=kw["cache_dir"])


@cli.command(context_settings=CONTEXT)
@_train_options
@click.option("--out", default="runs/train", show_default=True, help="Output directory.")
@click.option("--resume", default=None, help="Continue from this last.pt.")
def train(out: str, resume: Optional[str], **kw) -> None:
    """Train a model with the reference recipe; writes best.pt, last.pt, history and plots.

    \b
    Examples:
      sedeploy train --dataset fashion-mnist --epochs 10 --out runs/fm
      sedeploy train --dataset cifar10 --download                    # the full reference run
      sedeploy train --dataset fashion-mnist --limit-train 5000 --epochs 1   # quick check
      sedeploy train --dataset folder --data-dir photos/ --input-size 64 --epochs 30 --out runs/mine
      sedeploy train --resume runs/fm/last.pt --epochs 20 --dataset fashion-mnist --out runs/fm
      torchrun --nproc_per_node 2 -m sedeploy train --dataset fashion-mnist   # data-parallel
    """
    from .training.loop import fit
    r = fit(_train_config(kw, out, resume), progress=not kw["no_progress"])
    summary = {"out": str(r.out), "best_acc": r.best_acc, "final": r.final, "params": r.params,
               "seconds_per_epoch": r.seconds_per_epoch}
    if kw["as_json"]:
        _dump_json(summary)
    else:
        click.echo(f"best test accuracy {r.best_acc:.2f}%  -> {r.out}/best.pt (curves: {r.out}/curves.png)")


@cli.command(context_settings=CONTEXT)
@_train_options
@click.option("--out", default="runs/compare", show_default=True, help="Output directory (one folder per model).")
@click.option("--models", default="cnn,se_cnn", show_default=True, help="Models to train, in this order.")
def compare(out: str, models: str, **kw) -> None:
    """Train cnn and se_cnn with the same seed and recipe; print the reference's table.

    \b
    Examples:
      sedeploy compare --dataset fashion-mnist --epochs 10 --out runs/compare
    """
    from .training.compare import compare as run_compare, format_table
    rows = run_compare(_train_config(kw, out), tuple(m.strip() for m in models.split(",") if m.strip()),
                       progress=not kw["no_progress"])
    if kw["as_json"]:
        _dump_json(rows)
    else:
        click.echo(format_table(rows))


@cli.command("bench-train", context_settings=CONTEXT)
@click.option("--dataset", default="fashion-mnist", show_default=True)
@click.option("--data-dir", default=None)
@click.option("--model", "model", default="se_cnn", show_default=True)
@click.option("--augment", default="reference", show_default=True, help="Augmentation for both pipelines.")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--batches", type=int, default=60, show_default=True, help="Timed batches per pipeline.")
@click.option("--workers", type=int, default=2, show_default=True, help="DataLoader workers (reference).")
@click.option("--device", default="auto", show_default=True)
@click.option("--rgb", is_flag=True, help="Replicate grey images to 3 channels (CIFAR-shaped input).")
@click.option("--json", "as_json", is_flag=True)
def bench_train(as_json: bool, **kw) -> None:
    """Training throughput: the reference PIL/DataLoader pipeline vs sedeploy's batch pipeline.

    Both run the same model, augmentation and batch size with full training steps, in one run.

    \b
    Examples:
      sedeploy bench-train --dataset fashion-mnist --rgb --batches 60
    """
    from .training.speed import bench_pipelines
    res = bench_pipelines(**kw)
    if as_json:
        _dump_json(res)
    else:
        for r in res["rows"]:
            click.echo(f"{r['pipeline']:>10}: {r['images_per_s']:8.0f} img/s  "
                       f"({r['batches']} batches of {res['batch_size']})")
        click.echo(f"speed-up: {res['speedup']:.2f}x  ({res['machine']})")


@cli.command(context_settings=CONTEXT)
@click.option("--ckpt", required=True, help="Checkpoint (best.pt).")
@click.argument("images", nargs=-1, required=True)
@click.option("--out", default="features", show_default=True, help="Output directory for PNGs.")
@click.option("--channels", type=int, default=9, show_default=True, help="First N channels per block.")
def features(ckpt: str, images: List[str], out: str, channels: int) -> None:
    """The reference's feature-map view: each image beside the first N channels of every conv block.

    \b
    Examples:
      sedeploy features --ckpt runs/fm/best.pt demo/images/*.png --out demo/features
    """
    from .features import feature_maps
    for p in feature_maps(ckpt, list(images), out, channels):
        click.echo(str(p))


def _parse_batch(value: str) -> Optional[int]:
    if value == "dynamic":
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"--batch must be 'dynamic' or a positive integer, got {value!r}") from None


@cli.command(context_settings=CONTEXT)
@click.option("--ckpt", required=True, help="Checkpoint written by `sedeploy train` (best.pt).")
@click.option("--out", default=None, help="Output directory [default: the checkpoint's directory].")
@click.option("--formats", default="onnx,torchscript", show_default=True, help="Comma-separated: onnx, torchscript.")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (11..20).")
@click.option("--batch", default="dynamic", show_default=True, help="'dynamic' or a fixed batch size.")
@click.option("--no-simplify", is_flag=True, help="Skip onnxsim simplification.")
@click.option("--logits-only", is_flag=True, help="Export logits only, without SE weights and feature map.")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@click.option("--overhead", is_flag=True, help="Also measure the latency cost of the extra outputs.")
@click.option("--int8", is_flag=True, help="Also write model.int8.onnx (static int8, onnxruntime).")
@click.option("--calib", type=int, default=512, show_default=True, help="Training images to calibrate int8 on.")
@click.option("--half", is_flag=True, help="Also write model.fp16.onnx (float16 graph, float32 I/O) for CUDA.")
@click.option("--data-dir", default=None, help="Dataset root for int8 calibration and verification images.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def export(ckpt: str, out: Optional[str], formats: str, opset: int, batch: str, no_simplify: bool,
           logits_only: bool, force: bool, overhead: bool, int8: bool, calib: int, half: bool,
           data_dir: Optional[str], as_json: bool) -> None:
    """Export a checkpoint to simplified ONNX and TorchScript, verified against PyTorch.

    Writes model.onnx, model.ts and export.json next to the checkpoint (or in --out). The graphs
    output logits, the SE channel weights (se1, se2, se3) and the last feature map, with class
    names, normalization and provenance in their metadata.

    \b
    Examples:
      sedeploy export --ckpt runs/fm/best.pt
      sedeploy export --ckpt best.pt --out exports/ --formats onnx --opset 17 --force
      sedeploy export --ckpt best.pt --batch 1 --no-simplify
      sedeploy export --ckpt best.pt --int8 --half --force     # + model.int8.onnx, model.fp16.onnx
    """
    from .export.exporter import ExportOptions, export_checkpoint
    opts = ExportOptions(formats=tuple(f.strip() for f in formats.split(",") if f.strip()), opset=opset,
                         batch=_parse_batch(batch), simplify=not no_simplify, force=force, extras=not logits_only,
                         int8=int8, calib=calib, half=half, data_dir=data_dir)
    log = (lambda m: click.echo(m, err=True)) if as_json else click.echo
    manifest = export_checkpoint(ckpt, out, opts, log=log)
    if overhead:
        from .export.overhead import measure_overhead
        manifest["overhead"] = measure_overhead(ckpt, log=log)
    if as_json:
        _dump_json(manifest)


@cli.command(context_settings=CONTEXT)
@click.argument("images", nargs=-1, required=True)
@click.option("--model", "model", default=None,
              help="ONNX model [default: $SEDEPLOY_MODEL, ./model.onnx, or the newest model.onnx under ./runs, "
                   "./demo, ./exports].")
@click.option("--provider", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--topk", type=int, default=5, show_default=True)
@click.option("--heatmaps", "heatmaps", default=None, help="Write attention heatmaps into this directory.")
@click.option("--channels", type=int, default=6, show_default=True, help="Top channels shown/reported per image.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--threads", type=int, default=None, help="onnxruntime intra-op threads [default: all cores].")
@click.option("--graph-opt", default="all", show_default=True, help="Graph optimization: none, basic, extended, all.")
@click.option("--background", default="black", show_default=True,
              help="Colour that transparent pixels are composited on: black, white, grey.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image (JSON lines).")
def infer(images: List[str], model: Optional[str], provider: str, topk: int, heatmaps: Optional[str], channels: int,
          batch_size: int, threads: Optional[int], graph_opt: str, background: str, as_json: bool) -> int:
    """Classify images with an exported ONNX model (onnxruntime only, no torch); optional heatmaps.

    IMAGES are files, directories (their images) or globs. Exit status 1 when some images failed
    (the others still get results), 2 on bad options or a bad model.

    \b
    Examples:
      sedeploy infer frog.png
      sedeploy infer photos/ --model runs/fm/model.onnx --topk 3 --heatmaps heat/
      sedeploy infer 'shots/*.jpg' --provider cuda --json > predictions.jsonl
    """
    from .errors import ensure_writable_dir
    from .runtime.predictor import Predictor
    from .runtime.preprocess import ImageError, expand_inputs
    for name, v in (("--channels", channels), ("--topk", topk), ("--batch-size", batch_size)):
        if v <= 0:
            raise UserError(f"{name} must be positive, got {v}")
    predictor = Predictor(model, provider, threads, graph_opt, background)
    paths, failures = expand_inputs(images)
    outdir = ensure_writable_dir(heatmaps, "heatmap directory") if heatmaps else None
    if outdir is not None and predictor.info.feature_map is None:
        raise UserError(f"{predictor.path} has no feature_map output; re-export without --logits-only for heatmaps")
    if not as_json:
        click.echo(f"model {predictor.path} ({predictor.info.meta.get('model_name', '?')}), "
                   f"provider {predictor.provider}", err=True)
    for e in failures:
        click.echo(f"error: {e}", err=True)
        if as_json:
            click.echo(json.dumps({"image": e.path, "error": str(e)}))
    stems: dict = {}
    ok = 0
    for r in predictor.predict_iter(paths, topk, batch_size):
        if isinstance(r, ImageError):
            failures.append(r)
            click.echo(f"error: {r}", err=True)
            if as_json:
                click.echo(json.dumps({"image": r.path, "error": str(r)}))
            continue
        ok += 1
        rec = r.to_dict()
        rec["provider"] = predictor.provider
        if outdir is not None:
            stem = Path(r.image).stem
            stems[stem] = stems.get(stem, 0) + 1
            if stems[stem] > 1:
                stem = f"{stem}_{stems[stem]}"
            rec["heatmaps"] = predictor.write_heatmaps(r, outdir, stem, channels)
        if as_json:
            click.echo(json.dumps(rec))
        else:
            tops = "  ".join(f"{t.label} {100 * t.prob:5.1f}%" for t in r.top)
            click.echo(f"{r.image}: {tops}")
    if outdir is not None and not as_json:
        click.echo(f"heatmaps for {ok} image(s) in {outdir}/ (*_heatmap.png, *_channels.png, *_se.png)", err=True)
    if failures:
        click.echo(f"{len(failures)} input(s) failed, {ok} succeeded", err=True)
        return 1
    return 0


@cli.command(context_settings=CONTEXT)
@click.option("--model", "model", default=None, help="ONNX model [found as `infer` finds it].")
@click.option("--dataset", default=None, help="Dataset [default: the model's own].")
@click.option("--data-dir", default=None)
@click.option("--n", "n", type=int, default=1000, show_default=True, help="Test images.")
@click.option("--fraction", type=float, default=0.2, show_default=True, help="Share of pixels masked.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def faithfulness(as_json: bool, **kw) -> None:
    """Deletion test: does masking the pixels a heatmap ranks highest hurt the prediction more than random?

    \b
    Examples:
      sedeploy faithfulness --model runs/fm/model.onnx --n 1000 --fraction 0.2
    """
    from .faithfulness import deletion_eval
    res = deletion_eval(log=(lambda m: click.echo(m, err=True)) if as_json else click.echo, **kw)
    if as_json:
        _dump_json(res)


def _int_list(value: str, what: str) -> tuple:
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise UserError(f"{what} must be comma-separated integers, e.g. 1,8,64; got {value!r}") from None


@cli.command(context_settings=CONTEXT)
@click.option("--model", "model", default=None, help="ONNX model [found as `infer` finds it].")
@click.option("--ckpt", default=None, help="Checkpoint for the PyTorch rows [export.json's, or best.pt beside the model].")
@click.option("--batch-sizes", default="1,8,64", show_default=True)
@click.option("--backends", default=",".join(("pytorch", "torchscript", "ort-cpu", "ort-cpu-int8", "pytorch-cuda",
                                               "ort-cuda", "ort-cuda-fp16")), show_default=True)
@click.option("--threads", type=int, default=None, help="CPU threads for torch and onnxruntime [all cores].")
@click.option("--warmup", type=int, default=10, show_default=True, help="Untimed runs per row.")
@click.option("--min-time", type=float, default=1.0, show_default=True, help="Seconds of timed runs per row and round.")
@click.option("--repeats", type=int, default=3, show_default=True,
              help="Timing rounds over all rows (medians reported): robust to bursts of load.")
@click.option("--data", default=None, help="Dataset for accuracy [the model's own].")
@click.option("--data-dir", default=None)
@click.option("--limit", type=int, default=None, help="Test images for accuracy [all].")
@click.option("--json", "json_path", default=None, help="Also write the results as JSON to this file.")
@click.option("--csv", "csv_path", default=None, help="Also write the rows as CSV to this file.")
def bench(model, ckpt, batch_sizes, backends, threads, warmup, min_time, repeats, data, data_dir, limit, json_path,
          csv_path) -> None:
    """Benchmark every backend x batch size: latency, throughput, size, accuracy, parity.

    \b
    Examples:
      sedeploy bench                                   # the model `infer` would use
      sedeploy bench --model runs/fm/model.onnx --batch-sizes 1,64 --threads 2
      sedeploy bench --backends ort-cpu,ort-cpu-int8 --json bench.json --csv bench.csv
    """
    from .bench import BenchConfig, format_table, run_bench, write_csv, write_json
    cfg = BenchConfig(model=model, ckpt=ckpt, batch_sizes=_int_list(batch_sizes, "--batch-sizes"),
                      backends=tuple(b.strip() for b in backends.split(",") if b.strip()), threads=threads,
                      warmup=warmup, min_time=min_time, repeats=repeats, data=data, data_dir=data_dir, limit=limit)
    res = run_bench(cfg, log=lambda m: click.echo(m, err=True))
    click.echo(format_table(res))
    if json_path:
        write_json(res, json_path)
    if csv_path:
        write_csv(res, csv_path)


@cli.command(context_settings=CONTEXT)
@click.option("--dataset", default="fashion-mnist", show_default=True)
@click.option("--data-dir", default=None)
@click.option("--n", "n", type=int, default=8, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", default="samples", show_default=True)
def samples(dataset: str, data_dir: Optional[str], n: int, seed: int, out: str) -> None:
    """Write N real test images as PNG (named <index>_<true class>.png) to try `infer` on.

    \b
    Examples:
      sedeploy samples --n 6 --out demo/images && sedeploy infer demo/images
    """
    from .datasets import DATASETS, write_samples
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}")
    for p in write_samples(dataset, Path(out), n, data_dir, seed):
        click.echo(str(p))


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point: one-line errors for bad input, full tracebacks only with --debug."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        rv = cli.main(args=args, prog_name="sedeploy", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as e:
        cmd = e.ctx.command_path if e.ctx else "sedeploy"
        click.echo(f"error: {e.format_message()} (see `{cmd} --help`)", err=True)
        sys.exit(2)
    except UserError as e:
        if debug:
            raise
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001
        if debug:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        click.echo(f"error: {type(e).__name__}: {first[:300]} (run with --debug for the traceback)", err=True)
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
