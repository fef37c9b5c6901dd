"""The ExecuTorch runner: model.pte (and model.int8.pte) on executorch.runtime, XNNPACK on the CPU.

Not part of the device-side runtime (sedeploy.runtime never imports torch; see torch_runners/__init__):
ExecuTorch's Python runtime is built on libtorch. executorch.runtime imports executorch.extension.pybindings.portable_lib, which imports
torch (and executorch.exir, the compiler) before loading its _C extension, linked against libtorch.so
and libtorch_python.so; Method.execute takes and returns torch tensors only (a numpy array is
refused). Measured with executorch 1.5.1 / torch 2.14.1: `import executorch.runtime` loads ~1,500
torch modules. A device that must not carry torch runs the .pte from C++ (ExecuTorch's own runtime).

The .pte describes itself: the constant method `sedeploy` returns one JSON string with the sedeploy
metadata, the output names by position (ExecuTorch outputs are positional), the input shape and the
batch range (export.formats.executorch). Batches above the exported maximum are split here; a fixed
batch export is padded by the base class. XNNPACK computes fp32 graphs in fp32: there is no
lower-precision default to force off.
"""
from __future__ import annotations

import contextlib
import io
import json
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import numpy as np

from ..core.errors import UserError
from ..runtime.model import ModelInfo, check_model_file, describe
from ..runtime.runners import Runner, native_stderr_filtered

METHOD = "sedeploy"            # the constant method the exporter writes (export.formats.executorch.METHOD)
DESCRIPTION_VERSION = 1
FIX = "export it again with `sedeploy export --formats executorch`"


@contextlib.contextmanager
def native_log(lines: List[str]) -> Iterator[None]:
    """ExecuTorch's runtime logs through Python's sys.stderr (cpuinfo probing on the first load of a method,
    the reason a program fails to load): captured into `lines`, so that a user sees one sedeploy line."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf):
            yield
    finally:
        lines.extend(ln for ln in buf.getvalue().splitlines() if ln.strip())


def _last(lines: List[str]) -> str:
    return f" ({lines[-1].split('] ', 1)[-1][:160]})" if lines else ""


def read_description(program: Any, path: Path) -> Dict[str, Any]:
    """The `sedeploy` constant method's JSON, checked; UserError for a .pte that sedeploy did not write."""
    if METHOD not in program.method_names or "forward" not in program.method_names:
        raise UserError(f"{path} is not a sedeploy ExecuTorch program (no {METHOD!r} method with its metadata); "
                        f"{FIX}")
    try:
        doc = json.loads(program.load_method(METHOD).execute([])[0])
        well_formed = (doc.get("version") == DESCRIPTION_VERSION and isinstance(doc["metadata"], dict)
                       and isinstance(doc["outputs"], list) and len(doc["input_shape"]) == 3
                       and isinstance(doc["batch"], dict))
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, RuntimeError):
        well_formed = False
    if not well_formed:               # checked input, not an invariant: no assert (python -O drops them)
        raise UserError(f"{path}: its {METHOD!r} method does not hold a sedeploy description; {FIX}")
    return doc


class ExecutorchRunner(Runner):
    """A .pte on ExecuTorch (XNNPACK delegate, CPU). `threads` sizes ExecuTorch's process-wide thread
    pool; onnxruntime's other options do not apply and are accepted and ignored."""

    def __init__(self, path: Path, provider: str = "cpu", threads: Optional[int] = None, **_: Any) -> None:
        self.path = Path(path)
        check_model_file(self.path)
        if provider == "cuda":
            raise UserError("--provider cuda: the executorch runner runs on the CPU (XNNPACK); pass --provider cpu")
        import logging
        pytree = logging.getLogger("torch.utils._pytree")   # torchao registers an Enum at import: a warning
        level = pytree.level                                 # about torch.compile, nothing about this model
        pytree.setLevel(logging.ERROR)
        try:
            from executorch.runtime import Runtime     # imports torch (see the module docstring)
        finally:
            pytree.setLevel(level)
        if threads:
            from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
            with native_stderr_filtered(("Resetting threadpool to", "[cpuinfo_utils.cpp")):   # its debug lines
                _unsafe_reset_threadpool(int(threads))
        self.provider = "executorch-xnnpack"
        self.lock = threading.Lock()                # a method runs in its own planned buffers: one call at a time
        log: List[str] = []
        try:
            with native_log(log):
                program = Runtime.get().load_program(self.path)
        except RuntimeError:
            raise UserError(f"ExecuTorch cannot load {self.path}: not a complete .pte file{_last(log)}; {FIX}") from None
        with native_log(log):
            self.doc = read_description(program, self.path)
            self.method = program.load_method("forward")
        meta = self.method.metadata
        if meta.num_outputs() != len(self.doc["outputs"]):
            raise UserError(f"{self.path}: {meta.num_outputs()} outputs but its description names "
                            f"{len(self.doc['outputs'])}; {FIX}")
        fixed = self.doc["batch"].get("fixed")
        self.max_batch = int(fixed or self.doc["batch"]["max"])
        b = fixed if fixed else "batch"
        shapes = [(n, [b, *list(meta.output_tensor_meta(i).sizes())[1:]]) for i, n in enumerate(self.doc["outputs"])]
        self.info: ModelInfo = describe(self.doc["metadata"], [("input", [b, *self.doc["input_shape"]])], shapes,
                                        self.path)

    def _invoke(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        import torch
        parts: Dict[str, List[np.ndarray]] = {n: [] for n in self.doc["outputs"]}
        for i in range(0, len(batch), self.max_batch):      # the exported range ends at max_batch
            x = torch.from_numpy(np.ascontiguousarray(batch[i:i + self.max_batch], dtype=np.float32))
            with self.lock:
                outs = self.method.execute([x])             # cloned out of the planned buffers
            for name, o in zip(self.doc["outputs"], outs):
                parts[name].append(o.numpy())
        return {n: v[0] if len(v) == 1 else np.concatenate(v) for n, v in parts.items()}
