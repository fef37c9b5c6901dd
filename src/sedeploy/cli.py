"""The `sedeploy` command line: a thin click layer over the library.

Each command parses and validates its options, calls the library, and prints. Heavy imports
(torch, onnx) happen inside the commands that need them, so `sedeploy --help` and
`sedeploy infer` start without torch. Bad input raises UserError: one line on stderr, exit 2,
no traceback unless --debug; an unexpected crash exits 3, apart from "some images failed" (1).
"""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import click

from .core.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_USAGE, UserError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Group(click.Group):
    """The command group: an error raised while a command runs becomes one line on stderr and an exit
    status (core.errors: 2 bad input, 3 a bug, 130 interrupted), unless the group's --debug asks
    for the traceback. click parses --debug, so it is known here, before any command runs."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except UserError as e:
            if ctx.params.get("debug"):
                raise
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except Exception as e:  # noqa: BLE001
            if ctx.params.get("debug"):
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            click.echo(f"error: {type(e).__name__}: {first[:300]} (an internal error, not your input; run with "
                       f"--debug for the traceback and report it)", err=True)
            ctx.exit(EXIT_INTERNAL)


@click.group(cls=Group, context_settings=CONTEXT)
@click.version_option(package_name="sedeploy")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
def cli(debug: bool) -> None:
    """sedeploy: train, export, verify, explain and measure SE-attention image classifiers.

    \b
    Typical flow:
      sedeploy train --dataset fashion-mnist --epochs 10 --out runs/fm
      sedeploy export --ckpt runs/fm/best.pt
      sedeploy infer shirt.png --model runs/fm/model.onnx --heatmaps heat/
      sedeploy bench --ckpt runs/fm/best.pt
    """


def _dump_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


@contextlib.contextmanager
def _json_only(as_json: bool):
    """With --json, stdout carries the JSON alone: whatever the work prints (a training loop's epoch lines,
    a folder loader's summary) goes to stderr while it runs."""
    if not as_json:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


# ---------------------------------------------------------------- train
class LazyChoice(click.Choice):
    """click.Choice whose options come from a registry when first needed (parsing or help), so that
    building the CLI imports no torch: `sedeploy --help` and `sedeploy infer` stay light."""

    def __init__(self, load: Callable[[], Sequence[str]]) -> None:
        self._load, self._choices = load, None
        super().__init__(())

    @property
    def choices(self):  # type: ignore[override]
        if self._choices is None:
            self._choices = tuple(self._load())
        return self._choices

    @choices.setter
    def choices(self, value) -> None:  # click's __init__ assigns it; the loader wins
        pass


def _models() -> Sequence[str]:
    from .models import list_models
    return list_models()


def _datasets() -> Sequence[str]:
    from .core.datasets import DATASETS
    return DATASETS


def _augments() -> Sequence[str]:
    from .training.augment import AUGMENT_PRESETS
    return tuple(AUGMENT_PRESETS)


def _train_options(f=None, *, exclude: Sequence[str] = ()):
    """The training options; defaults come from TrainConfig, choices from the registries."""
    if f is None:
        return lambda g: _train_options(g, exclude=exclude)
    from .training.config import DEVICES, PIPELINES, PRECISIONS, SELECT_ON, TrainConfig
    d = TrainConfig()
    opts = {
        "model": click.option("--model", "model", type=LazyChoice(_models), default=d.model, show_default=True),
        "dataset": click.option("--dataset", type=LazyChoice(_datasets), default=d.dataset, show_default=True),
        "data_dir": click.option("--data-dir", default=None,
                                 help="Dataset root [cifar10: ./data; fashion-mnist: Debian's copy; "
                                      "folder: PATH/<class>/* or PATH/{train,val,test}/<class>/*]."),
        "input_size": click.option("--input-size", type=int, default=None,
                                   help="folder: square input side, a multiple of 8 [the images' own if all "
                                        "share one, else 32]."),
        "color": click.option("--color", type=click.Choice(["auto", "grey", "rgb"]), default="auto",
                              show_default=True,
                              help="folder: input channels; auto = grey (1) when every image is grey, else RGB (3)."),
        "test_split": click.option("--test-split", type=float, default=d.test_split, show_default=True,
                                   help="folder without test/: share of each class held out for test."),
        "cache_dir": click.option("--cache-dir", default=None,
                                  help="folder: where decoded images are cached [$SEDEPLOY_CACHE or "
                                       "~/.cache/sedeploy]."),
        "download": click.option("--download", is_flag=True, help="Let torchvision download the dataset (needs internet)."),
        "epochs": click.option("--epochs", type=click.IntRange(min=1), default=d.epochs, show_default=True),
        "batch_size": click.option("--batch-size", type=click.IntRange(min=1), default=d.batch_size, show_default=True),
        "lr": click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=d.lr, show_default=True),
        "seed": click.option("--seed", type=int, default=d.seed, show_default=True),
        "device": click.option("--device", type=click.Choice(DEVICES), default=d.device, show_default=True),
        "workers": click.option("--workers", type=click.IntRange(min=0), default=d.workers, show_default=True,
                     help="DataLoader workers (reference pipeline only)."),
        "limit_train": click.option("--limit-train", type=click.IntRange(min=1), default=None,
                     help="Quick run: train on this many samples (before the validation split)."),
        "limit_test": click.option("--limit-test", type=click.IntRange(min=1), default=None,
                     help="Quick run: test on this many samples."),
        "val_split": click.option("--val-split", type=float, default=d.val_split, show_default=True,
                     help="Share of the training set held out (stratified, by seed) to select best.pt and "
                          "drive the LR schedule."),
        "select_on": click.option("--select-on", type=click.Choice(SELECT_ON), default=d.select_on, show_default=True,
                     help="Split that selects best.pt and drives the schedule; 'test' is the reference's way "
                          "(its test accuracy is then optimistic)."),
        "augment": click.option("--augment", type=LazyChoice(_augments), default=None,
                     help="Augmentation [cifar10: reference, fashion-mnist: light]."),
        "pipeline": click.option("--pipeline", type=click.Choice(PIPELINES), default=d.pipeline, show_default=True,
                     help="fast (batched tensor augmentation) or reference (PIL per image in a DataLoader)."),
        "no_amp": click.option("--no-amp", is_flag=True, help="Disable mixed precision on CUDA."),
        "precision": click.option("--precision", type=click.Choice(PRECISIONS), default=d.precision,
                                  show_default=True,
                                  help="bf16: autocast the training step to bfloat16 (CPUs with AVX512-BF16 or "
                                       "AMX), an opt-in variant: its gate against fp32 is in docs/BENCHMARKS.md "
                                       "15.1. Evaluation and checkpoints stay fp32."),
        "compile": click.option("--compile", "compile", is_flag=True,
                                help="torch.compile the training step (fused kernels; about a minute to compile)."),
        "threads": click.option("--threads", type=click.IntRange(min=1), default=None,
                                help="torch threads [one per core]."),
        "early_stop": click.option("--early-stop", type=click.IntRange(min=1), default=None,
                                   help="Stop when the selection accuracy has not improved for this many epochs and, "
                                        "within them, the learning rate was reduced and had the schedule's patience + 1 epochs."),
        "no_progress": click.option("--no-progress", is_flag=True, help="No progress bar."),
        "json": click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout."),
    }
    for name, o in reversed(list(opts.items())):
        if name not in exclude:
            f = o(f)
    return f


_NOT_CONFIG = ("no_amp", "no_progress", "as_json", "seeds", "models", "color", "jobs", "show_status")


def _train_config(kw: dict, **extra):
    """TrainConfig from the parsed options (one name per field; --no-amp is amp=False)."""
    from .training.config import TrainConfig
    fields = {k: v for k, v in kw.items() if k not in _NOT_CONFIG}
    return TrainConfig(**fields, amp=not kw["no_amp"], channels={"grey": 1, "rgb": 3}.get(kw.get("color", "auto")),
                       **extra)


@cli.command(context_settings=CONTEXT)
@_train_options
@click.option("--out", default="runs/train", show_default=True, help="Output directory.")
@click.option("--resume", default=None, help="Continue from this last.pt (the recipe must match).")
@click.option("--allow-recipe-change", is_flag=True,
              help="Resume even when the options differ from the checkpoint's recipe (not an exact resume).")
def train(**kw) -> None:
    """Train a model with the reference recipe; writes best.pt, last.pt, history and plots.

    best.pt is the epoch with the best validation accuracy (a stratified --val-split of the
    training set); the test set is only scored. --select-on test reproduces the reference.

    \b
    Examples:
      sedeploy train --dataset fashion-mnist --epochs 10 --out runs/fm
      sedeploy train --dataset cifar10 --download                    # the full reference run
      sedeploy train --dataset fashion-mnist --limit-train 5000 --epochs 1   # quick check
      sedeploy train --dataset folder --data-dir photos/ --input-size 64 --epochs 30 --out runs/mine
      sedeploy train --dataset fashion-mnist --out runs/fm --epochs 20 --resume runs/fm/last.pt
      torchrun --nproc_per_node 2 -m sedeploy train --dataset fashion-mnist   # data-parallel
    """
    from .training.loop import fit
    with _json_only(kw["as_json"]):
        r = fit(_train_config(kw), progress=not kw["no_progress"])
    summary = {"out": str(r.out), "selected": r.selected, "test_acc": r.test_acc, "final": r.final,
               "params": r.params, "seconds_per_epoch": r.seconds_per_epoch}
    if kw["as_json"]:
        _dump_json(summary)
    else:
        on = "validation" if r.selected["split"] == "val" else "test"
        val = f" (validation {r.selected['val_acc']:.2f}%)" if r.selected["val_acc"] is not None else ""
        click.echo(f"best.pt: epoch {r.selected['epoch']}, chosen on {on} accuracy{val}; test accuracy "
                   f"{r.test_acc:.2f}%  -> {r.out}/best.pt (curves: {r.out}/curves.png)")


@cli.command(context_settings=CONTEXT)
@_train_options(exclude=("model", "seed"))
@click.option("--out", default="runs/compare", show_default=True, help="Output directory (seed<k>/<model>/ inside).")
@click.option("--models", default="cnn,se_cnn", show_default=True,
              help="Models to train; the first is the baseline of the paired differences.")
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated seeds (at least 2 for a CI).")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Runs trained at once, each in its own process with cores/jobs threads (log: its train.log).")
@click.option("--status", "show_status", is_flag=True,
              help="Train nothing: say which runs are finished, in progress or not started, redraw curves.png "
                   "and print the table over the seeds that have finished.")
def compare(**kw) -> None:
    """Train models over several seeds; mean, sd and the paired difference with a 95 % CI.

    Finished runs in OUT are reused and unfinished ones resumed from their last.pt, so an
    interrupted comparison continues where it stopped (run the same command again). Writes
    OUT/comparison.json, comparison.md, comparison.png and curves.png.

    \b
    Examples:
      sedeploy compare --dataset fashion-mnist --epochs 15 --seeds 0,1,2 --out runs/compare
      sedeploy compare --dataset fashion-mnist --epochs 50 --early-stop 6 --seeds 0,1,2,3,4 --jobs 2
      sedeploy compare --dataset fashion-mnist --epochs 1 --limit-train 2000 --seeds 0,1 --json
      sedeploy compare --dataset fashion-mnist --epochs 50 --early-stop 6 --seeds 0,1,2,3,4 --status
    """
    from .training.compare import compare as run_compare, format_table, status
    models = tuple(m.strip() for m in kw["models"].split(",") if m.strip())
    seeds = _int_list(kw["seeds"], "--seeds")
    log = (lambda m: click.echo(m, err=True)) if kw["as_json"] else click.echo
    if kw["show_status"]:
        with _json_only(kw["as_json"]):
            res = status(_train_config(kw), models, seeds, log=log)
        if kw["as_json"]:
            _dump_json(res)
        elif res.get("partial"):
            click.echo(f"seeds finished: {', '.join(map(str, res['complete_seeds']))}")
            click.echo(format_table({**res, **res["partial"], "seeds": res["complete_seeds"], "runs": []}))
        return
    with _json_only(kw["as_json"]):
        res = run_compare(_train_config(kw), models, seeds, progress=not kw["no_progress"], log=log, jobs=kw["jobs"])
    if kw["as_json"]:
        _dump_json(res)
    else:
        click.echo(format_table(res))


@cli.command("bench-train", context_settings=CONTEXT)
@click.option("--dataset", type=LazyChoice(_datasets), default="fashion-mnist", show_default=True)
@click.option("--data-dir", default=None)
@click.option("--model", "model", type=LazyChoice(_models), default="se_cnn", show_default=True)
@click.option("--augment", type=LazyChoice(_augments), default="reference", show_default=True,
              help="Augmentation for every row.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--batches", type=click.IntRange(min=1), default=60, show_default=True, help="Timed batches per row and round.")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Interleaved rounds over all rows; the median is reported.")
@click.option("--steps", default="compile,bf16,compile+bf16", show_default=True,
              help="Step configurations beside plain fast (comma-separated; '' for none).")
@click.option("--parallel", type=click.IntRange(min=0), default=None,
              help="Also run N one-thread processes at once per fast row [the cores on CPU; 0 or 1: off].")
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True,
              help="DataLoader workers (reference).")
@click.option("--device", type=click.Choice(("auto", "cpu", "cuda")), default="auto", show_default=True)
@click.option("--rgb", is_flag=True, help="Replicate grey images to 3 channels (CIFAR-shaped input).")
@click.option("--json", "as_json", is_flag=True)
def bench_train(as_json: bool, steps: str, **kw) -> None:
    """Training throughput: data pipelines and training-step configurations, in one run.

    Rows: the reference PIL/DataLoader pipeline (NCHW, then channels-last), sedeploy's batch
    pipeline (fast), the fast step compiled and/or in bf16 (where the CPU runs bf16), and N
    one-thread processes at once. Each row: median images/s of interleaved rounds, GFLOP/s and the
    share of the matrix-multiply rate measured in the same run (bf16 rows: of the bf16 rate, and of
    SGEMM's), and its warm-up time (compilation included). The breakdown line says what share of the
    eager fp32 step is convolution/GEMM time, the images/s if everything else took no time, and the
    data path's share of the wall time.

    \b
    Examples:
      sedeploy bench-train --dataset fashion-mnist --augment light
      sedeploy bench-train --rgb --batches 60 --steps compile --parallel 0
      sedeploy bench-train --augment light --json > train_speed.json
    """
    from .training.speed import bench_pipelines
    step_list = tuple(s.strip() for s in steps.split(",") if s.strip())
    with _json_only(as_json):
        res = bench_pipelines(steps=step_list, log=lambda m: click.echo(m, err=True), **kw)
    if as_json:
        _dump_json(res)
        return
    for r in res["rows"]:
        if r.get("images_per_s") is None:
            click.echo(f"{r['pipeline']:>22}: failed: {r.get('status')}")
            continue
        click.echo(f"{r['pipeline']:>22}: {r['images_per_s']:8.0f} img/s  {r['x_fast']:5.2f}x fast  "
                   f"{r['gflops']:6.1f} GFLOP/s = {100 * r['gemm_share']:5.1f}% of {r['gemm_rate']} GEMM"
                   + (f" ({100 * r['sgemm_share']:.1f}% of SGEMM)" if r["gemm_rate"] != "fp32" else "") + "  "
                   f"(min {r['min']:.0f}, max {r['max']:.0f})"
                   + (f"  warm-up {r['warmup_s']:.1f} s" if r.get("warmup_s") is not None else ""))
    b = res["breakdown"]
    bound = f"{b['bound_images_per_s']:.0f}" if b.get("bound_images_per_s") else "n/a"
    click.echo(f"breakdown (fast, fp32, eager): {100 * b['gemm_share']:.0f}% of the step in convolutions/GEMMs; "
               f"with the rest free: {bound} img/s; data path {100 * b['data_share']:.1f}% of the wall time")
    rates = ", ".join(f"{k} {v:.0f}" for k, v in res["gemm_gflops"].items())
    click.echo(f"GEMM GFLOP/s: {rates}; training step {res['flops_per_image'] / 1e6:.1f} MFLOP/image")
    for n in res["notes"]:
        click.echo(f"note: {n}")
    click.echo(f"speed-up: {res['speedup']:.2f}x fast over reference; best {res['best']} "
               f"{res['best_x_fast']:.2f}x fast  ({res['machine']}, median of {res['rounds']} rounds)")


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
@click.option("--formats", default="onnx,torchscript", show_default=True,
              help="Comma-separated: onnx, torchscript, ort (ONNX Runtime format), or all (every format whose "
                   "converter is installed). `sedeploy formats` lists them.")
@click.option("--list-formats", is_flag=True, is_eager=True, expose_value=False,
              callback=lambda ctx, _, v: (_print_formats(False), ctx.exit()) if v else None,
              help="List the formats (as `sedeploy formats`) and exit.")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (11..20).")
@click.option("--batch", default="dynamic", show_default=True, help="'dynamic' or a fixed batch size.")
@click.option("--batch-sizes", default="1,64", show_default=True,
              help="Only for formats without a dynamic batch (tflite): one signature per size, in one file; "
                   "the runner picks the smallest that holds a batch. Ignored by the other formats; with "
                   "--batch N, just N.")
@click.option("--web-runtime", default=None, metavar="PATH",
              help="Only for --formats web: onnxruntime-web's npm tarball or dist/ folder (default: the cache in "
                   "~/.cache/sedeploy, filled once by `npm pack onnxruntime-web@1.30.0`).")
@click.option("--web-webgpu", is_flag=True,
              help="Only for --formats web: also ship WebGPU's runtime files (the page then runs with ?ep=webgpu).")
@click.option("--no-simplify", is_flag=True, help="Skip onnxsim simplification.")
@click.option("--logits-only", is_flag=True, help="Export logits only, without SE weights and feature map.")
@click.option("--force", is_flag=True, help="Replace an existing export (its whole set, all together).")
@click.option("--overhead", is_flag=True, help="Also measure the latency cost of the extra outputs (into export.json).")
@click.option("--int8", is_flag=True, help="Also write model.int8.onnx (static int8, onnxruntime).")
@click.option("--calib", type=int, default=512, show_default=True, help="Training images to calibrate int8 on.")
@click.option("--half", is_flag=True, help="Also write model.fp16.onnx (float16 graph, float32 I/O) for CUDA.")
@click.option("--int8-eval", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Labelled test images on which the int8 gate compares int8 with fp32.")
@click.option("--int8-min-agreement", type=click.FloatRange(0, 100), default=98.0, show_default=True,
              help="int8 gate: minimum top-1 agreement with fp32, in %.")
@click.option("--int8-max-drop", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="int8 gate: most accuracy points int8 may lose against fp32.")
@click.option("--int8-se-atol", type=click.FloatRange(min=0), default=0.1, show_default=True,
              help="int8 gate: most |SE weight| difference from fp32 (the heatmaps use them).")
@click.option("--int8-allow-unlabelled", is_flag=True,
              help="Without labelled test images, gate int8 on agreement with fp32 alone (else refused).")
@click.option("--data-dir", default=None, help="Dataset root for int8 calibration and verification images.")
@click.option("--unsure-accept", type=click.FloatRange(0, 1, min_open=True), default=0.95, show_default=True,
              help="'unsure' threshold: share of the run's validation images accepted (the rest are flagged; test images when it held out none).")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def export(ckpt: str, out: Optional[str], formats: str, opset: int, batch: str, batch_sizes: str,
           web_runtime: Optional[str], web_webgpu: bool, no_simplify: bool,
           logits_only: bool, force: bool, overhead: bool, int8: bool, calib: int, half: bool,
           int8_eval: int, int8_min_agreement: float, int8_max_drop: float, int8_se_atol: float,
           int8_allow_unlabelled: bool, data_dir: Optional[str], unsure_accept: float, as_json: bool) -> None:
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
      sedeploy export --ckpt best.pt --int8 --int8-min-agreement 99 --int8-max-drop 0.5
      sedeploy export --ckpt best.pt --formats onnx,ort --force   # + model.ort (ONNX Runtime format)
      sedeploy export --ckpt best.pt --formats onnx,tflite --batch-sizes 1,64 --force   # + model.tflite (LiteRT)
      sedeploy export --ckpt best.pt --formats web --force   # + model.web/ (runs in the browser)

    \b
    --int8 is gated: the int8 model is scored against fp32 on --int8-eval labelled test images and
    refused (exit 2, nothing written) below --int8-min-agreement or above --int8-max-drop.
    """
    from .export.exporter import ExportOptions, export_checkpoint
    opts = ExportOptions(formats=tuple(f.strip() for f in formats.split(",") if f.strip()), opset=opset,
                         batch=_parse_batch(batch), tflite_batch_sizes=_int_list(batch_sizes, "--batch-sizes"),
                         simplify=not no_simplify, force=force, extras=not logits_only,
                         int8=int8, calib=calib, half=half, data_dir=data_dir, int8_eval=int8_eval,
                         int8_min_agreement=int8_min_agreement, int8_max_drop=int8_max_drop,
                         int8_se_atol=int8_se_atol, int8_allow_unlabelled=int8_allow_unlabelled,
                         overhead=overhead, web_runtime=web_runtime, web_webgpu=web_webgpu,
                         unsure_accept=unsure_accept)
    log = (lambda m: click.echo(m, err=True)) if as_json else click.echo
    manifest = export_checkpoint(ckpt, out, opts, log=log)
    if as_json:
        _dump_json(manifest)


def _print_formats(as_json: bool) -> None:
    from .export.formats import PLANNED, table
    rows = table()
    if as_json:
        return _dump_json({"formats": rows, "planned": list(PLANNED)})
    yes = lambda v: "yes" if v else "no"
    fw = max(len(r["file"]) for r in rows)          # model.openvino.xml is wider than model.onnx
    click.echo(f"{'format':<12} {'file':<{fw}} {'converter':<10} {'runtime (installed)':<20} {'runs here':<10} "
               f"{'int8':<5} {'converter from':<22} what")
    for r in rows:
        runtime = f"{r['runtime']} ({yes(r['runtime_installed'])})"
        click.echo(f"{r['format']:<12} {r['file']:<{fw}} {yes(r['converter_installed']):<10} {runtime:<20} "
                   f"{yes(r['runs_here']):<10} {yes(r['int8']):<5} {'sedeploy[' + r['extra'] + ']':<22} {r['what']}")
    if PLANNED:
        click.echo(f"planned (not implemented yet): {', '.join(PLANNED)}")


@cli.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
def formats(as_json: bool) -> None:
    """List the export formats: converter installed?, runtime installed?, runs here?, int8?

    One row per implemented format (onnx, torchscript, ort, ncnn, coreml); planned: openvino, tflite,
    executorch, web. `sedeploy export --formats all` writes every format whose converter is installed.

    \b
    Examples:
      sedeploy formats
      sedeploy formats --json
    """
    _print_formats(as_json)


# ---------------------------------------------------------------- infer
# The registries the infer choices come from (light imports: no torch, no onnxruntime).
from .runtime.precision import PRECISIONS  # noqa: E402
from .core.decode import BACKGROUNDS  # noqa: E402
from .runtime.runners.ort import GRAPH_LEVELS, PROVIDERS  # noqa: E402
from .runtime.options import InferOptions  # noqa: E402 - infer's defaults, read from one place

_INFER = InferOptions()


@cli.command(context_settings=CONTEXT)
@click.argument("images", nargs=-1, required=True)
@click.option("--model", "model", default=None,
              help="Model file (.onnx, .ort, or another runtime's file: see `sedeploy formats`), or with --backend "
                   "an export folder [default: $SEDEPLOY_MODEL, ./model.onnx, or the newest model.onnx under "
                   "./runs, ./demo, ./exports].")
@click.option("--provider", type=click.Choice(PROVIDERS), default=_INFER.provider, show_default=True)
@click.option("--precision", type=click.Choice(PRECISIONS), default=_INFER.precision, show_default=True,
              help="auto: int8 (model.int8.onnx beside the model) when it measures faster than fp32 on this "
                   "machine, remembered per model and CPU in ~/.cache/sedeploy/precision.json.")
@click.option("--backend", default=_INFER.backend, show_default=True, metavar="file|auto|FORMAT",
              help="file: run the --model file as given (its runner by suffix). auto: among the files of the "
                   "export set (--model EXPORT_DIR, or a file beside its export.json) that were verified at export "
                   "and whose runtime is installed, the fastest here at --batch-size (measured once, cached in "
                   "~/.cache/sedeploy/backend.json; int8 files only if --precision allows). FORMAT (onnx, ort, "
                   "openvino, tflite, ncnn, ...): that format's file of the set.")
@click.option("--topk", type=int, default=_INFER.topk, show_default=True)
@click.option("--heatmaps", "heatmaps", default=None, help="Write attention heatmaps into this directory.")
@click.option("--heatmap-kind", type=click.Choice(("head-cam", "head-gradcam", "se", "spatial-mean")), default=None,
              help="Which map (docs/BENCHMARKS.md, `sedeploy faithfulness`) [default: head-cam when the export "
                   "carries the head's weights, else se, else spatial-mean].")
@click.option("--channels", type=int, default=_INFER.channels, show_default=True,
              help="Top channels shown/reported per image.")
@click.option("--batch-size", type=int, default=_INFER.batch_size, show_default=True)
@click.option("--threads", type=int, default=None, help="onnxruntime intra-op threads [default: all cores].")
@click.option("--workers", type=int, default=None,
              help="Image decoding threads [default: all cores; 0 decodes in the main thread].")
@click.option("--fast-decode", is_flag=True,
              help="Decode JPEGs at reduced size (DCT scaling): ~2x faster on camera images, inputs differ "
                   "slightly from the exact path (docs/BENCHMARKS.md).")
@click.option("--graph-opt", type=click.Choice(tuple(GRAPH_LEVELS)), default=_INFER.graph_opt, show_default=True,
              help="onnxruntime graph optimization level.")
@click.option("--background", type=click.Choice(tuple(BACKGROUNDS)), default=_INFER.background, show_default=True,
              help="Colour that transparent pixels are composited on.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image (JSON lines, flushed per line).")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr [default: when stderr is a terminal].")
def infer(images: List[str], model: Optional[str], provider: str, precision: str, backend: str, topk: int,
          heatmaps: Optional[str], heatmap_kind: Optional[str], channels: int, batch_size: int, threads: Optional[int], workers: Optional[int],
          fast_decode: bool, graph_opt: str, background: str, as_json: bool, progress: Optional[bool]) -> int:
    """Classify images with an exported ONNX model (onnxruntime only, no torch); optional heatmaps.

    IMAGES are files, directories (their images) or globs. Images are decoded on every core while
    the model runs; results come in input order as soon as their batch is done. Exit status 1 when
    some images failed (the others still get results), 2 on bad options or a bad model.

    \b
    Examples:
      sedeploy infer frog.png
      sedeploy infer photos/ --model runs/fm/model.onnx --topk 3 --heatmaps heat/
      sedeploy infer photos/ --json --fast-decode | head     # JSON lines, stops cleanly
      sedeploy infer 'shots/*.jpg' --provider cuda --json > predictions.jsonl
      sedeploy infer photos/ --precision int8                # force model.int8.onnx
      sedeploy infer photos/ --model runs/fm --backend auto    # the fastest verified file of the set here
      sedeploy infer frog.png --model runs/fm --backend ort --json
    """
    import time
    from .cli_output import InferOutput, Progress, header, stdout_closed, summary
    from .runtime.infer import start_infer
    start = time.perf_counter()
    run = start_infer(InferOptions(model=model, provider=provider, precision=precision, backend=backend, topk=topk,
                                   heatmaps=heatmaps, heatmap_kind=heatmap_kind,
                                   channels=channels, batch_size=batch_size, threads=threads, workers=workers,
                                   fast_decode=fast_decode, graph_opt=graph_opt, background=background), images)
    header(run.predictor, as_json)
    bar = Progress(len(run.paths), enabled=progress)
    emit = InferOutput(as_json, bar)
    for e in run.failures:
        emit.error(e)
    results = run.results()
    try:
        for r in results:
            emit.result(r)
            bar.update()
    except BrokenPipeError:
        return stdout_closed()
    finally:
        results.close()          # stops the decoding threads when the loop ends early
        bar.close()
    summary(run, emit, time.perf_counter() - start, as_json)
    return 1 if emit.failed else 0


@cli.command(context_settings=CONTEXT)
@click.option("--model", "model", default=None, help="ONNX model [found as `infer` finds it].")
@click.option("--dataset", type=LazyChoice(_datasets), default=None, help="Dataset [default: the model's own].")
@click.option("--data-dir", default=None)
@click.option("--n", "n", type=click.IntRange(min=2), default=1000, show_default=True, help="Test images.")
@click.option("--ckpt", default=None, help="Checkpoint for Grad-CAM [default: best.pt beside the model].")
@click.option("--steps", type=click.IntRange(min=1), default=16, show_default=True,
              help="Deletion/insertion steps (equal shares of the pixels).")
@click.option("--kinds", default=None, help="Comma-separated map kinds [default: all: head-cam, head-gradcam, se, "
              "spatial-mean, gradcam, random].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def faithfulness(as_json: bool, kinds: Optional[str], **kw) -> None:
    """Heatmap faithfulness: deletion and insertion AUC (RISE) and ROAD per map kind, mean +- SE, paired.

    Each map ranks the pixels of n test images; the table gives the predicted class's probability as
    the top pixels are removed (deletion, lower is better) or revealed over a blurred copy (insertion,
    higher is better), and ROAD (noisy linear imputation, higher is better), with paired differences
    against the reference's spatial-mean map and Grad-CAM in standard errors.

    \b
    Examples:
      sedeploy faithfulness --model runs/fm/model.onnx --n 1000
      sedeploy faithfulness --model runs/fm/model.onnx --n 200 --kinds head-cam,se,random --json
    """
    from .faithfulness import evaluate, table
    res = evaluate(kinds=[k.strip() for k in kinds.split(",")] if kinds else None,
                   log=lambda m: click.echo(m, err=True), **kw)
    if as_json:
        _dump_json(res)
    else:
        click.echo(table(res))


# ---------------------------------------------------------------- bench
from .bench.backends import BACKENDS  # noqa: E402 - the registry --backends is checked against
from .core.datasets import DATASETS  # noqa: E402


class _CommaChoice(click.ParamType):
    """A comma-separated list of names from a registry (click.Choice takes one name)."""

    name = "list"

    def __init__(self, choices) -> None:
        self.choices = tuple(choices)

    def get_metavar(self, param, *args, **kwargs) -> str:
        return "[" + ",".join(self.choices) + "]"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        items = tuple(v.strip() for v in str(value).split(",") if v.strip())
        bad = [v for v in items if v not in self.choices]
        if bad or not items:
            self.fail(f"unknown backend {', '.join(bad) or '(none)'}; choose from: {', '.join(self.choices)}",
                      param, ctx)
        return items


def _int_list(value: str, what: str) -> tuple:
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise UserError(f"{what} must be comma-separated integers, e.g. {'0,1,2' if what == '--seeds' else '1,8,64'}; "
                        f"got {value!r}") from None


@cli.command(context_settings=CONTEXT)
@click.option("--model", "model", default=None,
              help="Model file, or an export folder / its export.json (a row per artifact of the set) "
                   "[found as `infer` finds it].")
@click.option("--ckpt", default=None, help="Checkpoint for the PyTorch rows [export.json's, or best.pt beside the model].")
@click.option("--batch-sizes", default="1,8,64", show_default=True)
@click.option("--backends", type=_CommaChoice(BACKENDS), default=",".join(BACKENDS), show_default=True,
              help="Comma-separated backends.")
@click.option("--threads", type=int, default=None, help="CPU threads for every backend [all cores].")
@click.option("--warmup", type=int, default=10, show_default=True, help="Untimed runs per row.")
@click.option("--min-time", type=float, default=1.0, show_default=True, help="Seconds of timed runs per row and round.")
@click.option("--repeats", type=int, default=3, show_default=True,
              help="Timing rounds over all rows (medians reported): robust to bursts of load.")
@click.option("--dataset", type=click.Choice(DATASETS), default=None, help="Dataset for accuracy [the model's own].")
@click.option("--data", "data_alias", type=click.Choice(DATASETS), default=None, hidden=True,
              help="Deprecated spelling of --dataset.")
@click.option("--data-dir", default=None)
@click.option("--limit", type=int, default=None, help="Test images for accuracy [all].")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout (the table goes to stderr).")
@click.option("--save-json", default=None, help="Also write the results as JSON to this file.")
@click.option("--save-csv", default=None, help="Also write the rows as CSV to this file.")
@click.option("--csv", "csv_alias", default=None, hidden=True, help="Deprecated spelling of --save-csv.")
def bench(model, ckpt, batch_sizes, backends, threads, warmup, min_time, repeats, dataset, data_alias, data_dir,
          limit, as_json, save_json, save_csv, csv_alias) -> None:
    """Benchmark every backend x batch size: latency, throughput, size, accuracy, parity, share of peak.

    The header names the CPU's ISA features (AVX2, AVX-512, VNNI, AMX) that decide fp32 and int8
    speed; the summary compares onnxruntime with the best PyTorch row and int8 with fp32.

    \b
    Examples:
      sedeploy bench                                   # the model `infer` would use
      sedeploy bench --model runs/fm/model.onnx --batch-sizes 1,64 --threads 2
      sedeploy bench --model runs/fm --backends ort-cpu,ort-format --batch-sizes 1,64   # an export set
      sedeploy bench --backends ort-cpu,ort-cpu-int8 --save-json bench.json --save-csv bench.csv
      sedeploy bench --json 2>/dev/null | jq '.summary'
    """
    from .bench import BenchConfig, format_table, run_bench, write_csv, write_json
    from .bench.report import to_json
    if data_alias:
        click.echo("warning: --data is deprecated; use --dataset", err=True)
    cfg = BenchConfig(model=model, ckpt=ckpt, batch_sizes=_int_list(batch_sizes, "--batch-sizes"),
                      backends=backends, threads=threads, warmup=warmup, min_time=min_time, repeats=repeats,
                      dataset=dataset or data_alias, data_dir=data_dir, limit=limit)
    res = run_bench(cfg, log=lambda m: click.echo(m, err=True))
    click.echo(format_table(res), err=as_json)
    if save_json:
        write_json(res, save_json)
    if save_csv or csv_alias:
        write_csv(res, save_csv or csv_alias)
    if as_json:
        click.echo(to_json(res))


@cli.command(context_settings=CONTEXT)
@click.option("--dataset", type=LazyChoice(_datasets), default="fashion-mnist", show_default=True)
@click.option("--data-dir", default=None)
@click.option("--n", "n", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", default="samples", show_default=True)
def samples(dataset: str, data_dir: Optional[str], n: int, seed: int, out: str) -> None:
    """Write N real test images as PNG (named <index>_<true class>.png) to try `infer` on.

    \b
    Examples:
      sedeploy samples --n 6 --out demo/images && sedeploy infer demo/images
    """
    from .core.arrays import write_samples
    for p in write_samples(dataset, Path(out), n, data_dir, seed):
        click.echo(str(p))



# ---------------------------------------------------------------- serve, triton-repo
from .core.tritonconfig import BATCHING  # noqa: E402 - numpy only; the defaults both commands show
@cli.command(context_settings=CONTEXT)
@click.option("--model", "models", multiple=True,
              help="Model to serve (.onnx or .ort), PATH or NAME=PATH; repeatable [name: the file name without "
                   ".onnx / .ort; default model: found as `infer` finds it].")
@click.option("--model-repository", default=None, help="Serve every model of this Triton model repository "
              "(`sedeploy triton-repo` writes one); each config.pbtxt sets its batching.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=int, default=8000, show_default=True, help="TCP port; 0 picks a free one (printed).")
@click.option("--max-batch", type=int, default=BATCHING.max_batch, show_default=True,
              help="Most images run together (for --model, and repository folders without config.pbtxt).")
@click.option("--max-delay-ms", type=float, default=BATCHING.max_delay_us / 1000, show_default=True,
              help="Longest wait of the oldest request for a batch to fill (0: run what is queued); as --max-batch.")
@click.option("--max-queue", type=int, default=BATCHING.max_queue, show_default=True,
              help="Requests that may wait; beyond that the server answers 503 at once. Also bounds a "
                   "config.pbtxt queue left unbounded or unset.")
@click.option("--batching/--no-batching", default=True, show_default=True,
              help="Dynamic batching, or every request run alone; as --max-batch.")
@click.option("--provider", type=click.Choice(PROVIDERS), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
              help="fp32 serves each file as given; auto/int8 serve model.int8.onnx beside it when it measures "
                   "faster here (auto) or always (int8), as `infer --precision` chooses.")
@click.option("--backend", default="file", show_default=True, metavar="file|auto|FORMAT",
              help="file: serve each --model file as given. auto: the fastest verified file of each model's "
                   "export set here (--model EXPORT_DIR or a file beside its export.json), measured at --max-batch "
                   "as `infer --backend auto` does; FORMAT: that format's file of the set.")
@click.option("--threads", type=int, default=None,
              help="onnxruntime intra-op threads [default: all cores but one, left to the HTTP event loop].")
@click.option("--max-body-mb", type=float, default=64.0, show_default=True, help="Largest request body (413 above).")
@click.option("--max-inflight-mb", type=float, default=None,
              help="Request bodies held at once, all requests together (default 4 x --max-body-mb); a request "
                   "the budget cannot hold is answered 503 with Retry-After at once, before its body is read.")
@click.option("--max-decodes", type=int, default=None,
              help="Images decoded, classified and drawn at once by the image endpoint (default: the cores, at "
                   "least 2; a decoded image can take 160 MB); more at once are answered 503 at once.")
@click.option("--access-log", is_flag=True, help="Log every request.")
@click.option("--web-runtime", default=None, metavar="PATH",
              help="onnxruntime-web's npm tarball or dist/ folder for the page's \"run in this browser\" mode "
                   "(default: the cache `sedeploy export --formats web` fills; the server never downloads).")
def serve(models: List[str], model_repository: Optional[str], host: str, port: int, max_batch: int,
          max_delay_ms: float, max_queue: int, batching: bool, provider: str, precision: str, backend: str,
          threads: Optional[int], max_body_mb: float, max_inflight_mb: Optional[float], max_decodes: Optional[int],
          access_log: bool, web_runtime: Optional[str]) -> int:
    """Serve exported models over HTTP: the Open Inference Protocol (KServe v2, as Triton speaks it;
    `tritonclient` works unchanged), an image endpoint and a page at /. No torch.

    Concurrent requests are batched dynamically (Triton's semantics: FIFO, up to --max-batch images,
    the oldest waiting at most --max-delay-ms, a bounded queue). SIGTERM or Ctrl-C stops accepting,
    answers what was accepted, and exits 0. Needs the `serve` extra: pip install 'sedeploy[serve]'.

    \b
    Examples:
      sedeploy serve --model runs/fm/model.onnx                  # http://127.0.0.1:8000/
      sedeploy serve --model fm=runs/fm/model.onnx --model fm8=runs/fm/model.int8.onnx --port 9000
      sedeploy triton-repo runs/fm/model.onnx --out models && sedeploy serve --model-repository models
      sedeploy serve --model fm=runs/fm --backend auto          # the fastest verified file of the set here
      curl -F image=@shirt.png 'http://127.0.0.1:8000/v2/models/fm/classify?topk=3'
    """
    from .runtime.options import ModelOptions
    specs = _serve_specs(models, model_repository, max_batch, max_delay_ms, max_queue, batching, backend != "file")
    _check_serve_options(port, max_body_mb)
    # the models' own options, checked by the same code as infer's, before the server starts
    loading = ModelOptions(provider=provider, threads=threads, precision=None if precision == "fp32" else precision,
                           precision_batch=max_batch, backend=backend)
    loading.validate()
    try:
        from .serve.model import ServedModel
        from .serve.server import serve as run_server
    except ImportError as e:
        raise UserError(f"`sedeploy serve` needs the serve extra ({e.name} is missing): "
                        f"pip install 'sedeploy[serve]'") from None
    served = [ServedModel(s, loading.provider, loading.threads, loading.precision, loading.backend) for s in specs]
    if max_inflight_mb is not None and max_inflight_mb < max_body_mb:
        raise UserError(f"--max-inflight-mb {max_inflight_mb:g} is below --max-body-mb {max_body_mb:g}; a single "
                        f"largest request must fit: raise it or lower --max-body-mb")
    if max_decodes is not None and max_decodes < 1:
        raise UserError(f"--max-decodes must be at least 1, got {max_decodes}")
    return run_server(served, host, port, int(max_body_mb * (1 << 20)), lambda m: click.echo(m, err=True),
                      access_log, web_runtime, int((max_inflight_mb or 0) * (1 << 20)), max_decodes or 0)


def _serve_specs(models: List[str], repository: Optional[str], max_batch: int, max_delay_ms: float,
                 max_queue: int, batching: bool, sets: bool = False) -> list:
    from .serve.repository import model_specs, read_repository
    from .runtime.model import find_model
    for name, v, lo in (("--max-batch", max_batch, 1), ("--max-queue", max_queue, 1), ("--max-delay-ms", max_delay_ms, 0)):
        if v < lo:
            raise UserError(f"{name} must be >= {lo}, got {v}")
    if models and repository:
        raise UserError("give --model or --model-repository, not both")
    if repository:
        specs = read_repository(Path(repository))
        # a config.pbtxt is served as Triton reads it (its batching wins; only an unbounded or unset queue
        # takes --max-queue, since this server bounds every queue); a folder without one takes every option
        for s in specs:
            s.max_batch, s.max_delay_us, s.max_queue, s.batching = max_batch, int(max_delay_ms * 1000), max_queue, batching
        return specs
    return model_specs(list(models) or [str(find_model(None))], max_batch, int(max_delay_ms * 1000), max_queue,
                       batching, sets)


def _check_serve_options(port: int, max_body_mb: float) -> None:
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be 0..65535, got {port}")
    if max_body_mb <= 0:
        raise UserError(f"--max-body-mb must be positive, got {max_body_mb}")


@cli.command("triton-repo", context_settings=CONTEXT)
@click.argument("model")
@click.option("--out", required=True, help="Model repository directory (created if needed).")
@click.option("--name", default=None, help="Model name [the file name without .onnx].")
@click.option("--max-batch", type=int, default=BATCHING.max_batch, show_default=True,
              help="max_batch_size (0: no batching; fixed-batch models always get 0).")
@click.option("--max-delay-us", type=int, default=BATCHING.max_delay_us, show_default=True,
              help="dynamic_batching max_queue_delay_microseconds.")
@click.option("--max-queue", type=int, default=BATCHING.max_queue, show_default=True,
              help="default_queue_policy max_queue_size.")
@click.option("--instance", "instance_kind", default="cpu", show_default=True,
              help="instance_group kind: cpu (KIND_CPU) or gpu (KIND_GPU).")
@click.option("--count", type=int, default=1, show_default=True, help="Instances of the model.")
@click.option("--backend", "backend", type=click.Choice(["onnxruntime", "python"]), default="onnxruntime",
              show_default=True, help="Triton backend: onnxruntime (platform onnxruntime_onnx), or python (a "
                                      "model.py that runs model.onnx with onnxruntime in Triton's Python backend; "
                                      "its environment needs onnxruntime and numpy < 2).")
@click.option("--force", is_flag=True, help="Replace an existing model folder of that name.")
def triton_repo(model: str, out: str, name: Optional[str], max_batch: int, max_delay_us: int, max_queue: int,
                instance_kind: str, count: int, backend: str, force: bool) -> None:
    """Write an exported ONNX model as a Triton Inference Server model repository entry (no torch):
    OUT/NAME/config.pbtxt, OUT/NAME/labels.txt, OUT/NAME/1/model.onnx (metadata kept).

    The same folder runs on Triton (tritonserver --model-repository OUT), on KServe, or on
    `sedeploy serve --model-repository OUT`.

    \b
    Examples:
      sedeploy triton-repo runs/fm/model.onnx --out models --name fm
      sedeploy triton-repo model.onnx --out models --instance gpu --max-batch 64 --force
      sedeploy triton-repo model.onnx --out models --name fm --backend python   # Triton's Python backend
    """
    from .export.triton import write_triton_repository
    dest = write_triton_repository(model, out, name=name, max_batch=max_batch, instance_kind=instance_kind, count=count,
                                   max_delay_us=max_delay_us, max_queue=max_queue, force=force, backend=backend)
    files = "config.pbtxt, 1/model.onnx" + (", 1/model.py" if backend == "python" else "")
    click.echo(f"wrote {dest}/ ({files}); serve it with: "
               f"sedeploy serve --model-repository {out}")

def main(argv: Optional[List[str]] = None) -> None:
    """Entry point: usage errors as one line (exit 2); a command's own errors are handled by Group."""
    try:
        rv = cli.main(args=argv, prog_name="sedeploy", standalone_mode=False)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.UsageError as e:
        cmd = e.ctx.command_path if e.ctx else "sedeploy"
        click.echo(f"error: {e.format_message()} (see `{cmd} --help`)", err=True)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
