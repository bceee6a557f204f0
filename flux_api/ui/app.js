// The service's web page: fills the form from the service (limits and defaults from /openapi.json, LoRAs
// from /loras, presets from /presets), queues a job (POST /jobs), follows it on its event stream
// (GET /jobs/{id}/events, read with fetch: EventSource cannot send the API key), cancels it
// (DELETE /jobs/{id}) and shows the images with their seeds and timings. Plain JS, no build step.
"use strict";

// The page lives at <service>/ui/, so the API is one level up (whatever prefix a proxy adds).
const API_ROOT = new URL("..", location.href);
const KEY_STORE = "flux_api.api_key";
// Fields of the /generate body that are numbers in the form, with the JSON type the service expects.
const INTEGER_FIELDS = ["width", "height", "num_inference_steps", "seed", "num_images"];
const NUMBER_FIELDS = [...INTEGER_FIELDS, "guidance_scale"];
const MAX_SEED = 2 ** 32 - 1;
const MEDIA = { png: "image/png", jpeg: "image/jpeg", webp: "image/webp" };

const $ = (id) => document.getElementById(id);
const page = { jobId: null, endedJob: null, presets: {}, historyCount: 0 };

// ---------------------------------------------------------------- calls to the service

class ApiError extends Error {
  constructor(status, message, field = null, type = null) {
    super(message);
    this.status = status;
    this.field = field;
    this.type = type;
  }
}

function apiKey() {
  return localStorage.getItem(KEY_STORE) || "";
}

function headers(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

// Every call goes through here (or through follow() for the event stream): the key is always sent.
async function api(path, { method = "GET", body } = {}) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  let resp;
  try {
    resp = await fetch(new URL(path, API_ROOT), init);
  } catch (e) {
    throw new ApiError(0, `the service did not answer (${e.message})`);
  }
  if (!resp.ok) throw await errorOf(resp);
  return resp.json();
}

// The service's one error body, {"error": {"type", "message", "details", ...}}, as an ApiError that
// names the field at fault (a 422's details[0].loc) when there is one.
async function errorOf(resp) {
  let error = {};
  try {
    error = (await resp.json()).error || {};
  } catch (e) {
    // not JSON (a proxy's page): the status says it
  }
  let message = error.message || `${resp.status} ${resp.statusText}`;
  let field = null;
  if (Array.isArray(error.details) && error.details.length) {
    const loc = (error.details[0].loc || []).filter((p) => !["body", "query", "path"].includes(p));
    field = loc.length ? String(loc[0]) : null;
  } else if (error.details && typeof error.details.field === "string") {
    field = error.details.field;
  }
  if (resp.status === 401) {
    askForKey();
    message = apiKey() ? `the API key was refused (${message}); enter a valid one above`
                       : `this service needs an API key: enter it above (${message})`;
  }
  const retry = resp.headers.get("Retry-After");
  if (retry) message += ` (retry after ${retry} s)`;
  return new ApiError(resp.status, message, field, error.type || error.code || null);
}

// Server-Sent Events from a fetch() response body: yields {event, data} with data parsed as JSON.
async function* sseEvents(resp) {
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    buffer = buffer.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue; // a comment (the server's keep-alive ping)
        const colon = line.indexOf(":");
        const name = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? "" : line.slice(colon + 1);
        if (val.startsWith(" ")) val = val.slice(1);
        if (name === "event") event = val;
        else if (name === "data") data.push(val);
      }
      if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
    }
  }
}

// ---------------------------------------------------------------- the API key

function askForKey() {
  $("key-needed").hidden = false;
  $("key-form").classList.add("wanted");
  $("api-key").focus();
}

function useKey(ev) {
  ev.preventDefault();
  const key = $("api-key").value.trim();
  if (key) localStorage.setItem(KEY_STORE, key);
  else localStorage.removeItem(KEY_STORE);
  $("key-needed").hidden = true;
  $("key-form").classList.remove("wanted");
  clearError();
  loadService();
}

// ---------------------------------------------------------------- filling the form from the service

// Limits and defaults from the service's own schema of the /generate body, so the form shows the
// configured ones (and the browser's number inputs step as the service requires: multiples of 16).
async function loadLimits() {
  const spec = await api("openapi.json");
  const props = spec.components.schemas.GenerateRequest.properties;
  for (const name of [...NUMBER_FIELDS, "lora_weight"]) {
    const input = $(name);
    const prop = props[name];
    if (!input || !prop) continue;
    const schema = prop.anyOf ? prop.anyOf.find((s) => s.type !== "null") : prop;
    if (schema.minimum !== undefined) input.min = schema.minimum;
    if (schema.maximum !== undefined) input.max = schema.maximum;
    if (schema.multipleOf !== undefined) input.step = schema.multipleOf;
    else if (schema.type === "integer") input.step = 1;
    if (prop.default !== undefined && prop.default !== null) input.value = prop.default;
    if (prop.description) input.title = prop.description;
  }
  if (props.prompt && props.prompt.maxLength) $("prompt").maxLength = props.prompt.maxLength;
}

async function loadService() {
  const results = await Promise.allSettled([
    api("").then((info) => {
      $("service-name").textContent = `${info.service.replace(/^flux-/, "").toUpperCase()}`;
      $("service-state").textContent = `${info.model} · ${info.backend || "no backend yet"} · ${info.state}`;
      document.title = `FLUX ${info.service} · image generation`;
    }),
    api("loras").then((loras) => {
      fillSelect($("lora_name"), loras.available.map((l) => [l.name, `${l.name} (rank ${l.rank ?? "?"})`]));
    }),
    api("presets").then((presets) => {
      page.presets = presets.presets;
      fillSelect($("preset"), Object.entries(presets.presets).map(([name, p]) => [name, `${name}: ${p.description}`]));
    }),
  ]);
  const failed = results.filter((r) => r.status === "rejected").map((r) => r.reason);
  if (failed.some((e) => e.status === 401)) {
    $("service-state").textContent = "needs an API key";
  } else if (failed.length) {
    showError(failed[0], "Could not read the service's settings");
  }
}

function fillSelect(select, options) {
  const chosen = select.value;
  select.replaceChildren(new Option("none", ""));
  for (const [value, text] of options) select.add(new Option(text, value));
  select.value = options.some(([v]) => v === chosen) ? chosen : "";
}

// A preset fills the fields it sets; those are then left out of the request, so the service applies
// the preset; a field edited afterwards is sent (a field given wins over the preset).
function applyPreset() {
  for (const input of document.querySelectorAll("[data-from-preset]")) delete input.dataset.fromPreset;
  const preset = page.presets[$("preset").value];
  if (!preset) return;
  for (const [name, value] of Object.entries(preset.fields)) {
    const input = $(name);
    if (!input) continue;
    input.value = value;
    input.dataset.fromPreset = "1";
  }
}

function randomSeed() {
  const n = crypto.getRandomValues(new Uint32Array(1))[0];
  const images = Number($("num_images").value) || 1;
  $("seed").value = Math.min(n, MAX_SEED - images + 1); // seeds seed .. seed + num_images - 1
  delete $("seed").dataset.fromPreset;
}

// ---------------------------------------------------------------- a run

// The /generate body from the form: blank fields are left to the service's defaults; numbers go as
// JSON numbers exactly as typed (the service, not the page, decides what is valid, and says which field).
function requestBody() {
  const body = { prompt: $("prompt").value };
  const negative = $("negative_prompt").value;
  if (negative.trim()) body.negative_prompt = negative;
  for (const name of NUMBER_FIELDS) {
    const input = $(name);
    const text = input.value.trim();
    if (text === "" || input.dataset.fromPreset) continue;
    body[name] = Number(text);
  }
  if ($("lora_name").value) {
    body.lora_name = $("lora_name").value;
    body.lora_weight = Number($("lora_weight").value);
  }
  if ($("preset").value) body.preset = $("preset").value;
  return body;
}

async function generate(ev) {
  ev.preventDefault();
  if (page.jobId) return;
  clearError();
  const body = requestBody();
  setBusy(true);
  setProgress(0, "Sending...");
  try {
    const job = await api("jobs", { method: "POST", body });
    page.jobId = job.id;
    $("status").dataset.jobId = job.id;
    $("cancel").disabled = false;
    showState(job);
    const started = performance.now();
    const result = await follow(job.id);
    if (result) showResult(result, body, performance.now() - started);
  } catch (e) {
    setProgress(0, "Failed.");
    showError(e);
  } finally {
    page.jobId = null;
    setBusy(false);
  }
}

// Follows the job on its event stream until its result (returned) or its end without one.
async function follow(jobId) {
  let resp;
  try {
    resp = await fetch(new URL(`jobs/${jobId}/events`, API_ROOT), { headers: headers({ Accept: "text/event-stream" }) });
  } catch (e) {
    throw new ApiError(0, `the event stream could not be opened (${e.message})`);
  }
  if (!resp.ok) throw await errorOf(resp);
  for await (const { event, data } of sseEvents(resp)) {
    if (event === "state") showState(data);
    else if (event === "progress") showProgress(data);
    else if (event === "result") { page.endedJob = jobId; return data; }
    else if (event === "error") { page.endedJob = jobId; return showEnd(data); }
  }
  // The stream ended without its last event (a proxy cut it): the job itself says how it ended.
  const detail = await api(`jobs/${jobId}`);
  page.endedJob = jobId;
  if (detail.result) return detail.result;
  return showEnd({ state: detail.state, ...(detail.error || {}) });
}

function showState(job) {
  if (job.state === "queued") setProgress(0, `Queued (job ${job.id}), position ${job.position ?? "?"} in the queue.`);
  else if (job.state === "running") showProgress(job);
}

function showProgress(p) {
  const total = p.total_steps || 0;
  const images = p.num_images > 1 ? ` (image ${p.image} of ${p.num_images})` : "";
  const eta = p.eta_s != null ? `, about ${p.eta_s.toFixed(1)} s left` : "";
  setProgress(total ? p.step / total : 0, `Step ${p.step} of ${total}${images}${eta}.`);
}

// A job that ended without an image: cancelled is what the user asked for; anything else is an error.
function showEnd(end) {
  if (end.state === "cancelled") {
    setProgress(0, "Cancelled.");
  } else {
    setProgress(0, `Ended ${end.state}.`);
    showError(new ApiError(0, `${end.type || end.state}: ${end.message || "no image"}`), `The job ended ${end.state}`);
  }
  return null;
}

async function cancel() {
  const jobId = page.jobId;
  if (!jobId) return;
  $("cancel").disabled = true;
  try {
    await api(`jobs/${jobId}`, { method: "DELETE" });
    // The job may have ended (its stream said "Cancelled.") before this answer came back: say nothing then.
    if (page.endedJob !== jobId) setProgress(Number($("progress").value), "Cancelling (at the next step)...");
  } catch (e) {
    showError(e, "Could not cancel");
  }
}

function showResult(result, body, elapsedMs) {
  const images = result.images || [result.image];
  const seeds = result.seeds || [result.seed];
  const t = result.timings;
  setProgress(1, `Done: ${images.length} image${images.length > 1 ? "s" : ""} in ${(elapsedMs / 1000).toFixed(1)} s.`);
  const figures = images.map((b64, i) => {
    const url = URL.createObjectURL(blobOf(b64, MEDIA[result.format] || "application/octet-stream"));
    const name = `flux-${seeds[i]}.${result.format === "jpeg" ? "jpg" : result.format}`;
    const fig = el("figure", { className: "result" },
      el("img", { src: url, alt: body.prompt, title: body.prompt }),
      el("figcaption", {},
        el("span", { className: "seed" }, `seed ${seeds[i]}`),
        ` · ${result.width}×${result.height} · ${result.num_inference_steps} steps`,
        el("br"),
        el("span", { className: "timings" },
           `inference ${fmtMs(t.inference_ms)}, queue ${fmtMs(t.queue_ms)}, total ${fmtMs(t.total_ms)}` +
           (images.length > 1 ? " (for all images)" : "")),
        el("br"),
        el("a", { href: url, download: name, className: "download" }, `download ${name}`)));
    addToHistory(url, name, seeds[i], body.prompt, result);
    return fig;
  });
  $("images").replaceChildren(...figures);
  if (result.warnings && result.warnings.length) {
    $("status").textContent += ` Warnings: ${result.warnings.join("; ")}`;
  }
}

function addToHistory(url, name, seed, prompt, result) {
  page.historyCount += 1;
  const loras = result.loras.length ? ` · LoRA ${result.loras.map((l) => `${l.name}@${l.weight}`).join(", ")}` : "";
  const item = el("li", {},
    el("a", { href: url, target: "_blank" }, el("img", { src: url, alt: prompt })),
    el("div", {},
      el("div", { className: "prompt" }, prompt),
      el("div", {}, `seed ${seed} · ${result.width}×${result.height} · ${result.num_inference_steps} steps${loras}`),
      el("div", { className: "muted" }, `${new Date().toLocaleTimeString()} · inference ${fmtMs(result.timings.inference_ms)}`),
      el("a", { href: url, download: name }, "download")));
  $("history").prepend(item);
}

// ---------------------------------------------------------------- small helpers

function setBusy(busy) {
  $("generate").disabled = busy;
  $("cancel").disabled = !busy || !page.jobId;
}

function setProgress(fraction, text) {
  $("progress").value = fraction;
  $("status").textContent = text;
}

function showError(e, prefix = null) {
  const box = $("error");
  const status = e.status ? ` (${e.status})` : "";
  const lead = prefix || (e.status === 422 ? "The service refused the request" : "Error");
  // The service's message names the field ("width: Input should be ..."); say it where it does not.
  const named = !e.field || e.message.startsWith(`${e.field}:`) ? e.message : `${e.field}: ${e.message}`;
  const text = `${lead}${status}: ${named}`;
  if (e.field) {
    const input = document.querySelector(`#generate-form [name="${CSS.escape(e.field)}"]`);
    if (input) {
      input.setAttribute("aria-invalid", "true");
      input.focus();
    }
  }
  box.textContent = text;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
  for (const input of document.querySelectorAll('[aria-invalid="true"]')) input.removeAttribute("aria-invalid");
}

function blobOf(b64, type) {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new Blob([bytes], { type });
}

function fmtMs(ms) {
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms)} ms`;
}

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

// ---------------------------------------------------------------- start

function start() {
  $("api-key").value = apiKey();
  $("key-form").addEventListener("submit", useKey);
  $("generate-form").addEventListener("submit", generate);
  $("cancel").addEventListener("click", cancel);
  $("random-seed").addEventListener("click", randomSeed);
  $("preset").addEventListener("change", applyPreset);
  $("generate-form").addEventListener("input", (ev) => {
    delete ev.target.dataset.fromPreset; // edited by hand: sent, and it wins over the preset
    ev.target.removeAttribute("aria-invalid");
  });
  loadLimits().catch((e) => showError(e, "Could not read the service's limits"));
  loadService();
}

start();
