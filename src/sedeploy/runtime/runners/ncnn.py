"""The NCNN runner: model.ncnn.param + model.ncnn.bin on Tencent's ncnn, in fp32, one image at a time.

NCNN keeps no metadata and renames the outputs out0..out4, so export writes a sidecar JSON beside
the .param (model.ncnn.json): the sedeploy metadata, the input blob and size, the blob -> output name
mapping by position, and the sha256 of the .param and .bin it was written for. The runner reads
only that mapping (never guesses from shapes) and refuses a sidecar whose hashes do not match.
ncnn's defaults store and compute in fp16 (2e-3 off here): fp32 is forced on every net (`FP32_OPTS`).
NCNN blobs have no batch dimension: a batch is run as a loop over its images. No torch imported.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from ...core.errors import UserError
from ...core.io import file_sha256
from ..model import ModelInfo, check_model_file, describe
from . import Runner

# ncnn.Option flags that default to True and lower precision to fp16; all set False.
FP32_OPTS = ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic")
SIDECAR_VERSION = 1


def companion(param: Path, suffix: str) -> Path:
    """model.ncnn.param -> model.ncnn<suffix> (.bin weights, .json sidecar)."""
    return param.with_suffix(suffix)


def read_sidecar(param: Path) -> Dict[str, Any]:
    """The sidecar JSON of a .param, checked against the .param and .bin it names (UserError on any
    mismatch: a sidecar must describe exactly these files)."""
    bin_path, side = companion(param, ".bin"), companion(param, ".json")
    fix = "export the set again with `sedeploy export --formats ncnn`"
    if not bin_path.is_file():
        raise UserError(f"{param}: its weights {bin_path.name} are missing beside it; copy the .param, .bin "
                        f"and .json together, or {fix}")
    if not side.is_file():
        raise UserError(f"{param}: its sidecar {side.name} (metadata and output names) is missing; {fix}")
    try:
        doc = json.loads(side.read_text())
        files, outputs = doc["files"], doc["outputs"]
        well_formed = (doc.get("sidecar_version") == SIDECAR_VERSION and isinstance(files, dict)
                       and isinstance(outputs, list) and all({"blob", "name", "shape"} <= set(o) for o in outputs))
    except (ValueError, KeyError, TypeError, AttributeError):
        well_formed = False
    if not well_formed:                 # checked input, not an invariant: no assert (python -O drops them)
        raise UserError(f"{side} is not a sedeploy NCNN sidecar; {fix}")
    for p in (param, bin_path):
        if files.get(p.suffix) != file_sha256(p):
            raise UserError(f"{side} does not match {p.name} (sha256 differs): the files come from different "
                            f"exports; {fix}")
    return doc


class NcnnRunner(Runner):
    """A .ncnn.param/.bin pair on ncnn.Net, fp32, CPU. `provider` and `threads` as the other runners
    take them; the rest of onnxruntime's options do not apply and are accepted and ignored."""

    def __init__(self, path: Path, provider: str = "cpu", threads: Optional[int] = None, **_: Any) -> None:
        import ncnn
        self.path = Path(path)
        check_model_file(self.path)
        if provider == "cuda":
            raise UserError("--provider cuda: the ncnn runner runs on the CPU here; pass --provider cpu")
        self.doc = read_sidecar(self.path)
        self.provider = "ncnn-cpu"
        self.net = ncnn.Net()
        for opt in FP32_OPTS:
            setattr(self.net.opt, opt, False)
        if threads:
            self.net.opt.num_threads = threads
        if self.net.load_param(str(self.path)) != 0 or self.net.load_model(str(companion(self.path, ".bin"))) != 0:
            raise UserError(f"ncnn cannot load {self.path}; export it again with `sedeploy export --formats ncnn`")
        self.blobs = {o["name"]: o["blob"] for o in self.doc["outputs"]}     # recorded mapping, by position
        c, h, w = self.doc["input_shape"]
        self.info: ModelInfo = describe(self.doc["metadata"], [(self.doc["input_blob"], ["batch", c, h, w])],
                                        [(o["name"], ["batch", *o["shape"]]) for o in self.doc["outputs"]],
                                        self.path)

    def _invoke(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        import ncnn
        per: Dict[str, list] = {n: [] for n in self.blobs}
        for img in np.ascontiguousarray(batch, dtype=np.float32):    # no batch dimension in ncnn
            ex = self.net.create_extractor()
            ex.input(self.doc["input_blob"], ncnn.Mat(img).clone())
            for name, blob in self.blobs.items():
                rc, mat = ex.extract(blob)
                if rc != 0:
                    raise UserError(f"{self.path}: ncnn has no blob {blob} (output {name}); export it again")
                per[name].append(np.array(mat, dtype=np.float32, copy=True))
        return {n: np.stack(v) for n, v in per.items()}
