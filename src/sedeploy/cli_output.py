"""What `sedeploy infer` prints of what the library (runtime.infer) yields: a header line, one line
(or JSON object) per image flushed at once, errors, a progress bar on a terminal, a summary; a
reader that goes away (`| head`) ends the run quietly.

stdout carries results only (JSON lines with --json, so that a killed run or a closed pipe leaves
whole lines); everything else goes to stderr, clearing the progress bar first.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Optional, Union

import click

from .core.decode import ImageError
from .runtime.infer import InferResult, InferRun
from .runtime.predictor import Predictor


class Progress:
    """A one-line progress bar on a terminal (stderr), nothing elsewhere; no tqdm needed.

    Redraws at most every `interval` seconds; `close()` clears the line so that what follows
    (errors, the summary) prints cleanly.
    """

    def __init__(self, total: int, stream=None, enabled: Optional[bool] = None, interval: float = 0.1) -> None:
        self._time = time.perf_counter
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", lambda: False)
        self.enabled = bool(isatty()) if enabled is None else enabled
        self.total, self.done, self.interval = total, 0, interval
        self.start = self._last = self._time()
        self._width = 0

    def update(self, n: int = 1) -> None:
        self.done += n
        now = self._time()
        if self.enabled and (now - self._last >= self.interval or self.done >= self.total):
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        frac = self.done / self.total if self.total else 1.0
        rate = self.done / max(now - self.start, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        bar = "#" * int(24 * frac)
        line = f"{self.done:>{len(str(self.total))}}/{self.total} [{bar:<24}] {100 * frac:3.0f}% " \
               f"{rate:6.0f} img/s  eta {eta:4.0f} s"
        self._width = max(self._width, len(line))
        self.stream.write("\r" + line)
        self.stream.flush()

    def clear(self) -> None:
        """Erase the bar (before another line is printed on stderr); the next update redraws it."""
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()

    def close(self) -> None:
        self.clear()
        self._width = 0


def header(predictor: Predictor, as_json: bool) -> None:
    """Which model, provider and precision (with the reason) run: stderr."""
    choice, backend = predictor.choice, predictor.backend
    prec = f"precision {choice.precision}: {choice.reason}" if choice else ""
    if backend is not None:
        prec = f"backend {backend.kind} ({backend.precision}): {backend.reason}" + "".join(
            f"; not a candidate: {k} ({why})" for k, why in backend.skipped.items())
        if as_json and backend.timings_ms and not backend.cached:
            click.echo(prec, err=True)
    if not as_json:
        click.echo(f"model {predictor.path} ({predictor.info.meta.get('model_name', '?')}), provider "
                   f"{predictor.provider}" + (f"; {prec}" if prec else ""), err=True)
    elif choice is not None and choice.fp32_ms is not None:   # a measured choice is news even in JSON mode
        click.echo(prec, err=True)


class InferOutput:
    """Prints each result (a line of text or a JSON object, flushed at once) and each error."""

    def __init__(self, as_json: bool, bar: Progress) -> None:
        self.as_json, self.bar = as_json, bar
        self.ok, self.failed = 0, 0

    def error(self, e: ImageError) -> None:
        self.failed += 1
        self.bar.clear()
        click.echo(f"error: {e}", err=True)
        if self.as_json:
            click.echo(json.dumps({"image": e.path, "error": str(e)}))

    def result(self, r: Union[InferResult, ImageError]) -> None:
        if isinstance(r, ImageError):
            return self.error(r)
        self.ok += 1
        if self.as_json:
            click.echo(json.dumps(r.record))
        else:
            p = r.prediction
            flag = " (unsure)" if p.unsure else ""      # the score says: not like the training images
            click.echo(f"{p.image}: " + "  ".join(f"{t.label} {100 * t.prob:5.1f}%" + (flag if i == 0 else "")
                                                  for i, t in enumerate(p.top)))


def stdout_closed() -> int:
    """The reader went away (`| head`): stop quietly like other Unix tools (128 + SIGPIPE)."""
    try:  # point stdout at /dev/null so that the interpreter's final flush cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    return 141


def summary(run: InferRun, emit: InferOutput, wall: float, as_json: bool) -> None:
    """Heatmap folder, images/s with the model's share of the time, failures: stderr."""
    predictor = run.predictor
    if run.outdir is not None and not as_json:
        files = "*_heatmap.png, *_channels.png" + (", *_se.png" if predictor.info.se_outputs else "")
        click.echo(f"heatmaps for {emit.ok} image(s) in {run.outdir}/ ({files})", err=True)
    if len(run.paths) > 1:
        click.echo(f"{emit.ok} image(s) in {wall:.2f} s ({emit.ok / wall:.0f} images/s, start-up included; "
                   f"the model {100 * predictor.model_seconds / wall:.0f} % of the time, decoding on "
                   f"{predictor.workers or 1} thread(s){', fast decode' if predictor.fast_decode else ''})", err=True)
    if emit.failed:
        click.echo(f"{emit.failed} input(s) failed, {emit.ok} succeeded", err=True)
