// Talking to the service's /v1 API, for every page of the viewer (loaded before the page's own
// scripts): the API key of local storage sent with each call, problem+json answers as Errors.
"use strict";

const $ = (id) => document.getElementById(id);

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const key = localStorage.getItem("cnnviz-api-key");
  if (key) h["X-API-Key"] = key;
  return h;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

// fetch a /v1 path; a problem+json answer becomes an Error whose message is "code: detail".
async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = headers(opts.headers);
  const response = await fetch(path, opts);
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const problem = await response.json();
      message = `${problem.code || response.status}: ${problem.detail || problem.title}`;
    } catch (_) { /* not JSON */ }
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return response;
}

const getJSON = async (path) => (await api(path)).json();
const postJSON = async (path, body) =>
  api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });

// Images of the API go through fetch, so that an API key is sent with them too; `options`
// as api's (an Accept header, say). The image's previous object URL is released.
async function loadImage(img, path, options) {
  const blob = await (await api(path, options)).blob();
  if (img.dataset.objectUrl) URL.revokeObjectURL(img.dataset.objectUrl);
  img.dataset.objectUrl = URL.createObjectURL(blob);
  img.src = img.dataset.objectUrl;
}
