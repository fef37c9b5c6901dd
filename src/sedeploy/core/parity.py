"""The one parity helper: max abs / max rel difference per output name, with explicit tolerances.

numpy only, so that the torch-free side can use it too (after onnx-simplifier's
model_checking.compare). Export verification (every backend, the int8 and fp16 variants), the
bench's max |dlogit| column and the tests' parity assertions (tests/conftest.py assert_parity)
all go through `compare`. An output passes when |got - ref| <= atol + rtol * |ref| everywhere
(numpy.allclose); max rel is reported as max |got - ref| / max(|ref|, 1e-6) for information.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Sequence

import numpy as np

ATOL = 1e-4   # fp32 exports differ by ~1e-6 here; 1e-4 absolute is generous and still catches real bugs
RTOL = 1e-3


@dataclass
class ParityRow:
    backend: str
    output: str
    max_abs: float
    max_rel: float
    ok: bool

    def to_dict(self) -> dict:
        return asdict(self)


def compare(ref: Dict[str, np.ndarray], got: Dict[str, np.ndarray], backend: str,
            atol: float = ATOL, rtol: float = RTOL) -> List[ParityRow]:
    """Compare every output of `ref`; a missing or mis-shaped output is a failed row."""
    rows = []
    for name, r in ref.items():
        g = got.get(name)
        if g is None or np.shape(g) != np.shape(r):
            rows.append(ParityRow(backend, name, float("inf"), float("inf"), False))
            continue
        r64, g64 = np.asarray(r, np.float64), np.asarray(g, np.float64)
        diff = np.abs(g64 - r64)
        max_abs = float(diff.max()) if diff.size else 0.0
        max_rel = float((diff / np.maximum(np.abs(r64), 1e-6)).max()) if diff.size else 0.0
        ok = bool(np.allclose(g64, r64, atol=atol, rtol=rtol))
        rows.append(ParityRow(backend, name, max_abs, max_rel, ok))
    return rows


def format_table(rows: Sequence[ParityRow]) -> str:
    head = f"{'backend':<18} {'output':<12} {'max abs':>10} {'max rel':>10}  ok"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.backend:<18} {r.output:<12} {r.max_abs:10.2e} {r.max_rel:10.2e}  "
                     f"{'yes' if r.ok else 'NO'}")
    return "\n".join(lines)
