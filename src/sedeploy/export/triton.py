"""Write an exported ONNX model as a Triton Inference Server model repository entry (no torch).

    write_triton_repository("runs/fm/model.onnx", "models/", name="fm")  ->  models/fm/
        config.pbtxt       backend onnxruntime, max_batch_size, dims without the batch axis,
                           dynamic_batching (delay, bounded queue), instance_group KIND_CPU | KIND_GPU
        labels.txt         the class names (label_filename of `logits`: Triton's classification extension)
        1/model.onnx       the model file byte for byte, sedeploy metadata included

Follows Triton's model repository and model configuration docs (model_config.proto); the same
directory is what `sedeploy serve --model-repository` serves, so it moves to Triton or KServe
unchanged. The entry is built complete in a temporary folder beside its destination and renamed
into place (commit.swap_dir): an existing entry (only with force) is renamed aside first and removed
only once the new one is in, so a failure or Ctrl-C at any step leaves the old entry or the new one,
never neither and never a half-written one.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import List, Optional, Tuple

from ..core import contract
from ..core.io import PathLike, atomic_write, atomic_write_text, current_umask, ensure_writable_dir
from ..core.errors import UserError
from ..core import tritonconfig as tc
from ..runtime.model import read_metadata
from ..core.commit import owned_dir, recover_dir, release_dir, swap_dir


PYTHON_MODEL = Path(__file__).with_name("triton_python") / "model.py"   # Triton's Python backend runs it


def onnx_tensors(model) -> Tuple[List[tc.TensorSpec], List[tc.TensorSpec]]:
    """Graph inputs (initializers excluded) and outputs of an onnx.ModelProto as TensorSpecs (-1: dynamic)."""
    from onnx import helper

    def spec(v) -> tc.TensorSpec:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        return tc.TensorSpec(v.name, tc.numpy_type(helper.tensor_dtype_to_np_dtype(t.elem_type)), dims)

    weights = {i.name for i in model.graph.initializer}
    return ([spec(v) for v in model.graph.input if v.name not in weights], [spec(v) for v in model.graph.output])


def write_triton_repository(onnx_path: PathLike, repo_dir: PathLike, name: Optional[str] = None,
                            max_batch: int = tc.BATCHING.max_batch, instance_kind: str = "cpu", count: int = 1,
                            max_delay_us: int = tc.BATCHING.max_delay_us, max_queue: int = tc.BATCHING.max_queue,
                            force: bool = False, backend: str = tc.BACKEND) -> Path:
    """Write repo_dir/<name>/{config.pbtxt, labels.txt, 1/model.onnx} (+ 1/model.py for backend "python", which
    Triton's Python backend runs: model.onnx with onnxruntime); return the model's folder."""
    if backend not in (tc.BACKEND, tc.PYTHON_BACKEND):
        raise UserError(f"unknown Triton backend {backend!r}; choose {tc.BACKEND} or {tc.PYTHON_BACKEND}")
    try:
        import onnx
    except ImportError:
        raise UserError("writing a Triton repository reads the model with the onnx package: pip install onnx") from None
    src = Path(onnx_path)
    if not src.is_file():
        raise UserError(f"model {src} does not exist; export one with `sedeploy export --ckpt best.pt`")
    if instance_kind not in tc.INSTANCE_KINDS:
        raise UserError(f"unknown instance kind {instance_kind!r}; choose one of: {', '.join(tc.INSTANCE_KINDS)}")
    for opt, v, lo in (("--max-batch", max_batch, 0), ("--count", count, 1), ("--max-delay-us", max_delay_us, 0),
                       ("--max-queue", max_queue, 1)):
        if v < lo:
            raise UserError(f"{opt} must be >= {lo}, got {v}")
    try:
        model = onnx.load(str(src), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - onnx raises protobuf's DecodeError and others
        raise UserError(f"{src} is not a valid ONNX model ({str(e).splitlines()[0][:120]}); "
                        f"export one with `sedeploy export`") from None
    meta = read_metadata({p.key: p.value for p in model.metadata_props}, src)
    name = name or tc.default_name(src)
    if not tc.NAME_RE.match(name):
        raise UserError(f"model name {name!r} is not usable in a URL or folder name; use letters, digits, _ . -")
    inputs, outputs = onnx_tensors(model)
    labels = contract.LOGITS if any(o.name == contract.LOGITS for o in outputs) else None
    cfg = tc.model_config(name, inputs, outputs, max_batch=max_batch, max_delay_us=max_delay_us, max_queue=max_queue,
                          instance_kind=instance_kind, count=count, labels_for=labels, backend=backend)

    repo = ensure_writable_dir(repo_dir, "repository directory", option="--out")
    dest = repo / name
    recover_dir(dest, prefixes=[f".{name}.new-"])  # a triton-repo killed mid-swap: its old entry back
    if dest.exists() and not force:
        raise UserError(f"{dest} already exists; pass --force to replace it")
    tmp = owned_dir(repo, f".{name}.new-")
    try:
        (tmp / "1").mkdir()
        atomic_write_text(tmp / tc.CONFIG_FILE, tc.to_pbtxt(cfg) + "\n")
        if labels:
            atomic_write_text(tmp / tc.LABELS_FILE, "".join(f"{c}\n" for c in meta["classes"]))
        atomic_write(tmp / "1" / tc.MODEL_FILE, lambda p: shutil.copyfile(src, p))
        if backend == tc.PYTHON_BACKEND:
            atomic_write(tmp / "1" / tc.PYTHON_MODEL_FILE, lambda p: shutil.copyfile(PYTHON_MODEL, p))
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; a repository is shared like any output
        swap_dir(tmp, dest)                       # complete new entry in, old one out; a failure keeps the old
    finally:
        release_dir(tmp)                          # empty after the swap; the partial entry after a failure
    return dest

