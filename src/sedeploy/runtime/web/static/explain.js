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

// One image's outputs -> {method, attention (h*w), h, w, ranked [[channel, score]], se {name: weights}},
// as explain.explain: the SE-weighted map over the last SE block, else the spatial-mean fallback.
export function explain(outputs, spec, top = 6) {
  if (!spec.feature_map || !outputs[spec.feature_map]) throw new Error("the model has no feature_map output; re-export it without --logits-only for heatmaps");
  const f = outputs[spec.feature_map], [C, h, w] = f.dims.slice(1), fmap = f.data;
  const se = {};
  for (const name of spec.se_outputs) se[name] = Array.from(outputs[name].data);
  if (spec.se_outputs.length) {
    const wts = se[spec.se_outputs[spec.se_outputs.length - 1]];
    return { method: "se", attention: seAttention(fmap, wts, C, h, w), h, w, ranked: topChannels(wts, top), label: "w", se };
  }
  const scores = spatialMeanScores(fmap, C, h * w);
  return { method: "spatial-mean", attention: spatialMeanAttention(fmap, C, h, w), h, w, ranked: topChannels(scores, top), label: "mean", se };
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
