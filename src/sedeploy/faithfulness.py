"""Is the heatmap faithful? Three metrics from the literature, per map kind, on the exported ONNX model.

Each test image is classified (class k, probability p_k) and each map ranks its pixels (the map
upsampled to the input size as the runtime draws it; ties broken at random). Then, batched on
onnxruntime:
- deletion (RISE, Petsiuk et al. 2018): the most salient pixels are set to black (the Fashion-MNIST
  background, pixel 0) in STEPS equal steps from 0 to 100 %; the score is the area under p_k(fraction
  removed) (trapezoid, x in [0, 1]). Lower is better.
- insertion (RISE): start from a Gaussian-blurred copy (sigma BLUR_SIGMA pixels) and reveal the most
  salient pixels of the original in STEPS steps; area under p_k. Higher is better.
- ROAD (remove and debias, Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for
  Attribution Methods"): removed pixels are not filled with a constant (an out-of-distribution
  artefact) but by noisy linear imputation: each removed pixel is the weighted mean of its 8
  neighbours (1/6 direct, 1/12 diagonal, as the paper and pytorch-grad-cam), solved for all removed
  pixels together, plus N(0, ROAD_NOISE) noise. MoRF removes the most relevant p %, LeRF the least,
  p in ROAD_PERCENTILES; ROAD = (mean LeRF - mean MoRF) / 2 as pytorch-grad-cam's ROADCombined.
  Higher is better. The linear system is solved by Jacobi iterations (ROAD_ITERS, batched in numpy,
  started from a normalized convolution) instead of a sparse direct solve; tests bound the difference.

Maps: the device-side kinds of runtime.explain (SE-weighted, the reference's top-3 channels by spatial
mean, the head maps from the `head_linear` weights), Grad-CAM on the PyTorch model (the same feature
map, gradient by autograd), and random pixels. Every metric is a per-image number: the table gives
mean +- standard error and paired differences (same images) in standard-error units.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from .core.errors import UserError
from .runtime import explain
from .runtime.predictor import Predictor, softmax

STEPS = 16
BLUR_SIGMA = 3.0
ROAD_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
ROAD_NOISE = 0.01
ROAD_ITERS = 100
# kind -> (name in the table, direction): +1 higher is better, -1 lower is better
METRICS = {"deletion": -1, "insertion": +1, "road": +1}
KINDS = ("head-cam", "head-gradcam", "se", "spatial-mean", "gradcam", "random")
REFERENCE, ANCHOR = "spatial-mean", "gradcam"


# ---------------------------------------------------------------- perturbations (numpy, batched)
def order_pixels(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, H, W) scores -> (N, H, W) rank of each pixel (0 = most salient); ties broken at random."""
    n = scores.shape[0]
    flat = scores.reshape(n, -1).astype(np.float64) + rng.random((n, scores[0].size)) * 1e-9
    rank = np.empty_like(flat, dtype=np.int64)
    np.put_along_axis(rank, np.argsort(-flat, axis=1, kind="stable"), np.arange(flat.shape[1])[None], axis=1)
    return rank.reshape(scores.shape)


def gaussian_blur(px: np.ndarray, sigma: float) -> np.ndarray:
    """(N, C, H, W) -> separable Gaussian blur, edges renormalized (no dark border)."""
    r = int(3 * sigma)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()

    def conv(a: np.ndarray, axis: int) -> np.ndarray:
        pad = [(0, 0)] * a.ndim
        pad[axis] = (r, r)
        p = np.pad(a, pad)
        n = a.shape[axis]
        return sum(w * np.take(p, np.arange(i, i + n), axis=axis) for i, w in enumerate(k))

    ones = np.ones(px.shape[-2:], np.float64)[None, None]
    norm = conv(conv(ones, 2), 3)
    return (conv(conv(px.astype(np.float64), 2), 3) / norm).astype(np.float32)


_NEIGHBOURS = [((dy, dx), (1 / 12 if dy and dx else 1 / 6)) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


def _neighbour_sum(a: np.ndarray) -> np.ndarray:
    """(..., H, W) -> sum of the 8 neighbours with ROAD's weights (zero outside the image)."""
    p = np.pad(a, [(0, 0)] * (a.ndim - 2) + [(1, 1), (1, 1)])
    h, w = a.shape[-2:]
    return sum(wt * p[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for (dy, dx), wt in _NEIGHBOURS)


def road_impute(px: np.ndarray, removed: np.ndarray, rng: np.random.Generator,
                iters: int = ROAD_ITERS, noise: float = ROAD_NOISE) -> np.ndarray:
    """(N, C, H, W) pixels, (N, H, W) bool removed -> the removed pixels filled by ROAD's noisy linear
    imputation: v_i = sum_j w_ij v_j / sum_j w_ij over the in-image neighbours j."""
    m = removed[:, None].astype(bool)
    known = (~m).astype(np.float64)
    x = px.astype(np.float64)
    # start: normalized convolution (known pixels' blurred mean), then Jacobi to the linear system's solution
    num, den = gaussian_blur(x * known, 2.0).astype(np.float64), gaussian_blur(known, 2.0).astype(np.float64)
    v = np.where(m, num / np.maximum(den, 1e-6), x)
    wsum = _neighbour_sum(np.ones(px.shape[-2:]))
    for _ in range(iters):
        v = np.where(m, _neighbour_sum(v) / wsum, x)
    v = np.where(m, v + noise * rng.standard_normal(v.shape), x)
    return v.astype(np.float32)


# ---------------------------------------------------------------- the model, batched
class Scorer:
    """p_k of pixel images (N, C, H, W in [0, 1]) on the ONNX model, in batches."""

    def __init__(self, pred: Predictor, batch: int = 512) -> None:
        self.pred, self.batch = pred, batch
        self.mean = np.asarray(pred.info.mean, np.float32)[:, None, None]
        self.std = np.asarray(pred.info.std, np.float32)[:, None, None]

    def outputs(self, px: np.ndarray) -> List[Dict[str, np.ndarray]]:
        return [self.pred.run(((px[i:i + self.batch] - self.mean) / self.std).astype(np.float32))
                for i in range(0, len(px), self.batch)]

    def prob(self, px: np.ndarray, k: np.ndarray) -> np.ndarray:
        logits = np.concatenate([o["logits"] for o in self.outputs(px)])
        return softmax(logits.astype(np.float64))[np.arange(len(px)), k]


def curves(scorer: Scorer, px: np.ndarray, k: np.ndarray, rank: np.ndarray, steps: int = STEPS) -> Dict[str, np.ndarray]:
    """Deletion and insertion areas, (N,) each, for pixels ranked by `rank`."""
    n, hw = len(px), rank[0].size
    blurred = gaussian_blur(px, BLUR_SIGMA)
    dele, ins = [], []
    for s in range(steps + 1):
        shown = (rank < round(s / steps * hw))[:, None]                        # the top s/steps pixels
        dele.append(np.where(shown, 0.0, px).astype(np.float32))
        ins.append(np.where(shown, px, blurred).astype(np.float32))
    kk = np.tile(k, steps + 1)
    pd = scorer.prob(np.concatenate(dele), kk).reshape(steps + 1, n)
    pi = scorer.prob(np.concatenate(ins), kk).reshape(steps + 1, n)
    area = lambda p: ((p[1:] + p[:-1]) / 2).sum(0) / steps                     # trapezoid, x in [0, 1]
    return {"deletion": area(pd), "insertion": area(pi)}


def road(scorer: Scorer, px: np.ndarray, k: np.ndarray, rank: np.ndarray, rng: np.random.Generator,
         percentiles=ROAD_PERCENTILES) -> Dict[str, np.ndarray]:
    """ROAD MoRF, LeRF (mean over percentiles) and (LeRF - MoRF) / 2, (N,) each."""
    hw = rank[0].size
    morf, lerf = [], []
    for q in percentiles:
        c = round(q / 100 * hw)
        morf.append(scorer.prob(road_impute(px, rank < c, rng), k))
        lerf.append(scorer.prob(road_impute(px, rank >= hw - c, rng), k))
    mo, le = np.mean(morf, 0), np.mean(lerf, 0)
    return {"road": (le - mo) / 2, "road_morf": mo, "road_lerf": le}


# ---------------------------------------------------------------- the maps
def gradcam(ckpt_path: Path, x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017) on the PyTorch model at the exported feature map (the last block,
    SE-reweighted, before pooling): alpha_c = mean d logit_k / d F_c, map max(sum_c alpha_c F_c, 0)
    scaled by its maximum. (N, C, H, W) normalized input -> (N, h, w)."""
    import torch
    from .checkpoint import build_model, load_checkpoint
    model = build_model(load_checkpoint(ckpt_path), str(ckpt_path))
    out = []
    for i in range(0, len(x), 256):
        with torch.enable_grad():
            try:
                f = model.forward_explain(torch.from_numpy(x[i:i + 256]))[2].detach().requires_grad_(True)
            except RuntimeError as e:       # a checkpoint of another shape (an export without its sha256)
                raise UserError(f"{ckpt_path} does not fit these images ({str(e).splitlines()[0][:120]}); pass "
                                f"the checkpoint the model was exported from with --ckpt") from None
            logits = model.head(model.blocks[-1].pool(f))                     # pool(x) * w == pool(x * w)
            logits.gather(1, torch.from_numpy(k[i:i + 256])[:, None]).sum().backward()
        a = torch.relu((f.grad.mean((2, 3), keepdim=True) * f).sum(1)).detach().numpy()
        m = a.reshape(len(a), -1).max(1)[:, None, None]
        out.append(np.where(m > 0, a / np.where(m > 0, m, 1), a))
    return np.concatenate(out).astype(np.float32)


def head_linear_from_checkpoint(ckpt_path: Path) -> Optional[dict]:
    """The `head_linear` metadata value, computed as the exporter does (for models exported before it)."""
    from .checkpoint import build_model, load_checkpoint
    from .export.exporter import head_linear
    return head_linear(build_model(load_checkpoint(ckpt_path), str(ckpt_path)))


def device_maps(kind: str, outs: Dict[str, np.ndarray], info, size_hw) -> np.ndarray:
    """The runtime's map of `kind` for a batch of outputs, upsampled as the runtime draws it: (N, H, W)."""
    h, w = size_hw
    n = len(outs["logits"])
    maps = []
    for j in range(n):
        a = explain.attention(kind, {name: v[j] for name, v in outs.items()}, info)
        maps.append(explain.upsample(a, (w, h)) if a.shape != (h, w) else a)
    return np.stack(maps)


def _stats(v: np.ndarray) -> Dict[str, float]:
    return {"mean": float(v.mean()), "se": float(v.std(ddof=1) / np.sqrt(len(v)))}


def _paired(a: np.ndarray, b: np.ndarray, direction: int) -> Dict[str, float]:
    """a - b per image; `better_se` = the difference in a's favour in standard errors."""
    d = a - b
    se = float(d.std(ddof=1) / np.sqrt(len(d)))
    return {"diff": float(d.mean()), "se": se, "better_se": float(direction * d.mean() / se) if se > 0 else 0.0}


def evaluate(model: Optional[str] = None, ckpt: Optional[str] = None, dataset: Optional[str] = None,
             data_dir: Optional[str] = None, n: int = 1000, seed: int = 0, steps: int = STEPS,
             kinds: Optional[List[str]] = None, log: Callable[[str], None] = print) -> Dict:
    """Every metric for every map kind on n test images -> {"methods": {kind: {metric: {mean, se}}},
    "paired": {kind: {"vs_reference"|"vs_gradcam": {metric: {diff, se, better_se}}}}, ...}."""
    if n < 2 or steps < 1:
        raise UserError("--n must be at least 2 and --steps at least 1")
    from .core.arrays import load_arrays
    pred = Predictor(model, "cpu")
    info = pred.info
    explain.require_feature_map(info)
    explicit = bool(kinds)
    kinds = list(kinds or KINDS)
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise UserError(f"unknown map kinds {sorted(unknown)}; choose from {', '.join(KINDS)}")
    if "se" in kinds and not info.se_outputs:
        if explicit:
            raise UserError(f"{info.path} has no SE outputs (a model without SE blocks): drop se from --kinds")
        kinds.remove("se")
    ckpt_path = Path(ckpt) if ckpt else Path(info.path).parent / "best.pt"
    heads = [k for k in kinds if k.startswith("head")]
    if not explicit and not ckpt_path.exists():
        dropped = ["gradcam"] + ([] if info.meta.get("head_linear") else heads)
        kinds = [k for k in kinds if k not in dropped]
        log(f"(no {', '.join({'gradcam': 'Grad-CAM'}.get(d, d) for d in dropped)}: no checkpoint at {ckpt_path}"
            f"{'' if info.meta.get('head_linear') else ' and no head_linear in this older export'}; "
            f"pass --ckpt runs/x/best.pt for them)")
    needs_ckpt = "gradcam" in kinds or (any(k.startswith("head") for k in kinds) and not info.meta.get("head_linear"))
    if needs_ckpt and not ckpt_path.exists():
        raise UserError(f"Grad-CAM and head maps of older exports need the checkpoint; {ckpt_path} does not "
                        f"exist: pass --ckpt runs/x/best.pt, or --kinds without gradcam")
    if needs_ckpt and info.meta.get("checkpoint_sha256"):
        from .core.io import file_sha256
        if file_sha256(ckpt_path) != info.meta["checkpoint_sha256"]:
            raise UserError(f"{ckpt_path} is not the checkpoint {info.path} was exported from (another sha256); "
                            f"pass that checkpoint with --ckpt, or export this one again")
    if any(k.startswith("head") for k in kinds) and not info.meta.get("head_linear"):
        info.meta["head_linear"] = head_linear_from_checkpoint(ckpt_path)
        log(f"(head_linear read from {ckpt_path}: this export predates the metadata key)")
    ds_name = dataset or info.meta.get("dataset")
    _, images, _ = load_arrays(ds_name, data_dir, "test", ref=info.meta.get("data"))
    images = images[np.random.default_rng(seed).permutation(len(images))[:n]]
    px = images.astype(np.float32) / 255
    c, h, w = info.input_size
    if px.shape[1:] != (c, h, w):
        raise UserError(f"test images are {px.shape[1:]} but the model takes {(c, h, w)}")
    scorer = Scorer(pred)
    outs_b = scorer.outputs(px)
    outs = {name: np.concatenate([o[name] for o in outs_b]) for name in outs_b[0]}
    probs = softmax(outs["logits"].astype(np.float64))
    k = probs.argmax(1)
    rng = np.random.default_rng(seed)
    per: Dict[str, Dict[str, np.ndarray]] = {}
    for kind in kinds:
        if kind == "random":
            scores = rng.random((len(px), h, w))
        elif kind == "gradcam":
            x = ((px - scorer.mean) / scorer.std).astype(np.float32)
            scores = np.stack([explain.upsample(a, (w, h)) for a in gradcam(ckpt_path, x, k)])
        else:
            scores = device_maps(kind, outs, info, (h, w))
        rank = order_pixels(scores, rng)
        per[kind] = {**curves(scorer, px, k, rank, steps), **road(scorer, px, k, rank, rng)}
        log(f"{kind:>13}: " + "  ".join(f"{m} {per[kind][m].mean():.4f}" for m in METRICS))
    res = {"model": str(pred.path), "dataset": ds_name, "images": len(px), "steps": steps,
           "deletion_baseline": "black (pixel 0)", "insertion_baseline": f"Gaussian blur, sigma {BLUR_SIGMA} px",
           "road": {"percentiles": list(ROAD_PERCENTILES), "noise": ROAD_NOISE, "jacobi_iterations": ROAD_ITERS},
           "mean_confidence": float(probs.max(1).mean()),
           "methods": {kd: {m: _stats(v) for m, v in per[kd].items()} for kd in kinds}, "paired": {}}
    for kd in kinds:
        res["paired"][kd] = {f"vs_{ref}": {m: _paired(per[kd][m], per[ref][m], d) for m, d in METRICS.items()}
                             for ref in (REFERENCE, ANCHOR) if ref in per and ref != kd}
    return res


def table(res: Dict) -> str:
    """The result as a Markdown table (BENCHMARKS prints this)."""
    head = ("| map | deletion AUC (lower better) | insertion AUC (higher better) | ROAD (higher better) | "
            "vs reference, in SE (del / ins / ROAD) | vs Grad-CAM, in SE (del / ins / ROAD) |")
    lines = [head, "|" + "---|" * 6]
    for kd, ms in res["methods"].items():
        cells = [f"{ms[m]['mean']:.4f} +- {ms[m]['se']:.4f}" for m in METRICS]
        for ref in (REFERENCE, ANCHOR):
            p = res["paired"][kd].get(f"vs_{ref}")
            cells.append(" / ".join(f"{p[m]['better_se']:+.1f}" for m in METRICS) if p else "-")
        lines.append(f"| {kd} | " + " | ".join(cells) + " |")
    lines.append(f"\n{res['images']} test images of {res['dataset']}, {res['steps']} steps; deletion to "
                 f"{res['deletion_baseline']}, insertion from {res['insertion_baseline']}; ROAD MoRF/LeRF at "
                 f"{res['road']['percentiles'][0]}..{res['road']['percentiles'][-1]} %; '+' = better than the "
                 f"reference (spatial-mean) / Grad-CAM, in standard errors of the paired difference.")
    return "\n".join(lines)
