// One job, live: status and progress from the SSE stream (and the job row), the loss curve, the event log,
// and once it succeeded: evaluations, where the mask went, downloads with SHA-256, and "try it".

import { api, ApiError, followEvents, sha256Hex } from "./api.js";
import { frontierChart, groupMask, lossChart, maskChart } from "./charts.js";
import { badge, dropZone, esc, fail, fmt, onLeave, problemBox, toast } from "./ui.js";

const ACTIVE = new Set(["queued", "running"]);
const RANK = { queued: 0, running: 1, succeeded: 2, failed: 2, cancelled: 2 }; // a job only moves forward (bar a requeue)
const POLL_MS = 1000; // the job row carries the newest step and loss between (sparser) progress events
const STAGES = ["loading", "scoring", "masking", "training", "evaluating", "saving"];

export async function jobView(view, id) {
  let job = await api(`/v1/jobs/${id}`);
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
    <div id="job-warnings"></div>
    <section class="card" id="progress-card">
      <div class="stages" id="stages">${STAGES.map((s) => `<span data-stage="${s}">${s}</span>`).join("")}</div>
      <div class="progress big" id="progress"><div class="bar"></div><span class="label"></span></div>
      <div class="progress-meta"><span id="step-text"></span><span id="eta"></span></div>
    </section>
    <div class="grid two">
      <section class="card"><h2>Training loss</h2><div class="chart"><canvas id="loss-chart"></canvas></div>
        <p class="muted small" id="loss-empty">The curve appears when training starts.</p></section>
      <section class="card log-card"><h2>Events</h2><ol class="log" id="log"></ol></section>
    </div>
    <div id="results"></div>`;
  const $ = (s) => view.querySelector(s);
  const chart = lossChart($("#loss-chart"));
  onLeave(() => chart.destroy());
  const points = new Map(); // training step -> {loss, lr}
  const stageStart = {}; // stage -> {t, step}: where its rate (for the ETA) is measured from
  let resultsShown = false;
  // What the events said last (status, stage, step of total). The row is read each second and the events come as
  // they happen, so either can be the newer: the page shows the one further along (see `shown`).
  const seen = { status: null, stage: null, step: 0, total: 0 };

  const addPoint = (step, loss, lr, total) => {
    if (total && chart.options.scales.x.max !== total) chart.options.scales.x.max = total; // grows left to right
    if (loss == null || !(step >= 1) || points.has(step)) return; // training steps count from 1
    points.set(step, { loss, lr });
    const sorted = [...points.entries()].sort((a, b) => a[0] - b[0]);
    chart.data.datasets[0].data = sorted.map(([x, p]) => ({ x, y: p.loss }));
    chart.data.datasets[1].data = sorted.filter(([, p]) => p.lr != null).map(([x, p]) => ({ x, y: p.lr }));
    chart.update("none");
    $("#loss-empty").hidden = true;
  };

  const render = () => {
    const { status, stage, step, total } = shown(job, seen);
    const active = ACTIVE.has(status);
    $("#status").innerHTML = badge(status) + (job.cancel_requested && active ? ` <span class="muted">stopping…</span>` : "");
    $("#cancel").hidden = !active || job.cancel_requested;
    $("#delete").hidden = active;
    const end = job.finished_at ? new Date(job.finished_at) : new Date();
    $("#duration").textContent = job.started_at ? fmt.seconds((end - new Date(job.started_at)) / 1000) : "–";
    const done = status === "succeeded";
    // A stage's total is known from its first step on: until then (and in stages that count no steps) the bar
    // says it is busy rather than "0 of 0".
    const counting = total > 0;
    const frac = done ? 1 : counting ? step / total : 0;
    const busy = status === "running" && !counting;
    $("#progress").querySelector(".bar").style.width = busy ? "" : `${(frac * 100).toFixed(1)}%`;
    $("#progress").className = `progress big ${status}${busy ? " indeterminate" : ""}`;
    $("#progress").querySelector(".label").textContent = done ? "done" : busy ? "" : active ? `${Math.round(frac * 100)} %` : status;
    $("#step-text").textContent = done ? `${job.metrics.train_steps ?? job.progress.step} training steps`
      : status === "queued" ? "waiting for a worker"
      : status !== "running" ? ""
      : !stage ? "starting…"
      : counting ? `${stage}: step ${step} of ${total}` : `${stage}…`;
    const current = STAGES.indexOf(stage);
    for (const el of $("#stages").children) {
      const i = STAGES.indexOf(el.dataset.stage);
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
    $("#eta").textContent = eta;
    if (job.stage === "training") addPoint(job.progress.step, job.metrics.train_loss, job.metrics.learning_rate, job.progress.total_steps);
    $("#job-problem").innerHTML = job.error ? problemBox(new ApiError(422, { detail: job.error.message, code: job.error.code })) : "";
    $("#job-warnings").innerHTML = warningsBanner(job.warnings);
    if (job.status === "succeeded" && !resultsShown) { // the row: it carries the checkpoint
      resultsShown = true;
      showResults($("#results"), job).catch((err) => fail(err, $("#results")));
    }
  };

  const log = $("#log");
  const logEvent = (e) => {
    follow(seen, e);
    if (e.kind === "progress") {
      if (e.data.stage === "training") addPoint(e.data.step, e.data.train_loss, e.data.learning_rate, e.data.total_steps);
      if (e.data.stage !== "training") return;
    }
    const time = new Date(e.created_at).toLocaleTimeString();
    const li = document.createElement("li");
    li.dataset.kind = e.kind;
    li.dataset.level = e.level;
    li.innerHTML = `<time>${esc(time)}</time><span class="kind">${esc(e.kind)}</span><span>${esc(e.message)}</span>`;
    log.append(li);
    log.scrollTop = log.scrollHeight;
  };

  // History first, then the live stream from the last event seen.
  let lastId = 0;
  for (const e of (await api(`/v1/jobs/${id}/events`)).data) { logEvent(e); lastId = e.id; }
  render();
  const renderSoon = () => { cancelAnimationFrame(renderSoon.frame); renderSoon.frame = requestAnimationFrame(render); };

  const controller = new AbortController();
  let timer = null;
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
    followEvents(`/v1/jobs/${id}/events/stream?after=${lastId}`, ({ event, data }) => {
      if (event === "end") return;
      logEvent(data);
      renderSoon(); // what the event says shows at once; the row follows
      if (event === "status" || event === "stage" || event === "error") refresh();
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

/** Take what event `e` says about the job's status, stage and step into `seen`. */
function follow(seen, e) {
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

/** What to show: the job row, unless the events are further along (the row was read before they happened). */
function shown(job, seen) {
  const row = { status: job.status, stage: job.stage, step: job.progress.step, total: job.progress.total_steps };
  return seen.status && RANK[seen.status] > RANK[job.status] ? { ...seen } : row;
}

/** The banner of a job whose training went wrong though it succeeded: each warning with what to try. */
function warningsBanner(warnings) {
  if (!warnings?.length) return "";
  return `<div class="warnings" role="alert"><strong>${warnings.length === 1 ? "Training may have gone wrong" : `Training may have gone wrong (${warnings.length} warnings)`}</strong>
    <ul>${warnings.map((w) => `<li data-code="${esc(w.code)}"><span class="message">${esc(w.message)}</span> <code>${esc(w.code)}</code>
      ${w.hint ? `<span class="hint-text">→ ${esc(w.hint.charAt(0).toUpperCase() + w.hint.slice(1))}</span>` : ""}</li>`).join("")}</ul></div>`;
}

// --- results of a succeeded job ---------------------------------------------------------------------------

async function showResults(box, job) {
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
  showEvaluations(box.querySelector("#evaluations"), evals);
  showMask(box.querySelector("#mask"), mask, job);
  showDownloads(box.querySelector("#downloads"), job, mask);
  showTry(box.querySelector("#try"), job);
}

function showEvaluations(card, { data: rows, recommended_alpha: rec, alpha_rule: rule }) {
  if (!rows.length) { card.insertAdjacentHTML("beforeend", `<p class="empty">No evaluation sets: give a validation fraction or eval datasets.</p>`); return; }
  const sets = []; // per dataset: its points along alpha (the API lists them by alpha), and the two ends
  for (const r of rows) {
    let s = sets.find((x) => x.id === r.dataset);
    if (!s) sets.push((s = { id: r.dataset, name: r.dataset_name, n: r.n, points: [] }));
    s.points.push(r);
  }
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
          <td class="num ${delta > 0 ? "up" : delta < 0 ? "down" : ""}">${delta == null ? "–" : `${delta > 0 ? "+" : ""}${delta.toFixed(1)}`}</td>
          ${rec == null ? "" : `<td class="num" data-rec-top1="${at(s, rec)?.top1}">${fmt.pct(at(s, rec)?.top1)}</td>`}
          <td class="num">${fmt.pct(zero?.top5)} → ${fmt.pct(tuned?.top5)}</td></tr>`;
      }).join("")}</tbody>
    </table></div></div>`);
  const chart = frontierChart(card.querySelector("#frontier-chart"), sets, rec);
  onLeave(() => chart.destroy());
}

function showMask(card, mask, job) {
  if (!mask) {
    card.insertAdjacentHTML("beforeend", `<p class="empty">${job.method.type === "full" ? "Full fine-tuning trains every parameter: there is no mask." : "No mask."}</p>`);
    return;
  }
  const groups = groupMask(mask.tensors);
  const sum = (tower) => tower.rows.reduce((a, r) => a + Object.values(r).reduce((x, y) => x + y, 0), 0);
  const yMax = Math.max(...[groups.image, groups.text].flatMap((t) => t.rows.map((r) => Object.values(r).reduce((x, y) => x + y, 0))), 1);
  const top = [...mask.tensors].sort((a, b) => b.selected - a.selected).slice(0, 5);
  card.insertAdjacentHTML("beforeend", `
    <div class="stats inline-stats">
      <div><span data-k="${mask.k}">${fmt.int(mask.k)}</span>entries selected</div>
      <div><span>${+(mask.ratio * 100).toPrecision(3)} %</span>of ${fmt.int(mask.num_eligible)} eligible</div>
      <div><span data-image-total="${sum(groups.image)}">${fmt.int(sum(groups.image))}</span>image tower</div>
      <div><span data-text-total="${sum(groups.text)}">${fmt.int(sum(groups.text))}</span>text tower</div>
    </div>
    <div class="grid two">
      <div class="chart" style="height:300px"><canvas id="mask-image"></canvas></div>
      <div class="chart" style="height:300px"><canvas id="mask-text"></canvas></div>
    </div>
    <p class="small muted">Largest tensors: ${top.map((t) => `<code>${esc(t.name)}</code> ${fmt.int(t.selected)} of ${fmt.int(t.numel)}`).join(" · ")}</p>`);
  const charts = [
    maskChart(card.querySelector("#mask-image"), groups.image, "Image tower", yMax),
    maskChart(card.querySelector("#mask-text"), groups.text, "Text tower", yMax),
  ];
  onLeave(() => charts.forEach((c) => c.destroy()));
}

function showDownloads(card, job, mask) {
  const files = [{ what: "checkpoint", label: "Sparse checkpoint", url: `/v1/jobs/${job.id}/checkpoint`, sha: job.checkpoint.sha256, size: job.checkpoint.size_bytes, name: `${job.id}.safetensors` }];
  if (mask?.url) files.push({ what: "mask", label: "Mask", url: mask.url, sha: mask.sha256, size: mask.size_bytes, name: `${job.id}-mask.safetensors` });
  card.insertAdjacentHTML("beforeend", files.map((f) => `
    <div class="download" data-download="${f.what}">
      <button class="primary small">Download ${esc(f.label.toLowerCase())}</button>
      <div><div><strong>${esc(f.label)}</strong> · ${fmt.bytes(f.size)} · <code>${esc(f.name)}</code></div>
        <div class="sha">SHA-256 <code class="mono" data-sha>${esc(f.sha)}</code> <span class="verified"></span></div></div>
    </div>`).join(""));
  for (const f of files) {
    const row = card.querySelector(`[data-download="${f.what}"]`);
    row.querySelector("button").addEventListener("click", async () => {
      const status = row.querySelector(".verified");
      status.textContent = "downloading…";
      try {
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

function showTry(card, job) {
  const rec = job.checkpoint.recommended_alpha;
  card.insertAdjacentHTML("beforeend", `<div class="try-layout"><div>
    <div class="try">
      <div class="dropzone small" id="try-drop" tabindex="0" role="button" aria-label="Choose an image to classify">
        <img id="try-preview" alt="" hidden><span id="try-hint"><strong>Drop an image</strong> or click to choose one</span>
      </div>
      <input type="file" id="try-file" accept="image/*" hidden>
      <label class="alpha">α <input type="range" id="alpha" min="0" max="1" step="0.05" value="1">
        <output id="alpha-out">1.00</output>${rec == null ? "" : `<button type="button" class="ghost small" id="alpha-recommended">recommended α = ${rec}</button>`}
        <small class="hint">0 = base model, 1 = fine-tuned</small></label>
    </div>
    <div id="try-problem"></div></div>
    <div class="grid two preds">
      <div><h3>Base (zero-shot)</h3><ol class="bars" id="pred-base"><li class="placeholder">drop an image to see its classes</li></ol></div>
      <div><h3 id="tuned-title">Fine-tuned</h3><ol class="bars" id="pred-tuned"><li class="placeholder">&nbsp;</li></ol></div>
    </div></div>`);
  const $ = (s) => card.querySelector(s);
  let image = null;
  const classify = async (alpha) => {
    const form = new FormData();
    form.append("images", image, image.name || "image.png");
    form.append("job_id", job.id);
    form.append("alpha", String(alpha));
    form.append("top_k", "5");
    return (await api("/v1/classify", { method: "POST", form })).results[0].predictions;
  };
  const bars = (list, preds) => {
    list.innerHTML = preds.map((p) => `<li><span class="label" title="${esc(p.label)}">${esc(p.label)}</span><span class="bar-track"><span class="bar" style="width:${(p.score * 100).toFixed(1)}%"></span></span><span class="score">${(p.score * 100).toFixed(1)} %</span></li>`).join("");
  };
  const run = async (which) => {
    if (!image) return;
    $("#try-problem").innerHTML = "";
    const alpha = Number($("#alpha").value);
    $("#tuned-title").textContent = alpha === 1 ? "Fine-tuned" : `Interpolated (α = ${alpha.toFixed(2)})`;
    try {
      if (which !== "tuned") bars($("#pred-base"), await classify(0));
      bars($("#pred-tuned"), await classify(alpha));
    } catch (err) {
      if (err.status === 401) return fail(err, card);
      $("#try-problem").innerHTML = problemBox(err);
    }
  };
  dropZone($("#try-drop"), $("#try-file"), (files) => {
    image = files[0];
    const preview = $("#try-preview");
    if (preview.src) URL.revokeObjectURL(preview.src);
    preview.src = URL.createObjectURL(image);
    preview.hidden = false;
    $("#try-hint").hidden = true;
    run("both");
  });
  $("#alpha").addEventListener("input", (e) => { $("#alpha-out").textContent = Number(e.target.value).toFixed(2); });
  $("#alpha").addEventListener("change", () => run("tuned"));
  $("#alpha-recommended")?.addEventListener("click", () => {
    $("#alpha").value = String(rec);
    $("#alpha-out").textContent = rec.toFixed(2);
    run("tuned");
  });
}
