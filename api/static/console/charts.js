// @ts-check
// The console's charts (Chart.js, loaded as a global by index.html): the training loss, the robustness
// frontier, a mask's selected entries per layer, a dataset's images per class.

/**
 * The part of a Chart.js chart the console touches (Chart.js is vendored without its type declarations).
 * @typedef {object} Chart
 * @property {{datasets: {data: unknown[]}[]}} data
 * @property {any} options
 * @property {(mode?: string) => void} update
 * @property {() => void} destroy
 */

/** @type {{new (canvas: HTMLCanvasElement, config: object): Chart, defaults: any} | undefined} */
const ChartJs = /** @type {any} */ (globalThis).Chart;

/** @param {HTMLCanvasElement} canvas @param {object} config @returns {Chart} */
function chart(canvas, config) {
  if (!ChartJs) throw new Error("Chart.js did not load (/static/vendor/chartjs)");
  return new ChartJs(canvas, config);
}

export const COLORS = {
  blue: "#2f6fdf", teal: "#1a9c8c", orange: "#e8862a", purple: "#8a5cd6", red: "#d64545",
  grey: "#9aa5b1", yellow: "#d8b02a", pink: "#d45a9a",
};
/** @type {Record<string, string>} */
export const KIND_COLORS = {
  "attention in": COLORS.blue, "attention out": COLORS.purple, MLP: COLORS.teal,
  embedding: COLORS.orange, norm: COLORS.yellow, projection: COLORS.pink,
};

if (ChartJs) {
  ChartJs.defaults.font.family = getComputedStyle(document.documentElement).getPropertyValue("--font") || "sans-serif";
  ChartJs.defaults.color = "#4a5563";
  ChartJs.defaults.maintainAspectRatio = false;
  ChartJs.defaults.animation.duration = 250;
}

/**
 * A stacked bar chart of one tower's selected entries per layer, by kind; yMax shared by both towers.
 * @param {HTMLCanvasElement} canvas
 * @param {{labels: string[], rows: Record<string, number>[]}} tower a layer label and {kind: entries} per layer
 * @param {string} title
 * @param {number} yMax
 */
export function maskChart(canvas, tower, title, yMax) {
  const kinds = Object.keys(KIND_COLORS);
  return chart(canvas, {
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
 * set, and the recommended alpha (null: none) as a dashed vertical line with its points drawn larger.
 * @param {HTMLCanvasElement} canvas
 * @param {{name: string, points: {alpha: number, top1: number}[]}[]} sets
 * @param {number | null} recommended
 */
export function frontierChart(canvas, sets, recommended) {
  /** @param {{raw?: {x?: number}}} ctx */
  const marked = (ctx) => (ctx.raw?.x === recommended ? 6 : 3);
  // the y axis from a round number below the lowest point, so that close lines stay apart
  const lowest = Math.min(...sets.flatMap((s) => s.points.map((p) => p.top1 * 100)));
  const yMin = Math.max(0, Math.floor((lowest - 5) / 10) * 10);
  /** @type {object[]} */
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
  /** @typedef {{dataset: {label: string, pointRadius: unknown}, parsed: {x: number, y: number}}} TooltipItem */
  return chart(canvas, {
    type: "line",
    data: { datasets },
    options: {
      plugins: {
        legend: { position: "bottom", labels: { boxWidth: 12 } },
        tooltip: {
          filter: (/** @type {TooltipItem} */ item) => item.dataset.pointRadius !== 0,
          callbacks: { label: (/** @type {TooltipItem} */ c) => `${c.dataset.label} at α ${c.parsed.x}: ${c.parsed.y.toFixed(1)} %` },
        },
      },
      scales: {
        x: { type: "linear", min: 0, max: 1, ticks: { stepSize: 0.25, callback: (/** @type {number} */ v) => String(v) }, title: { display: true, text: "α (0 = zero-shot, 1 = fine-tuned)" } },
        y: { min: yMin, max: 100, title: { display: true, text: "top-1 accuracy (%)" } },
      },
    },
  });
}

/**
 * Training loss (left axis) and learning rate (right axis) against the step.
 * @param {HTMLCanvasElement} canvas
 */
export function lossChart(canvas) {
  return chart(canvas, {
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
        lr: { position: "right", beginAtZero: true, grid: { drawOnChartArea: false }, title: { display: true, text: "learning rate" }, ticks: { callback: (/** @type {number} */ v) => Number(v).toExponential(1) } },
      },
    },
  });
}

/**
 * Images per class, as horizontal bars.
 * @param {HTMLCanvasElement} canvas
 * @param {string[]} names
 * @param {number[]} counts
 */
export function countsChart(canvas, names, counts) {
  return chart(canvas, {
    type: "bar",
    data: { labels: names, datasets: [{ label: "images", backgroundColor: COLORS.teal, data: counts }] },
    options: {
      indexAxis: "y",
      plugins: { legend: { display: false } },
      scales: { x: { beginAtZero: true, ticks: { precision: 0 } } },
    },
  });
}

/**
 * The loss chart of a running job, growing as steps arrive (from the job row or from progress events, in any
 * order and more than once); `empty` (a note shown until the first point) is hidden then.
 * @param {HTMLCanvasElement} canvas
 * @param {HTMLElement} empty
 */
export function lossCurve(canvas, empty) {
  const c = lossChart(canvas);
  /** @type {Map<number, {loss: number, lr: number | null | undefined}>} training step -> its loss and rate */
  const points = new Map();
  return {
    /**
     * @param {number} step training steps count from 1
     * @param {number | null | undefined} loss
     * @param {number | null | undefined} lr
     * @param {number | null | undefined} total the run's steps: the x axis grows left to right up to it
     */
    add(step, loss, lr, total) {
      if (total && c.options.scales.x.max !== total) c.options.scales.x.max = total;
      if (loss == null || !(step >= 1) || points.has(step)) return;
      points.set(step, { loss, lr });
      const sorted = [...points.entries()].sort((a, b) => a[0] - b[0]);
      c.data.datasets[0].data = sorted.map(([x, p]) => ({ x, y: p.loss }));
      c.data.datasets[1].data = sorted.filter(([, p]) => p.lr != null).map(([x, p]) => ({ x, y: p.lr }));
      c.update("none");
      empty.hidden = true;
    },
    destroy: () => c.destroy(),
  };
}
