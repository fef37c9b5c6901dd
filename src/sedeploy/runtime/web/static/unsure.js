// sedeploy.runtime.unsure in the page: the calibrated out-of-distribution score (metadata `unsure`) of one
// image's outputs; higher = more like the training data; below the threshold the answer is "unsure".
// Never changes the top-k. Returns null when the model carries no calibrated score (older exports).

function logsumexp(z) { const m = Math.max(...z); return m + Math.log(z.reduce((s, v) => s + Math.exp(v - m), 0)); }

function pooled(o) {                         // (1, C, H, W) -> C spatial means; (1, C) -> itself
  const [, C, ...hw] = o.dims, n = hw.reduce((a, b) => a * b, 1), out = new Float64Array(C);
  for (let c = 0; c < C; c++) { let t = 0; for (let i = 0; i < n; i++) t += o.data[c * n + i]; out[c] = t / n; }
  return out;
}

function unit(v) { const n = Math.max(Math.hypot(...v), 1e-12); return Array.from(v, (x) => x / n); }

export function score(kind, params, outputs) {
  const z = Array.from(outputs.logits.data);
  if (kind === "msp") return Math.exp(Math.max(...z) - logsumexp(z));
  if (kind === "energy") return logsumexp(z);
  if (kind === "maha") {
    const x = pooled(outputs.feature_map), P = params.precision, D = x.length;
    let best = Infinity;
    for (const mu of params.means) {
      const d = Array.from(x, (v, i) => v - mu[i]);
      let dist = 0;
      for (let i = 0; i < D; i++) { let t = 0; const row = P[i]; for (let j = 0; j < D; j++) t += row[j] * d[j]; dist += d[i] * t; }
      best = Math.min(best, dist);
    }
    return -best;
  }
  if (kind === "cos_se") {
    const v = unit(pooled(outputs[params.output]));
    return Math.max(...params.means.map((m) => { const u = unit(m); return u.reduce((s, x, i) => s + x * v[i], 0); }));
  }
  throw new Error(`unknown unsure score kind ${kind}`);
}

export function judge(outputs, meta) {
  const spec = meta && meta.unsure;
  if (!spec) return null;
  const s = score(spec.kind, spec.params || {}, outputs);
  // a score that is not a number (NaN outputs) is unsure, as in runtime/unsure.py; JSON has no NaN: null
  return { unsure: !(s >= Number(spec.threshold)), ood_score: Number.isFinite(s) ? s : null };
}
