// The sedeploy serve page: pick or drop an image, POST it to /v2/models/<name>/classify, show the answer;
// or, in "run in this browser" mode, run the model in the page with the web bundle's code (/web/sedeploy.js,
// onnxruntime-web; the image never leaves the page) and show the answer the same way.
// Plain browser JavaScript, no libraries from elsewhere (the page must work offline).
"use strict";
const $ = (id) => document.getElementById(id);
const versions = {};

function setStatus(text, ok) {
  const s = $("status");
  s.textContent = text;
  s.className = "status " + (ok ? "ok" : "bad");
}

function showError(text) {
  const e = $("error");
  e.textContent = text;
  e.hidden = !text;
}

async function loadModels() {
  try {
    const r = await fetch("/v2/repository/index", { method: "POST" });
    const models = await r.json();
    const sel = $("model");
    sel.innerHTML = "";
    for (const m of models) {
      const o = document.createElement("option");
      o.value = m.name;
      versions[m.name] = m.version;
      o.textContent = `${m.name} (v${m.version}, ${m.state.toLowerCase()})`;
      sel.appendChild(o);
    }
    const ready = (await fetch("/v2/health/ready")).ok;
    setStatus(ready ? "ready" : "loading…", ready);
    if (!ready) setTimeout(loadModels, 500);
  } catch (err) {
    setStatus("server unreachable", false);
    setTimeout(loadModels, 2000);
  }
}

function render(res) {
  $("meta").textContent = `${res.model_name} v${res.model_version} · ${res.image}`;
  $("unsure").hidden = !res.unsure;          // the calibrated out-of-distribution flag (both modes)
  const top = $("top");
  top.innerHTML = "";
  for (const t of res.top) {
    const li = document.createElement("li");
    li.className = "cls";
    li.dataset.label = t.label;
    li.dataset.prob = t.prob;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = Math.max(1, Math.round(t.prob * 200)) + "px";
    li.append(t.label, bar, (100 * t.prob).toFixed(1) + " %");
    top.appendChild(li);
  }
  const h = res.heatmaps || {};
  for (const kind of ["heatmap", "se", "channels"]) {
    const img = $(kind);
    img.hidden = !h[kind];
    if (h[kind]) img.src = h[kind];
  }
  $("result").hidden = false;
}

function mode() {
  const m = document.querySelector('input[name="mode"]:checked');
  return m ? m.value : "server";
}

// The model in this page: the bundle's script API on /web/models/<name>/ (model.json, the .onnx, ort/).
async function classifyHere(model, file) {
  const mod = await import("/web/sedeploy.js");
  await mod.sedeploy.load(`/web/models/${encodeURIComponent(model)}/`);
  const r = await mod.sedeploy.classify(file, { topk: 5 });
  const info = mod.sedeploy.info;
  const heatmaps = {};
  if (r.explanation) {
    const c = document.createElement("canvas");
    mod.drawHeatmap(c, r.pixels, r.explanation);
    heatmaps.heatmap = c.toDataURL("image/png");
    const p = document.createElement("canvas");
    mod.drawProfile(p, r.explanation.se);
    heatmaps.se = p.toDataURL("image/png");
  }
  return { model_name: model, model_version: `${versions[model] || "1"} in this browser (${r.ms.toFixed(1)} ms, ` +
           `${info.backend}, ${info.threads} thread${info.threads > 1 ? "s" : ""})`, image: file.name || "image",
           top: r.top.map(([label, prob]) => ({ label, prob })), heatmaps, unsure: r.unsure, ood_score: r.ood_score };
}

async function classify(file) {
  showError("");
  const model = $("model").value;
  if (!model) { showError("no model to ask: the server lists none"); return; }
  const preview = $("preview");
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  document.body.dataset.state = "busy";
  if (mode() === "browser") {
    setStatus("classifying in this browser…", true);
    try {
      render(await classifyHere(model, file));
      document.body.dataset.state = "done";
    } catch (err) {
      $("result").hidden = true;
      showError(String(err.message || err));
      document.body.dataset.state = "error";
    }
    setStatus("ready", true);
    return;
  }
  const form = new FormData();
  form.append("image", file, file.name || "upload");
  setStatus("classifying…", true);
  try {
    const r = await fetch(`/v2/models/${encodeURIComponent(model)}/classify?topk=5&heatmaps=base64`,
                          { method: "POST", body: form });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
    render(body);
    document.body.dataset.state = "done";
    setStatus("ready", true);
  } catch (err) {
    $("result").hidden = true;
    showError(String(err.message || err));
    document.body.dataset.state = "error";
    setStatus("ready", true);
  }
}

function wire() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => { if (e.target.files[0]) classify(e.target.files[0]); });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const f = e.dataTransfer.files[0];
    if (f) classify(f);
  });
  loadModels();
}

wire();
