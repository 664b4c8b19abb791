// The cnnviz viewer: plain JavaScript against the service's own /v1 API (no build, no CDN).
"use strict";

const state = { model: null, layers: [], job: null, stream: null };

// Talking to the API ($, api, getJSON, postJSON, loadImage, showError): api.js, loaded first.

function parseChannels(text) {
  const value = text.trim().toLowerCase();
  if (value === "all" || value === "") return "all";
  const channels = [];
  for (const part of value.split(",")) {
    const [lo, hi] = part.split("-").map((s) => parseInt(s.trim(), 10));
    if (Number.isNaN(lo)) throw new Error(`channels: cannot read '${part}'; write e.g. 0-7, 3,5,9 or all`);
    const end = Number.isNaN(hi) ? lo : hi;
    for (let c = lo; c <= end; c++) channels.push(c);
  }
  return channels;
}

const fmt = (x) => (Math.abs(x) >= 100 ? x.toFixed(0) : x.toPrecision(3));
// A layer's units and grid come from its axes (CHW, HWC, tokens): never from its raw shape,
// which a ViT gives as [tokens, features]. Ambiguous layers (axes null) are not offered.
const spatial = (layer) => ["CHW", "HWC", "tokens"].includes(layer.axes);
const units = (layer) => layer.units ?? layer.shape[0];
const mapHeight = (layer) =>
  layer.axes === "tokens" ? layer.token_grid[0] : layer.axes === "HWC" ? layer.shape[0]
    : layer.axes === "CHW" ? layer.shape[1] : 1;

// ---- models, layers, samples -------------------------------------------------------------

async function loadModels(preferred) {
  const { models } = await getJSON("/v1/models");
  const select = $("model");
  select.innerHTML = "";
  for (const m of models) {
    const option = new Option(m.error ? `${m.name} (unavailable)` : m.name, m.name);
    option.disabled = Boolean(m.error);
    option.title = m.error || m.description;
    select.add(option);
  }
  const usable = models.filter((m) => !m.error).map((m) => m.name);
  select.value = usable.includes(preferred) ? preferred : usable.includes("shapes") ? "shapes" : usable[0];
  state.models = Object.fromEntries(models.map((m) => [m.name, m]));
}

async function loadModel(name) {
  state.model = name;
  const info = state.models[name];
  $("model-info").textContent = `${info.input_size.join("×")}, ${info.channels} channel(s)`;
  const { layers } = await getJSON(`/v1/models/${encodeURIComponent(name)}/layers`);
  state.layers = layers;
  const list = $("layers");
  list.innerHTML = "";
  const firstSpatial = layers.filter(spatial).slice(0, 1).map((l) => l.name);
  for (const layer of layers) {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = layer.name;
    box.checked = firstSpatial.includes(layer.name);
    label.append(box, ` ${layer.name} `);
    const shape = document.createElement("span");
    shape.className = "muted";
    shape.textContent = `[${layer.shape.join(", ")}]`;
    label.append(shape);
    list.append(label);
  }
  const opt = $("opt-layer");
  opt.innerHTML = "";
  for (const layer of layers.filter(spatial)) opt.add(new Option(`${layer.name} [${layer.shape.join(", ")}]`, layer.name));
  const deep = layers.filter(spatial);
  if (deep.length) opt.value = deep[Math.floor((deep.length * 2) / 3)].name;
  panelsForModel(layers, info); // panels.js: weights and attributions
}

async function loadSamples() {
  const { samples } = await getJSON("/v1/samples");
  const select = $("sample");
  select.innerHTML = "";
  for (const s of samples) select.add(new Option(s.name, s.name));
  select.value = samples.some((s) => s.name === "triangle") ? "triangle" : samples[0].name;
  return samples;
}

async function updateInputPreview() {
  const upload = $("upload").files[0];
  if (document.querySelector("input[name=source]:checked").value === "upload" && upload) {
    $("input-preview").src = URL.createObjectURL(upload);
  } else {
    await loadImage($("input-preview"), `/v1/samples/${encodeURIComponent($("sample").value)}`);
  }
}

function readFileBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",")[1]);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

// ---- feature maps ------------------------------------------------------------------------

async function showFeatureMaps() {
  const layers = [...document.querySelectorAll("#layers input:checked")].map((b) => b.value);
  if (!layers.length) throw new Error("pick at least one layer");
  const body = {
    layers,
    colormap: $("colormap").value,
    normalize: $("normalize").value,
    scale: parseInt($("scale").value, 10) || 1,
  };
  const source = document.querySelector("input[name=source]:checked").value;
  if (source === "upload") {
    const file = $("upload").files[0];
    if (!file) throw new Error("choose an image file to upload, or pick a sample");
    body.image = await readFileBase64(file);
  } else {
    body.sample = $("sample").value;
  }
  const answer = await (await postJSON(`/v1/models/${encodeURIComponent(state.model)}/feature-maps`, body)).json();
  const grids = $("grids");
  grids.innerHTML = "";
  for (const layer of answer.layers) grids.append(gridFigure(layer, source === "upload" ? "uploaded image" : body.sample));
}

function gridFigure(layer, imageName) {
  const figure = document.createElement("figure");
  figure.className = "grid";
  figure.dataset.layer = layer.name;
  const img = document.createElement("img");
  img.src = `data:image/png;base64,${layer.image}`;
  img.alt = `feature maps of ${layer.name}`;
  const caption = document.createElement("figcaption");
  caption.textContent = `${layer.name} [${layer.shape.join(", ")}] · ${layer.grid.channels.length} channels · ${imageName}`;
  figure.append(img, caption);
  const stats = Object.fromEntries(layer.stats.map((s) => [s.channel, s]));
  const tileAt = (event) => {
    const g = layer.grid;
    const x = (event.offsetX * img.naturalWidth) / img.clientWidth - g.padding;
    const y = (event.offsetY * img.naturalHeight) / img.clientHeight - g.padding;
    const col = Math.floor(x / (g.tile[1] + g.padding));
    const row = Math.floor(y / (g.tile[0] + g.padding));
    const i = row * g.columns + col;
    return x < 0 || y < 0 || col >= g.columns || i < 0 || i >= g.channels.length ? null : g.channels[i];
  };
  img.addEventListener("mousemove", (event) => {
    const channel = tileAt(event);
    const tip = $("tooltip");
    if (channel === null) { tip.hidden = true; return; }
    const s = stats[channel];
    tip.textContent = `${layer.name} · channel ${channel}\nmin ${fmt(s.min)}  max ${fmt(s.max)}  mean ${fmt(s.mean)}\nclick: the unit's page`;
    tip.style.left = `${event.clientX + 14}px`;
    tip.style.top = `${event.clientY + 14}px`;
    tip.hidden = false;
  });
  img.addEventListener("mouseleave", () => { $("tooltip").hidden = true; });
  img.addEventListener("click", (event) => {
    const channel = tileAt(event);
    if (channel !== null) location.href = unitPath(state.model, layer.name, channel);
  });
  return figure;
}

const unitPath = (model, layer, channel) =>
  `/units/${encodeURIComponent(model)}/${encodeURIComponent(layer)}/${channel}`;

// ---- optimization jobs -------------------------------------------------------------------

// Follow a job until it ends: Server-Sent Events where the service has them, else polling.
// onUpdate(job) is called on each change; resolves with the finished job.
function followJob(jobId, onUpdate) {
  return new Promise((resolve, reject) => {
    const done = (job) => { onUpdate(job); resolve(job); };
    const poll = async () => {
      try {
        for (;;) {
          const job = await getJSON(`/v1/jobs/${jobId}`);
          if (["succeeded", "failed", "cancelled"].includes(job.status)) return done(job);
          onUpdate(job);
          await new Promise((r) => setTimeout(r, 400));
        }
      } catch (error) { reject(error); }
    };
    if (!window.EventSource || localStorage.getItem("cnnviz-api-key")) { poll(); return; }
    const stream = new EventSource(`/v1/jobs/${jobId}/events`);
    state.stream = stream;
    const handle = (event) => {
      const job = JSON.parse(event.data);
      if (["succeeded", "failed", "cancelled"].includes(job.status)) {
        stream.close();
        getJSON(`/v1/jobs/${jobId}`).then(done, reject);
      } else onUpdate(job);
    };
    stream.addEventListener("progress", handle);
    stream.addEventListener("end", handle);
    // No event stream here (an older service), or it broke off: poll from now on.
    stream.onerror = () => { stream.close(); poll(); };
  });
}

async function startOptimization() {
  const body = {
    layer: $("opt-layer").value,
    channels: parseChannels($("opt-channels").value),
    steps: parseInt($("opt-steps").value, 10),
    seed: parseInt($("opt-seed").value, 10) || 0,
  };
  const response = await postJSON(`/v1/models/${encodeURIComponent(state.model)}/optimizations`, body);
  const job = await response.json();
  $("job").hidden = false;
  $("job-result-figure").hidden = true;
  $("job-preview").closest("figure").hidden = false;
  $("job-units").innerHTML = "";
  $("job-preview").removeAttribute("src");
  $("job-link").href = `/v1/jobs/${job.id}`;
  $("cancel").hidden = false;
  $("cancel").onclick = () => api(`/v1/jobs/${job.id}/cancel`, { method: "POST" }).catch((e) => showError(e.message));
  let previewStep = null;
  const update = (j) => {
    $("job-status").textContent = j.status;
    document.body.dataset.jobStatus = j.status;
    if (j.progress) {
      $("job-progress").max = j.progress.total;
      $("job-progress").value = j.progress.step;
      $("job-step").textContent = `step ${j.progress.step} / ${j.progress.total}`;
      if (j.progress.preview_step != null && j.progress.preview_step !== previewStep && j.status === "running") {
        previewStep = j.progress.preview_step;
        loadImage($("job-preview"), `/v1/jobs/${j.id}/preview`).catch(() => {});
      }
    }
  };
  update(job);
  const finished = ["succeeded", "failed", "cancelled"].includes(job.status) ? job : await followJob(job.id, update);
  $("cancel").hidden = true;
  showResult(finished, $("job-result"), $("job-result-caption"));
  if (finished.status === "succeeded") {
    $("job-result-figure").hidden = false;
    $("job-preview").closest("figure").hidden = true; // the result replaces the preview
    const list = $("job-units");
    for (const u of finished.result.units) {
      if (u.channel === null || u.sample > 0) continue;
      const li = document.createElement("li");
      const a = document.createElement("a");
      a.href = unitPath(finished.model, finished.result.layer, u.channel);
      a.textContent = `channel ${u.channel}: ${fmt(u.initial_objective)} → ${fmt(u.objective)}`;
      li.append(a);
      list.append(li);
    }
  }
}

function showResult(job, img, caption) {
  if (job.status === "succeeded") {
    const r = job.result;
    if (r.grid) img.src = `data:image/png;base64,${r.grid}`;
    else loadImage(img, `/v1/jobs/${job.id}/result.png`).catch((e) => showError(e.message));
    caption.textContent = `result: ${r.layer}, ${r.units.length} image(s), ${r.image_size} px, seed ${r.seed}, ${r.elapsed_s.toFixed(1)} s on ${r.device}`;
  } else {
    caption.textContent = job.error ? `${job.status}: ${job.error.code}: ${job.error.message}` : job.status;
    if (job.error) showError(`job ${job.status}: ${job.error.code}: ${job.error.message}`);
  }
}

// ---- a unit's page -----------------------------------------------------------------------

async function showUnit(model, layer, channel) {
  $("home").hidden = true;
  $("unit").hidden = false;
  $("unit-title").textContent = `${model} · ${layer} · channel ${channel}`;
  document.title = `cnnviz — ${model} ${layer} channel ${channel}`;
  const known = state.layers.find((l) => l.name === layer);
  if (!known) throw new Error(`unknown layer '${layer}' of model '${model}'`);
  if (spatial(known) && channel >= units(known)) {
    throw new Error(`channel ${channel} is out of range: ${layer} has ${units(known)} channels`);
  }
  await Promise.all([
    unitPattern(model, layer, channel), // versus.js: beside the data set's top image
    unitSamples(model, layer, channel, known),
    unitPanels(model, layer, channel), // panels.js: exemplars and the filter
    unitDissection(model, layer, channel), // panels.js: with ?dissection={job}
  ]);
}

// unitPattern: versus.js (the pattern beside the data set)

async function unitSamples(model, layer, channel, known) {
  const samples = (await getJSON("/v1/samples")).samples;
  const height = mapHeight(known);
  const scale = Math.max(1, Math.min(16, Math.floor(96 / height)));
  const rows = [];
  for (const s of samples) { // one at a time: a page is not a load test
    const answer = await (await postJSON(`/v1/models/${encodeURIComponent(model)}/feature-maps`, {
      sample: s.name, layers: [layer], channels: [channel], scale, padding: 0,
    })).json();
    const l = answer.layers[0];
    rows.push({ name: s.name, mean: l.stats[0].mean, image: l.image });
  }
  rows.sort((a, b) => b.mean - a.mean);
  const list = $("unit-samples");
  list.innerHTML = "";
  for (const row of rows) {
    const li = document.createElement("li");
    li.dataset.sample = row.name;
    const img = document.createElement("img");
    img.src = `data:image/png;base64,${row.image}`;
    img.alt = `${row.name}: activation map`;
    li.append(img, `${row.name} · mean ${fmt(row.mean)}`);
    list.append(li);
  }
}

// ---- start -------------------------------------------------------------------------------

function guard(fn) {
  return async (...args) => {
    showError("");
    const buttons = document.querySelectorAll("button");
    buttons.forEach((b) => { if (b.id !== "cancel") b.disabled = true; });
    try { await fn(...args); } catch (error) { showError(error.message); }
    finally { buttons.forEach((b) => { b.disabled = false; }); }
  };
}

// Where a job's pictures are read: a dissection's layer page, else the job's JSON.
function jobHref(job) {
  if (job.kind === "dissection" && job.request.layers && job.request.layers.length) {
    const layer = encodeURIComponent(job.request.layers[0]);
    return `/layers/${encodeURIComponent(job.model)}/${layer}?job=${job.id}`;
  }
  return `/v1/jobs/${job.id}`;
}

async function recentJobs() {
  const page = await getJSON("/v1/jobs?page_size=10");
  const body = $("jobs-table").querySelector("tbody");
  body.replaceChildren();
  for (const job of page.jobs) {
    const row = document.createElement("tr");
    const link = document.createElement("a");
    link.href = jobHref(job);
    link.textContent = job.id.slice(0, 8);
    const progress = job.progress ? `${job.progress.step}/${job.progress.total}` : "";
    const cells = [link, job.kind, job.model, job.status, progress, job.created_at.replace("T", " ").slice(0, 19)];
    for (const value of cells) {
      const cell = document.createElement("td");
      if (value instanceof Node) cell.append(value); else cell.textContent = value;
      row.append(cell);
    }
    body.append(row);
  }
}

async function main() {
  $("api-key").value = localStorage.getItem("cnnviz-api-key") || "";
  $("api-key").addEventListener("change", () => {
    localStorage.setItem("cnnviz-api-key", $("api-key").value);
    location.reload();
  });
  const unit = location.pathname.match(/^\/units\/([^/]+)\/([^/]+)\/(\d+)\/?$/);
  const params = new URLSearchParams(location.search);
  const preferred = unit ? decodeURIComponent(unit[1]) : params.get("model");
  await loadModels(preferred);
  $("model").addEventListener("change", guard(async () => {
    if (unit) { location.href = `/?model=${encodeURIComponent($("model").value)}`; return; }
    await loadModel($("model").value);
  }));
  await loadModel($("model").value);
  if (unit) {
    if ($("model").value !== decodeURIComponent(unit[1])) throw new Error(`unknown model '${decodeURIComponent(unit[1])}'`);
    await showUnit(state.model, decodeURIComponent(unit[2]), parseInt(unit[3], 10));
    document.body.dataset.ready = "unit";
    return;
  }
  await loadSamples();
  await updateInputPreview();
  $("sample").addEventListener("change", guard(updateInputPreview));
  $("upload").addEventListener("change", guard(async () => {
    document.querySelector("input[name=source][value=upload]").checked = true;
    await updateInputPreview();
  }));
  document.querySelectorAll("input[name=source]").forEach((r) => r.addEventListener("change", guard(updateInputPreview)));
  $("show").addEventListener("click", guard(showFeatureMaps));
  $("optimize").addEventListener("click", guard(startOptimization));
  await homePanels(); // panels.js
  $("jobs-refresh").addEventListener("click", guard(recentJobs));
  await recentJobs();
  document.body.dataset.ready = "home";
}

main().catch((error) => { showError(error.message); document.body.dataset.ready = "error"; });
