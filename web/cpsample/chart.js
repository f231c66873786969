// Small canvas charts drawn inside CPSample's nodes: Train Guard's loss / accuracy per σ band against
// steps, and Protect Model's push size against σ. No dependencies; redrawn whenever data or size changes.

export const BAND_COLORS = ["#4fc3f7", "#81c784", "#ffb74d", "#e57373", "#ba68c8", "#a1887f", "#90a4ae"];

function themeColor(name, fallback) {
  const v = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  return v || fallback;
}

// Size the canvas backing store to its CSS box (sharp on HiDPI) and return a 2-D context in CSS pixels.
function prepare(canvas) {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, canvas.clientWidth);
  const h = Math.max(1, canvas.clientHeight);
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  ctx.font = "10px sans-serif";
  return { ctx, w, h, fg: themeColor("--input-text", "#ddd"), grid: themeColor("--border-color", "#444") };
}

function axisBox(ctx, box, fg, grid, yTicks) {
  ctx.strokeStyle = grid;
  ctx.lineWidth = 1;
  ctx.strokeRect(box.x + 0.5, box.y + 0.5, box.w, box.h);
  ctx.fillStyle = fg;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (const [v, label] of yTicks) {
    const y = box.y + box.h - v * box.h;
    ctx.fillText(label, box.x - 3, y);
    ctx.beginPath();
    ctx.moveTo(box.x, y + 0.5);
    ctx.lineTo(box.x + box.w, y + 0.5);
    ctx.stroke();
  }
}

function polyline(ctx, pts, color) {
  if (pts.length === 0) return;
  ctx.strokeStyle = color;
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  pts.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
  ctx.stroke();
  if (pts.length === 1) ctx.fillRect(pts[0][0] - 1.5, pts[0][1] - 1.5, 3, 3);
}

// train: {points: [{step, loss, accuracy: {band: acc}}], total, done, memorised}
export function drawTraining(canvas, train) {
  const { ctx, w, h, fg, grid } = prepare(canvas);
  const points = train?.points ?? [];
  const total = Math.max(1, train?.total ?? train?.steps ?? points.at(-1)?.step ?? 1);
  const left = 34, right = 8;
  const lossBox = { x: left, y: 16, w: w - left - right, h: Math.max(20, (h - 72) * 0.4) };
  const accBox = { x: left, y: lossBox.y + lossBox.h + 16, w: w - left - right, h: Math.max(20, (h - 72) * 0.6) };
  const xOf = (step) => lossBox.x + (step / total) * lossBox.w;

  const losses = points.map((p) => p.loss).filter((v) => Number.isFinite(v));
  const lossMax = Math.max(0.1, ...losses);
  ctx.fillStyle = fg;
  ctx.textAlign = "left";
  ctx.textBaseline = "alphabetic";
  ctx.fillText("loss", left, lossBox.y - 4);
  axisBox(ctx, lossBox, fg, grid, [[0, "0"], [1, lossMax.toFixed(2)]]);
  polyline(ctx, points.filter((p) => Number.isFinite(p.loss))
    .map((p) => [xOf(p.step), lossBox.y + lossBox.h - (p.loss / lossMax) * lossBox.h]), "#eeeeee");

  ctx.fillStyle = fg;
  ctx.textAlign = "left";
  ctx.textBaseline = "alphabetic";
  ctx.fillText("accuracy per σ band", left, accBox.y - 4);
  axisBox(ctx, accBox, fg, grid, [[0, "0%"], [0.5, "50%"], [1, "100%"]]);
  const bands = [];
  for (const p of points) for (const b of Object.keys(p.accuracy ?? {})) if (!bands.includes(b)) bands.push(b);
  for (const b of Object.keys(train?.final_accuracy ?? {})) if (!bands.includes(b)) bands.push(b);
  bands.forEach((band, i) => {
    const color = BAND_COLORS[i % BAND_COLORS.length];
    const pts = points.filter((p) => p.accuracy && band in p.accuracy)
      .map((p) => [xOf(p.step), accBox.y + accBox.h - p.accuracy[band] * accBox.h]);
    const fin = train?.final_accuracy?.[band];
    if (train?.done && Number.isFinite(fin)) pts.push([xOf(train.steps ?? total), accBox.y + accBox.h - fin * accBox.h]);
    ctx.fillStyle = color;
    polyline(ctx, pts, color);
    const off = (i - (bands.length - 1) / 2) * 1.5; // bands that overlap (all at 100%) stay distinguishable
    for (const [x, y] of pts) ctx.fillRect(x - 1.5, y - 1.5 + off, 3, 3);
  });
  // x axis and legend
  ctx.fillStyle = fg;
  ctx.textAlign = "left";
  ctx.textBaseline = "top";
  ctx.fillText("0", accBox.x, accBox.y + accBox.h + 2);
  ctx.textAlign = "right";
  ctx.fillText(`${total} steps`, accBox.x + accBox.w, accBox.y + accBox.h + 2);
  let lx = accBox.x;
  let ly = accBox.y + accBox.h + 14;
  ctx.textAlign = "left";
  bands.forEach((band, i) => {
    const label = `σ ${band}`;
    const tw = ctx.measureText(label).width + 16;
    if (lx + tw > w) { lx = accBox.x; ly += 12; } // wrap the legend
    ctx.fillStyle = BAND_COLORS[i % BAND_COLORS.length];
    ctx.fillRect(lx, ly + 3, 8, 3);
    ctx.fillStyle = fg;
    ctx.fillText(label, lx + 10, ly);
    lx += tw;
  });
}

// summary: core.gate_log summary {per_step: [{step, sigma, opened, push}], samples, ...}. Log-log: the
// mean push of each step against its σ, and the cap (push = σ) as a dashed line.
export function drawGate(canvas, summary) {
  const { ctx, w, h, fg, grid } = prepare(canvas);
  const steps = (summary?.per_step ?? []).filter((s) => s.sigma > 0);
  const box = { x: 40, y: 14, w: w - 48, h: h - 34 };
  ctx.fillStyle = fg;
  ctx.textAlign = "left";
  ctx.textBaseline = "alphabetic";
  ctx.fillText("mean push per step against σ (dashed: push = σ)", box.x, box.y - 4);
  const sig = steps.map((s) => s.sigma);
  const pushes = steps.filter((s) => s.opened > 0 && s.push > 0).map((s) => s.push);
  const lo = Math.min(...sig, ...pushes, 1) / 1.5, hi = Math.max(...sig, ...pushes, 1) * 1.5;
  const L = (v) => Math.log10(v);
  const X = (v) => box.x + box.w - ((L(v) - L(lo)) / (L(hi) - L(lo))) * box.w; // high σ on the left, like sampling
  const Y = (v) => box.y + box.h - ((L(v) - L(lo)) / (L(hi) - L(lo))) * box.h;
  const ticks = [];
  for (let e = Math.ceil(L(lo)); e <= Math.floor(L(hi)); e++) ticks.push([(e - L(lo)) / (L(hi) - L(lo)), `${10 ** e >= 1 ? 10 ** e : (10 ** e).toFixed(-e)}`]);
  axisBox(ctx, box, fg, grid, ticks);
  ctx.setLineDash([4, 3]);
  ctx.strokeStyle = fg;
  ctx.beginPath();
  ctx.moveTo(X(lo), Y(lo));
  ctx.lineTo(X(hi), Y(hi));
  ctx.stroke();
  ctx.setLineDash([]);
  const n = Math.max(1, summary?.samples ?? 1);
  for (const s of steps) {
    if (s.opened > 0 && s.push > 0) {
      ctx.fillStyle = "#ffb74d";
      const r = 2 + 3 * (s.opened / n);
      ctx.beginPath();
      ctx.arc(X(s.sigma), Y(s.push), r, 0, 2 * Math.PI);
      ctx.fill();
    } else {
      ctx.fillStyle = grid;
      ctx.fillRect(X(s.sigma) - 1, box.y + box.h - 4, 2, 4); // evaluated, gate closed
    }
  }
  ctx.fillStyle = fg;
  ctx.textBaseline = "top";
  ctx.textAlign = "left";
  ctx.fillText(`σ ${hi.toPrecision(2)}`, box.x, box.y + box.h + 4);
  ctx.textAlign = "right";
  ctx.fillText(`σ ${lo.toPrecision(2)} →`, box.x + box.w, box.y + box.h + 4);
}
