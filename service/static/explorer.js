// Layerscope explorer: vanilla JS + canvas, no external resources.
// Talks to the API: /models, /models/{m} (inputs, outputs, layer table), /samples,
// /activations (statistics of every layer, one forward pass), /layers/{l}/picture.png
// (one picture per layer) and /explain. Input forms are generated from the input spec:
// a drawing canvas + upload per image input, a token box per integer sequence, a feature
// table per tabular input, a JSON box for any other tensor; one form per input.
// What the layers learned (service/api/understand.py), per served version with a reference
// sample: probes (/probes, polled while it answers 202, + probes.png), a unit atlas per
// card (/layers/{l}/units/{k}/top + top.png), a lazy PCA projection per hidden layer
// (/layers/{l}/projection + .png) and, with two or more ready versions, linear CKA between
// them (/compare + compare.png). Nothing is asked that would answer 4xx: probes only for
// a labelled reference sample, nothing of it for a model without a graph.
"use strict";

const $ = (id) => document.getElementById(id);
const HOT = [[0, 0, 0], [180, 0, 0], [255, 120, 0], [255, 230, 0], [255, 255, 255]];
const PICTURE_CONCURRENCY = 4;
const MAX_IG_VALUES = 4000000; // the server's cap on instances x (steps + 1) x path values
const state = { model: null, meta: null, samples: [], forms: [], runId: 0, understandId: 0, reference: false };
const RECURRENT = /^(LSTM|GRU|SimpleRNN|RNN|Bidirectional)$/;
const ATLAS_N = 9;

function setStatus(text, isError) {
  const el = $("status");
  el.textContent = text;
  el.className = isError ? "error" : "";
}

// With LAYERSCOPE_INTROSPECTION_TOKEN set the data calls answer 401: ask for the token
// once and keep it for this tab only (sessionStorage), sent as a bearer token.
const TOKEN_KEY = "layerscope-introspection-token";

async function request(path, body, retried) {
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
      return request(path, body, true);
    }
  }
  return resp;
}

async function api(path, body) {
  const resp = await request(path, body);
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(data.error || `${resp.status} ${resp.statusText}`);
  return data;
}

async function png(path, body) {
  const resp = await request(path, body);
  if (!resp.ok) {
    const data = await resp.json().catch(() => ({}));
    throw new Error(data.error || `${resp.status} ${resp.statusText}`);
  }
  return createImageBitmap(await resp.blob());
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

function fmt(v) {
  if (v === null || v === undefined) return "–";
  if (typeof v !== "number") return String(v);
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e4) ? v.toExponential(2) : v.toFixed(3);
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") node.textContent = v;
    else if (k === "className") node.className = v;
    else node.setAttribute(k, v);
  }
  node.append(...children);
  return node;
}

const isFloat = (spec) => spec.dtype.startsWith("float") || spec.dtype.startsWith("bfloat");
const shapeText = (shape) => `[${shape.map((d) => (d === null ? "?" : d)).join("×")}]`;

// ---------------------------------------------------------------- input forms
function imageForm(spec, index) {
  const suffix = index === 0 ? "" : `-${index}`;
  const canvas = el("canvas", { id: `draw${suffix}`, className: "draw", width: 280, height: 280 });
  const ctx = canvas.getContext("2d");
  const clear = () => {
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = 20;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
  };
  clear();
  let down = false;
  let exact = null; // a picked sample's own values, sent as they are until the user draws
  const pos = (ev) => {
    const r = canvas.getBoundingClientRect();
    return [(ev.clientX - r.left) * canvas.width / r.width,
      (ev.clientY - r.top) * canvas.height / r.height];
  };
  canvas.addEventListener("pointerdown", (ev) => {
    down = true;
    exact = null;
    const [x, y] = pos(ev);
    ctx.beginPath(); ctx.moveTo(x, y); ctx.lineTo(x + 0.1, y); ctx.stroke();
  });
  canvas.addEventListener("pointermove", (ev) => {
    if (!down) return;
    const [x, y] = pos(ev);
    ctx.lineTo(x, y); ctx.stroke();
  });
  const end = () => { if (down) { down = false; run(); } };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointerleave", end);
  const clearButton = el("button", { id: `clear${suffix}`, type: "button", text: "Clear" });
  clearButton.addEventListener("click", () => { exact = null; clear(); markSample(-1); });
  const upload = el("input", { type: "file", id: `upload${suffix}`, accept: "image/*" });
  upload.addEventListener("change", async (ev) => {
    const file = ev.target.files[0];
    if (!file) return;
    try {
      const bitmap = await createImageBitmap(file);
      exact = null;
      clear();
      ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
      markSample(-1);
      run();
    } catch (err) {
      setStatus(`could not read ${file.name}: ${err.message}`, true);
    }
  });
  const body = el("div", {},
    el("p", { className: "hint", text: "Draw with the mouse (white on black), upload an image, or pick a sample." }),
    canvas,
    el("div", { className: "row" }, clearButton,
      el("label", { className: "upload" }, "Upload image ", upload)));
  return {
    body,
    read() {
      if (exact) return exact;
      const [lo, hi] = imageRange(spec);
      const [h, w, c] = spec.shape;
      const small = document.createElement("canvas");
      small.width = w; small.height = h;
      const sctx = small.getContext("2d");
      sctx.imageSmoothingEnabled = true;
      sctx.imageSmoothingQuality = "high";
      sctx.drawImage(canvas, 0, 0, w, h);
      const data = sctx.getImageData(0, 0, w, h).data;
      const scale = (v) => lo + (v / 255) * (hi - lo);
      const rows = [];
      for (let y = 0; y < h; y++) {
        const row = [];
        for (let x = 0; x < w; x++) {
          const p = (y * w + x) * 4;
          if (c === 3) row.push([scale(data[p]), scale(data[p + 1]), scale(data[p + 2])]);
          else row.push([scale(Math.round(0.299 * data[p] + 0.587 * data[p + 1] + 0.114 * data[p + 2]))]);
        }
        rows.push(row);
      }
      return rows;
    },
    fill(pixels) { exact = pixels; pixelsToCanvas(canvas, pixels, spec); },
  };
}

// The values a drawn pixel maps to: the input's value_range, else what the reference
// samples hold ([0, 1] or [-1, 1] when they stay inside), else raw 0-255 pixels.
function imageRange(spec) {
  if (spec.value_range) return spec.value_range;
  const values = state.samples.flatMap((s) => flatten([inputValue(s.instance, spec.name)]));
  if (!values.length) return [0, 255];
  const [lo, hi] = range(values);
  if (lo >= 0 && hi <= 1) return [0, 1];
  if (lo >= -1 && hi <= 1) return [-1, 1];
  return [0, 255];
}

function pixelsToCanvas(canvas, pixels, spec) {
  const [h, w] = spec.shape;
  const small = document.createElement("canvas");
  small.width = w; small.height = h;
  const flat = flatten(pixels);
  const ch = flat.length / (h * w);
  const [lo, hi] = spec.value_range || range(flat);
  const span = hi > lo ? hi - lo : 1;
  const img = small.getContext("2d").createImageData(w, h);
  for (let i = 0; i < h * w; i++) {
    for (let k = 0; k < 3; k++) {
      img.data[i * 4 + k] = Math.round(255 * (flat[i * ch + (ch === 3 ? k : 0)] - lo) / span);
    }
    img.data[i * 4 + 3] = 255;
  }
  small.getContext("2d").putImageData(img, 0, 0);
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(small, 0, 0, canvas.width, canvas.height);
}

function tokenForm(spec, index) {
  const fixed = spec.shape[0];
  const box = el("textarea", {
    id: `tokens-${index}`, className: "tokens", rows: 3, name: spec.name,
    placeholder: "token ids, e.g. 12, 5, 33", "aria-label": `${spec.name} token ids`,
  });
  box.value = Array.from({ length: fixed || 4 }, () => 1).join(", ");
  box.addEventListener("change", run);
  const hint = fixed ? `exactly ${fixed} integer ids` : "any number of integer ids";
  return {
    body: el("div", {}, el("p", { className: "hint", text: `Comma or space separated; ${hint}.` }), box),
    read() {
      const parts = box.value.split(/[\s,]+/).filter(Boolean);
      const ids = parts.map((p) => {
        const v = Number(p);
        if (!Number.isInteger(v)) throw new Error(`input ${spec.name}: "${p}" is not an integer token id`);
        return v;
      });
      if (!ids.length) throw new Error(`input ${spec.name}: enter at least one token id`);
      if (fixed && ids.length !== fixed) {
        throw new Error(`input ${spec.name}: ${ids.length} token ids; the model takes exactly ${fixed}`);
      }
      return ids;
    },
    fill(value) { box.value = flatten(value).join(", "); },
  };
}

function tabularForm(spec, index, single) {
  const table = el("table", { id: single ? "features" : `features-${index}`, className: "features" });
  const fields = spec.features.map((name) => {
    const input = el("input", { type: "number", step: "any", name, value: "0" });
    input.addEventListener("change", run);
    table.appendChild(el("tr", {}, el("td", { text: name }), el("td", {}, input)));
    return input;
  });
  return {
    body: el("div", {}, el("p", { className: "hint", text: "Edit any feature; the model reruns on change." }), table),
    read() {
      const out = {};
      for (const f of fields) out[f.name] = Number(f.value);
      return out;
    },
    fill(values) {
      const flat = Array.isArray(values) ? flatten(values) : spec.features.map((f) => values[f]);
      fields.forEach((f, i) => { f.value = String(Number(Number(flat[i]).toPrecision(6))); });
    },
  };
}

function zerosOf(shape, integer) {
  if (!shape.length) return integer ? 0 : 0.0;
  return Array.from({ length: shape[0] === null ? 2 : shape[0] }, () => zerosOf(shape.slice(1), integer));
}

function tensorForm(spec, index) {
  const box = el("textarea", {
    id: `tensor-${index}`, className: "tensor", rows: 6, name: spec.name,
    "aria-label": `${spec.name} as JSON`,
  });
  box.value = JSON.stringify(zerosOf(spec.shape, !isFloat(spec)));
  box.addEventListener("change", run);
  return {
    body: el("div", {}, el("p", { className: "hint", text: `JSON array of shape ${shapeText(spec.shape)} (${spec.dtype}).` }), box),
    read() {
      try { return JSON.parse(box.value); } catch (err) {
        throw new Error(`input ${spec.name}: not valid JSON (${err.message})`);
      }
    },
    fill(value) { box.value = JSON.stringify(value); },
  };
}

function buildForms(meta) {
  const host = $("inputs");
  host.textContent = "";
  const single = meta.inputs.length === 1;
  state.forms = meta.inputs.map((spec, i) => {
    const kind = spec.kind;
    let form;
    if (kind === "image") form = imageForm(spec, i);
    else if (kind === "sequence" && !isFloat(spec)) form = tokenForm(spec, i);
    else if (kind === "tabular" && spec.features) form = tabularForm(spec, i, single);
    else form = tensorForm(spec, i);
    const box = el("fieldset", { className: "input-form", "data-input": spec.name, "data-kind": kind },
      el("legend", { text: `${spec.name} · ${kind} ${shapeText(spec.shape)} ${spec.dtype}` }),
      form.body);
    host.appendChild(box);
    return { spec, ...form };
  });
}

function instance() {
  const values = state.forms.map((f) => f.read());
  if (values.length === 1) return values[0];
  return Object.fromEntries(state.forms.map((f, i) => [f.spec.name, values[i]]));
}

function inputValue(inst, name) {
  return state.forms.length === 1 ? inst : inst[name];
}

// ---------------------------------------------------------------- samples
function markSample(index) {
  document.querySelectorAll("#samples canvas").forEach((c, i) => {
    c.classList.toggle("active", i === index);
  });
}

function singleImage() {
  return state.meta.inputs.length === 1 && state.meta.inputs[0].kind === "image";
}

function showSamples() {
  const image = singleImage();
  $("image-samples").hidden = !image || !state.samples.length;
  $("sample-picker").hidden = image || !state.samples.length;
  const host = $("samples");
  host.textContent = "";
  const select = $("sample-select");
  select.textContent = "";
  if (image) {
    const spec = state.meta.inputs[0];
    const [h, w] = spec.shape;
    state.samples.forEach((s, i) => {
      const c = el("canvas", { width: w, height: h });
      c.title = `reference sample ${s.index}` + (s.label ? ` (${s.label})` : "");
      pixelsToCanvas(c, s.instance, spec);
      c.addEventListener("click", () => pickSample(i));
      host.appendChild(el("figure", {}, c, el("figcaption", { text: s.label || `#${s.index}` })));
    });
    return;
  }
  state.samples.forEach((s, i) => {
    const extra = s.label ? ` (${s.label})` : s.target !== undefined ? ` (target ${fmt(flatten([s.target])[0])})` : "";
    select.appendChild(el("option", { value: String(i), text: `#${s.index}${extra}` }));
  });
  select.onchange = () => pickSample(Number(select.value));
}

function pickSample(i) {
  const s = state.samples[i];
  state.forms.forEach((f) => f.fill(inputValue(s.instance, f.spec.name)));
  markSample(i);
  run();
}

// ---------------------------------------------------------------- predictions
function renderClasses(host, pred) {
  host.appendChild(el("div", { className: "pred-label", text: `${pred.label} (${(100 * pred.score).toFixed(1)}%)` }));
  if (pred.threshold !== undefined) {
    host.appendChild(el("div", { className: "hint", text: `decision at threshold ${pred.threshold.toFixed(3)}` }));
  }
  let entries = Object.entries(pred.probabilities);
  if (entries.length > 10) {
    entries = entries.sort((a, b) => b[1] - a[1]).slice(0, 10);
    host.appendChild(el("div", { className: "hint", text: "top 10 classes" }));
  }
  for (const [cls, p] of entries) {
    const fill = el("span");
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    host.appendChild(el("div", { className: "prob" + (cls === pred.label ? " top" : "") },
      el("span", { text: cls }), el("div", { className: "bar" }, fill),
      el("span", { text: `${(100 * p).toFixed(1)}%` })));
  }
}

function renderValue(host, pred) {
  const values = flatten([pred.value]);
  const shown = values.slice(0, 16).map(fmt).join(", ") + (values.length > 16 ? ", …" : "");
  host.appendChild(el("div", { className: "pred-label pred-value", text: values.length === 1 ? `value ${shown}` : `values [${shown}]` }));
  host.appendChild(el("div", { className: "hint", text: "regression: the model's raw output" }));
}

function renderEntry(host, pred) {
  if (pred.probabilities) renderClasses(host, pred);
  else renderValue(host, pred);
}

function renderPrediction(pred) {
  const host = $("prediction");
  host.textContent = "";
  if (pred.outputs) {
    for (const [name, entry] of Object.entries(pred.outputs)) {
      const block = el("div", { className: "output-block", "data-output": name }, el("h3", { text: name }));
      renderEntry(block, entry);
      host.appendChild(block);
    }
  } else {
    renderEntry(host, pred);
  }
}

// ---------------------------------------------------------------- layers
function layerDepth(row) { return row.parent ? row.parent.split("/").length : 0; }

function renderLayerTable(rows) {
  const body = $("layer-list").querySelector("tbody");
  body.textContent = "";
  for (const row of rows) {
    const name = el("td", { className: "layer-name", text: row.name });
    name.style.paddingLeft = `${4 + 14 * layerDepth(row)}px`;
    const tr = el("tr", { "data-layer": row.name, "data-role": row.role },
      el("td", { text: String(row.index) }), name, el("td", { text: row.type }),
      el("td", { text: shapeText(row.output_shape.slice(1)) }), el("td", { text: String(row.params) }),
      el("td", { text: row.role }));
    tr.addEventListener("click", () => {
      const target = card(row.name);
      if (target) target.scrollIntoView({ behavior: "smooth", block: "center" });
    });
    body.appendChild(tr);
  }
}

function computedLayers() {
  return state.meta.layers.filter((r) => r.role !== "input");
}

// Cards in three groups: preprocessing layers, the hidden layers (#layers), the outputs.
const GROUPS = { preprocessing: "pre-layers", hidden: "layers", output: "out-layers" };

function clearLayerCards() {
  for (const id of Object.values(GROUPS)) $(id).textContent = "";
}

// A recurrent layer's (batch, time, units) output, or an RNN's derived name:sequence: its
// picture is a time x unit heat map of the hidden state.
function isHiddenState(row) {
  const recurrent = row.derived === "sequence" || RECURRENT.test(row.type);
  return recurrent && row.output_shape.length === 3;
}

function buildLayerCards() {
  clearLayerCards();
  for (const row of computedLayers()) {
    const host = $(GROUPS[row.role] || "layers");
    const extra = row.activation ? ` · ${row.activation}` : "";
    const where = row.parent ? ` · in ${row.parent}` : "";
    const head = el("div", { className: "layer-head", text: row.name },
      el("small", { text: `${row.type} · ${shapeText(row.output_shape.slice(1))}${extra}${where} · ${row.role}` }));
    const card = el("div", { className: "layer", "data-layer": row.name, "data-role": row.role },
      head, el("div", { className: "layer-stats" }));
    if (isHiddenState(row)) {
      card.dataset.hiddenState = "1";
      card.appendChild(el("div", { className: "picture-caption", text: "hidden state over time (time steps down, units across)" }));
    }
    card.appendChild(el("canvas", { width: 0, height: 0 }));
    if (state.reference) card.append(...understandTools(row));
    host.appendChild(card);
  }
}

function card(name) {
  return document.querySelector(`#output .layer[data-layer="${CSS.escape(name)}"]`);
}

function renderStats(resp) {
  const inst = resp.instances[0];
  for (const name of resp.layers) {
    const c = card(name);
    if (!c) continue;
    const s = inst.layers[name].stats;
    const box = c.querySelector(".layer-stats");
    box.textContent = `mean ${fmt(s.mean)} · std ${fmt(s.std)} · `
      + `min ${fmt(s.min)} · max ${fmt(s.max)} · inactive ${(100 * s.inactive_fraction).toFixed(1)}% · `
      + `L2 ${fmt(s.l2_norm)} · top `;
    for (const t of s.top_k) {
      const text = `#${t.unit}=${fmt(t.value)}`;
      if (!state.reference) { box.append(`${text} `); continue; }
      const unit = el("button", { type: "button", className: "unit", "data-unit": String(t.unit), text,
        title: `the reference samples that activate unit ${t.unit} the most` });
      unit.addEventListener("click", () => openAtlas(c, name, t.unit));
      box.append(unit, " ");
    }
  }
}

async function drawPictures(base, inst, id) {
  const names = computedLayers().map((r) => r.name);
  let next = 0;
  const worker = async () => {
    while (next < names.length && id === state.runId) {
      const name = names[next++];
      const bitmap = await png(`${base}/layers/${encodeURIComponent(name)}/picture.png`, { instances: [inst] });
      if (id !== state.runId) return;
      const canvas = card(name).querySelector("canvas");
      canvas.width = bitmap.width;
      canvas.height = bitmap.height;
      canvas.getContext("2d").drawImage(bitmap, 0, 0);
      canvas.dataset.drawn = "1";
    }
  };
  await Promise.all(Array.from({ length: PICTURE_CONCURRENCY }, worker));
}

// ---------------------------------------------------------------- attributions
function explainPlan(meta) {
  const layers = meta.layers;
  const images = meta.inputs.filter((s) => s.kind === "image");
  const conv = layers.some((r) => r.type.includes("Conv") && r.output_shape.length === 4);
  if (images.length && conv) return { method: "gradcam" };
  const sizes = meta.inputs.map((s) => s.shape.reduce((a, d) => a * (d === null ? 64 : d), 1));
  const floats = meta.inputs.some(isFloat);
  const embeddings = layers.filter((r) => r.type === "Embedding");
  if (!floats && !embeddings.length) return null;
  const dims = embeddings.reduce((a, r) => a + (r.output_shape[r.output_shape.length - 1] || 1), 0);
  const size = sizes.reduce((a, b) => a + b, 0) * Math.max(1, dims);
  const steps = Math.min(64, Math.floor(MAX_IG_VALUES / size) - 1);
  return steps >= 4 ? { method: "integrated_gradients", steps } : null;
}

function renderGradcam(pixels, heat, info) {
  const canvas = $("attribution");
  canvas.width = 224; canvas.height = 224;
  const ctx = canvas.getContext("2d");
  const h = heat.length, w = heat[0].length;
  const flat = flatten(pixels);
  const ch = flat.length / (h * w);
  const [lo, hi] = range(flat);
  const img = ctx.createImageData(224, 224);
  for (let y = 0; y < 224; y++) {
    for (let x = 0; x < 224; x++) {
      const iy = Math.floor(y * h / 224), ix = Math.floor(x * w / 224);
      let v = 0;
      for (let k = 0; k < ch; k++) v += flat[(iy * w + ix) * ch + k];
      const g = hi > lo ? 255 * (v / ch - lo) / (hi - lo) : 0;
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

function renderBars(entries, info) {
  entries = entries.filter((e) => Number.isFinite(e[1]))
    .sort((a, b) => Math.abs(b[1]) - Math.abs(a[1])).slice(0, 12);
  const canvas = $("attribution");
  canvas.width = 420; canvas.height = Math.max(1, entries.length) * 18 + 6;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const span = Math.max(...entries.map((e) => Math.abs(e[1])), 1e-12);
  const mid = 90 + (canvas.width - 90) / 2, half = (canvas.width - 90) / 2 - 6;
  ctx.font = "11px sans-serif";
  entries.forEach(([name, v], i) => {
    const y = 4 + i * 18;
    ctx.fillStyle = "#222";
    ctx.fillText(String(name).slice(0, 14), 4, y + 11);
    const len = Math.abs(v) / span * half;
    ctx.fillStyle = v >= 0 ? "#c82828" : "#2850c8";
    ctx.fillRect(v >= 0 ? mid : mid - len, y + 2, len, 11);
  });
  ctx.strokeStyle = "#888";
  ctx.beginPath(); ctx.moveTo(mid, 0); ctx.lineTo(mid, canvas.height); ctx.stroke();
  $("attr-info").textContent = info;
}

// name -> value pairs of an IG attribution (feature objects, token arrays, any array)
function attributionEntries(attr, variables, inst) {
  const out = [];
  const add = (prefix, value, variable) => {
    if (value && !Array.isArray(value) && typeof value === "object") {
      for (const [k, v] of Object.entries(value)) out.push([prefix ? `${prefix}.${k}` : k, v]);
      return;
    }
    const flat = flatten([value]);
    const tokens = variable && variable.kind === "embedding" ? flatten([inputValue(inst, variable.input)]) : null;
    flat.forEach((v, j) => {
      const label = tokens ? `${j}: ${tokens[j]}` : `[${j}]`;
      out.push([prefix ? `${prefix}${tokens ? " " : ""}${label}` : label, v]);
    });
  };
  if (variables.length === 1) add("", attr, variables[0]);
  else for (const v of variables) add(v.name, attr[v.name], v);
  return out;
}

function renderExplanation(resp, inst) {
  const e = resp.instances[0];
  const what = e.label !== undefined ? `"${e.label}"` : `unit ${e.unit} of ${resp.output}`;
  if (resp.method === "gradcam") {
    $("attr-method").textContent = `Grad-CAM, layer ${resp.layer}`;
    const score = e.probability !== undefined ? ` (${(100 * e.probability).toFixed(1)}%)` : ` (${fmt(e.value)})`;
    renderGradcam(inputValue(inst, resp.image_input), e.heatmap_input, `Heat = evidence for ${what}${score}.`);
    return;
  }
  $("attr-method").textContent = `integrated gradients, baseline ${resp.baseline}`;
  const c = e.completeness;
  const variables = resp.variables;
  const info = `Explaining ${e.label !== undefined ? `P(${e.label})` : what} = ${fmt(c.f_x)}; completeness: `
    + `sum ${fmt(c.sum_of_attributions)} vs f(x) − f(baseline) ${fmt(c.f_x_minus_f_baseline)}`
    + ` (relative error ${(100 * c.relative_error).toFixed(2)}%).`;
  const only = variables.length === 1 ? variables[0] : null;
  const spec = only && only.kind === "input" ? state.meta.inputs.find((s) => s.name === only.input) : null;
  if (spec && spec.kind === "image") {
    const attr = e.attributions;
    const heat = attr.map((row) => row.map((px) => flatten([px]).reduce((a, v) => a + Math.abs(v), 0)));
    const peak = Math.max(...flatten(heat), 1e-12);
    renderGradcam(inputValue(inst, spec.name), heat.map((row) => row.map((v) => v / peak)), `${info} Heat = |attribution|.`);
    return;
  }
  renderBars(attributionEntries(e.attributions, variables, inst), `${info} Top 12 values.`);
}

function explainBody(inst, plan) {
  const outputs = state.meta.outputs;
  const selected = $("attr-output").value || outputs[0].name;
  const spec = outputs.find((o) => o.name === selected) || outputs[0];
  const body = { instances: [inst], method: plan.method };
  if (outputs.length > 1) body.output = spec.name;
  if (plan.steps) body.steps = plan.steps;
  // binary outputs: explain the positive class, not whichever class won
  if (spec.task === "binary_classification") body.class = spec.class_names[1];
  return body;
}

// ---------------------------------------------------------------- what the layers learned
const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });
const versionBase = (v) => `/models/${encodeURIComponent(state.model)}/versions/${v}`;
const layerPath = (v, layer) => `${versionBase(v)}/layers/${encodeURIComponent(layer)}`;
const inspectable = (meta) => Boolean(meta) && (!meta.introspection || meta.introspection.available !== false);
const labelled = (samples) => samples.some((s) => s.label !== undefined || s.target !== undefined);
const inputKey = (meta) => JSON.stringify(meta.inputs.map((s) => [s.name, s.shape, s.dtype]));

// A PNG into an <img> through fetch (so the introspection token goes with it).
async function imageInto(img, path) {
  const resp = await request(path);
  if (!resp.ok) {
    const data = await resp.json().catch(() => ({}));
    throw new Error(data.error || `${resp.status} ${resp.statusText}`);
  }
  const url = URL.createObjectURL(await resp.blob());
  await new Promise((resolve, reject) => {
    img.onload = resolve;
    img.onerror = () => reject(new Error(`could not decode ${path}`));
    img.src = url;
  });
  img.dataset.loaded = "1";
  return img;
}

function pct(v) { return v === null || v === undefined ? "–" : v.toFixed(3); }

// Per ready version: its metadata and whether it has a (labelled) reference sample.
async function versionFacts(name, info, id) {
  const base = `/models/${encodeURIComponent(name)}`;
  const ready = info.versions.filter((v) => v.status === "ready").map((v) => v.version);
  const facts = await Promise.all(ready.map(async (v) => {
    const meta = v === state.meta.version ? state.meta : (await api(`${base}/versions/${v}`)).metadata;
    if (!inspectable(meta)) return { version: v, meta, open: false };
    let samples = v === state.meta.version ? state.samples : null;
    if (samples === null) {
      samples = meta.reference_sample === false ? [] : (await api(`${base}/versions/${v}/samples?n=8`)).samples;
    }
    return { version: v, meta, open: true, reference: samples.length > 0, labelled: labelled(samples) };
  }));
  return id === state.understandId ? facts.filter((f) => f.meta) : null;
}

async function loadUnderstanding(name, info, open) {
  const id = state.understandId;
  $("probes").textContent = "";
  $("compare").textContent = "";
  $("probes-panel").hidden = true;
  $("compare-panel").hidden = true;
  if (!open) return; // a model without a graph: nothing here
  const facts = await versionFacts(name, info, id);
  if (!facts) return;
  const graphs = facts.filter((f) => f.open);
  if (graphs.length) {
    $("probes-panel").hidden = false;
    for (const f of [...graphs].sort((a, b) => b.version - a.version)) {
      const block = el("div", { className: "probe-block", "data-version": String(f.version) },
        el("h3", { text: `version ${f.version}` }));
      $("probes").appendChild(block);
      if (!f.labelled) {
        block.appendChild(el("p", { className: "hint", text: f.reference
          ? "No probes: the reference sample has no labels."
          : "No probes: this version has no reference sample (publish one with python -m training import --reference)." }));
        continue;
      }
      pollProbes(f.version, block, id).catch((err) => {
        if (id === state.understandId) block.appendChild(el("p", { className: "hint error", text: err.message }));
      });
    }
  }
  if (graphs.length >= 2) buildCompare(graphs, id);
}

async function pollProbes(version, block, id) {
  const note = el("p", { className: "hint probe-status", text: "probes: computing…" });
  block.appendChild(note);
  const started = Date.now();
  for (;;) {
    const resp = await request(`${versionBase(version)}/probes`);
    if (id !== state.understandId) return;
    if (resp.status === 202) { // computing in the background: not an error, ask again
      await resp.json().catch(() => ({}));
      const wait = Math.min(10, Math.max(1, Number(resp.headers.get("Retry-After")) || 2));
      note.textContent = `probes: computing… (${Math.round((Date.now() - started) / 1000)} s)`;
      await sleep(wait * 1000);
      if (id !== state.understandId) return;
      continue;
    }
    const data = await resp.json().catch(() => ({}));
    if (!resp.ok) throw new Error(data.error || `${resp.status} ${resp.statusText}`);
    note.remove();
    renderProbes(block, data, version);
    return;
  }
}

function renderProbes(block, data, version) {
  const metric = data.baseline.metric || (data.task === "regression" ? "r2" : "accuracy");
  block.appendChild(el("p", { className: "hint", text: `${data.probe}, ${data.folds}-fold on ${data.rows} reference rows${data.seconds !== undefined ? ` (${data.seconds} s)` : ""}` }));
  const img = el("img", { className: "probe-chart", alt: `probe ${metric} by depth, version ${version}` });
  block.appendChild(img);
  imageInto(img, `${versionBase(version)}/probes.png`).catch((err) => block.appendChild(el("p", { className: "hint error", text: err.message })));
  const table = el("table", { className: "probe-table" },
    el("thead", {}, el("tr", {}, el("th", { text: "layer" }), el("th", { text: `${metric} (mean ± std)` }),
      el("th", { text: "vs raw input" }))));
  const body = el("tbody");
  const base = data.baseline.mean;
  const row = (name, r, cls) => {
    const gain = cls === "baseline" ? "baseline" : `${r.mean - base >= 0 ? "+" : ""}${(r.mean - base).toFixed(3)}`;
    const label = el("td", { text: name });
    if (r.projected_from) label.appendChild(el("small", { className: "sketched", text: ` sketched from ${r.projected_from}` }));
    return el("tr", { className: cls, "data-layer": name },
      label, el("td", { text: `${pct(r.mean)} ± ${pct(r.std)}` }),
      el("td", { text: gain }));
  };
  body.appendChild(row("input (raw)", data.baseline, "baseline"));
  for (const r of data.layers) body.appendChild(row(r.layer, r, "layer-row"));
  table.appendChild(body);
  block.appendChild(table);
  block.dataset.ready = "1";
}

// ---------------------------------------------------------------- compare versions
function buildCompare(facts, id) {
  const withRef = facts.filter((f) => f.reference);
  if (!withRef.length) return; // CKA runs on a's reference sample
  $("compare-panel").hidden = false;
  const a = $("compare-a"), b = $("compare-b");
  a.textContent = ""; b.textContent = "";
  const versions = facts.map((f) => f.version).sort((x, y) => x - y);
  for (const f of withRef.sort((x, y) => x.version - y.version)) a.appendChild(el("option", { value: String(f.version), text: `v${f.version}` }));
  for (const v of versions) b.appendChild(el("option", { value: String(v), text: `v${v}` }));
  const newest = versions[versions.length - 1];
  const older = withRef.map((f) => f.version).filter((v) => v !== newest);
  a.value = String(older.length ? older[older.length - 1] : withRef[0].version);
  b.value = String(newest);
  const byVersion = new Map(facts.map((f) => [f.version, f]));
  const go = () => compare(byVersion, Number(a.value), Number(b.value), id);
  a.onchange = go; b.onchange = go;
  go();
}

async function compare(byVersion, a, b, id) {
  const host = $("compare");
  host.textContent = "";
  host.dataset.ready = "";
  const note = $("compare-note");
  if (inputKey(byVersion.get(a).meta) !== inputKey(byVersion.get(b).meta)) {
    note.textContent = `v${a} and v${b} take different inputs: CKA compares versions on the same samples.`;
    return;
  }
  note.textContent = "computing…";
  const query = `?a=${a}&b=${b}`;
  const base = `/models/${encodeURIComponent(state.model)}`;
  try {
    const data = await api(`${base}/compare${query}`);
    if (id !== state.understandId) return;
    note.textContent = `${data.method} on ${data.samples} (${data.rows} rows)`;
    const img = el("img", { className: "compare-chart", alt: `CKA between v${a} and v${b}` });
    host.append(img, compareSummary(data));
    await imageInto(img, `${base}/compare.png${query}`);
    if (id === state.understandId) host.dataset.ready = "1";
  } catch (err) {
    if (id === state.understandId) note.textContent = err.message;
  }
}

// The matrix's diagonal-ish part: each layer of a against the same layer of b (by name,
// else by position) and the layer of b it resembles most.
function compareSummary(data) {
  const { cka, layers_a: la, layers_b: lb } = data;
  const table = el("table", { className: "compare-table" },
    el("thead", {}, el("tr", {}, el("th", { text: `layer (v${data.a})` }),
      el("th", { text: `CKA with the same layer of v${data.b}` }), el("th", { text: `most similar in v${data.b}` }))));
  const body = el("tbody");
  const same = [];
  la.forEach((name, i) => {
    let j = lb.indexOf(name);
    if (j < 0 && la.length === lb.length) j = i;
    const row = cka[i];
    let best = 0;
    row.forEach((v, k) => { if (v > row[best]) best = k; });
    if (j >= 0) same.push([name, row[j]]);
    body.appendChild(el("tr", { "data-layer": name },
      el("td", { text: name }), el("td", { text: j >= 0 ? `${fmt(row[j])}${j !== i || name !== lb[j] ? ` (${lb[j]})` : ""}` : "–" }),
      el("td", { text: row.length ? `${lb[best]} (${fmt(row[best])})` : "–" })));
  });
  table.appendChild(body);
  const box = el("div", { className: "compare-summary" });
  if (same.length) {
    const mean = same.reduce((s, [, v]) => s + v, 0) / same.length;
    const low = same.reduce((m, e) => (e[1] < m[1] ? e : m));
    box.appendChild(el("p", { className: "hint", text: `mean CKA of matching layers ${fmt(mean)}; changed the most: ${low[0]} (${fmt(low[1])})` }));
  }
  box.appendChild(table);
  return box;
}

// ---------------------------------------------------------------- unit atlas, projections
function unitCount(row) {
  const shape = row.output_shape;
  return shape.length > 1 ? shape[shape.length - 1] : 1;
}

// Controls on a card (only with a reference sample): a unit index -> its top samples, and
// for a hidden layer a projection toggle, loaded on first use.
function understandTools(row) {
  const units = unitCount(row);
  const unit = el("input", { type: "number", className: "unit-index", min: "0", value: "0", step: "1",
    "aria-label": `unit of ${row.name}` });
  if (units) unit.max = String(units - 1);
  const reduce = el("select", { className: "unit-reduce", "aria-label": `unit activation of ${row.name}` },
    el("option", { value: "mean", text: "mean" }), el("option", { value: "max", text: "max" }));
  const show = el("button", { type: "button", className: "atlas-open", text: `top ${ATLAS_N}` });
  const tools = el("div", { className: "card-tools row" },
    el("label", {}, `unit${units ? ` (0–${units - 1})` : ""} `, unit));
  if (row.output_shape.length > 2) tools.append(el("label", { title: "a unit's activation on a sample: its mean or max over every axis but the last" }, "by ", reduce));
  tools.append(show);
  const atlas = el("div", { className: "atlas", hidden: "" });
  const parts = [tools, atlas];
  show.addEventListener("click", () => {
    const k = Number(unit.value);
    const card = show.closest(".layer");
    if (!Number.isInteger(k) || k < 0 || (units && k >= units)) {
      atlasMessage(card, `unit ${unit.value} is not in 0..${units ? units - 1 : "?"}`);
      return;
    }
    openAtlas(card, row.name, k);
  });
  if (row.role === "hidden") {
    const toggle = el("button", { type: "button", className: "projection-toggle", text: "projection" });
    const box = el("div", { className: "projection", hidden: "" });
    toggle.addEventListener("click", () => toggleProjection(toggle, box, row.name));
    tools.append(toggle);
    parts.push(box);
  }
  return parts;
}

function atlasMessage(card, text) {
  const box = card.querySelector(".atlas");
  box.hidden = false;
  box.textContent = "";
  box.appendChild(el("p", { className: "hint error", text }));
}

async function openAtlas(card, layer, unit) {
  const box = card.querySelector(".atlas");
  if (!box) return;
  const input = card.querySelector(".unit-index");
  if (input) input.value = String(unit);
  const reduceBox = card.querySelector(".unit-reduce");
  const reduce = reduceBox ? reduceBox.value : "mean";
  const version = state.meta.version, id = state.understandId;
  const ticket = String(Number(box.dataset.ticket || 0) + 1);
  box.dataset.ticket = ticket;
  box.dataset.ready = "";
  box.hidden = false;
  box.textContent = "";
  box.appendChild(el("p", { className: "hint", text: `unit ${unit}: finding its top samples…` }));
  const current = () => id === state.understandId && box.dataset.ticket === ticket;
  try {
    const data = await api(`${layerPath(version, layer)}/units/${unit}/top?n=${ATLAS_N}&reduce=${reduce}`);
    if (!current()) return;
    box.textContent = "";
    box.dataset.unit = String(unit);
    const close = el("button", { type: "button", className: "atlas-close", text: "×", title: "close" });
    close.addEventListener("click", () => { box.hidden = true; box.textContent = ""; });
    box.appendChild(el("div", { className: "atlas-head" },
      el("strong", { text: `unit ${unit}` }),
      ` · top ${data.top.length} of ${data.rows} reference samples by ${data.unit_activation} `, close));
    let img = null;
    if (data.thumbnails) {
      img = el("img", { className: "atlas-thumbs", alt: `top samples of unit ${unit} of ${layer}` });
      box.appendChild(img);
    }
    box.appendChild(atlasTable(data));
    if (img) await imageInto(img, data.thumbnails);
    if (current()) box.dataset.ready = "1";
  } catch (err) {
    if (current()) atlasMessage(card, err.message);
  }
}

// One row per sample: index, activation, label, and feature values for non-image inputs.
function atlasTable(data) {
  const columns = [];
  for (const t of data.top.slice(0, 1)) {
    for (const [name, value] of Object.entries(t.inputs || {})) {
      if (value && !Array.isArray(value) && typeof value === "object") {
        for (const f of Object.keys(value)) columns.push([name, f]);
      } else {
        columns.push([name, null]);
      }
    }
  }
  const many = Object.keys((data.top[0] || {}).inputs || {}).length > 1;
  const head = el("tr", {}, el("th", { text: "sample" }), el("th", { text: "activation" }), el("th", { text: "label" }),
    ...columns.map(([name, f]) => el("th", { text: f === null ? name : many ? `${name}.${f}` : f })));
  const body = el("tbody");
  for (const t of data.top) {
    const cells = columns.map(([name, f]) => {
      const value = t.inputs[name];
      if (f !== null) return el("td", { text: fmt(value[f]) });
      const flat = flatten([value]);
      return el("td", { text: flat.slice(0, 12).map(fmt).join(", ") + (flat.length > 12 ? ", …" : "") });
    });
    body.appendChild(el("tr", { "data-index": String(t.index) },
      el("td", { text: `#${t.index}` }), el("td", { text: fmt(t.activation) }),
      el("td", { text: t.label === undefined ? "–" : String(t.label) }), ...cells));
  }
  return el("div", { className: "atlas-rows" }, el("table", { className: "atlas-table" }, el("thead", {}, head), body));
}

async function toggleProjection(toggle, box, layer) {
  if (box.dataset.loaded) { box.hidden = !box.hidden; return; }
  if (box.dataset.loading) return;
  box.dataset.loading = "1";
  box.hidden = false;
  box.textContent = "";
  const note = el("p", { className: "hint", text: "projecting the reference sample…" });
  box.appendChild(note);
  const version = state.meta.version, id = state.understandId;
  try {
    const data = await api(`${layerPath(version, layer)}/projection`);
    if (id !== state.understandId) return;
    const [r1, r2] = data.explained_variance_ratio;
    const sketched = data.projected_from ? ` · sketched from ${data.projected_from} features` : "";
    note.textContent = `PCA of ${data.rows} reference samples · explained variance PC1 ${(100 * r1).toFixed(1)}%, PC2 ${(100 * r2).toFixed(1)}%${sketched}`;
    note.className = "hint projection-info";
    const img = el("img", { className: "projection-chart", alt: `PCA projection of ${layer}` });
    box.appendChild(img);
    await imageInto(img, `${layerPath(version, layer)}/projection.png`);
    box.dataset.loaded = "1";
  } catch (err) {
    note.textContent = err.message;
    note.className = "hint error";
  } finally {
    delete box.dataset.loading;
  }
}

// ---------------------------------------------------------------- flow
async function run() {
  if (!state.model) return;
  const id = ++state.runId;
  let inst;
  try {
    inst = instance();
  } catch (err) {
    setStatus(err.message, true);
    return;
  }
  setStatus("running…");
  const base = `/models/${encodeURIComponent(state.model)}`;
  const meta = state.meta;
  try {
    if (!meta.introspection || meta.introspection.available === false) {
      const pred = await api(`${base}/predict`, { instances: [inst] });
      if (id !== state.runId) return;
      renderPrediction(pred.predictions[0]);
      setStatus(`${state.model} v${meta.version}: predictions only`);
      bumpRuns();
      return;
    }
    const names = computedLayers().map((r) => r.name);
    const plan = explainPlan(meta);
    const [acts, expl] = await Promise.all([
      api(`${base}/activations`, { instances: [inst], layers: names, include: ["stats"] }),
      plan ? api(`${base}/explain`, explainBody(inst, plan)) : Promise.resolve(null),
      drawPictures(base, inst, id),
    ]);
    if (id !== state.runId) return;
    renderPrediction(acts.instances[0].prediction);
    renderStats(acts);
    if (expl) renderExplanation(expl, inst);
    else {
      $("attr-method").textContent = "";
      $("attr-info").textContent = "No attribution for this model: it has no float input and no embedding of an integer input.";
    }
    setStatus(`${acts.model} v${acts.version}: ${acts.layers.length} layers`);
    bumpRuns();
  } catch (err) {
    if (id === state.runId) setStatus(err.message, true);
  }
}

function bumpRuns() {
  document.body.dataset.runs = String(Number(document.body.dataset.runs || 0) + 1);
}

async function selectModel(name) {
  state.model = null;
  state.runId++;
  setStatus(`loading ${name}…`);
  try {
    const base = `/models/${encodeURIComponent(name)}`;
    const info = await api(base);
    const meta = info.metadata;
    state.meta = { ...meta, layers: meta.layers || [] };
    const open = !meta.introspection || meta.introspection.available !== false;
    state.samples = [];
    state.understandId++;
    if (open) state.samples = (await api(`${base}/samples?n=8`)).samples; // [] without one
    state.reference = open && state.samples.length > 0; // atlases and projections need it
    $("version").textContent = `version ${meta.version} · ${meta.task}`;
    buildForms(state.meta);
    const select = $("attr-output");
    select.textContent = "";
    for (const o of meta.outputs) select.appendChild(el("option", { value: o.name, text: `${o.name} (${o.task})` }));
    select.onchange = run;
    $("attr-controls").hidden = meta.outputs.length < 2;
    $("attribution-panel").hidden = !open;
    renderLayerTable(state.meta.layers);
    $("layer-count").textContent = `${state.meta.layers.length} in the table`;
    $("layers-note").textContent = open ? ""
      : `Introspection unavailable: ${meta.introspection.reason || "the model has no graph"}`;
    if (open) buildLayerCards(); else clearLayerCards();
    state.model = name;
    showSamples();
    loadUnderstanding(name, info, open).catch((err) => setStatus(err.message, true));
    if (state.samples.length) pickSample(0); else run();
  } catch (err) {
    setStatus(err.message, true);
  }
}

async function init() {
  $("run").addEventListener("click", run);
  try {
    const { models } = await api("/models");
    const select = $("model");
    for (const m of models) {
      const opt = el("option", { value: m.name, text: m.name + (m.ready ? "" : " (not ready)") });
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
