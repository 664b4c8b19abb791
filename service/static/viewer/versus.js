// A unit's optimized pattern beside its top dataset image: the pattern's activation over the top
// image's (ratio) and where it would rank among the data set's images, from the optimization's
// `vs_dataset` (POST .../optimizations with `exemplars_job`). The data set is an exemplars job
// (?exemplars={job}, or the one mined on the page) or a dissection (?dissection={job}). Loaded
// before viewer.js, whose helpers ($, api, postJSON, followJob, showResult, loadImage, fmt)
// these functions use when called.
"use strict";

const PATTERN = { steps: 256, seed: 0 };

// The job the page compares with: the one named in its address, if any.
function addressedReference() {
  const params = new URLSearchParams(location.search);
  return params.get("dissection") || params.get("exemplars");
}

// Optimize the unit's pattern (an identical earlier job is reused at once), compared with the
// data set of `reference` when there is one; a reference that does not fit (another layer, not
// succeeded) is said in the panel and the pattern is made without it.
async function unitPattern(model, layer, channel, reference = addressedReference()) {
  const status = $("unit-pattern-status");
  status.textContent = "optimizing…";
  const body = { layer, channels: [channel], ...PATTERN };
  let response;
  try {
    response = await postJSON(`/v1/models/${encodeURIComponent(model)}/optimizations`,
      reference ? { ...body, exemplars_job: reference } : body);
  } catch (error) {
    if (!reference || !error.status || error.status >= 500) throw error;
    showVersusNote(`cannot compare with job ${reference}: ${error.message}`);
    return unitPattern(model, layer, channel, null);
  }
  let job = await response.json();
  if (!["succeeded", "failed", "cancelled"].includes(job.status)) {
    job = await followJob(job.id, (j) => {
      if (j.progress) status.textContent = `${j.status}: step ${j.progress.step} / ${j.progress.total}`;
    });
  }
  const caption = document.createElement("span");
  showResult(job, $("unit-pattern"), caption);
  if (job.status !== "succeeded") { status.textContent = caption.textContent; return; }
  const u = job.result.units[0];
  const img = $("unit-pattern");
  if (u.image) img.src = `data:image/png;base64,${u.image}`; // the unit alone, not its grid
  else await loadImage(img, `/v1/jobs/${job.id}/units/0.png`);
  status.textContent = `objective ${fmt(u.initial_objective)} → ${fmt(u.objective)} in ${job.request.steps} steps (seed ${job.result.seed})`;
  if (u.vs_dataset) await showVersus(u.vs_dataset);
}

function showVersusNote(text) {
  $("versus-hint").textContent = text;
  $("versus-hint").hidden = false;
}

// The figures in words, and the warning when real images excite the unit more than its pattern.
async function showVersus(v) {
  const rank = v.rank === null ? `> ${v.top_k}` : `${v.rank}`;
  const ratio = v.ratio === null ? "— (top ≤ 0)" : `${v.ratio.toFixed(2)}×`;
  $("versus-ratio").textContent = `${ratio} (${fmt(v.activation)} ÷ ${fmt(v.top_score)})`;
  $("versus-rank").textContent = `${rank} of ${v.images} images`;
  $("versus-source").textContent = `${v.dataset}, ${v.pool}, job ${v.exemplars_job.slice(0, 8)}`;
  $("versus-figures").hidden = false;
  const weaker = v.ratio === null ? v.activation < v.top_score : v.ratio < 1;
  $("versus-warning").hidden = !weaker;
  $("versus-warning").textContent = weaker
    ? `The unit responds more to ${v.rank === null ? `at least ${v.top_k}` : v.rank - 1} real image(s) than to ` +
      "its optimized pattern: the pattern misses part of what the unit detects."
    : "";
  $("versus-hint").hidden = true;
  if (v.top_image) {
    const path = `/v1/datasets/${encodeURIComponent(v.dataset)}/images/${v.top_image.split("/").map(encodeURIComponent).join("/")}`;
    await loadImage($("versus-top"), path);
    $("versus-top").title = v.top_image;
    $("versus-top-caption").textContent = `its top image in ${v.dataset}`;
    $("versus-top-figure").hidden = false;
  }
  document.body.dataset.versus = weaker ? "weaker" : "stronger";
}

// Called by panels.js once exemplars are mined on the page: the pattern again, compared with them.
async function compareWithData(model, layer, channel, jobId) {
  if (addressedReference()) return; // the address's own comparison stays
  await unitPattern(model, layer, channel, jobId);
}
