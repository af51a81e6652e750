// @ts-check
// Formatting helpers every view uses: escaping for HTML, numbers, dates, durations, ids and status badges.

/** @typedef {import("./types.js").Method} Method */

/**
 * Escape text for HTML.
 * @param {unknown} s
 * @returns {string}
 */
export const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

/** Each returns text to show; "–" where there is no value. */
export const fmt = {
  /** @param {string | null | undefined} iso */
  date: (iso) => (iso ? new Date(iso).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" }) : "–"),
  /** @param {number | null | undefined} n */
  bytes: (n) => (n == null ? "–" : n < 1024 ? `${n} B` : n < 1 << 20 ? `${(n / 1024).toFixed(1)} KB` : `${(n / (1 << 20)).toFixed(1)} MB`),
  /** @param {number | null | undefined} s */
  seconds: (s) => (s == null || !isFinite(s) ? "–" : s < 60 ? `${Math.max(0, Math.round(s))} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`),
  /** @param {number | null | undefined} x a fraction */
  pct: (x) => (x == null ? "–" : `${(x * 100).toFixed(1)} %`),
  /** @param {Method} m */
  method: (m) => (m.type === "saft" ? `SAFT ${+((m.ratio ?? 0) * 100).toPrecision(3)} %` : "full"),
  /** @param {number | null | undefined} n */
  int: (n) => (n == null ? "–" : Number(n).toLocaleString("en-US")),
  /** @param {string | null | undefined} id */
  shortId: (id) => String(id ?? "").replace(/^([a-z]+_[0-9a-f]{8})[0-9a-f]+$/, "$1…"), // ds_0123abcd…, as git does
};

/**
 * Seconds a job has run (until it finished, or until now); null before it started.
 * @param {{started_at: string | null, finished_at: string | null}} job
 * @returns {number | null}
 */
export function runSeconds(job) {
  if (!job.started_at) return null;
  const end = job.finished_at ? new Date(job.finished_at) : new Date();
  return (end.getTime() - new Date(job.started_at).getTime()) / 1000;
}

/** @param {string} status */
export const badge = (status) => `<span class="badge ${esc(status)}">${esc(status)}</span>`;
