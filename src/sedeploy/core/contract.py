"""The graph contract shared by export (writes it) and runtime (reads it).

Everything that an exported model file and its consumers must agree on is declared here once:
tensor names, their order, the dynamic axis, and the metadata keys stored inside the files.
This module is a leaf: it imports nothing from torch, models, training or export, so the
torch-free runtime can import it on an edge device.

Layout of an exported graph (README, "Export"):
    input  `input`        float32 [batch, C, H, W], normalized with the metadata's mean/std
    output `logits`       float32 [batch, num_classes]
    output `se1..seK`     float32 [batch, C_k]   one per SE block, model order (absent for `cnn`)
    output `feature_map`  float32 [batch, C_last, h, w]  last block, SE-reweighted, before pooling
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Sequence

INPUT_NAME = "input"
LOGITS = "logits"
FEATURE_MAP = "feature_map"
SE_PREFIX = "se"
BATCH_AXIS = "batch"

# Metadata keys (ONNX metadata_props and TorchScript extra files). Every value is JSON text.
META_PREFIX = "sedeploy."
META_KEYS = (
    "format_version",  # int: version of this contract
    "classes",         # list[str]
    "mean",            # list[float], one per input channel
    "std",             # list[float]
    "input_size",      # [C, H, W]
    "model_name",      # str, registry name
    "model_config",    # dict, kwargs for create_model
    "output_names",    # list[str], in graph order
    "se_outputs",      # list[str], the subset of output_names that are SE weights
    "feature_map",     # str or null, name of the feature map output
    "dataset",         # str
    "data",            # dict or null: where the training data is (folder: data_dir, split_file, seed, ...)
    "test_accuracy",   # float or null, percent
    "checkpoint_sha256",
    "versions",        # dict: sedeploy, torch, onnx, ...
    "opset",           # int or null
    "exported_at",     # ISO 8601 UTC
    "precision",       # "fp32" | "int8" | "fp16"
    "head_linear",     # dict or null: {"weights": (classes x C*s*s floats, row-major), "shape": [C, s, s],
                       # "pool": int}: the head's linear layers multiplied (W2 @ W1) over the last block's
                       # pooled features, for the head-cam / head-gradcam heatmaps (runtime.explain)
    "unsure",          # dict or null: out-of-distribution score (runtime/unsure.py; {"version": 1, kind, params, threshold, accept, ...})
)
FORMAT_VERSION = 1
# Keys a runtime cannot work without.
REQUIRED_KEYS = ("classes", "mean", "std", "input_size", "output_names")


def se_output_names(num_se_blocks: int) -> List[str]:
    """`se1`, `se2`, ... in model order."""
    return [f"{SE_PREFIX}{i + 1}" for i in range(num_se_blocks)]


def output_names(num_se_blocks: int, with_extras: bool = True) -> List[str]:
    """Graph output names in order: logits, se1..seK, feature_map (or logits alone)."""
    if not with_extras:
        return [LOGITS]
    return [LOGITS, *se_output_names(num_se_blocks), FEATURE_MAP]


def dynamic_axes(names: Sequence[str]) -> Dict[str, Dict[int, str]]:
    """Axis 0 of the input and of every output is the batch."""
    return {n: {0: BATCH_AXIS} for n in [INPUT_NAME, *names]}


def encode_metadata(meta: Dict[str, Any]) -> Dict[str, str]:
    """Dict of plain values -> {"sedeploy.<key>": json text}. Unknown keys are refused."""
    unknown = set(meta) - set(META_KEYS)
    if unknown:
        raise KeyError(f"unknown metadata keys: {sorted(unknown)}")
    return {META_PREFIX + k: json.dumps(v) for k, v in meta.items()}


def decode_metadata(props: Dict[str, str]) -> Dict[str, Any]:
    """Inverse of encode_metadata; ignores keys of other tools. Raises ValueError on bad JSON."""
    out: Dict[str, Any] = {}
    for k, v in props.items():
        if k.startswith(META_PREFIX):
            key = k[len(META_PREFIX):]
            try:
                out[key] = json.loads(v)
            except json.JSONDecodeError as e:
                raise ValueError(f"metadata {k!r} is not JSON: {e}") from None
    return out


def missing_keys(meta: Dict[str, Any]) -> List[str]:
    return [k for k in REQUIRED_KEYS if k not in meta]
