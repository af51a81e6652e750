// @ts-check
// The results of a succeeded job: accuracy along α (the robustness frontier), where the mask went
// (job-mask.js), "try it" (job-try.js) and the downloads, each checked against its SHA-256.

import { api, sha256Hex } from "./api.js";
import { frontierChart } from "./charts.js";
import { esc, fmt } from "./format.js";
import { showMask } from "./job-mask.js";
import { showTry } from "./job-try.js";
import { fail, find, onLeave } from "./ui.js";

/** @typedef {import("./types.js").Job} Job */
/** @typedef {import("./types.js").Mask} Mask */
/** @typedef {import("./types.js").Evaluation} Evaluation */
/** @typedef {import("./types.js").Evaluations} Evaluations */
/** @typedef {import("./types.js").SucceededJob} SucceededJob */

/**
 * @param {HTMLElement} box
 * @param {SucceededJob} job a succeeded job: it has a checkpoint
 */
export async function showResults(box, job) {
  /** @type {[Evaluations, Mask | null]} */
  const [evals, mask] = await Promise.all([
    api(`/v1/jobs/${job.id}/evaluations`),
    // Full fine-tuning has no mask; asking would only log a 404 in the browser's console.
    job.method.type === "saft" ? api(`/v1/jobs/${job.id}/mask`) : null,
  ]);
  box.innerHTML = `
    <section class="card" id="evaluations"><h2>Accuracy along α, from zero-shot to fine-tuned</h2></section>
    <section class="card" id="try"><h2>Try it</h2></section>
    <section class="card" id="mask"><h2>Where SAFT put its budget</h2></section>
    <section class="card" id="downloads"><h2>Downloads</h2></section>`;
  showEvaluations(find(box, "#evaluations"), evals);
  showMask(find(box, "#mask"), mask, job);
  showDownloads(find(box, "#downloads"), job, mask);
  showTry(find(box, "#try"), job);
}

/**
 * @param {HTMLElement} card
 * @param {Evaluations} evaluations
 */
function showEvaluations(card, { data: rows, recommended_alpha: rec, alpha_rule: rule }) {
  if (!rows.length) { card.insertAdjacentHTML("beforeend", `<p class="empty">No evaluation sets: give a validation fraction or eval datasets.</p>`); return; }
  /** @type {{id: string, name: string, n: number, points: Evaluation[]}[]} per dataset: its points along alpha */
  const sets = []; // (the API lists them by alpha)
  for (const r of rows) {
    let s = sets.find((x) => x.id === r.dataset);
    if (!s) sets.push((s = { id: r.dataset, name: r.dataset_name, n: r.n, points: [] }));
    s.points.push(r);
  }
  /** @param {{points: Evaluation[]}} s @param {number} alpha */
  const at = (s, alpha) => s.points.find((p) => p.alpha === alpha);
  const recHead = rec == null ? "" : `<th class="num as-written" data-recommended="${rec}">α = ${rec}</th>`;
  card.insertAdjacentHTML("beforeend", `<div class="grid eval-layout">
    <div class="chart" style="height:280px"><canvas id="frontier-chart"></canvas></div>
    <div><p class="small muted">Top-1 accuracy with the weights at base + α × (fine-tuned − base): α = 0 is the base
    model (zero-shot), α = 1 the fine-tuned one. ${rec == null
      ? "No recommended α: the job had no validation split."
      : `Recommended: α = <strong id="recommended-alpha">${rec}</strong>, the smallest α whose validation top-1 is within one standard error of the best (${esc(rule)}).`}</p>
    <table class="table compact" id="eval-table">
      <thead><tr><th>Set</th><th class="num">Images</th><th class="num">Zero-shot</th><th class="num">Fine-tuned</th><th class="num">Change</th>${recHead}<th class="num">Top-5</th></tr></thead>
      <tbody>${sets.map((s) => {
        const zero = at(s, 0), tuned = at(s, 1);
        const delta = zero && tuned ? (tuned.top1 - zero.top1) * 100 : null;
        return `<tr data-set="${esc(s.id)}"><td>${esc(s.name)}</td><td class="num">${s.n}</td>
          <td class="num" data-zero-top1="${zero?.top1}">${fmt.pct(zero?.top1)}</td>
          <td class="num" data-tuned-top1="${tuned?.top1}">${fmt.pct(tuned?.top1)}</td>
          <td class="num ${delta == null ? "" : delta > 0 ? "up" : delta < 0 ? "down" : ""}">${delta == null ? "–" : `${delta > 0 ? "+" : ""}${delta.toFixed(1)}`}</td>
          ${rec == null ? "" : `<td class="num" data-rec-top1="${at(s, rec)?.top1}">${fmt.pct(at(s, rec)?.top1)}</td>`}
          <td class="num">${fmt.pct(zero?.top5)} → ${fmt.pct(tuned?.top5)}</td></tr>`;
      }).join("")}</tbody>
    </table></div></div>`);
  const chart = frontierChart(find(card, "#frontier-chart", HTMLCanvasElement), sets, rec);
  onLeave(() => chart.destroy());
}

/**
 * The checkpoint and the mask to download; each download's SHA-256 is checked against the service's.
 * @param {HTMLElement} card
 * @param {SucceededJob} job
 * @param {Mask | null} mask
 */
function showDownloads(card, job, mask) {
  /** @type {{what: string, label: string, url: string, sha: string | null, size: number | null, name: string}[]} */
  const files = [{ what: "checkpoint", label: "Sparse checkpoint", url: `/v1/jobs/${job.id}/checkpoint`, sha: job.checkpoint.sha256, size: job.checkpoint.size_bytes, name: `${job.id}.safetensors` }];
  if (mask?.url) files.push({ what: "mask", label: "Mask", url: mask.url, sha: mask.sha256, size: mask.size_bytes, name: `${job.id}-mask.safetensors` });
  card.insertAdjacentHTML("beforeend", files.map((f) => `
    <div class="download" data-download="${f.what}">
      <button class="primary small">Download ${esc(f.label.toLowerCase())}</button>
      <div><div><strong>${esc(f.label)}</strong> · ${fmt.bytes(f.size)} · <code>${esc(f.name)}</code></div>
        <div class="sha">SHA-256 <code class="mono" data-sha>${esc(f.sha)}</code> <span class="verified"></span></div></div>
    </div>`).join(""));
  for (const f of files) {
    const row = find(card, `[data-download="${f.what}"]`);
    find(row, "button").addEventListener("click", async () => {
      const status = find(row, ".verified");
      status.textContent = "downloading…";
      try {
        /** @type {Response} */
        const response = await api(f.url, { raw: true });
        const bytes = await response.arrayBuffer();
        const got = await sha256Hex(bytes);
        const expected = response.headers.get("X-Checksum-SHA256") || f.sha;
        status.className = `verified ${got === null ? "" : got === expected ? "ok" : "bad"}`;
        status.textContent = got === null ? "(this browser cannot hash here; check with sha256sum)" : got === expected ? "✓ verified" : `✗ got ${got}`;
        const a = Object.assign(document.createElement("a"), { href: URL.createObjectURL(new Blob([bytes])), download: f.name });
        a.click();
        setTimeout(() => URL.revokeObjectURL(a.href), 10000);
      } catch (err) {
        status.textContent = "";
        fail(err, card);
      }
    });
  }
}
