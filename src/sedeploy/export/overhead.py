"""Cost of the extra graph outputs: onnxruntime latency of the full export vs a logits-only export
of the same checkpoint, at batch 1 and 64, interleaved in one run (the exporter builds both graphs
and writes the result into export.json)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Sequence

import numpy as np

from ..core.timing import interleaved


def measure_overhead(full: Path, logits: Path, batches: Sequence[int] = (1, 64), rounds: int = 30,
                     log: Callable[[str], None] = print) -> Dict[str, dict]:
    """p50 latency of `full` (SE weights + feature map outputs) against `logits` (logits only) on CPU,
    per batch size: {"batch<b>": {"full": timing, "logits_only": timing, "ratio_p50": full / logits}}."""
    import onnxruntime as ort
    from ..runtime.runners.ort import session_options
    res: Dict[str, dict] = {}
    so = session_options()
    sess = {k: ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
            for k, p in (("full", full), ("logits", logits))}
    shape = [d_ if isinstance(d_, int) else 1 for d_ in sess["full"].get_inputs()[0].shape]
    for b in batches:
        x = np.random.default_rng(0).standard_normal((b, *shape[1:])).astype(np.float32)
        t = interleaved({k: (lambda s=s: s.run(None, {"input": x})) for k, s in sess.items()},
                        rounds=rounds, per_round=3 if b > 8 else 10)
        ratio = t["full"]["p50_ms"] / t["logits"]["p50_ms"]
        res[f"batch{b}"] = {"full": t["full"], "logits_only": t["logits"], "ratio_p50": ratio}
        log(f"extra outputs, batch {b}: full {t['full']['p50_ms']:.3f} ms vs logits-only "
            f"{t['logits']['p50_ms']:.3f} ms (p50) -> x{ratio:.3f}")
    return res
