"""The OpenVINO runner: an IR pair model.openvino.xml + model.openvino.bin on OpenVINO's CPU plugin, in fp32.

OpenVINO keeps sedeploy's metadata inside the IR: export writes each metadata entry into the model's
rt_info under a `sedeploy` section (<rt_info><sedeploy><classes value="..."/>..., the values the JSON
strings of core.contract), and the output names survive as tensor names, so no sidecar is needed.
fp32 is forced: on a CPU with AVX512-BF16 or AMX the CPU plugin compiles in bf16 by default
(logits 0.03-0.06 off here), so every compile passes INFERENCE_PRECISION_HINT=f32 (`FP32_CONFIG`).

Telemetry: `import openvino` imports its converter (openvino.tools.ovc), which initializes
openvino-telemetry with the opt-in dialog off and sends usage events to Google Analytics (an import
event; with convert_model the converter's version, options and operator counts) and writes a client
id to ~/intel/, unless ~/intel/openvino_telemetry holds "0" or CI=true. `import_openvino` imports it with
openvino_telemetry unimportable, so ovc falls back to its own no-op stub (telemetry_stub); nothing is
sent or written. No torch imported.
"""
from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List, Optional

import numpy as np

from ...core import contract
from ...core.errors import UserError
from ..model import ModelInfo, check_model_file, describe
from . import Runner

RT_SECTION = "sedeploy"                                   # rt_info section that holds the metadata
FP32_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}         # the CPU plugin's default is bf16 on bf16/AMX CPUs
FIX = "export the set again with `sedeploy export --formats onnx,openvino`"
TELEMETRY = "openvino_telemetry"
OVC = "openvino.tools.ovc"


def import_openvino() -> ModuleType:
    """openvino with its telemetry off. Imported for the first time here, openvino_telemetry is made
    unimportable for the duration of the import, so its converter binds the no-op stub and the import
    event is never built; if openvino was imported before (by other code, telemetry on), its converter
    modules' telemetry handles are swapped for the stub, so conversions from then on send nothing."""
    if "openvino" not in sys.modules:
        saved = sys.modules.get(TELEMETRY)
        sys.modules[TELEMETRY] = None          # type: ignore[assignment]  # `import openvino_telemetry` fails
        try:
            import openvino
        except ImportError:
            raise UserError("the openvino runtime is not installed: pip install 'sedeploy[openvino]'") from None
        finally:                               # only this import is affected: ovc has bound the stub
            if saved is None:
                del sys.modules[TELEMETRY]
            else:
                sys.modules[TELEMETRY] = saved
    import openvino
    telemetry = sys.modules.get(TELEMETRY)
    if telemetry is not None:                  # imported earlier with telemetry on
        from openvino.tools.ovc import telemetry_stub
        for name, mod in list(sys.modules.items()):
            if name.startswith(OVC) and getattr(mod, "tm", None) is telemetry:
                mod.tm = telemetry_stub
    return openvino


def weights_of(xml: Path) -> Path:
    """model.openvino.xml -> model.openvino.bin."""
    return xml.with_suffix(".bin")


def read_ir(core: Any, xml: Path) -> Any:
    """The IR's ov.Model; UserError for an .xml without its .bin or a file OpenVINO cannot read."""
    weights = weights_of(xml)
    if not weights.is_file():
        raise UserError(f"{xml}: an .xml without its .bin ({weights.name} is missing beside it); copy both "
                        f"files together, or {FIX}")
    try:
        return core.read_model(str(xml), str(weights))
    except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses with long C++ traces
        text = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{xml} is not a readable OpenVINO IR ({text[:120]}); {FIX}") from None


def metadata_props(model: Any) -> Dict[str, str]:
    """The rt_info `sedeploy` section -> metadata properties as ONNX carries them ("sedeploy.classes": JSON)."""
    if not model.has_rt_info([RT_SECTION]):
        return {}
    keys = model.get_rt_info()[RT_SECTION]
    return {contract.META_PREFIX + k: model.get_rt_info([RT_SECTION, k]).astype(str) for k in keys}


def dims(port: Any) -> List[Any]:
    """A port's partial shape as describe() takes it: ints, None for a dynamic axis."""
    return [None if d.is_dynamic else d.get_length() for d in port.get_partial_shape()]


def compile_config(threads: Optional[int]) -> Dict[str, Any]:
    """fp32, tuned for one request at a time, threads not pinned to cores: as with onnxruntime (runners.ort),
    pinned threads on a shared machine lose their core to other work (batch 1 here: 12 ms pinned, 1.8 ms not)."""
    config: Dict[str, Any] = {**FP32_CONFIG, "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


class OpenvinoRunner(Runner):
    """An .openvino.xml/.bin pair on OpenVINO's CPU plugin, fp32, one infer request. `provider` and `threads`
    as the other runners take them; onnxruntime's other options do not apply and are accepted and ignored."""

    def __init__(self, path: Path, provider: str = "cpu", threads: Optional[int] = None, **_: Any) -> None:
        ov = import_openvino()
        self.path = Path(path)
        check_model_file(self.path)
        if provider == "cuda":
            raise UserError("--provider cuda: the openvino runner runs on the CPU here; pass --provider cpu")
        core = ov.Core()
        model = read_ir(core, self.path)
        self.info: ModelInfo = describe(metadata_props(model), [(p.get_any_name(), dims(p)) for p in model.inputs],
                                        [(p.get_any_name(), dims(p)) for p in model.outputs], self.path)
        self.compiled = core.compile_model(model, "CPU", compile_config(threads))
        self.request = self.compiled.create_infer_request()
        self.ports = {n: self.compiled.output(n) for n in self.info.output_names}
        self.provider = "openvino-cpu"

    @property
    def inference_precision(self) -> str:
        """The precision the compiled model runs in, as OpenVINO reports it ('f32')."""
        return self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    def _invoke(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        res = self.request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)}, share_outputs=False)
        return {n: res[p] for n, p in self.ports.items()}
