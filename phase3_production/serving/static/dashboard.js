"use strict";
// The live view: GET /v1/stats once a second, then tiles, charts and the drift banner.
// Everything shown is computed by the service (serving/live.py, serving/drift.py); this file only draws it.

const $ = (id) => document.getElementById(id);
const POLL_MS = 1000;

function ms(value) {
  return value === null || value === undefined ? "-" : `${value.toFixed(value < 10 ? 2 : 0)} ms`;
}

function showTiles(stats) {
  const w = stats.window;
  $("rate").textContent = w.requests_per_s.toFixed(1);
  $("p50").textContent = ms(w.p50_ms);
  $("p95").textContent = ms(w.p95_ms);
  $("p99").textContent = ms(w.p99_ms);
  $("errors-4xx").textContent = w["4xx"];
  $("errors-5xx").textContent = w["5xx"];
  $("shed-503").textContent = w["503"];
  const a = stats.live_accuracy;
  $("accuracy").textContent = a.value === null ? "no labels yet" : `${(100 * a.value).toFixed(1)}% of ${a.labelled}`;
}

function showDrift(drift) {
  const banner = $("drift-status");
  if (!drift.enabled) {
    banner.dataset.alarm = "off";
    banner.textContent = `Drift monitor off: ${drift.reason}`;
    return;
  }
  if (drift.failure) {
    banner.dataset.alarm = "failed";
    banner.textContent = `Drift monitor failed: ${drift.failure.type}: ${drift.failure.message}`;
    return;
  }
  if (!drift.history.length) {
    banner.dataset.alarm = "unknown";
    banner.textContent = `Drift monitor: ${drift.requests_seen} of the first ${drift.window} requests seen; ` +
      "the first check comes when the window is full";
    return;
  }
  banner.dataset.alarm = drift.alarm ? "true" : "false";
  banner.textContent = drift.alarm
    ? `DRIFT ALARM after ${drift.requests_seen} requests: ${drift.reasons.join("; ")}`
    : `No drift: the last ${drift.window} requests look like the reference (checked after ${drift.requests_seen})`;
  const rows = $("drift-tests").tBodies[0];
  rows.replaceChildren();
  for (const [name, p] of Object.entries(drift.p_values)) {
    const row = rows.insertRow();
    row.insertCell().textContent = name;
    row.insertCell().textContent = p.toExponential(1);
    row.insertCell().textContent = name in drift.psi ? drift.psi[name].toFixed(3) : "";
  }
}

// The live accuracy of each second that brought labels, carried forward through the seconds that did not.
function carriedForward(values) {
  let last = null;
  return values.map((v) => (v === null ? last : (last = v)));
}

function showCharts(stats) {
  const s = stats.series;
  const column = (key) => s.map((row) => row[key]);
  const seconds = `last ${s.length} s`;
  lineChart($("chart-rate"), [{ name: "requests/s", values: column("requests") }], { xLabel: seconds });
  lineChart($("chart-latency"), [
    { name: "p50", values: column("p50_ms") },
    { name: "p95", values: column("p95_ms") },
    { name: "p99", values: column("p99_ms") },
  ], { xLabel: seconds });
  lineChart($("chart-errors"), [
    { name: "4xx", values: column("4xx") },
    { name: "5xx", values: column("5xx") },
    { name: "503", values: column("503") },
  ], { xLabel: seconds });
  const sizes = Object.keys(stats.batch_sizes);
  barChart($("chart-batches"), sizes, sizes.map((k) => stats.batch_sizes[k]));
  const drift = stats.drift;
  if (drift.enabled) {
    lineChart($("chart-drift"), [
      { name: "smallest KS p", values: drift.history.map((h) => h.min_ks_p) },
      { name: "class mix p", values: drift.history.map((h) => h.class_mix_p) },
    ], { log: true, min: 1e-12, threshold: drift.threshold, xLabel: "checks" });
  }
  lineChart($("chart-accuracy"), [{ name: "live accuracy", values: carriedForward(column("live_accuracy")) }],
    { min: 0, max: 1, xLabel: seconds });
}

async function poll() {
  try {
    const reply = await fetch("/v1/stats", { cache: "no-store" });
    if (!reply.ok) throw new Error(`HTTP ${reply.status}`);
    const stats = await reply.json();
    $("service").textContent = `${stats.ready ? "Ready" : "NOT READY"}: model ${stats.model_version}, ` +
      `up ${Math.round(stats.uptime_s)} s.`;
    if (stats.failure) {
      $("service").textContent += ` Latency sampling failed: ${stats.failure.type}: ${stats.failure.message}`;
    }
    showTiles(stats);
    showDrift(stats.drift);
    showCharts(stats);
    document.body.dataset.updated = String(stats.now);
  } catch (failure) {
    $("service").textContent = `The service does not answer /v1/stats (${failure.message}); retrying.`;
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
