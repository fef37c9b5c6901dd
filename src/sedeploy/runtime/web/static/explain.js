// sedeploy.runtime.explain in the page: which pixels and channels the prediction leaned on, from the
// model's own outputs (no gradients). Each map kind is one function of the outputs; the page draws them.
import { resizeFloat } from "./preprocess.js";

export function softmax(logits) {
  let m = -Infinity;
  for (const v of logits) m = Math.max(m, v);
  const e = logits.map((v) => Math.exp(v - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

// Indices sorted by descending value, ties in index order (numpy's stable argsort of -x).
export function argsortDesc(x) {
  return Array.from(x.keys()).sort((a, b) => (x[b] - x[a]) || (a - b));
}

export function topChannels(scores, k) {
  return argsortDesc(scores).slice(0, k).map((i) => [i, scores[i]]);
}

// SE-weighted map: max(sum_c w_c F_c, 0), scaled by its maximum. fmap (C, h, w) flat, w (C).
export function seAttention(fmap, weights, C, h, w) {
  const n = h * w, a = new Float64Array(n);
  for (let c = 0; c < C; c++) {
    const wc = weights[c];
    for (let i = 0; i < n; i++) a[i] += wc * fmap[c * n + i];
  }
  let m = 0;
  for (let i = 0; i < n; i++) { a[i] = Math.max(a[i], 0); m = Math.max(m, a[i]); }
  return Float32Array.from(a, (v) => (m > 0 ? v / m : v));
}

export function spatialMeanScores(fmap, C, n) {
  const s = new Float64Array(C);
  for (let c = 0; c < C; c++) { let t = 0; for (let i = 0; i < n; i++) t += fmap[c * n + i]; s[c] = t / n; }
  return s;
}

export function normalize01(a) {
  let lo = Infinity, hi = -Infinity;
  for (const v of a) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  return Float32Array.from(a, (v) => (hi > lo ? (v - lo) / (hi - lo) : 0));
}

export function spatialMeanAttention(fmap, C, h, w, top = 3) {
  const n = h * w, idx = argsortDesc(spatialMeanScores(fmap, C, n)).slice(0, top), a = new Float64Array(n);
  for (const c of idx) for (let i = 0; i < n; i++) a[i] += fmap[c * n + i] / idx.length;
  return normalize01(a);
}

// The head's linear layers multiplied (W2 @ W1), from the metadata's head_linear: per class, a weight per
// channel and pooled position (C, s, s), and the max-pool size before them.
export function headWeights(meta) {
  const h = meta && meta.head_linear;
  if (!h) return null;
  return { w: Float32Array.from(h.weights.flat ? h.weights.flat(Infinity) : h.weights), shape: h.shape, pool: h.pool };
}

// explain.pool_gradient: the pooled-position weight g (C, s, s) of class k routed to each pool window's
// first maximum (row-major, as max-pooling routes it) in the (C, H, W) map; rows/columns past s * pool get 0.
export function poolGradient(fmap, C, H, W, head, k) {
  const [, s] = head.shape, pool = head.pool, grad = new Float32Array(C * H * W), per = C * s * s;
  for (let c = 0; c < C; c++) for (let i = 0; i < s; i++) for (let j = 0; j < s; j++) {
    let best = -Infinity, by = 0, bx = 0;
    for (let py = 0; py < pool; py++) for (let px = 0; px < pool; px++) {
      const y = i * pool + py, x = j * pool + px, v = fmap[c * H * W + y * W + x];
      if (v > best) { best = v; by = y; bx = x; }
    }
    grad[c * H * W + by * W + bx] = head.w[k * per + c * s * s + i * s + j];
  }
  return grad;
}

// head-cam (the default where the export carries head_linear): max(sum_c grad_c F_c, 0) / its maximum.
export function headCamAttention(fmap, C, H, W, head, k) {
  const g = poolGradient(fmap, C, H, W, head, k), n = H * W, a = new Float64Array(n);
  for (let c = 0; c < C; c++) for (let i = 0; i < n; i++) a[i] += Math.fround(g[c * n + i] * fmap[c * n + i]);
  let m = 0;
  for (let i = 0; i < n; i++) { a[i] = Math.max(a[i], 0); m = Math.max(m, a[i]); }
  return Float32Array.from(a, (v) => (m > 0 ? v / m : v));
}

// head-gradcam: Grad-CAM from the head's weights (the gradient averaged over positions), as the SE map.
export function headGradcamAttention(fmap, C, H, W, head, k) {
  const g = poolGradient(fmap, C, H, W, head, k), n = H * W, alpha = new Float64Array(C);
  for (let c = 0; c < C; c++) { let t = 0; for (let i = 0; i < n; i++) t += g[c * n + i]; alpha[c] = t / n; }
  return seAttention(fmap, alpha, C, H, W);
}

export const KINDS = ["se", "spatial-mean", "head-gradcam", "head-cam"];

// explain.default_kind: head-cam with head_linear, else the SE-weighted map, else spatial-mean.
export function defaultKind(spec) {
  if (headWeights(spec.meta)) return "head-cam";
  return spec.se_outputs.length ? "se" : "spatial-mean";
}

// One image's outputs -> {method, attention (h*w), h, w, ranked [[channel, score]], se {name: weights}},
// as explain.explain: the map of `kind` (default defaultKind); channels ranked by the last SE block's
// weights, or by spatial mean without SE outputs.
export function explain(outputs, spec, top = 6, kind = null) {
  if (!spec.feature_map || !outputs[spec.feature_map]) throw new Error("the model has no feature_map output; re-export it without --logits-only for heatmaps");
  kind = kind || defaultKind(spec);
  if (!KINDS.includes(kind)) throw new Error(`unknown heatmap kind ${kind}; choose from ${KINDS.join(", ")}`);
  const f = outputs[spec.feature_map], [C, h, w] = f.dims.slice(1), fmap = f.data;
  const se = {};
  for (const name of spec.se_outputs) se[name] = Array.from(outputs[name].data);
  const last = spec.se_outputs.length ? se[spec.se_outputs[spec.se_outputs.length - 1]] : null;
  let attention;
  if (kind === "se") {
    if (!last) throw new Error("the model has no SE outputs; use the spatial-mean map");
    attention = seAttention(fmap, last, C, h, w);
  } else if (kind === "spatial-mean") {
    attention = spatialMeanAttention(fmap, C, h, w);
  } else {
    const head = headWeights(spec.meta);
    if (!head) throw new Error("the model has no head_linear metadata; re-export it with this sedeploy or use the se map");
    const k = argsortDesc(Array.from(outputs.logits.data))[0];
    attention = (kind === "head-cam" ? headCamAttention : headGradcamAttention)(fmap, C, h, w, head, k);
  }
  const ranked = last ? topChannels(last, top) : topChannels(spatialMeanScores(fmap, C, h * w), top);
  return { method: kind, attention, h, w, ranked, label: last ? "w" : "mean", se };
}

// [0, 1] -> jet-like RGB bytes (blue low, red high), as explain.colormap.
export function colormap(v) {
  const a = Math.min(1, Math.max(0, v));
  const ch = (k) => Math.floor(Math.min(1, Math.max(0, 1.5 - Math.abs(4 * a - k))) * 255);
  return [ch(3), ch(2), ch(1)];
}

// The heatmap over the image, as render.overlay: the map upsampled bicubically to the image's size,
// colormapped and blended half and half over the image. rgb: RGBA bytes of the displayed image.
export function overlay(rgba, width, height, ex, alpha = 0.5) {
  const up = resizeFloat(ex.attention, ex.h, ex.w, height, width);
  const out = new Uint8ClampedArray(width * height * 4);
  for (let i = 0; i < width * height; i++) {
    const c = colormap(Math.min(1, Math.max(0, up[i])));
    for (let k = 0; k < 3; k++) out[4 * i + k] = Math.round(rgba[4 * i + k] * (1 - alpha) + c[k] * alpha);
    out[4 * i + 3] = 255;
  }
  return new ImageData(out, width, height);
}
