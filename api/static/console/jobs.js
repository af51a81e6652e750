// @ts-check
// The jobs list: a status filter, pages by cursor, and each succeeded job's best fine-tuned top-1.

import { api } from "./api.js";
import { badge, esc, fmt, runSeconds } from "./format.js";
import { find } from "./ui.js";

/** @typedef {import("./types.js").Job} Job */
/** @typedef {import("./types.js").Dataset} Dataset */
/** @typedef {import("./types.js").Evaluation} Evaluation */
/** @template T @typedef {import("./types.js").Page<T>} Page */

const PAGE_SIZE = 10;
const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];

/**
 * @param {HTMLElement} view
 * @param {URLSearchParams} query status, cursor, back (the cursors of the previous pages, comma-separated), size
 */
export async function jobsView(view, query) {
  const status = query.get("status") || "";
  const cursor = query.get("cursor") || "";
  const back = query.get("back") || "";
  const size = Math.min(Math.max(Number(query.get("size")) || PAGE_SIZE, 1), 100); // the API's page limit
  const params = new URLSearchParams({ limit: String(size) });
  if (status) params.set("status", status);
  if (cursor) params.set("cursor", cursor);
  /** @type {[Page<Job>, Page<Dataset>]} */
  const [page, datasets] = await Promise.all([api(`/v1/jobs?${params}`), api("/v1/datasets?limit=100")]);
  const names = Object.fromEntries(datasets.data.map((d) => [d.id, d.name]));
  /** @param {Record<string, string>} q @returns {string} the list's address with query `q` (and this page size) */
  const link = (q) => `#/jobs?${new URLSearchParams(Object.entries({ ...q, size: size === PAGE_SIZE ? "" : String(size) }).filter(([, v]) => v))}`;
  const backs = back ? back.split(",") : [];
  const previous = backs.at(-1);
  const prev = previous !== undefined ? link({ status, cursor: previous === "-" ? "" : previous, back: backs.slice(0, -1).join(",") }) : null;
  const next = page.next_cursor ? link({ status, cursor: page.next_cursor, back: [...backs, cursor || "-"].join(",") }) : null;
  view.innerHTML = `
    <div class="page-head"><h1>Jobs</h1>
      <div class="actions">
        <label class="inline-label">Status
          <select id="status-filter"><option value="">all</option>${STATUSES.map((s) => `<option ${s === status ? "selected" : ""}>${s}</option>`).join("")}</select>
        </label>
        <a class="button primary" href="#/new">+ New job</a>
      </div>
    </div>
    <section class="card">
      ${page.data.length ? `
      <table class="table" id="jobs-table">
        <thead><tr><th>Job</th><th>Status</th><th>Method</th><th>Dataset</th><th class="num">Duration</th><th class="num">Best top-1</th></tr></thead>
        <tbody>${page.data.map((j) => `
          <tr data-id="${esc(j.id)}" class="clickable">
            <td><a href="#/jobs/${esc(j.id)}" class="mono">${esc(j.id)}</a><div class="sub">${fmt.date(j.created_at)}</div></td>
            <td>${badge(j.status)}${j.stage && j.status === "running" ? ` <span class="muted">${esc(j.stage)}</span>` : ""}${j.warnings?.length ? ` <span class="warn-flag" title="${esc(j.warnings.map((w) => w.message).join("\n"))}">⚠ ${j.warnings.length === 1 ? "warning" : `${j.warnings.length} warnings`}</span>` : ""}</td>
            <td>${esc(fmt.method(j.method))}</td>
            <td>${esc(names[j.dataset_id] || j.dataset_id)}</td>
            <td class="num">${fmt.seconds(runSeconds(j))}</td>
            <td class="num best" data-best="${esc(j.id)}">${j.status === "succeeded" ? "…" : "–"}</td>
          </tr>`).join("")}</tbody>
      </table>` : `<p class="empty">${status ? `No ${esc(status)} jobs` : "No jobs yet"}${cursor ? " on this page" : ""}. <a href="#/new">Start one</a>.</p>`}
      <div class="pager">
        ${prev ? `<a class="button small" id="prev" href="${prev}">← Newer</a>` : `<span></span>`}
        <span class="muted">page ${backs.length + 1}</span>
        ${next ? `<a class="button small" id="next" href="${next}">Older →</a>` : `<span></span>`}
      </div>
    </section>`;
  const filter = find(view, "#status-filter", HTMLSelectElement);
  filter.addEventListener("change", () => { location.hash = link({ status: filter.value }); });
  for (const tr of view.querySelectorAll("tr.clickable")) {
    tr.addEventListener("click", (e) => {
      if (!(e.target instanceof Element && e.target.closest("a"))) location.hash = `#/jobs/${/** @type {HTMLElement} */ (tr).dataset.id}`;
    });
  }
  // Best fine-tuned top-1 over the job's evaluation sets (one small request per succeeded job on the page).
  await Promise.all(page.data.filter((j) => j.status === "succeeded").map(async (j) => {
    const cell = find(view, `[data-best="${j.id}"]`);
    try {
      /** @type {Evaluation[]} */
      const tuned = (await api(`/v1/jobs/${j.id}/evaluations`)).data.filter((/** @type {Evaluation} */ e) => e.model === "fine-tuned");
      const best = tuned.reduce((/** @type {Evaluation | null} */ a, e) => (a && a.top1 >= e.top1 ? a : e), null);
      cell.innerHTML = best ? `${fmt.pct(best.top1)} <span class="sub">${esc(best.dataset_name)}</span>` : "–";
    } catch { cell.textContent = "–"; }
  }));
}
