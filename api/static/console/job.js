// @ts-check
// One job, live: the page's layout and what keeps it current. Status and progress come from the SSE stream and
// the job row (job-progress.js), the loss curve and the event log from the events (job-events.js); once the job
// succeeded, its results (job-results.js).

import { api, ApiError } from "./api.js";
import { lossCurve } from "./charts.js";
import { badge, esc, fmt, runSeconds } from "./format.js";
import { appendEvent, replayHistory, streamEvents } from "./job-events.js";
import { ACTIVE, follow, nothingSeen, progressCard, progressPanel, shown } from "./job-progress.js";
import { showResults } from "./job-results.js";
import { fail, find, onLeave, problemBox, toast } from "./ui.js";

/** @typedef {import("./types.js").Job} Job */
/** @typedef {import("./types.js").JobEvent} JobEvent */
/** @typedef {import("./types.js").JobWarning} JobWarning */
/** @typedef {import("./types.js").Dataset} Dataset */

const POLL_MS = 1000; // the job row carries the newest step and loss between (sparser) progress events

/**
 * @param {HTMLElement} view
 * @param {string} id
 */
export async function jobView(view, id) {
  /** @type {Job} */
  let job = await api(`/v1/jobs/${id}`);
  /** @type {Dataset | null} */
  const dataset = await api(`/v1/datasets/${job.dataset_id}`).catch(() => null);
  view.innerHTML = `
    <div class="page-head">
      <div><a class="muted" href="#/jobs">Jobs</a> / <h1 class="inline mono">${esc(job.id)}</h1> <span id="status"></span></div>
      <div class="actions"><button id="cancel" class="ghost">Cancel</button><button id="delete" class="danger">Delete</button></div>
    </div>
    <div class="stats">
      <div><span>${esc(fmt.method(job.method))}</span>method</div>
      <div><span>${esc(job.model)}</span>model</div>
      <div><span>${dataset ? `<a href="#/datasets/${esc(dataset.id)}">${esc(dataset.name)}</a>` : esc(job.dataset_id)}</span>dataset</div>
      <div><span>${job.hyperparameters.epochs} × ${job.hyperparameters.batch_size}</span>epochs × batch</div>
      <div><span>${job.hyperparameters.learning_rate}</span>learning rate</div>
      <div><span id="duration">–</span>duration</div>
    </div>
    <div id="job-problem"></div>
    <div id="job-warnings"></div>${progressCard()}
    <div class="grid two">
      <section class="card"><h2>Training loss</h2><div class="chart"><canvas id="loss-chart"></canvas></div>
        <p class="muted small" id="loss-empty">The curve appears when training starts.</p></section>
      <section class="card log-card"><h2>Events</h2><ol class="log" id="log"></ol></section>
    </div>
    <div id="results"></div>`;
  /** @param {string} selector */
  const $ = (selector) => find(view, selector);
  const curve = lossCurve(find(view, "#loss-chart", HTMLCanvasElement), $("#loss-empty"));
  onLeave(() => curve.destroy());
  const showProgress = progressPanel($("#progress-card"));
  const seen = nothingSeen();
  let resultsShown = false;

  const render = () => {
    const state = shown(job, seen);
    const active = ACTIVE.has(state.status);
    $("#status").innerHTML = badge(state.status) + (job.cancel_requested && active ? ` <span class="muted">stopping…</span>` : "");
    $("#cancel").hidden = !active || job.cancel_requested;
    $("#delete").hidden = active;
    $("#duration").textContent = fmt.seconds(runSeconds(job));
    showProgress(job, state);
    if (job.stage === "training") curve.add(job.progress.step, job.metrics.train_loss, job.metrics.learning_rate, job.progress.total_steps);
    $("#job-problem").innerHTML = job.error ? problemBox(new ApiError(422, { detail: job.error.message, code: job.error.code })) : "";
    $("#job-warnings").innerHTML = warningsBanner(job.warnings);
    const { checkpoint } = job;
    if (job.status === "succeeded" && checkpoint && !resultsShown) { // the row: it carries the checkpoint
      resultsShown = true;
      showResults($("#results"), { ...job, checkpoint }).catch((err) => fail(err, $("#results")));
    }
  };

  const log = $("#log");
  /** @param {JobEvent} e */
  const onEvent = (e) => {
    follow(seen, e);
    if (e.kind === "progress") {
      if (e.data.stage === "training") curve.add(e.data.step, e.data.train_loss, e.data.learning_rate, e.data.total_steps);
      if (e.data.stage !== "training") return; // other stages' steps show in the progress card only
    }
    appendEvent(log, e);
  };

  // History first, then the live stream from the last event seen, and the row read each second meanwhile.
  const lastId = await replayHistory(id, onEvent);
  render();
  let frame = 0;
  const renderSoon = () => { cancelAnimationFrame(frame); frame = requestAnimationFrame(render); };

  const controller = new AbortController();
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let timer;
  onLeave(() => { controller.abort(); clearTimeout(timer); });
  const refresh = async () => {
    try { job = await api(`/v1/jobs/${id}`); render(); } catch (err) { if (!controller.signal.aborted) fail(err, view); }
  };
  const poll = async () => {
    await refresh();
    if (ACTIVE.has(job.status) && !controller.signal.aborted) timer = setTimeout(poll, POLL_MS);
  };
  if (ACTIVE.has(job.status)) {
    timer = setTimeout(poll, POLL_MS);
    streamEvents(id, lastId, (e, rowChanged) => {
      onEvent(e);
      renderSoon(); // what the event says shows at once; the row follows
      if (rowChanged) refresh();
    }, controller.signal).then(refresh).catch((err) => { if (!controller.signal.aborted) fail(err, view); });
  }

  $("#cancel").addEventListener("click", async () => {
    try { job = await api(`/v1/jobs/${id}/cancel`, { method: "POST" }); render(); toast("Cancellation requested"); } catch (err) { fail(err, view); }
  });
  $("#delete").addEventListener("click", async () => {
    if (!confirm("Delete this job with its checkpoint, mask and events?")) return;
    try { await api(`/v1/jobs/${id}`, { method: "DELETE" }); toast("Job deleted", "ok"); location.hash = "#/jobs"; } catch (err) { fail(err, view); }
  });
}

/**
 * The banner of a job whose training went wrong though it succeeded: each warning with what to try.
 * @param {JobWarning[] | undefined} warnings
 * @returns {string} HTML
 */
function warningsBanner(warnings) {
  if (!warnings?.length) return "";
  return `<div class="warnings" role="alert"><strong>${warnings.length === 1 ? "Training may have gone wrong" : `Training may have gone wrong (${warnings.length} warnings)`}</strong>
    <ul>${warnings.map((w) => `<li data-code="${esc(w.code)}"><span class="message">${esc(w.message)}</span> <code>${esc(w.code)}</code>
      ${w.hint ? `<span class="hint-text">→ ${esc(w.hint.charAt(0).toUpperCase() + w.hint.slice(1))}</span>` : ""}</li>`).join("")}</ul></div>`;
}
