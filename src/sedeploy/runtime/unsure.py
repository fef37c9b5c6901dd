"""'Unsure': an out-of-distribution score for a deployed classifier, pure numpy (no torch), so the same
arithmetic can be ported to the browser.

One function does the device-side work: `unsure(outputs, spec)` takes the outputs every runtime returns
(logits, se1..seK, feature_map) and the `sedeploy.unsure` metadata value, and returns (scores, flags).
A score is "in-distribution-ness": higher = more like the training data; flag = score < threshold.

Score kinds (the spec's "kind"):
  msp      max softmax probability of the logits                          params: none
  energy   logsumexp of the logits                                        params: none
  maha     minus the smallest Mahalanobis distance of the pooled feature map (mean over H, W) to a class
           mean, tied covariance with shrinkage                           params: means [C][D], precision [D][D]
  cos_se   the largest cosine similarity of an SE weight vector (e.g. se3) to a class mean
                                                                          params: output, means [C][D]

Spec (metadata value, JSON): {"version": 1, "kind": ..., "params": {...}, "threshold": t,
"accept": 0.95, "calibrated_on": "<what>", "n": <images>}.
"""
from typing import Dict, Optional, Tuple

import numpy as np

SPEC_VERSION = 1
KINDS = ("msp", "energy", "maha", "cos_se")


def _logsumexp(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]


def _pooled(fm: np.ndarray) -> np.ndarray:
    fm = np.asarray(fm, dtype=np.float64)
    return fm.reshape(fm.shape[0], fm.shape[1], -1).mean(axis=2) if fm.ndim > 2 else fm


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def score(kind: str, params: Dict, outputs: Dict[str, np.ndarray]) -> np.ndarray:
    """Per-image in-distribution score (higher = more familiar) of one batch of runtime outputs."""
    if kind == "msp":
        z = np.asarray(outputs["logits"], dtype=np.float64)
        return np.exp(z.max(axis=1) - _logsumexp(z))
    if kind == "energy":
        return _logsumexp(np.asarray(outputs["logits"], dtype=np.float64))
    if kind == "maha":
        x = _pooled(outputs["feature_map"])
        means = np.asarray(params["means"], dtype=np.float64)
        prec = np.asarray(params["precision"], dtype=np.float64)
        d = x[:, None, :] - means[None, :, :]                       # N, C, D
        dist = np.einsum("ncd,de,nce->nc", d, prec, d)
        return -dist.min(axis=1)
    if kind == "cos_se":
        v = _unit(_pooled(outputs[params["output"]]))
        return (v @ _unit(np.asarray(params["means"])).T).max(axis=1)
    raise ValueError(f"unknown unsure score kind {kind!r}; known: {', '.join(KINDS)}")


def unsure(outputs: Dict[str, np.ndarray], spec: Optional[Dict]) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """(scores, flags) for one batch, or (None, None) when the artifact has no calibrated score (old artifacts)."""
    if not spec:
        return None, None
    s = score(spec["kind"], spec.get("params") or {}, outputs)
    return s, ~(s >= float(spec["threshold"]))          # a score that is not a number (NaN input) is unsure


def check_spec(spec: object, outputs: Dict[str, list]) -> Optional[str]:
    """What is wrong with a `sedeploy.unsure` metadata value for a graph with these outputs (name -> shape,
    batch first), or None when it can be used. The value comes from a model file: untrusted."""
    if spec is None:
        return None
    if not isinstance(spec, dict):
        return f"is a {type(spec).__name__}, not an object"
    if spec.get("version") != SPEC_VERSION:
        return f"has version {spec.get('version')!r}; this sedeploy reads version {SPEC_VERSION}"
    kind, params, t = spec.get("kind"), spec.get("params") or {}, spec.get("threshold")
    if kind not in KINDS:
        return f"names the score {kind!r}; known: {', '.join(KINDS)}"
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not np.isfinite(t):
        return f"has no finite threshold ({t!r})"
    if not isinstance(params, dict):
        return "has params that are not an object"
    def fits(name: str, d: int) -> bool:          # the channel axis (after the batch), which _pooled reads
        shape = outputs.get(name) or []
        return len(shape) < 2 or not isinstance(shape[1], int) or shape[1] == d
    try:
        if kind == "maha":
            if "feature_map" not in outputs:
                return "needs the feature_map output, which the graph lacks"
            means = np.asarray(params["means"], dtype=np.float64)
            prec = np.asarray(params["precision"], dtype=np.float64)
            if not (np.isfinite(means).all() and np.isfinite(prec).all()):
                return "has maha params that are not finite numbers"
            d = means.shape[1] if means.ndim == 2 else -1
            if d < 1 or prec.shape != (d, d) or not fits("feature_map", d):
                return (f"has means {list(means.shape)} and precision {list(prec.shape)} that do not fit the "
                        f"feature map {outputs['feature_map']}")
        elif kind == "cos_se":
            out = params.get("output")
            if out not in outputs:
                return f"reads the output {out!r}, which the graph lacks"
            means = np.asarray(params["means"], dtype=np.float64)
            if not np.isfinite(means).all():
                return "has cos_se means that are not finite numbers"
            if means.ndim != 2 or not fits(out, means.shape[1]):
                return f"has means {list(means.shape)} that do not fit output {out!r}"
    except (KeyError, TypeError, ValueError):
        return f"has {kind} params that are missing or not numbers"
    return None


def fit_params(kind: str, outputs: Dict[str, np.ndarray], labels: np.ndarray, num_classes: int,
               se_output: str = "se3", shrink: float = 0.1) -> Dict:
    """Score parameters from in-distribution (training) outputs and their labels; small enough to store."""
    labels = np.asarray(labels)
    if kind in ("msp", "energy"):
        return {}
    if kind == "maha":
        x = _pooled(outputs["feature_map"])
        means = np.stack([x[labels == c].mean(axis=0) if (labels == c).any() else x.mean(axis=0)
                          for c in range(num_classes)])
        r = x - means[labels]
        cov = r.T @ r / max(len(x) - 1, 1)
        cov = (1 - shrink) * cov + shrink * np.eye(cov.shape[0]) * np.trace(cov) / cov.shape[0]
        return {"means": np.round(means, 6).tolist(), "precision": np.round(np.linalg.inv(cov), 6).tolist()}
    if kind == "cos_se":
        v = _unit(_pooled(outputs[se_output]))
        means = np.stack([v[labels == c].mean(axis=0) if (labels == c).any() else v.mean(axis=0)
                          for c in range(num_classes)])
        return {"output": se_output, "means": np.round(_unit(means), 6).tolist()}
    raise ValueError(f"unknown unsure score kind {kind!r}; known: {', '.join(KINDS)}")


def threshold_for(scores: np.ndarray, accept: float) -> float:
    """Threshold that accepts (score >= t) the share `accept` of these in-distribution scores.

    It lies halfway between the lowest accepted score and the highest rejected one (below the lowest by
    half the next gap when all are accepted), not on a score: another runtime's arithmetic (a few ulps
    apart) must not flip an image the calibration accepted."""
    if not 0 < accept <= 1:          # NaN fails this too
        raise ValueError(f"accept is a share in (0, 1], got {accept}")
    s = np.asarray(scores, dtype=np.float64).ravel()
    s = np.sort(np.where(np.isnan(s), -np.inf, s))        # a score that is not a number ranks lowest: rejected
    if not len(s):
        raise ValueError("no score to calibrate on")
    # the lower quantile's index over all n (np.quantile(s, 1 - accept, method="lower")), 1e-9 against float
    # error (1 - 0.9 = 0.0999...: 11 scores at 0.9 reject one, as asked, not none)
    k = int(np.floor((1 - accept) * (len(s) - 1) + 1e-9))
    if not np.isfinite(s[k]):
        raise ValueError(f"{int((~np.isfinite(s)).sum())} of {len(s)} scores are not finite numbers: no threshold "
                         f"accepts {accept:.0%} of them")
    above = s[k + 1] - s[k] if k + 1 < len(s) and np.isfinite(s[k + 1]) else 0.0
    lo = s[k - 1] if k > 0 and np.isfinite(s[k - 1]) else s[k] - above
    t = (lo + s[k]) / 2
    return float(min(t, s[k] - 1e-6 * max(1.0, abs(s[k]))))   # a margin even when scores tie


def calibrate(kind: str, fit_outputs: Dict[str, np.ndarray], fit_labels: np.ndarray, num_classes: int,
              val_outputs: Dict[str, np.ndarray], accept: float = 0.95, calibrated_on: str = "") -> Dict:
    """The metadata value: parameters fitted on training outputs, threshold on validation outputs."""
    params = fit_params(kind, fit_outputs, fit_labels, num_classes)
    val = score(kind, params, val_outputs)
    return {"version": SPEC_VERSION, "kind": kind, "params": params, "threshold": threshold_for(val, accept),
            "accept": accept, "calibrated_on": calibrated_on, "n": int(len(val))}


def auroc(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """P(score of an in-distribution image > score of an OOD image), ties count half."""
    a, b = np.asarray(id_scores, dtype=np.float64), np.asarray(ood_scores, dtype=np.float64)
    allv = np.concatenate([a, b])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    ranks[order] = np.arange(1, len(allv) + 1)
    for v in np.unique(allv):                       # average ranks of ties
        m = allv == v
        if m.sum() > 1:
            ranks[m] = ranks[m].mean()
    return float((ranks[:len(a)].sum() - len(a) * (len(a) + 1) / 2) / (len(a) * len(b)))


def far_at(id_scores: np.ndarray, ood_scores: np.ndarray, accept: float = 0.95) -> float:
    """Share of OOD images accepted at the threshold that accepts `accept` of the in-distribution images."""
    return float((np.asarray(ood_scores) >= threshold_for(id_scores, accept)).mean())

