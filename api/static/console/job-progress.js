// @ts-check
// A job's progress as its page shows it: what the events say (status, stage, step) weighed against the job row,
// the strip of stages, the progress bar, the step text and the current stage's ETA.

import { fmt } from "./format.js";
import { find } from "./ui.js";

/** @typedef {import("./types.js").Job} Job */
/** @typedef {import("./types.js").JobEvent} JobEvent */
/** @typedef {import("./types.js").JobStatus} JobStatus */
/** @typedef {{status: JobStatus, stage: string | null, step: number, total: number}} State */
/** @typedef {{status: JobStatus | null, stage: string | null, step: number, total: number}} Seen */

export const ACTIVE = new Set(["queued", "running"]);
/** @type {Record<JobStatus, number>} a job only moves forward (bar a requeue) */
const RANK = { queued: 0, running: 1, succeeded: 2, failed: 2, cancelled: 2 };
export const STAGES = ["loading", "scoring", "masking", "training", "evaluating", "saving"];

/** The progress card's markup: stages, bar, step text and ETA. */
export const progressCard = () => `
    <section class="card" id="progress-card">
      <div class="stages" id="stages">${STAGES.map((s) => `<span data-stage="${s}">${s}</span>`).join("")}</div>
      <div class="progress big" id="progress"><div class="bar"></div><span class="label"></span></div>
      <div class="progress-meta"><span id="step-text"></span><span id="eta"></span></div>
    </section>`;

/**
 * What the events said last: nothing yet. The row is read each second and the events come as they happen, so
 * either can be the newer: the page shows the one further along (`shown`).
 * @returns {Seen}
 */
export const nothingSeen = () => ({ status: null, stage: null, step: 0, total: 0 });

/**
 * Take what event `e` says about the job's status, stage and step into `seen`.
 * @param {Seen} seen
 * @param {JobEvent} e
 */
export function follow(seen, e) {
  const d = e.data || {};
  if ((e.kind === "status" || e.kind === "error") && d.status) {
    seen.status = d.status;
    if (d.status !== "running") Object.assign(seen, { stage: null, step: 0, total: 0 });
  } else if (e.kind === "stage" && d.stage) {
    Object.assign(seen, { status: "running", stage: d.stage, step: 0, total: 0 });
  } else if (e.kind === "progress" && d.stage) {
    Object.assign(seen, { status: "running", stage: d.stage, step: d.step ?? 0, total: d.total_steps ?? 0 });
  }
}

/**
 * What to show: the job row, unless the events are further along (the row was read before they happened).
 * @param {Job} job
 * @param {Seen} seen
 * @returns {State}
 */
export function shown(job, seen) {
  const row = { status: job.status, stage: job.stage, step: job.progress.step, total: job.progress.total_steps };
  return seen.status && RANK[seen.status] > RANK[job.status] ? { ...seen, status: seen.status } : row;
}

/**
 * The progress card in `card` (made by `progressCard`): returns what draws a state of `job` into it.
 * @param {HTMLElement} card
 * @returns {(job: Job, state: State) => void}
 */
export function progressPanel(card) {
  const bar = find(card, "#progress");
  /** @type {Record<string, {t: number, step: number}>} stage -> where its rate (for the ETA) is measured from */
  const stageStart = {};
  return (job, { status, stage, step, total }) => {
    const active = ACTIVE.has(status);
    const done = status === "succeeded";
    // A stage's total is known from its first step on: until then (and in stages that count no steps) the bar
    // says it is busy rather than "0 of 0".
    const counting = total > 0;
    const frac = done ? 1 : counting ? step / total : 0;
    const busy = status === "running" && !counting;
    find(bar, ".bar").style.width = busy ? "" : `${(frac * 100).toFixed(1)}%`;
    bar.className = `progress big ${status}${busy ? " indeterminate" : ""}`;
    find(bar, ".label").textContent = done ? "done" : busy ? "" : active ? `${Math.round(frac * 100)} %` : status;
    find(card, "#step-text").textContent = done ? `${job.metrics.train_steps ?? job.progress.step} training steps`
      : status === "queued" ? "waiting for a worker"
      : status !== "running" ? ""
      : !stage ? "starting…"
      : counting ? `${stage}: step ${step} of ${total}` : `${stage}…`;
    const current = STAGES.indexOf(stage ?? "");
    for (const el of find(card, "#stages").children) {
      const i = STAGES.indexOf(/** @type {HTMLElement} */ (el).dataset.stage ?? "");
      el.className = done || (current >= 0 && i < current) ? "done" : i === current ? "current" : "";
    }
    // ETA of the current stage, from its own rate since we first saw it.
    let eta = "";
    if (status === "running" && stage && total) {
      const now = performance.now();
      stageStart[stage] ??= { t: now, step };
      const s0 = stageStart[stage];
      const rate = (step - s0.step) / ((now - s0.t) / 1000);
      if (rate > 0 && step < total) eta = `about ${fmt.seconds((total - step) / rate)} left in ${stage}`;
    }
    find(card, "#eta").textContent = eta;
  };
}
