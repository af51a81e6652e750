// Jobs: the list (status filter, pages) and the new-job form (fields, defaults and ranges from /openapi.json).

import { api, ApiError, openapi } from "./api.js";
import { badge, esc, fail, fmt, problemBox } from "./ui.js";

const PAGE_SIZE = 10;
const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];

// --- the list ---------------------------------------------------------------------------------------------

export async function jobsView(view, query) {
  const status = query.get("status") || "";
  const cursor = query.get("cursor") || "";
  const back = query.get("back") || ""; // cursors of the previous pages, comma-separated
  const size = Math.min(Math.max(Number(query.get("size")) || PAGE_SIZE, 1), 100); // the API's page limit
  const params = new URLSearchParams({ limit: size });
  if (status) params.set("status", status);
  if (cursor) params.set("cursor", cursor);
  const [page, datasets] = await Promise.all([api(`/v1/jobs?${params}`), api("/v1/datasets?limit=100")]);
  const names = Object.fromEntries(datasets.data.map((d) => [d.id, d.name]));
  const link = (q) => `#/jobs?${new URLSearchParams(Object.entries({ ...q, size: size === PAGE_SIZE ? "" : size }).filter(([, v]) => v))}`;
  const backs = back ? back.split(",") : [];
  const prev = backs.length ? link({ status, cursor: backs.at(-1) === "-" ? "" : backs.at(-1), back: backs.slice(0, -1).join(",") }) : null;
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
            <td class="num">${fmt.seconds(duration(j))}</td>
            <td class="num best" data-best="${esc(j.id)}">${j.status === "succeeded" ? "…" : "–"}</td>
          </tr>`).join("")}</tbody>
      </table>` : `<p class="empty">${status ? `No ${esc(status)} jobs` : "No jobs yet"}${cursor ? " on this page" : ""}. <a href="#/new">Start one</a>.</p>`}
      <div class="pager">
        ${prev ? `<a class="button small" id="prev" href="${prev}">← Newer</a>` : `<span></span>`}
        <span class="muted">page ${backs.length + 1}</span>
        ${next ? `<a class="button small" id="next" href="${next}">Older →</a>` : `<span></span>`}
      </div>
    </section>`;
  view.querySelector("#status-filter").addEventListener("change", (e) => { location.hash = link({ status: e.target.value }); });
  for (const tr of view.querySelectorAll("tr.clickable")) {
    tr.addEventListener("click", (e) => { if (!e.target.closest("a")) location.hash = `#/jobs/${tr.dataset.id}`; });
  }
  // Best fine-tuned top-1 over the job's evaluation sets (one small request per succeeded job on the page).
  await Promise.all(page.data.filter((j) => j.status === "succeeded").map(async (j) => {
    const cell = view.querySelector(`[data-best="${j.id}"]`);
    try {
      const tuned = (await api(`/v1/jobs/${j.id}/evaluations`)).data.filter((e) => e.model === "fine-tuned");
      const best = tuned.reduce((a, e) => (a && a.top1 >= e.top1 ? a : e), null);
      cell.innerHTML = best ? `${fmt.pct(best.top1)} <span class="sub">${esc(best.dataset_name)}</span>` : "–";
    } catch { cell.textContent = "–"; }
  }));
}

function duration(j) {
  if (!j.started_at) return null;
  const end = j.finished_at ? new Date(j.finished_at) : new Date();
  return (end - new Date(j.started_at)) / 1000;
}

// --- the form ---------------------------------------------------------------------------------------------

const MAIN_HP = ["epochs", "learning_rate", "batch_size", "seed"];
const SUGGESTED_VALIDATION_FRACTION = 0.2; // the API's default (0 on services before it held one out by default)

const humanize = (key) => key.charAt(0).toUpperCase() + key.slice(1).replaceAll("_", " ");

/** One input for a property of the OpenAPI schema, named by its path in the request (a.b.c). */
function field(path, prop, label = humanize(path.split(".").at(-1))) {
  const s = prop.anyOf ? { ...prop, ...prop.anyOf.find((a) => a.type !== "null"), nullable: true } : prop;
  const hint = s.description ? `<small class="hint">${esc(s.description)}</small>` : "";
  const err = `<small class="field-error" data-error-for="${path}"></small>`;
  if (s.type === "boolean") {
    return `<label class="check" data-field="${path}"><input type="checkbox" name="${path}" ${s.default ? "checked" : ""}> ${esc(label)}${hint}${err}</label>`;
  }
  if (s.enum) {
    return `<label data-field="${path}">${esc(label)}<select name="${path}">${s.enum.map((v) => `<option ${v === s.default ? "selected" : ""}>${esc(v)}</option>`).join("")}</select>${hint}${err}</label>`;
  }
  const numeric = s.type === "integer" || s.type === "number";
  const attrs = numeric ? [
    `type="number"`, `step="${s.type === "integer" ? 1 : "any"}"`,
    s.minimum != null ? `min="${s.minimum}"` : "", s.maximum != null ? `max="${s.maximum}"` : "",
    `data-kind="${s.type}"`,
    s.exclusiveMinimum != null ? `data-xmin="${s.exclusiveMinimum}"` : "",
    s.exclusiveMaximum != null ? `data-xmax="${s.exclusiveMaximum}"` : "",
  ] : [`type="text"`];
  const value = s.default ?? "";
  const placeholder = s.nullable ? `placeholder="empty: none"` : "";
  return `<label data-field="${path}">${esc(label)}<input name="${path}" ${attrs.join(" ")} value="${esc(value)}" ${placeholder} ${s.nullable ? 'data-nullable="1"' : ""}>${hint}${err}</label>`;
}

export async function newJobView(view, query) {
  const [schema, datasets, models] = await Promise.all([openapi(), api("/v1/datasets?limit=100"), api("/v1/models")]);
  const S = schema.components.schemas;
  const job = S.JobCreate.properties;
  const hp = S.Hyperparameters.properties;
  const saft = S.SaftMethod.properties;
  if (!datasets.data.length) {
    view.innerHTML = `<div class="page-head"><h1>New job</h1></div>
      <section class="card"><p class="empty">Upload a dataset first: <a href="#/datasets">Datasets</a>.</p></section>`;
    return;
  }
  const chosen = query.get("dataset") || datasets.data[0].id;
  // Datasets often share a name (three uploads of "shapes"): each choice also says its id, size and age.
  const dsOptions = datasets.data.map((d) => `<option value="${esc(d.id)}" ${d.id === chosen ? "selected" : ""}>${esc(d.name)} · ${esc(fmt.shortId(d.id))} · ${d.num_images} images, ${d.classes.length} classes · ${fmt.date(d.created_at)}</option>`).join("");
  const evalChoices = datasets.data.map((d) => `
    <label class="check eval-choice" title="${esc(d.id)}"><input type="checkbox" name="eval" value="${esc(d.id)}">
      <span class="eval-name">${esc(d.name)}</span> <code data-short-id>${esc(fmt.shortId(d.id))}</code>
      <span class="sub">${fmt.int(d.num_images)} images · ${fmt.date(d.created_at)}</span></label>`).join("");
  // The API's default where it holds one out; an older service's 0 would hide the frontier, so the form asks
  // for a validation split all the same (a user can still set 0).
  const validation = { ...job.validation_fraction, default: job.validation_fraction.default || SUGGESTED_VALIDATION_FRACTION };
  const groups = [
    ["Weights on this service", models.data.filter((m) => m.available_offline)],
    ["Downloads its weights on first use", models.data.filter((m) => !m.available_offline && m.default_pretrained)],
    ["No pretrained weights (random init)", models.data.filter((m) => !m.available_offline && !m.default_pretrained)],
  ].filter(([, list]) => list.length);
  const modelOptions = groups.map(([label, list]) => `<optgroup label="${esc(label)}">${list.map((m) => `<option ${m.name === models.default ? "selected" : ""}>${esc(m.name)}</option>`).join("")}</optgroup>`).join("");
  view.innerHTML = `
    <div class="page-head"><h1>New fine-tuning job</h1></div>
    <form id="job-form" class="card form" novalidate>
      <div id="form-problem"></div>
      <fieldset><legend>Data</legend>
        <div class="grid two">
          <label data-field="dataset_id">Training dataset<select name="dataset_id">${dsOptions}</select>
            <small class="field-error" data-error-for="dataset_id"></small></label>
          ${field("validation_fraction", validation, "Validation fraction")}
        </div>
        <div data-field="eval_dataset_ids"><span class="label">Evaluation datasets <small class="hint">${esc(job.eval_dataset_ids.description)} Scored zero-shot and fine-tuned.</small></span>
          <div class="checks">${evalChoices}</div>
          <small class="field-error" data-error-for="eval_dataset_ids"></small></div>
      </fieldset>
      <fieldset><legend>Model and method</legend>
        <div class="grid two">
          <label data-field="model">Base model<select name="model">${modelOptions}</select>
            <small class="field-error" data-error-for="model"></small></label>
          <label data-field="pretrained">Pretrained weights
            <input name="pretrained" list="pretrained-list" value="${esc(job.pretrained.default ?? "")}" placeholder="default" autocomplete="off">
            <datalist id="pretrained-list"></datalist>
            <small class="weights-note" id="weights-note"></small>
            <small class="hint">A pretrained tag of the model, a weights file in the service's models folder, <code>default</code> or <code>none</code> (a random init).</small>
            <small class="field-error" data-error-for="pretrained"></small></label>
        </div>
        <div class="grid two">
          <div data-field="method"><span class="label">Method</span>
            <div class="segmented">
              <label><input type="radio" name="method.type" value="saft" checked> SAFT (sparse)</label>
              <label><input type="radio" name="method.type" value="full"> Full fine-tuning</label>
            </div><small class="field-error" data-error-for="method"></small></div>
          <div id="saft-fields">${field("method.ratio", saft.ratio, "Ratio (fraction of parameters)")}</div>
        </div>
        <details id="saft-more"><summary>More SAFT options</summary><div class="grid three">
          ${Object.keys(saft).filter((k) => k !== "type" && k !== "ratio").map((k) => field(`method.${k}`, saft[k])).join("")}
        </div></details>
      </fieldset>
      <fieldset><legend>Training</legend>
        <div class="grid four">${MAIN_HP.map((k) => field(`hyperparameters.${k}`, hp[k])).join("")}</div>
        <details><summary>More hyper-parameters</summary><div class="grid three">
          ${Object.keys(hp).filter((k) => !MAIN_HP.includes(k)).map((k) => field(`hyperparameters.${k}`, hp[k])).join("")}
        </div></details>
        <details><summary>Prompt templates</summary>
          <label data-field="templates"><span>One per line, each with <code>{}</code> for the class name (empty: the default templates)</span>
            <textarea name="templates" rows="3" placeholder="a photo of a {}."></textarea>
            <small class="field-error" data-error-for="templates"></small></label>
        </details>
      </fieldset>
      <div class="form-actions"><button class="primary" type="submit" id="submit">Start job</button></div>
    </form>`;
  const form = view.querySelector("#job-form");
  const modelSelect = form.querySelector('[name="model"]');
  const weightsInput = form.querySelector('[name="pretrained"]');
  const showWeights = () => {
    const m = models.data.find((x) => x.name === modelSelect.value);
    const choices = [["default", m.default_pretrained ? `${m.default_pretrained}, ${weightsWhere(m, m.default_pretrained, models).text}` : "random init"],
      ...m.pretrained.map((t) => [t, weightsWhere(m, t, models).text]),
      ...models.weights_files.map((f) => [f, "file in the models folder"]), ["none", "random init"]];
    form.querySelector("#pretrained-list").innerHTML = choices.map(([v, label]) => `<option value="${esc(v)}">${esc(label)}</option>`).join("");
    const where = weightsWhere(m, weightsInput.value.trim() || "default", models);
    const note = form.querySelector("#weights-note");
    note.textContent = where.text;
    note.dataset.where = where.kind;
  };
  modelSelect.addEventListener("change", () => { weightsInput.value = "default"; showWeights(); });
  weightsInput.addEventListener("input", showWeights);
  showWeights();
  const toggleMethod = () => {
    const isSaft = form.querySelector('[name="method.type"]:checked').value === "saft";
    view.querySelector("#saft-fields").hidden = !isSaft;
    view.querySelector("#saft-more").hidden = !isSaft;
  };
  form.querySelectorAll('[name="method.type"]').forEach((r) => r.addEventListener("change", toggleMethod));
  form.addEventListener("input", (e) => { // an edited field drops its old message
    const box = e.target.closest("[data-field]");
    box?.classList.remove("invalid");
    box?.querySelectorAll("[data-error-for]").forEach((el) => { el.textContent = ""; });
  });
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearErrors(form);
    const { body, errors } = readForm(form);
    if (errors.length) return showErrors(form, errors);
    const button = view.querySelector("#submit");
    button.disabled = true;
    try {
      const created = await api("/v1/jobs", { method: "POST", json: body });
      location.hash = `#/jobs/${created.id}`;
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return fail(err, view);
      showApiErrors(form, err);
    } finally {
      button.disabled = false;
    }
  });
}

/** Where the weights of `pretrained` for model `m` come from: {kind: offline|download|file|none|unknown, text}. */
function weightsWhere(m, pretrained, models) {
  const tag = pretrained === "default" ? m.default_pretrained : pretrained;
  if (tag == null || ["none", "random", ""].includes(tag.toLowerCase())) return { kind: "none", text: "no weights: a random init" };
  if (m.cached_pretrained.includes(tag)) return { kind: "offline", text: "on this service: no download" };
  if (m.pretrained.includes(tag)) return { kind: "download", text: "downloads on first use (fails on a service without internet)" };
  if (models.weights_files.includes(tag)) return { kind: "file", text: "a file in the service's models folder" };
  return { kind: "unknown", text: "not a tag of this model: the service looks for a file of that name in its models folder" };
}

/** The request body from the form, and the obvious mistakes found on the way: [{path, msg}]. */
function readForm(form) {
  const body = {};
  const errors = [];
  const set = (path, value) => {
    const keys = path.split(".");
    let o = body;
    for (const k of keys.slice(0, -1)) o = o[k] ??= {};
    o[keys.at(-1)] = value;
  };
  const isSaft = form.querySelector('[name="method.type"]:checked').value === "saft";
  set("method.type", isSaft ? "saft" : "full");
  for (const el of form.querySelectorAll("input[name], select[name], textarea[name]")) {
    const path = el.name;
    if (path === "eval" || path === "method.type" || path === "templates") continue;
    if (path.startsWith("method.") && !isSaft) continue;
    if (el.type === "checkbox") { set(path, el.checked); continue; }
    if (path === "pretrained") { set(path, el.value.trim() || "default"); continue; }
    if (el.type !== "number") { set(path, el.value); continue; }
    if (el.value.trim() === "") {
      if (el.dataset.nullable) set(path, null);
      else errors.push({ path, msg: "required" });
      continue;
    }
    const v = Number(el.value);
    const bad = !Number.isFinite(v) ? "not a number"
      : el.dataset.kind === "integer" && !Number.isInteger(v) ? "must be a whole number"
      : el.min !== "" && v < Number(el.min) ? `must be at least ${el.min}`
      : el.max !== "" && v > Number(el.max) ? `must be at most ${el.max}`
      : el.dataset.xmin && v <= Number(el.dataset.xmin) ? `must be greater than ${el.dataset.xmin}`
      : el.dataset.xmax && v >= Number(el.dataset.xmax) ? `must be less than ${el.dataset.xmax}` : null;
    if (bad) errors.push({ path, msg: bad });
    else set(path, v);
  }
  body.eval_dataset_ids = [...form.querySelectorAll('[name="eval"]:checked')].map((c) => c.value);
  const templates = form.querySelector('[name="templates"]').value.split("\n").map((t) => t.trim()).filter(Boolean);
  if (templates.length) body.templates = templates;
  return { body, errors };
}

function clearErrors(form) {
  form.querySelector("#form-problem").innerHTML = "";
  form.querySelectorAll("[data-error-for]").forEach((el) => { el.textContent = ""; });
  form.querySelectorAll(".invalid").forEach((el) => el.classList.remove("invalid"));
}

/** Put each message next to its field (the longest known prefix of its path); the rest above the form. */
function showErrors(form, errors) {
  const rest = [];
  for (const { path, msg } of errors) {
    const parts = path.split(".");
    let slot = null;
    for (let n = parts.length; n > 0 && !slot; n--) slot = form.querySelector(`[data-error-for="${parts.slice(0, n).join(".")}"]`);
    if (!slot) { rest.push(`${path || "request"}: ${msg}`); continue; }
    slot.textContent = slot.textContent ? `${slot.textContent}; ${msg}` : msg;
    slot.closest("[data-field]")?.classList.add("invalid");
  }
  if (rest.length) form.querySelector("#form-problem").insertAdjacentHTML("beforeend", rest.map((r) => `<div class="problem">${esc(r)}</div>`).join(""));
  form.querySelector(".invalid input, .invalid select, .invalid textarea")?.focus();
}

/** The API's 422: each of its `errors` names its `field` as the request does (method.ratio) in plain words. */
function showApiErrors(form, err) {
  form.querySelector("#form-problem").innerHTML = problemBox(err);
  const errors = (err.errors || []).map((e) => ({ path: e.field ?? "", msg: e.msg }));
  // A refusal that names its field only in the message (e.g. "eval_dataset_ids: no dataset ...").
  const named = err.message.match(/^([a-z_.]+): /);
  if (!errors.length && named) errors.push({ path: named[1], msg: err.message.slice(named[0].length) });
  showErrors(form, errors.filter((e) => e.path));
}
