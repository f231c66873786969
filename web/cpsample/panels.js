// The HTML panels CPSample puts in its nodes: Load Guard's facts, Protect Model's gate report, and the
// box that holds Train Guard's chart. Plain DOM, styled with ComfyUI's theme variables.

import { drawGate, drawTraining } from "./chart.js";

const STYLE_ID = "cpsample-panel-style";

function ensureStyle() {
  if (document.getElementById(STYLE_ID)) return;
  const style = document.createElement("style");
  style.id = STYLE_ID;
  style.textContent = `
.cpsample-panel { box-sizing: border-box; width: 100%; height: 100%; overflow: auto; padding: 4px 6px;
  font: 11px/1.35 sans-serif; color: var(--input-text, #ddd); background: var(--comfy-input-bg, #222);
  border-radius: 6px; }
.cpsample-panel .cps-head { font-weight: bold; margin-bottom: 3px; }
.cpsample-panel .cps-note { opacity: 0.75; }
.cpsample-panel .cps-error { color: #ef9a9a; }
.cpsample-panel table { border-collapse: collapse; width: 100%; }
.cpsample-panel td { padding: 1px 4px; vertical-align: top; }
.cpsample-panel td:first-child { opacity: 0.7; white-space: nowrap; }
.cpsample-panel canvas { display: block; width: 100%; }
.cpsample-panel .cps-ok { color: #81c784; } .cpsample-panel .cps-bad { color: #ffb74d; }`;
  document.head.appendChild(style);
}

export function makePanel(kind) {
  ensureStyle();
  const root = document.createElement("div");
  root.className = `cpsample-panel cpsample-${kind}`;
  root.dataset.cpsample = kind;
  return root;
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

const pct = (v) => `${Math.round(v * 100)}%`;

// A heading over a canvas that redraws itself when resized: built on the first render, reused after.
function headAndCanvas(root, canvasHeight, redraw) {
  let head = root.querySelector(".cps-head");
  let canvas = root.querySelector("canvas");
  if (!canvas) {
    root.replaceChildren();
    head = el("div", "", "cps-head");
    canvas = el("canvas");
    canvas.style.height = canvasHeight;
    root.append(head, canvas);
    new ResizeObserver(() => redraw(canvas)).observe(canvas);
  }
  return [head, canvas];
}

// ---- Train Guard

export function renderTraining(root, train) {
  const [head, canvas] = headAndCanvas(root, "calc(100% - 20px)", (c) => drawTraining(c, root.__train));
  root.__train = train;
  const last = train?.points?.at(-1);
  if (!train || !last) {
    head.textContent = "Run the workflow: loss and accuracy per σ band appear here while the guard trains.";
    head.className = "cps-head cps-note";
  } else {
    // "memorised" is judged on the bands where memorising is possible (low σ); at high σ no guard can
    // tell images apart, so those bands are shown in the chart but not in the headline.
    const all = train.done ? train.final_accuracy ?? last.accuracy ?? {} : last.accuracy ?? {};
    const needed = train.required_bands?.length ? train.required_bands : Object.keys(all);
    const acc = needed.filter((b) => b in all).map((b) => all[b]);
    const required = train.done ? "" : ` / ${train.total}`;
    const worst = acc.length ? ` · worst ${train.required_bands?.length ? "needed " : ""}band ${pct(Math.min(...acc))}` : "";
    const state = train.done ? (train.memorised ? " · memorised" : " · NOT memorised") : "";
    head.textContent = `step ${train.done ? train.steps : last.step}${required} · loss ${last.loss?.toFixed(3) ?? "?"}${worst}${state}`;
    head.className = `cps-head ${train.done ? (train.memorised ? "cps-ok" : "cps-bad") : ""}`;
  }
  drawTraining(canvas, train);
}

// ---- Load Guard

function row(table, label, value) {
  if (value === undefined || value === null || value === "") return;
  const tr = el("tr");
  tr.append(el("td", label), el("td", String(value)));
  table.append(tr);
}

export function renderFacts(root, facts, error) {
  root.replaceChildren();
  if (error) {
    root.append(el("div", error, "cps-error"));
    return;
  }
  if (!facts) {
    root.append(el("div", "Pick a guard file to see what it was trained on.", "cps-note"));
    return;
  }
  root.append(el("div", facts.name, "cps-head"));
  const t = el("table");
  const size = facts.image_size ? ` at ${facts.image_size} px${facts.resolution_policy ? ` (${facts.resolution_policy})` : ""}` : "";
  row(t, "images", facts.images != null ? `${facts.images}${size}` : undefined);
  row(t, "class images", facts.class_images);
  row(t, "model", [facts.latent_format, facts.model_sampling].filter(Boolean).join(", "));
  row(t, "noise", facts.noise_kind === "vp" ? "vp (x0 + σε: EPS / v-prediction)" : facts.noise_kind === "flow" ? "flow ((1−σ)x0 + σε)" : facts.noise_kind);
  row(t, "latents", Array.isArray(facts.latent_shape) ? facts.latent_shape.join(" × ") : undefined);
  const secs = facts.train_seconds != null ? ` in ${facts.train_seconds} s` : "";
  row(t, "training", facts.steps != null ? `${facts.steps} steps${secs}` : undefined);
  if (facts.memorised != null) {
    const tr = el("tr");
    tr.append(el("td", "memorised"), el("td", facts.memorised ? "yes" : "NO: train longer", facts.memorised ? "cps-ok" : "cps-bad"));
    t.append(tr);
  }
  const acc = Object.entries(facts.accuracy ?? {});
  if (acc.length) row(t, "accuracy", acc.map(([b, v]) => `σ ${b}: ${pct(v)}`).join(", "));
  const cal = facts.calibration_words;
  if (cal) {
    row(t, "calibrated", cal.chosen);
    row(t, "copies", cal.copies);
    row(t, "measured on", cal.sampler);
  } else {
    row(t, "calibration", "none (CPSample Calibrate Guard measures one on your model)");
  }
  row(t, "network", facts.parameters != null ? `${facts.parameters.toLocaleString()} parameters${facts.file_kb ? `, ${facts.file_kb} KB` : ""}` : undefined);
  row(t, "made", [facts.host, facts.created].filter(Boolean).join(", "));
  root.append(t);
}

// ---- Protect Model

// The settings the last run used (Protect Model's own output text), above the gate report: with a
// calibrated guard and settings "calibration" they are not the scale / alpha widgets' values.
export function renderSettings(root, text) {
  let line = root.querySelector(".cps-settings");
  if (!line) {
    line = el("div", "", "cps-settings cps-note");
    root.prepend(line);
  }
  line.textContent = text ? `ran with ${text}` : "";
}

export function renderGate(root, gate) {
  const [head, canvas] = headAndCanvas(root, "calc(100% - 64px)", (c) => drawGate(c, root.__gate?.summary));
  root.__gate = gate;
  if (!gate) {
    head.textContent = "After each sampling run: how many samples the gate opened on, in which steps, how far it pushed.";
    head.className = "cps-head cps-note";
  } else {
    head.textContent = gate.text;
    head.className = `cps-head ${gate.summary?.opened_samples ? "cps-bad" : "cps-ok"}`;
  }
  drawGate(canvas, gate?.summary);
}
