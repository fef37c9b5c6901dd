"""onnxsim simplification: fails loudly (no silent fallback), reports node counts."""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

import onnx

from ..core.errors import UserError
from .onnx_export import node_count


def simplify_onnx(src: Path, dst: Path) -> Tuple[int, int]:
    """Simplify src into dst; -> (nodes before, nodes after). Failure raises UserError with the reason."""
    import onnxsim
    model = onnx.load(str(src))
    before = node_count(model)
    try:
        simplified, ok = onnxsim.simplify(model)
    except Exception as e:  # noqa: BLE001 - onnxsim raises many types
        raise UserError(f"onnxsim failed to simplify the graph ({str(e).splitlines()[0][:160]}); "
                        f"export with --no-simplify to skip simplification") from None
    if not ok:
        raise UserError("onnxsim's own check says the simplified graph differs from the original; "
                        "export with --no-simplify to skip simplification")
    # onnxsim keeps metadata_props, but be explicit: the runtime depends on them
    del simplified.metadata_props[:]
    simplified.metadata_props.extend(model.metadata_props)
    onnx.save(simplified, str(dst))
    return before, node_count(simplified)
