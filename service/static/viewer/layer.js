// A dissected layer on one page: its units sorted by score, each with its label and a strip of
// its top dataset images. /layers/{model}/{layer}?job={id}; without a job, the caller's
// dissections of the layer, and a form that starts one.
"use strict";

// api.js, loaded first, talks to the API ($, getJSON, postJSON, loadImage, showError).
const STRIP = 8;

function where() {
  const parts = location.pathname.split("/").filter(Boolean).map(decodeURIComponent);
  return { model: parts[1], layer: parts.slice(2).join("/"), job: new URLSearchParams(location.search).get("job") };
}

// The caller's dissections of this layer, newest first (GET /v1/jobs lists a model's dissections
// without their results; each job's request names its layers). At most PAGES pages are read.
const PAGES = 5;

async function earlierDissections(page) {
  const found = [];
  let token = null;
  for (let i = 0; i < PAGES; i++) {
    const query = new URLSearchParams({ kind: "dissection", model: page.model, page_size: "100" });
    if (token) query.set("page_token", token);
    const listed = await getJSON(`/v1/jobs?${query}`);
    found.push(...listed.jobs.filter((job) => (job.request.layers || []).includes(page.layer)));
    token = listed.next_page_token;
    if (!token) break;
  }
  return found;
}

async function offerEarlier(page) {
  const jobs = await earlierDissections(page);
  const list = $("dissections");
  list.replaceChildren();
  for (const job of jobs) {
    const item = document.createElement("li");
    item.dataset.job = job.id;
    const link = document.createElement("a");
    link.href = `${location.pathname}?job=${encodeURIComponent(job.id)}`;
    link.textContent = `${job.request.dataset}, ${job.request.method || "default"}`;
    const when = job.created_at.replace("T", " ").slice(0, 19);
    const others = job.request.layers.length > 1 ? `, with ${job.request.layers.length - 1} other layer(s)` : "";
    item.append(link, ` — ${job.status}, ${when} UTC, job ${job.id.slice(0, 8)}${others}`);
    list.append(item);
  }
  $("earlier-none").hidden = jobs.length > 0;
  $("earlier").hidden = false;
}

async function offerStart(page) {
  await offerEarlier(page);
  $("start").hidden = false;
  const datasets = (await getJSON("/v1/datasets")).datasets.filter((d) => !d.error);
  for (const d of datasets) {
    const option = new Option(`${d.name} (${d.images} images${d.has_masks ? ", masks" : ""})`, d.name);
    $("dataset").add(option);
  }
  $("dissect").onclick = async () => {
    showError("");
    try {
      const body = { dataset: $("dataset").value, layers: [page.layer] };
      if ($("method").value) body.method = $("method").value;
      if ($("mis").checked) body.mis = true;
      const job = await (await postJSON(`/v1/models/${encodeURIComponent(page.model)}/dissections`, body)).json();
      history.pushState(null, "", `${location.pathname}?job=${encodeURIComponent(job.id)}`);
      $("start").hidden = true;
      $("earlier").hidden = true;
      await follow(page, job.id);
    } catch (error) { showError(error.message); }
  };
  document.body.dataset.ready = "start";
}

async function follow(page, jobId) {
  $("progress-section").hidden = false;
  for (;;) {
    const job = await getJSON(`/v1/jobs/${encodeURIComponent(jobId)}`);
    $("job-status").textContent = `job ${job.id.slice(0, 8)}: ${job.status}`;
    if (job.progress) {
      $("job-progress").max = job.progress.total;
      $("job-progress").value = job.progress.step;
      $("job-count").textContent = `${job.progress.step} / ${job.progress.total} ${job.progress.unit}`;
    }
    if (job.status === "succeeded") { show(page, job); return; }
    if (["failed", "cancelled"].includes(job.status)) {
      showError(`the dissection ${job.status}${job.error ? ": " + job.error.message : ""}`);
      document.body.dataset.ready = "failed";
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 700));
  }
}

function show(page, job) {
  if (job.kind !== "dissection") throw new Error(`job ${job.id} is a ${job.kind} job, not a dissection`);
  const result = job.result;
  const layer = result.layers.find((l) => l.name === page.layer);
  if (!layer) throw new Error(`job ${job.id} did not dissect layer ${page.layer}; it has ${result.layers.map((l) => l.name).join(", ")}`);
  const scoreName = result.method === "masks" ? "IoU" : "precision@k";
  $("summary").textContent = `${layer.name}: ${layer.detectors} detectors of ${layer.units.length} units, ` +
    `${layer.unique_concepts} concepts (${result.method}, ${scoreName}; ${result.dataset}, ${result.images} images)` +
    (result.mis_encoder ? `; MIS by ${result.mis_encoder.model} ${result.mis_encoder.layer}` : "");
  const units = [...layer.units].sort((a, b) => b.score - a.score || a.channel - b.channel);
  const body = $("units");
  body.replaceChildren();
  for (const unit of units) {
    const row = body.insertRow();
    row.dataset.channel = unit.channel;
    const link = document.createElement("a");
    link.href = `/units/${encodeURIComponent(page.model)}/${encodeURIComponent(page.layer)}/${unit.channel}` +
      `?dissection=${encodeURIComponent(job.id)}`;
    link.textContent = `unit ${unit.channel}`;
    row.insertCell().append(link);
    row.insertCell().textContent = unit.label ?? "—";
    row.insertCell().textContent = unit.score.toFixed(3);
    row.insertCell().textContent = unit.mis == null ? "—" : unit.mis.toFixed(3);
    row.insertCell().textContent = unit.alternatives.map((a) => `${a.label} ${a.score.toFixed(3)}`).join(", ");
    const strip = row.insertCell();
    strip.className = "strip";
    for (const exemplar of unit.top.slice(0, STRIP)) {
      const img = document.createElement("img");
      img.className = "thumb";
      img.alt = exemplar.image;
      img.title = `${exemplar.image}: ${exemplar.score.toFixed(3)}`;
      strip.append(img);
      loadImage(img, `/v1/datasets/${encodeURIComponent(result.dataset)}/images/${exemplar.image.split("/").map(encodeURIComponent).join("/")}`)
        .catch((error) => showError(error.message));
    }
  }
  $("units-section").hidden = false;
  document.body.dataset.ready = "layer";
}

async function main() {
  $("api-key").value = localStorage.getItem("cnnviz-api-key") || "";
  $("api-key").onchange = () => { localStorage.setItem("cnnviz-api-key", $("api-key").value); location.reload(); };
  const page = where();
  $("title").textContent = `${page.model} / ${page.layer}`;
  document.title = `cnnviz — ${page.model} ${page.layer}`;
  try {
    if (page.job) await follow(page, page.job);
    else await offerStart(page);
  } catch (error) {
    showError(error.message);
    document.body.dataset.ready = "failed";
  }
}

main();
