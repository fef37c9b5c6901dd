"""`sedeploy infer` as a library call: options checked (runtime.options), the model loaded, the
inputs expanded, and one record per image yielded in input order, heatmaps written on the way.

    run = start_infer(InferOptions(model="model.onnx", heatmaps="heat/"), ["photos/"])
    for item in run.results():
        print(item)        # InferResult, or the ImageError of an image that could not be read

The command line (sedeploy.cli_output) only prints what this yields; `serve` loads its models
through the same Predictor.from_options path.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Union, Set

from ..core.decode import ImageError
from .options import InferOptions
from .pipeline import expand_inputs
from .predictor import Prediction, Predictor


@dataclass
class InferResult:
    prediction: Prediction
    record: dict                 # what --json prints: image, top, provider, precision (, heatmaps)


class InferRun:
    """A loaded model and its inputs; `results()` runs them. Build it with `start_infer`."""

    def __init__(self, options: InferOptions, predictor: Predictor, outdir: Optional[Path], paths: List[Path],
                 failures: List[ImageError]) -> None:
        self.options, self.predictor, self.outdir = options, predictor, outdir
        self.paths = paths            # the images to run, files, folders and globs expanded
        self.failures = failures      # inputs that named no image (an empty folder, a glob without matches)
        self._stems: Dict[str, int] = {}     # stem -> how many of it were renamed
        self._taken: Set[str] = set()         # every name handed out

    def results(self) -> Iterator[Union[InferResult, ImageError]]:
        """One InferResult or ImageError per path, in input order; closing it stops the decoding threads."""
        o = self.options
        it = self.predictor.predict_iter(self.paths, o.topk, o.batch_size, keep_originals=self.outdir is not None)
        try:
            for r in it:
                yield r if isinstance(r, ImageError) else InferResult(r, self.record(r))
        finally:
            it.close()

    def record(self, r: Prediction) -> dict:
        rec = r.to_dict()
        rec["provider"] = self.predictor.provider
        if self.predictor.choice is not None:
            rec["precision"] = self.predictor.choice.precision
        if self.predictor.backend is not None:
            rec["backend"] = self.predictor.backend.kind
        if self.outdir is not None:
            rec["heatmaps"] = self.predictor.write_heatmaps(r, self.outdir, self._stem(r.image), self.options.channels,
                                                              self.options.heatmap_kind)
        return rec

    def _stem(self, image: str) -> str:
        """photo.png -> photo; a second photo.jpg (another folder) -> photo_2, so none overwrites another."""
        stem = Path(image).stem
        n = self._stems.get(stem, 0)
        name = stem
        while name.lower() in self._taken:     # a/0.png, b/0.png, c/0_2.png: the third is 0_2_2, not b's 0_2
            n += 1                             # (case-blind: A.png and a.png are one file on macOS, Windows)
            name = f"{stem}_{n + 1}"
        self._stems[stem] = n
        self._taken.add(name.lower())
        return name


def start_infer(options: InferOptions, images: Sequence[str]) -> InferRun:
    """Check the options, load the model, check what needs it (heatmap folder, feature map), expand
    the inputs. Every problem with options or model is a UserError raised here, before any image runs."""
    options.validate()
    predictor = Predictor.from_options(options.model_options())
    paths, failures = expand_inputs(images)
    outdir = options.heatmap_dir(predictor.info)
    return InferRun(options, predictor, outdir, paths, failures)
