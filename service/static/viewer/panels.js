// The viewer's panels beyond feature maps and optimization: filter weights and attributions on
// the home page, dataset exemplars and the unit's filter on a unit's page. Loaded after api.js
// ($, api, getJSON, postJSON) and before viewer.js, whose helpers (followJob, fmt, unitPath,
// guard, state) these functions use when called.
"use strict";

const FINISHED = ["succeeded", "failed", "cancelled"];

// ---- shared: tiles of a grid image, shareable addresses ---------------------------------

// The tile under the mouse in a grid drawn with `columns` tiles of `tile` [h, w] px and
// `padding` px between and around them; its index, or null.
function tileIndex(img, event, columns, tile, padding, count) {
  const x = (event.offsetX * img.naturalWidth) / img.clientWidth - padding;
  const y = (event.offsetY * img.naturalHeight) / img.clientHeight - padding;
  const col = Math.floor(x / (tile[1] + padding));
  const row = Math.floor(y / (tile[0] + padding));
  const i = row * columns + col;
  return x < 0 || y < 0 || col >= columns || i >= count ? null : i;
}

// Hovering a tile shows describe(i) in the tooltip; clicking it calls open(i) if given.
function hoverTiles(img, layout, describe, open) {
  const at = (event) => tileIndex(img, event, layout().columns, layout().tile, layout().padding, layout().count);
  img.onmousemove = (event) => {
    const i = at(event);
    const tip = $("tooltip");
    if (i === null) { tip.hidden = true; return; }
    tip.textContent = describe(i);
    tip.style.left = `${event.clientX + 14}px`;
    tip.style.top = `${event.clientY + 14}px`;
    tip.hidden = false;
  };
  img.onmouseleave = () => { $("tooltip").hidden = true; };
  img.onclick = (event) => {
    const i = at(event);
    if (i !== null && open) open(i);
  };
}

// Write a panel's settings into the page's address (so that it can be shared) and its link.
function rememberInAddress(values, link, hash) {
  const params = new URLSearchParams(location.search);
  for (const [key, value] of Object.entries(values)) {
    if (value === null || value === undefined || value === "") params.delete(key);
    else params.set(key, value);
  }
  const address = `${location.pathname}?${params}${hash ? `#${hash}` : ""}`;
  history.replaceState(null, "", address);
  if (link) { link.href = address; link.hidden = false; }
}

const pageParams = () => new URLSearchParams(location.search);

function setIfOption(select, value) {
  if (value !== null && [...select.options].some((o) => o.value === value)) select.value = value;
}

// ---- home: filter weights ----------------------------------------------------------------

// Conv2d and its subclasses (StdConv2d, LazyConv2d), not containers (ConvBlock,
// Conv2dNormActivation) nor the functional conv2d, which have no kernel of their own.
const isConv = (layer) => /Conv2d$/.test(layer.kind);

function fillWeightLayers(layers) {
  const select = $("w-layer");
  select.innerHTML = "";
  const convs = layers.filter(isConv);
  // A model whose convolutions have unusual class names: offer every layer, the service names
  // the ones with a kernel if the choice has none.
  for (const layer of convs.length ? convs : layers) {
    select.add(new Option(`${layer.name} (${layer.kind}) [${layer.shape.join(", ")}]`, layer.name));
  }
}

async function showWeights() {
  const layer = $("w-layer").value;
  if (!layer) throw new Error("this model lists no layers");
  const query = new URLSearchParams({ mode: $("w-mode").value, normalize: $("w-normalize").value });
  const topK = $("w-top-k").value.trim();
  if (topK) query.set("top_k", topK);
  const w = await getJSON(`/v1/models/${encodeURIComponent(state.model)}/layers/${encodeURIComponent(layer)}/weights?${query}`);
  const img = $("w-image");
  img.src = `data:image/png;base64,${w.image}`;
  const filters = new Set(w.grid.filters).size;
  $("w-caption").textContent = `${w.layer} · ${w.kind} [${w.weight_shape.join(", ")}] · ${w.mode} · ` +
    `${filters} filter(s), ${w.grid.filters.length} tile(s) · scale ${w.scale}`;
  $("w-figure").hidden = false;
  $("w-figure").dataset.layer = w.layer;
  hoverTiles(img, () => ({ ...w.grid, count: w.stats.length }), (i) => {
    const s = w.stats[i];
    const slice = s.input_channel === null ? "" : ` · input channel ${s.input_channel}`;
    return `${w.layer} · filter ${s.filter}${slice}\nmin ${fmt(s.min)}  max ${fmt(s.max)}  mean ${fmt(s.mean)}  ` +
      `L2 ${fmt(s.norm)}\nclick: the unit's page`;
  }, (i) => { location.href = unitPath(state.model, w.layer, w.stats[i].filter); });
  rememberInAddress({
    model: state.model, weights: layer, wmode: $("w-mode").value,
    wnorm: $("w-normalize").value === "filter" ? null : $("w-normalize").value, wtop: topK || null,
  }, $("w-link"), "weights-section");
}

// ---- home: attributions ------------------------------------------------------------------

// The methods come from the service's one list (GET /v1/attribution-methods), never from here.
async function loadAttributionMethods() {
  const { methods } = await getJSON("/v1/attribution-methods");
  const select = $("a-method");
  select.innerHTML = "";
  for (const m of methods) {
    const option = new Option(m.title, m.name);
    option.title = m.summary;
    option.dataset.layer = m.needs_layer ? "1" : "";
    select.add(option);
  }
  select.value = methods.some((m) => m.name === "gradcam") ? "gradcam" : methods[0].name;
  updateMethod();
}

function needsLayer() {
  const chosen = $("a-method").selectedOptions[0];
  return Boolean(chosen && chosen.dataset.layer);
}

function fillAttributionChoices(layers, info) {
  const layerSelect = $("a-layer");
  layerSelect.innerHTML = "";
  const maps = layers.filter(spatial);
  for (const layer of maps) layerSelect.add(new Option(`${layer.name} [${layer.shape.join(", ")}]`, layer.name));
  // The last layer that is still a map (not pooled to 1×1): where Grad-CAM is usually asked.
  const last = maps.filter((l) => l.shape[1] * l.shape[2] > 1).pop() || maps[maps.length - 1];
  if (last) layerSelect.value = last.name;
  const target = $("a-target");
  target.innerHTML = "";
  target.add(new Option("the top prediction", ""));
  (info.labels || []).forEach((label, i) => target.add(new Option(`${i}: ${label}`, String(i))));
  updateMethod();
}

function updateMethod() {
  $("a-layer-label").hidden = !needsLayer();
}

// Index or label; a target chosen from the predictions table may not be in the select.
function chooseTarget(index, label) {
  const select = $("a-target");
  if (![...select.options].some((o) => o.value === String(index))) select.add(new Option(`${index}: ${label}`, String(index)));
  select.value = String(index);
}

// The attribution answer: at once, or, for a request over the service's synchronous limit
// (many integrated-gradients steps, a fine occlusion), as a job with the same body, followed.
async function attribute(body) {
  const model = encodeURIComponent(state.model);
  try {
    return { answer: await (await postJSON(`/v1/models/${model}/attributions`, body)).json(), asJob: false };
  } catch (error) {
    if (!(error.status === 422 && error.message.startsWith("too_long_for_sync:"))) throw error;
  }
  let job = await (await postJSON(`/v1/models/${model}/attribution-jobs`, body)).json();
  const caption = $("a-caption");
  const show = (j) => {
    caption.textContent = j.progress ? `${j.status}: ${j.progress.step} / ${j.progress.total} ${j.progress.unit || ""}` : j.status;
  };
  if (!FINISHED.includes(job.status)) job = await followJob(job.id, show);
  if (job.status !== "succeeded") {
    throw new Error(job.error ? `job ${job.status}: ${job.error.code}: ${job.error.message}` : `job ${job.status}`);
  }
  // The pictures inline, whatever the service's threshold for large results.
  const full = await getJSON(`/v1/jobs/${job.id}?inline=true`);
  return { answer: full.result, asJob: true };
}

async function explain() {
  const method = $("a-method").value;
  const body = { method };
  if (needsLayer()) body.layer = $("a-layer").value;
  if ($("a-metrics").checked) body.metrics = ["deletion", "insertion"];
  const target = $("a-target").value;
  if (target !== "") body.target = parseInt(target, 10);
  const source = document.querySelector("input[name=source]:checked").value;
  if (source === "upload") {
    const file = $("upload").files[0];
    if (!file) throw new Error("choose an image file to upload, or pick a sample");
    body.image = await readFileBase64(file);
  } else body.sample = $("sample").value;
  const { answer, asJob } = await attribute(body);
  const rows = $("a-predictions").querySelector("tbody");
  rows.innerHTML = "";
  answer.predictions.forEach((p, rank) => {
    const tr = document.createElement("tr");
    tr.dataset.index = p.index;
    tr.title = `explain '${p.label}'`;
    for (const text of [rank + 1, p.label, p.probability === null ? "—" : `${(100 * p.probability).toFixed(1)}%`, fmt(p.score)]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    tr.addEventListener("click", guard(async () => { chooseTarget(p.index, p.label); await explain(); }));
    rows.append(tr);
  });
  const a = answer.attributions[0];
  rows.querySelectorAll("tr").forEach((tr) => tr.classList.toggle("explained", tr.dataset.index === String(a.target.index)));
  $("a-overlay").src = `data:image/png;base64,${a.overlay}`;
  $("a-map").src = `data:image/png;base64,${a.map}`;
  const where = answer.layer ? ` at ${answer.layer}` : "";
  const image = body.sample || "uploaded image";
  let caption = `${answer.method}${where} for '${a.target.label}' (class ${a.target.index}) on ${image}: ` +
    `min ${fmt(a.stats.min)}, max ${fmt(a.stats.max)}, peak at (y ${a.stats.peak[0]}, x ${a.stats.peak[1]})` +
    `${answer.signed ? "; signed: blue is evidence against" : ""}`;
  if (a.completeness) caption += `; completeness error ${(100 * a.completeness.relative_error).toFixed(2)}%`;
  const f = a.faithfulness;
  if (f) {
    caption += `; deletion AUC ${fmt(f.deletion_auc)} (random ${fmt(f.random.deletion_auc)}, lower is better), ` +
      `insertion AUC ${fmt(f.insertion_auc)} (random ${fmt(f.random.insertion_auc)}, higher is better)`;
  }
  if (asJob) caption += " (run as a job: over the service's synchronous limit)";
  $("a-caption").textContent = caption;
  showSanity(answer);
  $("a-result").hidden = false;
  rememberInAddress({
    model: state.model, sample: body.sample || null, attr: method,
    alayer: body.layer || null, target: target || null,
  }, body.sample ? $("a-link") : null, "attr-section");
}

// A method that failed its sanity check on this model's weights (POST .../sanity-checks): its
// map barely depends on what the model learned, and the page says so above all else.
function showSanity(answer) {
  const warning = $("a-sanity");
  warning.hidden = answer.sanity !== "failed";
  const where = answer.layer ? ` at ${answer.layer}` : "";
  warning.textContent = warning.hidden ? "" : `⚠ ${answer.method}${where} failed its sanity check on ` +
    `this model's weights: its map barely changes when the learned weights are randomized, so it ` +
    `does not show what the model used. Prefer a method that passed (GET /v1/attribution-methods?model=${answer.model}).`;
}

// ---- home: wiring, and a shared address opened again --------------------------------------

// Called by viewer.js whenever the model (and so its layers) changes.
function panelsForModel(layers, info) {
  fillWeightLayers(layers);
  fillAttributionChoices(layers, info);
  $("w-figure").hidden = true;
  $("a-result").hidden = true;
}

// Called once by viewer.js when the home page is ready: wire the buttons, then show what a
// shared address asks for (?weights=..., ?attr=...).
async function homePanels() {
  $("w-show").addEventListener("click", guard(showWeights));
  $("a-explain").addEventListener("click", guard(explain));
  $("a-method").addEventListener("change", updateMethod);
  await loadAttributionMethods();
  const params = pageParams();
  if (params.get("weights")) {
    setIfOption($("w-layer"), params.get("weights"));
    setIfOption($("w-mode"), params.get("wmode"));
    setIfOption($("w-normalize"), params.get("wnorm"));
    $("w-top-k").value = params.get("wtop") || "";
    await showWeights();
  }
  if (params.get("attr")) {
    setIfOption($("a-method"), params.get("attr"));
    updateMethod();
    setIfOption($("a-layer"), params.get("alayer"));
    if (params.get("target")) chooseTarget(params.get("target"), params.get("target"));
    await explain();
  }
  if (location.hash) document.getElementById(location.hash.slice(1))?.scrollIntoView();
}

// ---- a unit's page: its filter -----------------------------------------------------------

// The convolution whose filter `channel` makes this unit: the layer itself, or else the last
// convolution before it with as many output channels (a conv's ReLU, its batch norm).
function producingConv(layers, layer) {
  const at = layers.findIndex((l) => l.name === layer);
  if (layers[at].axes !== "CHW") return null; // a filter makes a channel of a CHW layer only
  const channels = layers[at].shape[0];
  for (let i = at; i >= 0; i--) {
    if (isConv(layers[i])) return layers[i].shape[0] === channels ? layers[i] : null;
  }
  return null;
}

async function unitWeights(model, layer, channel) {
  const status = $("unit-weights-status");
  const conv = producingConv(state.layers, layer);
  if (!conv) {
    status.textContent = `${layer} is not made by one filter of a convolution: no weights to draw.`;
    return;
  }
  const query = new URLSearchParams({ filters: String(channel), mode: "auto", k: "8", columns: "8" });
  let w;
  try {
    w = await getJSON(`/v1/models/${encodeURIComponent(model)}/layers/${encodeURIComponent(conv.name)}/weights?${query}`);
  } catch (error) {
    if (error.status === 422) { status.textContent = error.message; return; }
    throw error;
  }
  $("unit-weights-image").src = `data:image/png;base64,${w.image}`;
  const slices = w.mode === "slices" ? `, its ${w.grid.filters.length} strongest input-channel slices` : "";
  status.textContent = conv.name === layer ? "" : `${layer} is the output of ${conv.name}: its filter ${channel}.`;
  $("unit-weights-caption").textContent = `filter ${channel} of ${w.layer} (${w.kind} [${w.weight_shape.join(", ")}]) · ${w.mode}${slices}`;
  $("unit-weights-figure").hidden = false;
  hoverTiles($("unit-weights-image"), () => ({ ...w.grid, count: w.stats.length }), (i) => {
    const s = w.stats[i];
    const slice = s.input_channel === null ? "" : `input channel ${s.input_channel}: `;
    return `${slice}min ${fmt(s.min)}  max ${fmt(s.max)}  L2 ${fmt(s.norm)}`;
  });
}

// ---- a unit's page: dataset exemplars ----------------------------------------------------

const EXEMPLARS_K = 8;
const exemplarState = { job: null, layer: null, channel: null };

async function loadDatasets() {
  const { datasets } = await getJSON("/v1/datasets");
  const select = $("ex-dataset");
  select.innerHTML = "";
  for (const d of datasets) {
    const option = new Option(d.error ? `${d.name} (unavailable)` : `${d.name} (${d.images} images)`, d.name);
    option.disabled = Boolean(d.error);
    option.title = d.error || d.description;
    select.add(option);
  }
  const usable = datasets.filter((d) => !d.error).map((d) => d.name);
  select.value = usable.includes("shapes") ? "shapes" : usable[0] || "";
}

const exemplarMode = () => document.querySelector("input[name=ex-mode]:checked").value;

// Mine the chosen data set for this layer (an identical earlier job is reused at once), follow
// it, then draw the unit's images.
async function mineExemplars() {
  const { layer, channel } = exemplarState;
  const body = { dataset: $("ex-dataset").value, layers: [layer], k: EXEMPLARS_K, pool: $("ex-pool").value, bottom: true };
  if (!body.dataset) throw new Error("no data set can be read; name one in the models file");
  rememberInAddress({ dataset: body.dataset, pool: body.pool === "mean" ? null : body.pool, mode: exemplarMode() === "full" ? null : exemplarMode() });
  const status = $("ex-status");
  const progress = $("ex-progress");
  document.body.dataset.exemplars = "running";
  $("ex-top-figure").hidden = $("ex-bottom-figure").hidden = $("ex-picked").hidden = true;
  const show = (j) => {
    status.textContent = j.progress
      ? `${j.status}: ${j.progress.step} / ${j.progress.total} ${j.progress.unit || ""}`.trim()
      : j.status;
    if (j.progress) { progress.max = j.progress.total || 1; progress.value = j.progress.step; progress.hidden = false; }
  };
  let job = await (await postJSON(`/v1/models/${encodeURIComponent(state.model)}/exemplars`, body)).json();
  show(job);
  if (!FINISHED.includes(job.status)) job = await followJob(job.id, show);
  progress.hidden = true;
  if (job.status !== "succeeded") {
    document.body.dataset.exemplars = job.status;
    status.textContent = job.error ? `${job.status}: ${job.error.code}: ${job.error.message}` : job.status;
    return;
  }
  exemplarState.job = job;
  const r = job.result;
  const skipped = r.skipped ? `, ${r.skipped} unreadable file(s) skipped` : "";
  const took = job.started_at && job.finished_at
    ? ` in ${((Date.parse(job.finished_at) - Date.parse(job.started_at)) / 1000).toFixed(1)} s` : "";
  status.textContent = `${r.images} images of ${r.dataset} scored by their ${r.pool} activation${took}${skipped}`;
  await drawExemplars();
  document.body.dataset.exemplars = "succeeded";
  await compareWithData(state.model, layer, channel, job.id); // versus.js
}

async function drawExemplars() {
  const { job, layer, channel } = exemplarState;
  if (!job) return;
  const mode = exemplarMode();
  rememberInAddress({ mode: mode === "full" ? null : mode });
  for (const which of ["top", "bottom"]) {
    const path = `/v1/jobs/${job.id}/exemplars/${encodeURIComponent(layer)}/${channel}?mode=${mode}&which=${which}`;
    const grid = await getJSON(path);
    const img = $(`ex-${which}`);
    img.src = `data:image/png;base64,${grid.png}`;
    img.dataset.mode = grid.mode;
    img.dataset.images = JSON.stringify(grid.images);
    const scores = `${fmt(grid.scores[0])} … ${fmt(grid.scores[grid.scores.length - 1])}`;
    $(`ex-${which}-caption`).textContent = `${which} ${grid.images.length} of ${job.result.images} · ${mode} · scores ${scores}`;
    $(`ex-${which}-figure`).hidden = false;
    const layout = () => {
      // The render pads its tiles evenly; the padding follows from the image's width.
      const padding = (img.naturalWidth - grid.columns * grid.tile_size[1]) / (grid.columns + 1);
      return { columns: grid.columns, tile: grid.tile_size, padding, count: grid.images.length };
    };
    hoverTiles(img, layout,
      (i) => `${grid.images[i]}\nscore ${fmt(grid.scores[i])}\nclick: the whole image`,
      guard((i) => showDatasetImage(job.result.dataset, grid.images[i], `${which} ${i + 1}, score ${fmt(grid.scores[i])}`)));
  }
}

// One image of a data set, whole, beside the grids (fetched with the page's API key).
async function showDatasetImage(dataset, id, what) {
  const path = `/v1/datasets/${encodeURIComponent(dataset)}/images/${id.split("/").map(encodeURIComponent).join("/")}`;
  await loadImage($("ex-picked-image"), path);
  $("ex-picked-caption").textContent = `${id} · ${what}`;
  $("ex-picked").hidden = false;
}

// Called by viewer.js on a unit's page, after its checks: the filter now, exemplars when asked
// for (or at once when the address names a data set: ?dataset=shapes&mode=crop).
async function unitPanels(model, layer, channel) {
  exemplarState.layer = layer;
  exemplarState.channel = channel;
  await loadDatasets();
  const params = pageParams();
  setIfOption($("ex-dataset"), params.get("dataset"));
  setIfOption($("ex-pool"), params.get("pool"));
  const mode = document.querySelector(`input[name=ex-mode][value="${params.get("mode") || "full"}"]`);
  if (mode) mode.checked = true;
  $("ex-mine").addEventListener("click", guard(mineExemplars));
  document.querySelectorAll("input[name=ex-mode]").forEach((r) => r.addEventListener("change", guard(drawExemplars)));
  const work = [unitWeights(model, layer, channel)];
  if (params.get("dataset")) work.push(mineExemplars());
  await Promise.all(work);
}

// ---- a unit's dissection (?dissection={job}, as the layer page links it) ------------------

async function unitDissection(model, layer, channel) {
  const jobId = new URLSearchParams(location.search).get("dissection");
  if (!jobId) return;
  const job = await getJSON(`/v1/jobs/${encodeURIComponent(jobId)}`);
  if (job.kind !== "dissection" || job.status !== "succeeded") {
    throw new Error(`job ${jobId} is not a succeeded dissection (${job.kind}, ${job.status})`);
  }
  const found = job.result.layers.find((l) => l.name === layer);
  const unit = found && found.units[channel];
  if (!unit) throw new Error(`dissection ${jobId} has no unit ${channel} of ${layer}`);
  const score = job.result.method === "masks" ? "IoU" : "precision@k";
  const others = unit.alternatives.map((a) => `${a.label} ${a.score.toFixed(3)}`).join(", ");
  // MIS: how readable the unit is to a machine observer (null unless the job asked for it).
  const mis = unit.mis === null || unit.mis === undefined ? "" : `, MIS ${unit.mis.toFixed(2)}`;
  $("unit-dissection-label").textContent =
    `${unit.label ?? "—"}: ${score} ${unit.score.toFixed(3)}${mis} (${job.result.dataset}); then ${others}`;
  $("unit-dissection-layer").href =
    `/layers/${encodeURIComponent(model)}/${encodeURIComponent(layer)}?job=${encodeURIComponent(jobId)}`;
  const path = `/v1/jobs/${encodeURIComponent(jobId)}/dissections/${encodeURIComponent(layer)}/${channel}`;
  await loadImage($("unit-dissection-image"), path, { headers: { Accept: "image/png" } });
  $("unit-dissection").hidden = false;
  document.body.dataset.dissection = "shown";
}
