"use strict";
// Two small charts drawn on a <canvas> by hand: a line chart and a bar chart.
// No library: a dashboard that must work offline ships its own drawing code.

const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];

// A canvas sized for the screen: CSS pixels times devicePixelRatio, so lines stay sharp.
function prepare(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = canvas.clientHeight;
  if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
  if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
  const context = canvas.getContext("2d");
  context.setTransform(ratio, 0, 0, ratio, 0, 0);
  context.clearRect(0, 0, width, height);
  context.font = "11px system-ui, sans-serif";
  return { context, width, height, left: 46, right: width - 8, top: 8, bottom: height - 20 };
}

function tickText(value, log) {
  if (log) return `1e${Math.round(Math.log10(value))}`;
  if (Math.abs(value) >= 100) return value.toFixed(0);
  return Number(value.toPrecision(2)).toString();
}

// series: [{name, values: [number|null]}]; options: {log, min, max, threshold, xLabel}
// A null value is a gap (a second without traffic has no latency).
function lineChart(canvas, series, options = {}) {
  const box = prepare(canvas);
  const { context: c } = box;
  const all = series.flatMap((s) => s.values).filter((v) => v !== null && Number.isFinite(v) && (!options.log || v > 0));
  const n = Math.max(1, ...series.map((s) => s.values.length));
  let low = options.min !== undefined ? options.min : Math.min(0, ...all);
  let high = options.max !== undefined ? options.max : (Math.max(0, ...all) || 1) * 1.1;   // all zero: 0..1
  if (options.log) {
    low = Math.min(options.min || 1e-12, ...all);
    high = 1;
  }
  const scale = options.log ? (v) => Math.log10(Math.max(v, low)) : (v) => v;
  const y = (v) => box.bottom - ((scale(v) - scale(low)) / (scale(high) - scale(low) || 1)) * (box.bottom - box.top);
  const x = (i) => box.left + (n === 1 ? 0 : (i / (n - 1)) * (box.right - box.left));
  // axes and ticks
  c.strokeStyle = "#999";
  c.fillStyle = "#555";
  c.beginPath();
  c.moveTo(box.left, box.top);
  c.lineTo(box.left, box.bottom);
  c.lineTo(box.right, box.bottom);
  c.stroke();
  const ticks = options.log
    ? [low, Math.pow(10, (Math.log10(low) + Math.log10(high)) / 2), high]
    : [low, (low + high) / 2, high];
  for (const t of ticks) c.fillText(tickText(t, options.log), 2, y(t) + 4);
  if (options.xLabel) c.fillText(options.xLabel, box.right - c.measureText(options.xLabel).width, box.bottom + 15);
  if (options.threshold !== undefined && options.threshold !== null) {
    c.setLineDash([4, 4]);
    c.strokeStyle = "#d62728";
    c.beginPath();
    c.moveTo(box.left, y(options.threshold));
    c.lineTo(box.right, y(options.threshold));
    c.stroke();
    c.setLineDash([]);
  }
  // one line per series, broken where a value is missing; the legend runs along the top
  let legendX = box.left + 6;
  series.forEach((s, k) => {
    c.strokeStyle = s.color || COLORS[k % COLORS.length];
    c.lineWidth = 1.5;
    c.beginPath();
    let drawing = false;
    s.values.forEach((v, i) => {
      if (v === null || !Number.isFinite(v)) { drawing = false; return; }
      if (drawing) c.lineTo(x(i), y(v)); else c.moveTo(x(i), y(v));
      drawing = true;
    });
    c.stroke();
    c.fillStyle = c.strokeStyle;
    c.fillText(s.name, legendX, box.top + 10);
    legendX += c.measureText(s.name).width + 14;
  });
  c.lineWidth = 1;
}

// labels and values of the same length; each bar is labelled underneath.
function barChart(canvas, labels, values) {
  const box = prepare(canvas);
  const { context: c } = box;
  const high = Math.max(1, ...values);
  const slot = (box.right - box.left) / Math.max(1, labels.length);
  c.fillStyle = "#555";
  c.fillText(String(high), 2, box.top + 8);
  labels.forEach((label, i) => {
    const h = (values[i] / high) * (box.bottom - box.top);
    c.fillStyle = COLORS[0];
    c.fillRect(box.left + i * slot + 2, box.bottom - h, Math.max(1, slot - 4), h);
    c.fillStyle = "#555";
    c.fillText(label, box.left + i * slot + slot / 2 - c.measureText(label).width / 2, box.bottom + 14);
  });
}
