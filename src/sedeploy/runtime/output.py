"""What `sedeploy infer` writes: a header line, one line (or JSON object) per image flushed at once,
errors, a summary; a reader that goes away (`| head`) ends the run quietly.

stdout carries results only (JSON lines with --json, so that a killed run or a closed pipe leaves
whole lines); everything else goes to stderr, clearing the progress bar first.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import click

from ..core.decode import ImageError


def header(predictor, as_json: bool) -> None:
    """Which model, provider and precision (with the reason) run: stderr."""
    choice = predictor.choice
    prec = f"precision {choice.precision}: {choice.reason}" if choice else ""
    if not as_json:
        click.echo(f"model {predictor.path} ({predictor.info.meta.get('model_name', '?')}), provider "
                   f"{predictor.provider}" + (f"; {prec}" if prec else ""), err=True)
    elif choice is not None and choice.fp32_ms is not None:   # a measured choice is news even in JSON mode
        click.echo(prec, err=True)


class InferOutput:
    """Prints each result (a line of text or a JSON object, flushed at once) and each error."""

    def __init__(self, predictor, as_json: bool, outdir: Optional[Path], channels: int, bar) -> None:
        self.p, self.as_json, self.outdir, self.channels, self.bar = predictor, as_json, outdir, channels, bar
        self.ok, self.failed, self.stems = 0, 0, {}

    def error(self, e) -> None:
        self.failed += 1
        self.bar.clear()
        click.echo(f"error: {e}", err=True)
        if self.as_json:
            click.echo(json.dumps({"image": e.path, "error": str(e)}))

    def result(self, r) -> None:
        if isinstance(r, ImageError):
            return self.error(r)
        self.ok += 1
        rec = r.to_dict()
        rec["provider"] = self.p.provider
        if self.p.choice is not None:
            rec["precision"] = self.p.choice.precision
        if self.outdir is not None:
            stem = Path(r.image).stem
            self.stems[stem] = self.stems.get(stem, 0) + 1
            if self.stems[stem] > 1:
                stem = f"{stem}_{self.stems[stem]}"
            rec["heatmaps"] = self.p.write_heatmaps(r, self.outdir, stem, self.channels)
        if self.as_json:
            click.echo(json.dumps(rec))
        else:
            click.echo(f"{r.image}: " + "  ".join(f"{t.label} {100 * t.prob:5.1f}%" for t in r.top))


def stdout_closed() -> int:
    """The reader went away (`| head`): stop quietly like other Unix tools (128 + SIGPIPE)."""
    try:  # point stdout at /dev/null so that the interpreter's final flush cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    return 141


def summary(predictor, emit: InferOutput, n_paths: int, wall: float, outdir: Optional[Path],
            as_json: bool) -> None:
    """Heatmap folder, images/s with the model's share of the time, failures: stderr."""
    if outdir is not None and not as_json:
        click.echo(f"heatmaps for {emit.ok} image(s) in {outdir}/ (*_heatmap.png, *_channels.png, *_se.png)",
                   err=True)
    if n_paths > 1:
        click.echo(f"{emit.ok} image(s) in {wall:.2f} s ({emit.ok / wall:.0f} images/s, start-up included; "
                   f"the model {100 * predictor.model_seconds / wall:.0f} % of the time, decoding on "
                   f"{predictor.workers or 1} thread(s){', fast decode' if predictor.fast_decode else ''})", err=True)
    if emit.failed:
        click.echo(f"{emit.failed} input(s) failed, {emit.ok} succeeded", err=True)
