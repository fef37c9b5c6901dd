"""How far the fast decode path (JPEG draft mode, box reduce) moves the model's inputs and outputs
from the exact path, measured on real image files. numpy + Pillow + onnxruntime only.

Reported, over the given files: the largest and the mean absolute difference of the model input
in pixel levels (0..255, before normalization: the unit a reader can picture), the largest
difference of the predicted class's probability, and top-1 agreement between the two paths.
"""
from __future__ import annotations

import os
from typing import Dict, Sequence, Union

import numpy as np

from sedeploy.runtime.predictor import Predictor, softmax
from sedeploy.core.decode import ImageError, load_image


def fast_decode_drift(predictor: Predictor, paths: Sequence[Union[str, os.PathLike]], batch: int = 64
                      ) -> Dict[str, float]:
    """Exact vs fast decode of the same files through the same model; unreadable files are skipped."""
    c, h, w = predictor.info.input_size
    std = np.asarray(predictor.info.std, np.float32)[:, None, None]
    exact, fast = [], []
    for p in paths:
        try:
            e = predictor.to_input(load_image(p, c, predictor.background))
            f = predictor.to_input(load_image(p, c, predictor.background, fast_size=(w, h)))
        except ImageError:
            continue
        exact.append(e)
        fast.append(f)
    if not exact:
        raise ValueError("no readable images to compare")
    xe, xf = np.stack(exact), np.stack(fast)
    levels = np.abs(xe - xf) * std * 255.0                       # undo the normalization: pixel levels
    pe = np.concatenate([softmax(predictor.run(xe[i:i + batch])["logits"].astype(np.float64))
                         for i in range(0, len(xe), batch)])
    pf = np.concatenate([softmax(predictor.run(xf[i:i + batch])["logits"].astype(np.float64))
                         for i in range(0, len(xf), batch)])
    top_e, top_f = pe.argmax(1), pf.argmax(1)
    rows = np.arange(len(pe))
    return {"images": len(xe), "max_input_diff_levels": float(levels.max()),
            "mean_input_diff_levels": float(levels.mean()),
            "max_top_prob_diff": float(np.abs(pe[rows, top_e] - pf[rows, top_e]).max()),
            "top1_agreement": float((top_e == top_f).mean())}
