// sedeploy in the browser: the model runs in this page with onnxruntime-web; no image leaves it.
//
// Script API (window.sedeploy, also this module's export `sedeploy`):
//   await sedeploy.load(base = "./")     model.json, the model and ort/ from BASE (the bundle's folder);
//                                         resolves to the model's spec; the page calls it on load
//   await sedeploy.classify(source, {topk = 5, tensor = false, heatmap = null})
//       source: an image URL, Blob/File, ImageData or HTMLImageElement; heatmap: head-cam (the default where
//       the export carries head_linear), head-gradcam, se or spatial-mean, as `infer --heatmap-kind`
//       -> {top: [[label, probability], ...], outputs: {logits: [...], se1: [...], se2: [...], se3: [...],
//           feature_map: [...]}, ms: inference milliseconds, explanation: {method, attention, h, w, ranked},
//           unsure: true/false and ood_score (models exported with a calibrated score, as `infer --json`),
//           input: Float32Array (with tensor: true)}
//   await sedeploy.run(Float32Array, [N, C, H, W]) -> {outputs: {name: {data: Float32Array, dims}}, ms}
//       the model on a raw input tensor (for tests and applications with their own preprocessing)
//   sedeploy.info -> {ort, backend, threads, isolated, spec}
// Every failure rejects with an Error whose message names the problem and the fix.
// URL parameters: ?ep=webgpu (where a real GPU exists and the bundle carries WebGPU's files), ?threads=N
// (wasm threads when the page is cross-origin isolated; default half the cores, at most 4).
import * as pre from "./preprocess.js";
import * as ex from "./explain.js";
import * as ood from "./unsure.js";

// One loaded model per base URL (the serve page may switch models); `current` is the one classify/run use.
const loaded = new Map();
let current = null;
const state = { ort: null, session: null, spec: null, backend: null, threads: 1 };

function param(name) { return new URLSearchParams(globalThis.location ? location.search : "").get(name); }

function threadsWanted() {
  const cores = navigator.hardwareConcurrency || 1, asked = param("threads");
  if (asked === null) return Math.max(1, Math.min(4, Math.floor(cores / 2)));
  const n = Number(asked);
  if (!Number.isInteger(n) || n < 1 || n > 64) throw new Error(`?threads=${asked} is not a thread count; use an integer from 1 to ${cores}`);
  return n;
}

async function loadOne(base) {
  const root = new URL(base, location.href);
  const r = await fetch(new URL("model.json", root));
  if (!r.ok) throw new Error(`model.json not found at ${new URL("model.json", root)} (HTTP ${r.status}); serve the bundle's folder`);
  const spec = await r.json();
  const ep = param("ep") || "wasm";
  const loader = ep === "wasm" ? "ort.wasm.min.mjs" : ep === "webgpu" ? "ort.webgpu.min.mjs" : null;
  if (!loader) throw new Error(`unknown execution provider ${ep}; use ?ep=wasm or ?ep=webgpu`);
  if (!spec.runtime_files.includes(loader)) throw new Error(`this bundle has no ${ep} runtime; export it with --web-webgpu or use ?ep=wasm`);
  const ort = await import(new URL(`ort/${loader}`, root).href);
  ort.env.wasm.wasmPaths = new URL("ort/", root).href;
  // threads need SharedArrayBuffer, hence cross-origin isolation; by default half the cores, at most 4 (one
  // batch-1 image is small: on 2 cores, 2 threads measured slower than 1, scripts/web_bench.py)
  ort.env.wasm.numThreads = globalThis.crossOriginIsolated === true ? threadsWanted() : 1;
  let session;
  try {
    session = await ort.InferenceSession.create(new URL(spec.model, root).href,
      { executionProviders: [ep], graphOptimizationLevel: "all" });
  } catch (e) {
    throw new Error(`the model failed to load in onnxruntime-web (${e.message || e}); re-export the bundle with sedeploy export --formats web`);
  }
  return { ort, session, spec, backend: ep, threads: ort.env.wasm.numThreads };
}

async function load(base = "./") {
  current = base;
  if (!loaded.has(base)) {
    const p = loadOne(base);
    loaded.set(base, p);
    p.catch(() => { if (loaded.get(base) === p) loaded.delete(base); });   // a failed load may be retried
  }
  const m = await loaded.get(base);
  if (current === base) Object.assign(state, m);
  return m.spec;
}

// The model classify/run use: the one the last load() asked for (not whichever load finished last).
async function model() {
  if (current === null) await load("./");
  return loaded.get(current) || (await load(current), loaded.get(current));
}

async function run(data, shape) {
  return runOn(await model(), data, shape);
}

async function runOn(m, data, shape) {
  const { ort, session, spec } = m;
  const [n, ...rest] = shape;
  if (!(data instanceof Float32Array)) data = Float32Array.from(data);
  const want = spec.input_size;
  if (rest.length !== 3 || rest.some((v, i) => v !== want[i])) throw new Error(`input shape [${shape}] does not match the model's [N, ${want}]`);
  if (data.length !== n * rest[0] * rest[1] * rest[2]) throw new Error(`input has ${data.length} values for shape [${shape}]`);
  const t0 = performance.now();
  const res = await session.run({ [spec.input_name]: new ort.Tensor("float32", data, shape) });
  const ms = performance.now() - t0;
  const outputs = {};
  for (const name of spec.output_names) outputs[name] = { data: res[name].data, dims: res[name].dims.slice() };
  return { outputs, ms };
}

async function pixelsOf(source, max) {
  if (typeof source === "string") {
    let r;
    try { r = await fetch(source); } catch (e) { throw new Error(`could not fetch ${source} (${e.message}); check the URL`); }
    if (!r.ok) throw new Error(`could not fetch ${source} (HTTP ${r.status}); check the URL`);
    return pre.decodeBytes(new Uint8Array(await r.arrayBuffer()), r.headers.get("content-type"), max);
  }
  if (source instanceof Blob) return pre.decodeBytes(new Uint8Array(await source.arrayBuffer()), source.type, max);
  if (globalThis.ImageData && source instanceof ImageData) {
    if (source.width * source.height > max) throw new Error(`image of ${source.width}x${source.height} pixels is over the limit of ${max} pixels`);
    return { data: source.data, width: source.width, height: source.height };
  }
  if (globalThis.HTMLImageElement && source instanceof HTMLImageElement) {
    try { await source.decode(); } catch (e) { throw new Error("the <img> has no decodable image; pick an image file"); }
    return pre.bitmapPixels(source, max);
  }
  throw new Error("classify takes an image URL, a Blob or File, an ImageData or an HTMLImageElement");
}

async function classify(source, { topk = 5, tensor = false, heatmap = null } = {}) {
  const m = await model(), spec = m.spec;
  const pixels = await pixelsOf(source, spec.max_pixels);
  const x = pre.toTensor(pixels, spec);
  const [C, H, W] = spec.input_size;
  const batch = spec.fixed_batch || 1;
  const data = new Float32Array(batch * C * H * W);
  data.set(x.tensor);
  const r = await runOn(m, data, [batch, C, H, W]);
  const one = {};
  for (const [name, o] of Object.entries(r.outputs)) {
    const per = o.data.length / o.dims[0];
    one[name] = { data: o.data.slice(0, per), dims: [1, ...o.dims.slice(1)] };
  }
  const probs = ex.softmax(Array.from(one.logits.data));
  const order = ex.argsortDesc(probs).slice(0, topk);
  const result = {
    top: order.map((i) => [spec.classes[i], probs[i]]),
    outputs: Object.fromEntries(Object.entries(one).map(([k, v]) => [k, Array.from(v.data)])),
    ms: r.ms,
  };
  const flag = ood.judge(one, spec.meta);     // the calibrated "unsure" answer, as infer gives it (never the top-k)
  if (flag) Object.assign(result, flag);
  if (spec.feature_map && one[spec.feature_map]) result.explanation = ex.explain(one, spec, 6, heatmap || param("heatmap"));
  if (tensor) result.input = x.tensor;
  Object.defineProperty(result, "pixels", { value: pixels, enumerable: false });
  return result;
}

export const sedeploy = {
  load, run, classify, explain: ex, preprocess: pre,
  get info() { return { ort: state.spec && state.spec.ort_web, backend: state.backend, threads: state.threads, isolated: globalThis.crossOriginIsolated === true, spec: state.spec }; },
};
globalThis.sedeploy = sedeploy;

// ---- the page (index.html): pick / drop / camera, top-k, the heatmap, the SE profile ----

function el(id) { return document.getElementById(id); }

function showError(msg) {
  const e = el("error");
  if (!e) return;
  e.textContent = msg; e.hidden = !msg;
}

// The image for display: at least 192 px on its short side (nearest, like render._display), at most 360.
function displayCanvas(pixels) {
  const { width: w, height: h } = pixels;
  let s = Math.max(1, Math.ceil(192 / Math.min(w, h)));
  if (Math.max(w, h) * s > 360) s = 360 / Math.max(w, h);
  const W = Math.max(1, Math.round(w * s)), H = Math.max(1, Math.round(h * s));
  const src = new OffscreenCanvas(w, h);
  src.getContext("2d").putImageData(new ImageData(new Uint8ClampedArray(pixels.data), w, h), 0, 0);
  const c = new OffscreenCanvas(W, H), g = c.getContext("2d", { willReadFrequently: true });
  g.imageSmoothingEnabled = s < 1;
  g.drawImage(src, 0, 0, W, H);
  return g.getImageData(0, 0, W, H);
}

export function drawHeatmap(canvas, pixels, explanation) {
  const base = displayCanvas(pixels);
  canvas.width = base.width; canvas.height = base.height;
  canvas.getContext("2d").putImageData(ex.overlay(base.data, base.width, base.height, explanation), 0, 0);
}

export function drawProfile(canvas, se) {
  const names = Object.keys(se);
  const g = canvas.getContext("2d");
  canvas.width = 360; canvas.height = Math.max(1, names.length) * 60;
  g.fillStyle = "#fff"; g.fillRect(0, 0, canvas.width, canvas.height);
  names.forEach((name, row) => {
    const w = se[name], bw = (canvas.width - 60) / w.length;
    g.fillStyle = "#333"; g.font = "12px sans-serif"; g.fillText(name, 4, row * 60 + 32);
    w.forEach((v, i) => { g.fillStyle = "#3b6fb6"; g.fillRect(56 + i * bw, row * 60 + 52 - 44 * v, Math.max(1, bw - 0.5), 44 * v); });
  });
}

async function handle(source) {
  showError("");
  try {
    const r = await classify(source, { topk: 5 });
    const top = el("top");
    top.replaceChildren(...r.top.map(([label, p]) => {
      const li = document.createElement("li");
      li.className = "cls"; li.dataset.label = label; li.dataset.prob = String(p);
      li.innerHTML = `<span class="label"></span><meter min="0" max="1"></meter><b></b>`;
      li.children[0].textContent = label; li.children[1].value = p; li.children[2].textContent = `${(100 * p).toFixed(1)} %`;
      return li;
    }));
    if (r.explanation) { drawHeatmap(el("heatmap"), r.pixels, r.explanation); drawProfile(el("se"), r.explanation.se); }
    el("unsure").hidden = !r.unsure;
    el("meta").textContent = `${r.ms.toFixed(1)} ms in this browser (${state.backend}, ${state.threads} thread${state.threads > 1 ? "s" : ""})`;
    el("result").hidden = false;
    document.body.dataset.state = "done";
  } catch (e) {
    el("result").hidden = true;
    showError(e.message || String(e));
    document.body.dataset.state = "error";
  }
}

async function startCamera() {
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ video: true });
    const v = el("video"); v.srcObject = stream; v.hidden = false; await v.play();
    el("snap").hidden = false;
  } catch (e) { showError(`no camera here (${e.message || e}); pick or drop an image instead`); }
}

function snap() {
  const v = el("video"), c = new OffscreenCanvas(v.videoWidth, v.videoHeight), g = c.getContext("2d");
  g.drawImage(v, 0, 0);
  handle(g.getImageData(0, 0, c.width, c.height));
}

export function bindPage() {
  const file = el("file"), drop = el("drop");
  file.addEventListener("change", () => file.files[0] && handle(file.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); if (e.dataTransfer.files[0]) handle(e.dataTransfer.files[0]); });
  if (navigator.mediaDevices && navigator.mediaDevices.getUserMedia) { el("camera").hidden = false; el("camera").onclick = startCamera; el("snap").onclick = snap; }
  document.body.dataset.state = "loading";
  load("./").then((spec) => {
    el("status").textContent = `ready: ${spec.classes.length} classes, input ${spec.input_size.join("x")}, onnxruntime-web ${spec.ort_web} (${state.backend}, ${state.threads} thread${state.threads > 1 ? "s" : ""}${globalThis.crossOriginIsolated ? "" : "; not cross-origin isolated"})`;
    document.body.dataset.state = "ready";
  }, (e) => { el("status").textContent = "model not loaded"; showError(e.message || String(e)); document.body.dataset.state = "error"; });
}

if (globalThis.document && document.body && document.body.dataset.page === "bundle") bindPage();
