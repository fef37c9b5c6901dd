"""What a model file is to the runtime, whichever runtime runs it: where it is found, its sedeploy
metadata, and the graph contract checked against the inputs and outputs the runtime reports.

Every runner (runtime.runners) reads its artifact's metadata properties and tensor list its own
way, then hands them to `describe`, so that a foreign or damaged model fails with the same
message on every runtime. The contract itself (names, keys) is sedeploy.core.contract.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..core import contract
from ..core.errors import UserError

Tensor = Tuple[str, Sequence[Any]]   # (name, shape as the runtime reports it: ints, names or None per axis)


@dataclass
class ModelInfo:
    path: Path
    meta: Dict[str, Any]
    classes: List[str]
    mean: List[float]
    std: List[float]
    input_size: List[int]          # [C, H, W]
    input_name: str
    output_names: List[str]        # as the graph has them, in order
    se_outputs: List[str]          # SE weight outputs, model order
    feature_map: Optional[str]     # feature map output name, if any
    fixed_batch: Optional[int]     # None for a dynamic batch axis
    output_shapes: Dict[str, List[Any]] = field(default_factory=dict)   # as the runtime reports them (batch first)


def check_model_file(path: Path) -> None:
    """The path names a file: UserError naming the fix otherwise."""
    if not path.exists():
        raise UserError(f"model {path} does not exist; export one with `sedeploy export --ckpt best.pt`")
    if path.is_dir():
        raise UserError(f"model {path} is a directory; pass the model.onnx file inside it")


def read_metadata(props: Dict[str, str], path: Path) -> Dict[str, Any]:
    """A model file's metadata properties -> the sedeploy metadata, checked (UserError naming the fix)."""
    try:
        meta = contract.decode_metadata(props)
    except ValueError as e:
        raise UserError(f"{path}: {e}; re-export it with `sedeploy export`") from None
    missing = contract.missing_keys(meta)
    if missing:
        raise UserError(f"{path} has no sedeploy metadata ({', '.join(missing)} missing); "
                        f"export the model with `sedeploy export` so it carries classes and normalization")
    return meta


def describe(props: Dict[str, str], inputs: Sequence[Tensor], outputs: Sequence[Tensor], path: Path) -> ModelInfo:
    """Read and check the graph contract and metadata; a foreign model raises UserError."""
    meta = read_metadata(props, path)
    graph_outputs = [name for name, _ in outputs]
    if contract.LOGITS not in graph_outputs:
        raise UserError(f"{path} has no '{contract.LOGITS}' output (it has {', '.join(graph_outputs)}); "
                        f"re-export it with `sedeploy export`")
    declared = meta["output_names"]
    absent = [n for n in declared if n not in graph_outputs]
    if absent:
        raise UserError(f"{path}: outputs {', '.join(absent)} named in its metadata are missing from the graph; "
                        f"re-export it with `sedeploy export`")
    input_name, shape = inputs[0]
    b = shape[0]
    c, h, w = meta["input_size"]
    if len(shape) != 4 or list(shape[1:]) != [c, h, w]:
        raise UserError(f"{path}: input shape {shape} does not match its metadata input_size {[c, h, w]}")
    if len(meta["classes"]) != outputs[graph_outputs.index(contract.LOGITS)][1][-1]:
        raise UserError(f"{path}: {len(meta['classes'])} class names but the logits have another width")
    from .unsure import check_spec
    problem = check_spec(meta.get("unsure"), {name: list(shape) for name, shape in outputs})
    if problem:
        raise UserError(f"{path}: its 'unsure' metadata {problem}; re-export it with `sedeploy export`")
    return ModelInfo(path=path, meta=meta, classes=list(meta["classes"]), mean=list(meta["mean"]),
                     std=list(meta["std"]), input_size=[c, h, w], input_name=input_name, output_names=graph_outputs,
                     se_outputs=[n for n in meta.get("se_outputs", []) if n in graph_outputs],
                     feature_map=meta.get("feature_map") if meta.get("feature_map") in graph_outputs else None,
                     fixed_batch=b if isinstance(b, int) else None,
                     output_shapes={name: list(shape) for name, shape in outputs})


MODEL_SEARCH = ("runs", "demo", "exports")


def find_model(explicit: Optional[str] = None) -> Path:
    """--model, else $SEDEPLOY_MODEL, else ./model.onnx, else the newest model.onnx under ./runs,
    ./demo or ./exports (three levels deep)."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("SEDEPLOY_MODEL")
    if env:
        return Path(env)
    here = Path("model.onnx")
    if here.exists():
        return here
    found = []
    for root in MODEL_SEARCH:
        for pattern in ("model.onnx", "*/model.onnx", "*/*/model.onnx", "*/*/*/model.onnx"):
            # not inside hidden folders: an export's staging or backup (core.commit) is no model to run
            found += [q for q in Path(root).glob(pattern) if not any(part.startswith(".") for part in q.parts[:-1])]
    if not found:
        raise UserError("no model found: pass --model model.onnx, set SEDEPLOY_MODEL, or run in the directory "
                        "where `sedeploy export` wrote model.onnx")
    return max(found, key=lambda p: p.stat().st_mtime)
