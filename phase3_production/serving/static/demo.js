"use strict";
// The demo page. It uses only the public API, as any client would:
//   GET /v1/model    the served model (version, sha256)
//   GET /v1/samples  a few labelled test images that came with the model
//   POST /v1/predict one image as multipart/form-data, field "file"
// An error is shown with the API's own message, so the page teaches what the API says.

const $ = (id) => document.getElementById(id);

async function getJSON(path) {
  const reply = await fetch(path);
  if (!reply.ok) throw new Error(`${path}: HTTP ${reply.status}`);
  return reply.json();
}

function showError(text) {
  $("result").hidden = true;
  $("error").textContent = text;
  $("error").hidden = false;
}

// The bytes of a base64 text as a Blob (the samples come as base64 PNG).
function blobOfBase64(text, type) {
  const raw = atob(text);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return new Blob([bytes], { type });
}

async function classify(blob, fileName) {
  $("error").hidden = true;
  document.body.dataset.state = "waiting";
  const form = new FormData();
  form.append("file", blob, fileName);
  const started = performance.now();
  let reply;
  try {
    reply = await fetch("/v1/predict", { method: "POST", body: form });
  } catch (failure) {
    document.body.dataset.state = "error";
    showError(`The service did not answer (${failure.message}).`);
    return;
  }
  const elapsed = performance.now() - started;
  const body = await reply.json().catch(() => null);
  if (!reply.ok) {
    document.body.dataset.state = "error";
    const error = body && body.error;
    showError(error ? `${error.message} (HTTP ${reply.status}, ${error.code})` : `HTTP ${reply.status}`);
    return;
  }
  showAnswer(body, blob, elapsed);
  document.body.dataset.state = "answered";
}

function showAnswer(answer, blob, elapsedMs) {
  const preview = $("preview");
  if (preview.src.startsWith("blob:")) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(blob);
  $("top1").textContent = answer.class;
  const top3 = Object.entries(answer.probabilities).sort((a, b) => b[1] - a[1]).slice(0, 3);
  const list = $("top3");
  list.replaceChildren();
  for (const [name, p] of top3) {
    const item = document.createElement("li");
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = name;
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    bar.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = `${(100 * p).toFixed(1)}%`;
    item.append(label, bar, value);
    list.append(item);
  }
  $("timing").textContent = `${elapsedMs.toFixed(1)} ms in the browser (upload, decode, model, answer); ` +
    `prediction ${answer.prediction_id.slice(0, 8)}, request ${answer.request_id.slice(0, 8)}.`;
  $("result").hidden = false;
}

async function showModel() {
  try {
    const model = await getJSON("/v1/model");
    $("model-version").textContent = model.version;
    $("model-sha256").textContent = model.sha256;
    $("model-quantization").textContent = model.quantization;
    $("model-card-link").hidden = !model.card_url;
  } catch (failure) {
    $("model-version").textContent = `unknown (${failure.message})`;
  }
}

async function showSamples() {
  let samples = [];
  try {
    const data = await getJSON("/v1/samples");
    samples = data.samples;
    if (!samples.length) $("samples-note").textContent = data.reason;
  } catch (failure) {
    $("samples-note").textContent = `No samples (${failure.message}).`;
  }
  for (const sample of samples) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "sample";
    button.title = `a test image of a ${sample.label}`;
    button.dataset.label = sample.label;
    const image = document.createElement("img");
    image.src = `data:image/png;base64,${sample.png_base64}`;
    image.alt = sample.label;
    const caption = document.createElement("span");
    caption.textContent = sample.label;
    button.append(image, caption);
    button.addEventListener("click", () =>
      classify(blobOfBase64(sample.png_base64, "image/png"), `${sample.label}.png`));
    $("samples").append(button);
  }
  // A link can show an answer at once: /#sample=3 classifies the fourth sample when the page opens.
  const chosen = /^#sample=(\d+)$/.exec(window.location.hash);
  if (chosen && Number(chosen[1]) < samples.length) $("samples").children[Number(chosen[1])].click();
}

function wireUploads() {
  const input = $("file");
  input.addEventListener("change", () => {
    if (input.files.length) classify(input.files[0], input.files[0].name);
    input.value = "";   // choosing the same file again is a new request
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) classify(file, file.name);
  });
}

wireUploads();
showModel();
showSamples();
