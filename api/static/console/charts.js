// Charts of the console (Chart.js, loaded as a global by index.html) and the mask's grouping rules.

const { Chart } = globalThis;

export const COLORS = {
  blue: "#2f6fdf", teal: "#1a9c8c", orange: "#e8862a", purple: "#8a5cd6", red: "#d64545",
  grey: "#9aa5b1", yellow: "#d8b02a", pink: "#d45a9a",
};
export const KIND_COLORS = {
  "attention in": COLORS.blue, "attention out": COLORS.purple, MLP: COLORS.teal,
  embedding: COLORS.orange, norm: COLORS.yellow, projection: COLORS.pink,
};

if (Chart) {
  Chart.defaults.font.family = getComputedStyle(document.documentElement).getPropertyValue("--font") || "sans-serif";
  Chart.defaults.color = "#4a5563";
  Chart.defaults.maintainAspectRatio = false;
  Chart.defaults.animation.duration = 250;
}

/**
 * Where a parameter of an open_clip CLIP lives: tower (image: `visual.*`, text: the rest), layer ("in" for
 * embeddings and the first norm, the block number for `resblocks.N`, "out" for final norms and projections)
 * and kind.
 */
export function describeParam(name) {
  const tower = name.startsWith("visual.") ? "image" : "text";
  const block = name.match(/resblocks\.(\d+)\./);
  let kind = "projection";
  if (/attn\.in_proj/.test(name)) kind = "attention in";
  else if (/attn\.out_proj/.test(name)) kind = "attention out";
  else if (/\.mlp\./.test(name)) kind = "MLP";
  else if (/(^|\.)ln_|norm/.test(name)) kind = "norm";
  else if (/embedding|conv1/.test(name)) kind = "embedding";
  let layer = "out";
  if (block) layer = Number(block[1]);
  else if (kind === "embedding" || /ln_pre/.test(name)) layer = "in";
  return { tower, layer, kind };
}

/** Selected entries by tower -> layer -> kind, with the layers in model order ("in", 0..N-1, "out"). */
export function groupMask(tensors) {
  const towers = { image: new Map(), text: new Map() };
  for (const t of tensors) {
    const { tower, layer, kind } = describeParam(t.name);
    const layers = towers[tower];
    if (!layers.has(layer)) layers.set(layer, {});
    layers.get(layer)[kind] = (layers.get(layer)[kind] || 0) + t.selected;
  }
  const order = (a, b) => (a === "in" ? -1 : b === "in" ? 1 : a === "out" ? 1 : b === "out" ? -1 : a - b);
  const out = {};
  for (const [tower, layers] of Object.entries(towers)) {
    const keys = [...layers.keys()].sort(order);
    out[tower] = { labels: keys.map((k) => (typeof k === "number" ? `block ${k}` : k === "in" ? "embed" : "head")), rows: keys.map((k) => layers.get(k)) };
  }
  return out;
}

/** A stacked bar chart of one tower's selected entries per layer, by kind; yMax shared by both towers. */
export function maskChart(canvas, tower, title, yMax) {
  const kinds = Object.keys(KIND_COLORS);
  return new Chart(canvas, {
    type: "bar",
    data: {
      labels: tower.labels,
      datasets: kinds.map((kind) => ({
        label: kind, backgroundColor: KIND_COLORS[kind], data: tower.rows.map((r) => r[kind] || 0),
      })),
    },
    options: {
      plugins: { title: { display: true, text: title }, legend: { position: "bottom", labels: { boxWidth: 12 } } },
      scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true, suggestedMax: yMax, title: { display: true, text: "selected entries" } } },
    },
  });
}

const SET_COLORS = [COLORS.blue, COLORS.orange, COLORS.teal, COLORS.purple, COLORS.red, COLORS.pink, COLORS.yellow];

/**
 * The robustness frontier: top-1 (%) against alpha (0 = zero-shot, 1 = fine-tuned), one line per evaluation
 * set (`sets[i].points`: [{alpha, top1}]), and the recommended alpha (null: none) as a dashed vertical line
 * with its points drawn larger.
 */
export function frontierChart(canvas, sets, recommended) {
  const marked = (ctx) => (ctx.raw?.x === recommended ? 6 : 3);
  // the y axis from a round number below the lowest point, so that close lines stay apart
  const lowest = Math.min(...sets.flatMap((s) => s.points.map((p) => p.top1 * 100)));
  const yMin = Math.max(0, Math.floor((lowest - 5) / 10) * 10);
  const datasets = sets.map((s, i) => ({
    label: s.name, borderColor: SET_COLORS[i % SET_COLORS.length], backgroundColor: SET_COLORS[i % SET_COLORS.length],
    data: s.points.map((p) => ({ x: p.alpha, y: p.top1 * 100 })), pointRadius: marked, pointHoverRadius: 7,
    clip: 8, // a line at 100 % is drawn whole, not cut by the top of the plot
  }));
  if (recommended != null) {
    datasets.push({
      label: `recommended α = ${recommended}`, borderColor: COLORS.grey, backgroundColor: "transparent", borderDash: [5, 4],
      data: [{ x: recommended, y: yMin }, { x: recommended, y: 100 }], pointRadius: 0, pointHoverRadius: 0,
    });
  }
  return new Chart(canvas, {
    type: "line",
    data: { datasets },
    options: {
      plugins: {
        legend: { position: "bottom", labels: { boxWidth: 12 } },
        tooltip: { filter: (item) => item.dataset.pointRadius !== 0, callbacks: { label: (c) => `${c.dataset.label} at α ${c.parsed.x}: ${c.parsed.y.toFixed(1)} %` } },
      },
      scales: {
        x: { type: "linear", min: 0, max: 1, ticks: { stepSize: 0.25, callback: (v) => String(v) }, title: { display: true, text: "α (0 = zero-shot, 1 = fine-tuned)" } },
        y: { min: yMin, max: 100, title: { display: true, text: "top-1 accuracy (%)" } },
      },
    },
  });
}

/** Training loss (left axis) and learning rate (right axis) against the step. */
export function lossChart(canvas) {
  return new Chart(canvas, {
    type: "line",
    data: {
      datasets: [
        { label: "training loss", borderColor: COLORS.blue, backgroundColor: COLORS.blue, data: [], yAxisID: "y", pointRadius: 2, cubicInterpolationMode: "monotone" },
        { label: "learning rate", borderColor: COLORS.orange, backgroundColor: COLORS.orange, data: [], yAxisID: "lr", pointRadius: 0, borderDash: [4, 3] },
      ],
    },
    options: {
      parsing: false,
      plugins: { legend: { position: "bottom" } },
      scales: {
        x: { type: "linear", min: 0, title: { display: true, text: "step" }, ticks: { precision: 0 } },
        y: { title: { display: true, text: "loss" } },
        lr: { position: "right", beginAtZero: true, grid: { drawOnChartArea: false }, title: { display: true, text: "learning rate" }, ticks: { callback: (v) => Number(v).toExponential(1) } },
      },
    },
  });
}

/** Images per class, as horizontal bars. */
export function countsChart(canvas, names, counts) {
  return new Chart(canvas, {
    type: "bar",
    data: { labels: names, datasets: [{ label: "images", backgroundColor: COLORS.teal, data: counts }] },
    options: {
      indexAxis: "y",
      plugins: { legend: { display: false } },
      scales: { x: { beginAtZero: true, ticks: { precision: 0 } } },
    },
  });
}
