"""One served model: its onnxruntime Predictor, its dynamic batcher, and its protocol views.

The tensors, metadata and config it answers with follow Triton's REST API (model metadata:
name, versions, platform, inputs/outputs with -1 for the batch axis; config: model_config.proto in
JSON). Requests are checked against the model the way Triton checks them (names, datatype,
shape, batch size), so a bad request is a 400 naming the tensor, never a failed run. Images go
through the runtime's own decode and preprocess (exactly `sedeploy infer`) and the same batcher.
"""
from __future__ import annotations

import enum
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..core import contract
from ..core import tritonconfig as tc
from ..runtime.options import ModelOptions
from .batcher import DynamicBatcher
from .protocol import InferRequest, ProtocolError, RequestedOutput, classify


# a number in a JSON request: "-1.2345678901234567e-05, " is 25 bytes; pretty-printed nesting adds indentation
JSON_BYTES_PER_VALUE = 64
JSON_SLACK = 64 << 10          # names, shapes, parameters, outputs


def default_threads() -> int:
    """onnxruntime intra-op threads when serving: every core but one, which the HTTP event loop needs.
    On the shared 2-core machine one thread served 2.5x the requests of two at 32 clients (docs/BENCHMARKS.md):
    a second inference thread mostly waits for a core the event loop or another process holds."""
    return max(1, (os.cpu_count() or 1) - 1)


class State(str, enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass
class ModelSpec:
    """What to serve: a name, a version, the file, and its Triton config (None: derive it from the model)."""
    name: str
    path: Path
    version: str = "1"
    config: Optional[Dict[str, Any]] = None
    max_batch: int = tc.BATCHING.max_batch        # used when config is None (--model); else the config's win
    max_delay_us: int = tc.BATCHING.max_delay_us
    max_queue: int = tc.BATCHING.max_queue        # also the bound when a config leaves its queue unbounded
    batching: bool = True


@dataclass
class ServedModel:
    spec: ModelSpec
    provider: str = "auto"
    threads: Optional[int] = None
    precision: Optional[str] = None  # None: the file as given; "auto" / "int8": runtime.precision's choice
    backend: str = "file"            # file: the file as given; auto / a format: runtime.backend's choice of the set
    state: State = State.LOADING
    reason: str = ""
    predictor: Any = None            # runtime.predictor.Predictor once loaded
    batcher: Optional[DynamicBatcher] = None
    inputs: List[tc.TensorSpec] = field(default_factory=list)
    outputs: List[tc.TensorSpec] = field(default_factory=list)
    config: Dict[str, Any] = field(default_factory=dict)

    def unsure_parameters(self, outs: Dict[str, np.ndarray]) -> Dict[str, Any]:
        """OIP response parameters for the 'unsure' score (runtime/unsure.py), one value per batch item:
        {"unsure": "[true,false]", "ood_score": "[1.5,-3]"} (JSON text: parameter values are scalars);
        {} for a model without the calibrated score (a damaged one was refused when the model loaded)."""
        from ..runtime.unsure import unsure
        info = getattr(self.predictor, "info", None)
        spec = info.meta.get("unsure") if info is not None else None
        scores, flags = unsure(outs, spec)              # the spec was checked when the model was loaded
        if scores is None:
            return {}
        return {"unsure": json.dumps([bool(f) for f in flags]),       # JSON has no NaN: a non-finite score is null
                "ood_score": json.dumps([round(float(v), 6) if np.isfinite(v) else None for v in scores])}

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def version(self) -> str:
        return self.spec.version

    @property
    def max_batch_size(self) -> int:
        return int(self.config.get("max_batch_size", 0))

    # -- loading (in a worker thread: onnxruntime session creation and a warm-up run)
    def options(self) -> ModelOptions:
        """How this model loads: the options `infer` checks and loads by (runtime.options)."""
        return ModelOptions(str(self.spec.path), self.provider, self.threads or default_threads(),
                            precision=self.precision, precision_batch=max(1, self.spec.max_batch), backend=self.backend)

    def load(self) -> None:
        from ..runtime.predictor import Predictor
        p = Predictor.from_options(self.options())
        sess = getattr(p.runner, "session", None)
        if sess is not None:             # onnxruntime: the graph's own tensor types
            self.inputs = [tc.TensorSpec(a.name, tc.ORT_TYPES.get(a.type, "BYTES"), _dims(a.shape))
                           for a in sess.get_inputs()]
            self.outputs = [tc.TensorSpec(a.name, tc.ORT_TYPES.get(a.type, "BYTES"), _dims(a.shape))
                            for a in sess.get_outputs()]
        else:                            # another runtime (--backend): the contract's float32 tensors, named as
            info, b = p.info, p.info.fixed_batch or -1          # in the ONNX graph whatever the runtime calls them
            self.inputs = [tc.TensorSpec(contract.INPUT_NAME, "FP32", [b, *info.input_size])]
            self.outputs = [tc.TensorSpec(n, "FP32", [b, *_dims(info.output_shapes[n])[1:]])
                            for n in info.output_names]
        self.config = self.spec.config or tc.model_config(
            self.name, self.inputs, self.outputs, self.spec.max_batch, self.spec.max_delay_us, self.spec.max_queue,
            labels_for=contract.LOGITS if contract.LOGITS in p.info.output_names else None,
            batching=self.spec.batching)
        check_config(self.config, self.inputs, self.outputs, self.spec.path)
        self.predictor = p
        x = np.zeros([max(1, self.max_batch_size)] + [max(d, 1) for d in self.inputs[0].shape[1:]],
                     tc.DATATYPES[self.inputs[0].datatype])
        if len(self.inputs) == 1 and self.max_batch_size:     # warm-up: the first runs allocate
            self.run({self.inputs[0].name: x[:1]})
            self.run({self.inputs[0].name: x})

    def make_batcher(self) -> DynamicBatcher:
        # an empty `dynamic_batching {}` turns batching on (delay 0), as in Triton; max_queue_size 0 means
        # unbounded to Triton, but this server keeps every queue bounded: the spec's (--max-queue) then
        db = self.config.get("dynamic_batching")
        mb = self.max_batch_size
        delay_us = int(db.get("max_queue_delay_microseconds", 0)) if db is not None else 0
        queue = int((db or {}).get("default_queue_policy", {}).get("max_queue_size", 0) or self.spec.max_queue)
        self.batcher = DynamicBatcher(self.run, max(mb, 1), delay_us / 1e6, queue,
                                      batching=db is not None and mb > 0)
        return self.batcher

    def run(self, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Run the graph on a batch (in the batcher's worker thread). One-input models go through
        Predictor.run, which also pads a fixed-batch model's short batch (an image on the image endpoint)."""
        if len(self.inputs) == 1:
            return self.predictor.run(inputs[self.inputs[0].name])
        outs = self.predictor.session.run(None, inputs)      # several inputs: a foreign ONNX graph
        return dict(zip((o.name for o in self.outputs), outs))

    # -- protocol views
    def metadata(self) -> Dict[str, Any]:
        b = self.max_batch_size > 0

        def view(t: tc.TensorSpec) -> Dict[str, Any]:
            return {"name": t.name, "datatype": t.datatype, "shape": [-1, *t.shape[1:]] if b else list(t.shape)}
        cfg = self.config or {}          # Triton names the backend where the config has no platform (python)
        return {"name": self.name, "versions": [self.version], "platform": cfg.get("platform") or cfg.get("backend")
                or tc.PLATFORM,
                "inputs": [view(t) for t in self.inputs], "outputs": [view(t) for t in self.outputs]}

    def check_input(self, name: str, datatype: str, shape: List[int]) -> None:
        """One request input's name, datatype and shape vs the model (as Triton checks them), before its data
        is decoded (protocol.parse_infer_request's check_input): ProtocolError when the model cannot take it."""
        s = next((s for s in self.inputs if s.name == name), None)
        if s is None:
            raise ProtocolError(f"unexpected inference input '{name}' for model '{self.name}'; it takes "
                                f"{', '.join(s.name for s in self.inputs)}")
        if datatype != s.datatype:
            raise ProtocolError(f"inference input '{s.name}' data-type is '{datatype}', but model "
                                f"'{self.name}' expects '{s.datatype}'")
        want = [-1, *s.shape[1:]] if self.max_batch_size else list(s.shape)
        if len(shape) != len(want) or any(w != -1 and w != g for w, g in zip(want, shape)):
            raise ProtocolError(f"unexpected shape for input '{s.name}' for model '{self.name}'. "
                                f"Expected {want}, got {str(shape)[:200]}")
        if self.max_batch_size and not 1 <= shape[0] <= self.max_batch_size:
            raise ProtocolError(f"inference request batch-size must be <= {self.max_batch_size} for "
                                f"'{self.name}', got {shape[0]}")

    def max_json_bytes(self, limit: int) -> int:
        """The most bytes a request's JSON part may take for this model (at most `limit`): the largest batch
        of every input at JSON_BYTES_PER_VALUE a number, plus room for the rest; `limit` where that has no
        bound (BYTES inputs, dynamic dimensions besides the batch)."""
        values = 0
        for s in self.inputs:
            dims = s.shape[1:] if self.max_batch_size else s.shape
            if s.datatype == "BYTES" or any(d < 0 for d in dims):
                return limit
            values += max(1, self.max_batch_size) * math.prod(dims)
        return min(limit, JSON_SLACK + JSON_BYTES_PER_VALUE * values)

    def check_inputs(self, req: InferRequest) -> Tuple[Dict[str, np.ndarray], int]:
        """Request tensors vs the model (as Triton checks them) -> ({name: array}, batch size)."""
        got = {t.name: t for t in req.inputs}
        for t in req.inputs:
            self.check_input(t.name, t.datatype, t.shape)
        batch = 1
        out = {}
        for s in self.inputs:
            t = got.get(s.name)
            if t is None:
                raise ProtocolError(f"expected input '{s.name}' for model '{self.name}'")
            if self.max_batch_size:
                n = t.shape[0]
                if out and n != batch:
                    raise ProtocolError(f"inputs of model '{self.name}' disagree on the batch size")
                batch = n
            out[s.name] = np.ascontiguousarray(t.array)
        return out, batch

    def select_outputs(self, req: InferRequest, outs: Dict[str, np.ndarray]) -> List[Tuple[str, np.ndarray, bool]]:
        """The outputs to send, in the request's order (all, in model order, when it names none)."""
        wanted: Sequence[RequestedOutput] = req.outputs if req.outputs is not None else \
            [RequestedOutput(o.name, req.binary_default) for o in self.outputs]
        res = []
        for o in wanted:           # names were checked by validate_outputs before the run
            a = outs[o.name]
            if o.classification:
                labels = self.predictor.info.classes if o.name == contract.LOGITS else None
                a = classify(a, o.classification, labels)
            res.append((o.name, a, o.binary))
        return res

    def validate_outputs(self, req: InferRequest) -> None:
        """Reject unknown output names before running anything."""
        if req.outputs is not None:
            names = {s.name for s in self.outputs}
            for o in req.outputs:
                if o.name not in names:
                    raise ProtocolError(f"unexpected inference output '{o.name}' for model '{self.name}'; it has "
                                        f"{', '.join(sorted(names))}")


def _dims(shape) -> List[int]:
    """onnxruntime shape (ints, names for symbolic axes, None) -> ints with -1 for dynamic."""
    return [d if isinstance(d, int) and d >= 0 else -1 for d in shape]


def check_config(cfg: Dict[str, Any], inputs: List[tc.TensorSpec], outputs: List[tc.TensorSpec], path: Path) -> None:
    """A config.pbtxt must describe the model file it sits beside (names, types, dims), as Triton checks it."""
    from ..core.errors import UserError
    mb = int(cfg.get("max_batch_size", 0))
    for kind, have in (("input", inputs), ("output", outputs)):
        graph = {t.name: t for t in have}
        for c in cfg.get(kind, []):
            t = graph.get(c.get("name"))
            if t is None:
                raise UserError(f"{path}: config {kind} '{c.get('name')}' is not in the model (it has "
                                f"{', '.join(graph)}); fix config.pbtxt or rewrite it with `sedeploy triton-repo`")
            dims = list(t.shape[1:] if mb > 0 else t.shape)
            cdims = [int(d) for d in c.get("dims", [])]
            if c.get("data_type") != tc.config_type(t.datatype) or len(cdims) != len(dims) or \
                    any(a != -1 and b != -1 and a != b for a, b in zip(cdims, dims)):
                raise UserError(f"{path}: config {kind} '{t.name}' is {c.get('data_type')} {cdims} but the model has "
                                f"{tc.config_type(t.datatype)} {dims}; fix config.pbtxt or rewrite it with "
                                f"`sedeploy triton-repo`")
    if mb > 0 and not tc.batchable(inputs, outputs):
        raise UserError(f"{path}: config max_batch_size {mb} but the model has a fixed batch axis; set "
                        f"max_batch_size: 0")
