// Layerscope explorer: vanilla JS + canvas, no external resources.
// Talks to the introspection API: /models, /models/{m}/layers, /samples, /activations, /explain.
"use strict";

const $ = (id) => document.getElementById(id);
const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
const HOT = [[0, 0, 0], [180, 0, 0], [255, 120, 0], [255, 230, 0], [255, 255, 255]];
const state = { model: null, meta: null, samples: [], runId: 0 };

function setStatus(text, isError) {
  const el = $("status");
  el.textContent = text;
  el.className = isError ? "error" : "";
}

// With LAYERSCOPE_INTROSPECTION_TOKEN set the data calls answer 401: ask for the token
// once and keep it for this tab only (sessionStorage), sent as a bearer token.
const TOKEN_KEY = "layerscope-introspection-token";

async function api(path, body, retried) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const opts = body === undefined ? { headers } : {
    method: "POST", headers: { ...headers, "Content-Type": "application/json" },
    body: JSON.stringify(body),
  };
  const resp = await fetch(path, opts);
  if ((resp.status === 401 || resp.status === 403) && !retried) {
    const entered = window.prompt("This server protects introspection with a token:");
    if (entered) {
      sessionStorage.setItem(TOKEN_KEY, entered);
      return api(path, body, true);
    }
  }
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(data.error || `${resp.status} ${resp.statusText}`);
  return data;
}

function colour(t, palette) {
  const x = Math.min(1, Math.max(0, t)) * (palette.length - 1);
  const i = Math.min(palette.length - 2, Math.floor(x));
  const f = x - i;
  return palette[i].map((c, k) => Math.round(c * (1 - f) + palette[i + 1][k] * f));
}

function flatten(values) {
  const out = [];
  (function walk(v) { if (Array.isArray(v)) v.forEach(walk); else out.push(v); })(values);
  return out;
}

function range(flat) {
  let lo = Infinity, hi = -Infinity;
  for (const v of flat) { if (v < lo) lo = v; if (v > hi) hi = v; }
  return [lo, hi];
}

// ---------------------------------------------------------------- layer drawings
function drawFeatureGrid(canvas, values, shape) {
  const [h, w, c] = shape;
  const cols = Math.ceil(Math.sqrt(c)), rows = Math.ceil(c / cols);
  const scale = Math.max(1, Math.round(48 / Math.max(h, w))), gap = 2;
  const cw = w * scale, ch = h * scale;
  canvas.width = cols * (cw + gap) + gap;
  canvas.height = rows * (ch + gap) + gap;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#282828";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const [lo, hi] = range(flatten(values));
  const span = hi > lo ? hi - lo : 1;
  const img = ctx.createImageData(canvas.width, canvas.height);
  img.data.set(ctx.getImageData(0, 0, canvas.width, canvas.height).data);
  for (let k = 0; k < c; k++) {
    const ox = gap + (k % cols) * (cw + gap), oy = gap + Math.floor(k / cols) * (ch + gap);
    for (let y = 0; y < ch; y++) {
      const row = values[Math.floor(y / scale)];
      for (let x = 0; x < cw; x++) {
        const [r, g, b] = colour((row[Math.floor(x / scale)][k] - lo) / span, VIRIDIS);
        const p = ((oy + y) * canvas.width + ox + x) * 4;
        img.data[p] = r; img.data[p + 1] = g; img.data[p + 2] = b; img.data[p + 3] = 255;
      }
    }
  }
  ctx.putImageData(img, 0, 0);
}

function drawStrip(canvas, flat) {
  const n = flat.length;
  const cell = Math.max(1, Math.floor(720 / n));
  canvas.width = n * cell;
  canvas.height = 28;
  const ctx = canvas.getContext("2d");
  const [lo, hi] = range(flat);
  const span = hi > lo ? hi - lo : 1;
  flat.forEach((v, i) => {
    const [r, g, b] = colour((v - lo) / span, VIRIDIS);
    ctx.fillStyle = `rgb(${r},${g},${b})`;
    ctx.fillRect(i * cell, 0, cell, canvas.height);
  });
}

function fmt(v) {
  if (v === null || v === undefined) return "–";
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e4) ? v.toExponential(2) : v.toFixed(3);
}

function renderLayers(resp, table) {
  const host = $("layers");
  host.textContent = "";
  const inst = resp.instances[0];
  for (const name of resp.layers) {
    const info = table[name] || {};
    const layer = inst.layers[name];
    const card = document.createElement("div");
    card.className = "layer";
    card.dataset.layer = name;
    const head = document.createElement("div");
    head.className = "layer-head";
    head.textContent = name;
    const small = document.createElement("small");
    const extra = info.activation ? ` · ${info.activation}` : "";
    small.textContent = `${info.type || ""} · [${layer.shape.join("×")}]${extra}`;
    head.appendChild(small);
    const s = layer.stats;
    const st = document.createElement("div");
    st.className = "layer-stats";
    const top = s.top_k.map((t) => `#${t.unit}=${fmt(t.value)}`).join(" ");
    st.textContent = `mean ${fmt(s.mean)} · std ${fmt(s.std)} · min ${fmt(s.min)} · `
      + `max ${fmt(s.max)} · inactive ${(100 * s.inactive_fraction).toFixed(1)}% · `
      + `L2 ${fmt(s.l2_norm)} · top ${top}`;
    const canvas = document.createElement("canvas");
    if (layer.shape.length === 3) drawFeatureGrid(canvas, layer.values, layer.shape);
    else drawStrip(canvas, flatten(layer.values));
    card.append(head, st, canvas);
    host.appendChild(card);
  }
}

function renderPrediction(pred) {
  const host = $("prediction");
  host.textContent = "";
  const label = document.createElement("div");
  label.className = "pred-label";
  label.textContent = `${pred.label} (${(100 * pred.score).toFixed(1)}%)`;
  host.appendChild(label);
  if (pred.threshold !== undefined) {
    const t = document.createElement("div");
    t.className = "hint";
    t.textContent = `decision at threshold ${pred.threshold.toFixed(3)}`;
    host.appendChild(t);
  }
  for (const [cls, p] of Object.entries(pred.probabilities)) {
    const row = document.createElement("div");
    row.className = "prob" + (cls === pred.label ? " top" : "");
    const name = document.createElement("span");
    name.textContent = cls;
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    bar.appendChild(fill);
    const val = document.createElement("span");
    val.textContent = `${(100 * p).toFixed(1)}%`;
    row.append(name, bar, val);
    host.appendChild(row);
  }
}

function renderGradcam(pixels, heat, info) {
  const canvas = $("attribution");
  canvas.width = 224; canvas.height = 224;
  const ctx = canvas.getContext("2d");
  const h = heat.length, w = heat[0].length;
  const flat = flatten(pixels);
  const [lo, hi] = range(flat);
  const img = ctx.createImageData(224, 224);
  for (let y = 0; y < 224; y++) {
    for (let x = 0; x < 224; x++) {
      const iy = Math.floor(y * h / 224), ix = Math.floor(x * w / 224);
      const g = hi > lo ? 255 * (flat[iy * w + ix] - lo) / (hi - lo) : 0;
      const t = heat[iy][ix], a = 0.6 * t;
      const c = colour(t, HOT);
      const p = (y * 224 + x) * 4;
      for (let k = 0; k < 3; k++) img.data[p + k] = Math.round(g * (1 - a) + c[k] * a);
      img.data[p + 3] = 255;
    }
  }
  ctx.putImageData(img, 0, 0);
  $("attr-info").textContent = info;
}

function renderBars(attr, info) {
  const entries = Object.entries(attr).sort((a, b) => Math.abs(b[1]) - Math.abs(a[1]))
    .slice(0, 12);
  const canvas = $("attribution");
  canvas.width = 420; canvas.height = entries.length * 18 + 6;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const span = Math.max(...entries.map((e) => Math.abs(e[1])), 1e-12);
  const mid = 70 + (canvas.width - 70) / 2, half = (canvas.width - 70) / 2 - 6;
  ctx.font = "11px sans-serif";
  entries.forEach(([name, v], i) => {
    const y = 4 + i * 18;
    ctx.fillStyle = "#222";
    ctx.fillText(name, 4, y + 11);
    const len = Math.abs(v) / span * half;
    ctx.fillStyle = v >= 0 ? "#c82828" : "#2850c8";
    ctx.fillRect(v >= 0 ? mid : mid - len, y + 2, len, 11);
  });
  ctx.strokeStyle = "#888";
  ctx.beginPath(); ctx.moveTo(mid, 0); ctx.lineTo(mid, canvas.height); ctx.stroke();
  $("attr-info").textContent = info;
}

function renderExplanation(resp, instance) {
  const e = resp.instances[0];
  $("attr-method").textContent = resp.method === "gradcam"
    ? `Grad-CAM, layer ${resp.layer}` : `integrated gradients, baseline ${resp.baseline}`;
  if (resp.method === "gradcam") {
    renderGradcam(instance, e.heatmap_input,
      `Heat = evidence for "${e.label}" (${(100 * e.probability).toFixed(1)}%).`);
  } else {
    const c = e.completeness;
    renderBars(e.attributions, `Explaining P(${e.label}) = ${fmt(c.f_x)}; completeness: `
      + `sum ${fmt(c.sum_of_attributions)} vs f(x) − f(baseline) ${fmt(c.f_x_minus_f_baseline)}`
      + ` (relative error ${(100 * c.relative_error).toFixed(2)}%). Top 12 features.`);
  }
}

// ---------------------------------------------------------------- inputs
const draw = { canvas: null, ctx: null, down: false };

function setupDrawing() {
  draw.canvas = $("draw");
  draw.ctx = draw.canvas.getContext("2d");
  clearDrawing();
  const pos = (ev) => {
    const r = draw.canvas.getBoundingClientRect();
    return [(ev.clientX - r.left) * draw.canvas.width / r.width,
      (ev.clientY - r.top) * draw.canvas.height / r.height];
  };
  draw.canvas.addEventListener("pointerdown", (ev) => {
    draw.down = true;
    const [x, y] = pos(ev);
    draw.ctx.beginPath(); draw.ctx.moveTo(x, y); draw.ctx.lineTo(x + 0.1, y); draw.ctx.stroke();
  });
  draw.canvas.addEventListener("pointermove", (ev) => {
    if (!draw.down) return;
    const [x, y] = pos(ev);
    draw.ctx.lineTo(x, y); draw.ctx.stroke();
  });
  const end = () => { if (draw.down) { draw.down = false; run(); } };
  draw.canvas.addEventListener("pointerup", end);
  draw.canvas.addEventListener("pointerleave", end);
  $("clear").addEventListener("click", () => { clearDrawing(); markSample(-1); });
  $("upload").addEventListener("change", async (ev) => {
    const file = ev.target.files[0];
    if (!file) return;
    try {
      const bitmap = await createImageBitmap(file);
      clearDrawing();
      draw.ctx.drawImage(bitmap, 0, 0, draw.canvas.width, draw.canvas.height);
      markSample(-1);
      run();
    } catch (err) {
      setStatus(`could not read ${file.name}: ${err.message}`, true);
    }
  });
}

function clearDrawing() {
  const ctx = draw.ctx;
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, draw.canvas.width, draw.canvas.height);
  ctx.strokeStyle = "#fff";
  ctx.lineWidth = 20;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
}

function pixelsToCanvas(canvas, pixels, h, w) {
  const small = document.createElement("canvas");
  small.width = w; small.height = h;
  const flat = flatten(pixels);
  const ch = flat.length / (h * w);
  const img = small.getContext("2d").createImageData(w, h);
  for (let i = 0; i < h * w; i++) {
    for (let k = 0; k < 3; k++) img.data[i * 4 + k] = flat[i * ch + (ch === 3 ? k : 0)];
    img.data[i * 4 + 3] = 255;
  }
  small.getContext("2d").putImageData(img, 0, 0);
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(small, 0, 0, canvas.width, canvas.height);
}

function imageInstance() {
  const [h, w, c] = state.meta.input.shape;
  const small = document.createElement("canvas");
  small.width = w; small.height = h;
  const ctx = small.getContext("2d");
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(draw.canvas, 0, 0, w, h);
  const data = ctx.getImageData(0, 0, w, h).data;
  const rows = [];
  for (let y = 0; y < h; y++) {
    const row = [];
    for (let x = 0; x < w; x++) {
      const p = (y * w + x) * 4;
      if ((c || 1) === 3) row.push([data[p], data[p + 1], data[p + 2]]);
      else row.push([Math.round(0.299 * data[p] + 0.587 * data[p + 1] + 0.114 * data[p + 2])]);
    }
    rows.push(row);
  }
  return rows;
}

function tabularInstance() {
  const out = {};
  for (const input of document.querySelectorAll("#features input")) {
    out[input.name] = Number(input.value);
  }
  return out;
}

function markSample(index) {
  document.querySelectorAll("#samples canvas").forEach((c, i) => {
    c.classList.toggle("active", i === index);
  });
}

function showImageSamples() {
  const host = $("samples");
  host.textContent = "";
  const [h, w] = state.meta.input.shape;
  state.samples.forEach((s, i) => {
    const fig = document.createElement("figure");
    const c = document.createElement("canvas");
    c.width = w; c.height = h;
    c.title = `reference sample ${s.index}` + (s.label ? ` (${s.label})` : "");
    pixelsToCanvas(c, s.instance, h, w);
    c.addEventListener("click", () => pickImageSample(i));
    const cap = document.createElement("figcaption");
    cap.textContent = s.label || `#${s.index}`;
    fig.append(c, cap);
    host.appendChild(fig);
  });
}

function pickImageSample(i) {
  const [h, w] = state.meta.input.shape;
  pixelsToCanvas(draw.canvas, state.samples[i].instance, h, w);
  markSample(i);
  run();
}

function showTabularSamples() {
  const select = $("sample-select");
  select.textContent = "";
  state.samples.forEach((s, i) => {
    const opt = document.createElement("option");
    opt.value = String(i);
    opt.textContent = `#${s.index}` + (s.label ? ` (${s.label})` : "");
    select.appendChild(opt);
  });
  select.onchange = () => pickTabularSample(Number(select.value));
}

function pickTabularSample(i) {
  const table = $("features");
  table.textContent = "";
  const features = state.samples[i].features;
  for (const [name, value] of Object.entries(features)) {
    const tr = document.createElement("tr");
    const td1 = document.createElement("td");
    td1.textContent = name;
    const td2 = document.createElement("td");
    const input = document.createElement("input");
    input.type = "number";
    input.step = "any";
    input.name = name;
    input.value = String(Number(value.toPrecision(6)));
    input.addEventListener("change", run);
    td2.appendChild(input);
    tr.append(td1, td2);
    table.appendChild(tr);
  }
  run();
}

// ---------------------------------------------------------------- flow
async function run() {
  if (!state.model) return;
  const id = ++state.runId;
  const image = state.meta.input.kind === "image";
  const instance = image ? imageInstance() : tabularInstance();
  setStatus("running…");
  const base = `/models/${encodeURIComponent(state.model)}`;
  try {
    const [acts, expl] = await Promise.all([
      api(`${base}/activations`, { instances: [instance], include: ["values", "stats"] }),
      // binary models: explain the positive class (fraud), not whichever class won
      api(`${base}/explain`, {
        instances: [instance],
        class: state.meta.task === "binary_classification" ? state.meta.class_names[1] : null,
      }),
    ]);
    if (id !== state.runId) return;
    renderPrediction(acts.instances[0].prediction);
    renderLayers(acts, state.layerTable);
    renderExplanation(expl, instance);
    setStatus(`${acts.model} v${acts.version}: ${acts.layers.length} hidden layers`);
    document.body.dataset.runs = String(Number(document.body.dataset.runs || 0) + 1);
  } catch (err) {
    if (id === state.runId) setStatus(err.message, true);
  }
}

async function selectModel(name) {
  state.model = null;
  setStatus(`loading ${name}…`);
  try {
    const base = `/models/${encodeURIComponent(name)}`;
    const [info, layers, samples] = await Promise.all([
      api(base), api(`${base}/layers`), api(`${base}/samples?n=8`),
    ]);
    state.meta = info.metadata;
    state.layerTable = Object.fromEntries(layers.layers.map((l) => [l.name, l]));
    state.samples = samples.samples;
    state.model = name;
    $("version").textContent = `version ${layers.version} · ${state.meta.task}`;
    const image = state.meta.input.kind === "image";
    $("image-input").hidden = !image;
    $("tabular-input").hidden = image;
    $("layers").textContent = "";
    if (image) {
      showImageSamples();
      if (state.samples.length) pickImageSample(0); else run();
    } else {
      showTabularSamples();
      if (state.samples.length) pickTabularSample(0);
    }
  } catch (err) {
    setStatus(err.message, true);
  }
}

async function init() {
  setupDrawing();
  $("run").addEventListener("click", run);
  try {
    const { models } = await api("/models");
    const select = $("model");
    for (const m of models) {
      const opt = document.createElement("option");
      opt.value = m.name;
      opt.textContent = m.name + (m.ready ? "" : " (not ready)");
      opt.disabled = !m.ready;
      select.appendChild(opt);
    }
    select.addEventListener("change", () => selectModel(select.value));
    const wanted = new URLSearchParams(location.search).get("model");
    const first = models.find((m) => m.name === wanted && m.ready) || models.find((m) => m.ready);
    if (first) {
      select.value = first.name;
      selectModel(first.name);
    } else {
      setStatus("no model is ready yet", true);
    }
  } catch (err) {
    setStatus(err.message, true);
  }
}

init();
