"""INT8 (onnxruntime static quantization) and FP16 variants of an exported fp32 ONNX model.

INT8: static quantization calibrated on N training images, per-channel int8 weights and uint8
activations (u8s8: the VNNI-friendly pair on x86), QDQ format so that onnxruntime fuses
DQ -> op -> Q into QLinearConv / QGemm and lays convolutions out as NHWC. What makes it fast
here (scripts/int8_search.py, docs/BENCHMARKS.md): quantize the heavy ops (Conv + its ReLU,
MaxPool, the SE squeeze as QLinearGlobalAveragePool, the classifier's Gemm), keep the tiny SE
excitation MLP and its reweighting Mul in float (the Mul runs after pooling, on a 4x smaller
tensor), and keep the first block in float: its convolution has 9 (or 27) inputs per output, where
the int8 kernel is twice slower than fp32. Graph outputs (logits, SE weights,
feature map) stay float32 and the metadata is carried over with precision "int8".

FP16: float16 weights and arithmetic with float32 inputs/outputs (keep_io_types), for CUDA.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import onnx
import onnx.helper

from ..core import contract
from ..core.errors import UserError

INT8_OP_TYPES = ("Conv", "Relu", "MaxPool", "GlobalAveragePool", "Gemm")


class _Reader:
    """onnxruntime CalibrationDataReader over a float32 array, in batches."""

    def __init__(self, x: np.ndarray, input_name: str, batch: int = 64) -> None:
        self._it = iter([{input_name: x[i:i + batch]} for i in range(0, len(x), batch)])

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # pragma: no cover - used by some calibrators
        pass


def calibration_images(meta: dict, n: int, data_dir: Optional[str] = None, seed: int = 0) -> np.ndarray:
    """N normalized training images of the model's dataset (UserError if the data is not on disk)."""
    from ..core.datasets import normalize_batch
    from ..core.arrays import load_arrays
    try:
        _, x, _ = load_arrays(meta["dataset"], data_dir, "train", ref=meta.get("data"))
    except UserError as e:
        raise UserError(f"int8 calibration needs {meta['dataset']} training images: {e}") from None
    x = x[np.random.default_rng(seed).permutation(len(x))[:n]]
    return normalize_batch(x, meta["mean"], meta["std"])


def _copy_metadata(src: onnx.ModelProto, dst: onnx.ModelProto, precision: str) -> None:
    """dst gets src's metadata_props, with sedeploy.precision set to `precision`."""
    key = contract.META_PREFIX + "precision"
    del dst.metadata_props[:]
    dst.metadata_props.extend(p for p in src.metadata_props if p.key != key)
    dst.metadata_props.add(key=key, value=json.dumps(precision))


def quantize_int8(src: Path, dst: Path, calib: np.ndarray, op_types: Optional[Sequence[str]] = INT8_OP_TYPES,
                  per_channel: bool = True, fmt: str = "qdq", activation: str = "u8",
                  float_first_block: bool = True) -> Path:
    """Static int8 quantization of src into dst, calibrated on `calib` (N, C, H, W).

    float_first_block keeps every node before the second Conv in float: the first convolution
    has only C_in x 9 (9 or 27) inputs per output, where onnxruntime's int8 kernel is slower than
    its fp32 one (measured 1.4 ms vs 0.65 ms at batch 64), and it is the most precision-sensitive.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    model = onnx.load(str(src))
    outputs = {o.name for o in model.graph.output}
    # keep every node that produces a graph output in float (SE weights, feature map, logits producer stays
    # quantized only through its inputs)
    exclude = [n.name for n in model.graph.node if set(n.output) & outputs and n.op_type not in ("Gemm",)] \
        if op_types else []
    if float_first_block:
        convs = [i for i, n in enumerate(model.graph.node) if n.op_type == "Conv"]
        if len(convs) > 1:
            exclude += [n.name for n in model.graph.node[:convs[1]]]
    with tempfile.TemporaryDirectory() as d:
        pre = Path(d) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_optimization=False, skip_symbolic_shape=True)
        quantize_static(
            str(pre), str(dst), _Reader(calib, model.graph.input[0].name),
            quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
            activation_type=QuantType.QUInt8 if activation == "u8" else QuantType.QInt8,
            weight_type=QuantType.QInt8, per_channel=per_channel,
            op_types_to_quantize=list(op_types) if op_types else None,
            nodes_to_exclude=exclude, calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": activation != "u8", "WeightSymmetric": True})
    # carry the metadata over (quantize_static keeps metadata_props of pre-processed models unevenly)
    q = onnx.load(str(dst))
    _copy_metadata(model, q, "int8")
    onnx.save(q, str(dst))
    return dst


def convert_fp16(src: Path, dst: Path) -> Path:
    """float16 graph with float32 inputs and outputs."""
    try:
        from onnxconverter_common import float16
    except ImportError:
        raise UserError("--half needs onnxconverter-common: pip install onnxconverter-common") from None
    import warnings
    model = onnx.load(str(src))
    del model.graph.value_info[:]  # stale float32 shape annotations would contradict the fp16 types
    _detach_outputs(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "number truncated to 1e-07": tiny weights flush, expected in fp16
        half = float16.convert_float_to_float16(model, keep_io_types=True)
    _copy_metadata(model, half, "fp16")
    onnx.save(half, str(dst))
    return dst


def _detach_outputs(model: onnx.ModelProto) -> None:
    """Give every graph output that other nodes also consume its own Identity node.

    The fp16 converter casts an output back to float32 in place; when the same tensor also feeds
    the rest of the graph (an SE weight vector feeds its reweighting Mul), those consumers would
    then receive float32 inside a float16 graph. After this pass they read an internal tensor.
    """
    outputs = {o.name for o in model.graph.output}
    consumed = {i for n in model.graph.node for i in n.input}
    for name in outputs & consumed:
        internal = name + "__internal"
        for n in model.graph.node:
            n.output[:] = [internal if o == name else o for o in n.output]
            n.input[:] = [internal if i == name else i for i in n.input]
        model.graph.node.append(onnx.helper.make_node("Identity", [internal], [name], name=f"{name}__out"))


def op_histogram(path: Path) -> dict:
    counts: dict = {}
    for n in onnx.load(str(path)).graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return dict(sorted(counts.items()))
