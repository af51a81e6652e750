// @ts-check
// The new-job form: its fields, defaults and ranges from /openapi.json (form.js), the datasets and models of this
// service to choose from, and where the chosen weights would come from.

import { api, ApiError, openapi } from "./api.js";
import { clearErrors, clearOnInput, field, numberProblem, setPath, showApiErrors, showErrors } from "./form.js";
import { esc, fmt } from "./format.js";
import { fail, find } from "./ui.js";

/** @typedef {import("./types.js").Dataset} Dataset */
/** @typedef {import("./types.js").Model} Model */
/** @typedef {import("./types.js").Models} Models */
/** @template T @typedef {import("./types.js").Page<T>} Page */
/** @typedef {import("./form.js").FieldError} FieldError */
/** @typedef {import("./form.js").Control} Control */

const MAIN_HP = ["epochs", "learning_rate", "batch_size", "seed"];
const SUGGESTED_VALIDATION_FRACTION = 0.2; // the API's default (0 on services before it held one out by default)

/**
 * @param {HTMLElement} view
 * @param {URLSearchParams} query dataset: the training dataset to choose first
 */
export async function newJobView(view, query) {
  /** @type {[any, Page<Dataset>, Models]} */
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
  /** @type {[string, Model[]][]} */
  const groups = [
    ["Weights on this service", models.data.filter((m) => m.available_offline)],
    ["Downloads its weights on first use", models.data.filter((m) => !m.available_offline && m.default_pretrained)],
    ["No pretrained weights (random init)", models.data.filter((m) => !m.available_offline && !m.default_pretrained)],
  ];
  const modelOptions = groups.filter(([, list]) => list.length).map(([label, list]) => `<optgroup label="${esc(label)}">${list.map((m) => `<option ${m.name === models.default ? "selected" : ""}>${esc(m.name)}</option>`).join("")}</optgroup>`).join("");
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
  const form = find(view, "#job-form", HTMLFormElement);
  const modelSelect = find(form, '[name="model"]', HTMLSelectElement);
  const weightsInput = find(form, '[name="pretrained"]', HTMLInputElement);
  const showWeights = () => {
    const m = models.data.find((x) => x.name === modelSelect.value);
    if (!m) return;
    const choices = [["default", m.default_pretrained ? `${m.default_pretrained}, ${weightsWhere(m, m.default_pretrained, models).text}` : "random init"],
      ...m.pretrained.map((t) => [t, weightsWhere(m, t, models).text]),
      ...models.weights_files.map((f) => [f, "file in the models folder"]), ["none", "random init"]];
    find(form, "#pretrained-list").innerHTML = choices.map(([v, label]) => `<option value="${esc(v)}">${esc(label)}</option>`).join("");
    const where = weightsWhere(m, weightsInput.value.trim() || "default", models);
    const note = find(form, "#weights-note");
    note.textContent = where.text;
    note.dataset.where = where.kind;
  };
  modelSelect.addEventListener("change", () => { weightsInput.value = "default"; showWeights(); });
  weightsInput.addEventListener("input", showWeights);
  showWeights();
  const toggleMethod = () => {
    const isSaft = isSaftChosen(form);
    find(view, "#saft-fields").hidden = !isSaft;
    find(view, "#saft-more").hidden = !isSaft;
  };
  form.querySelectorAll('[name="method.type"]').forEach((r) => r.addEventListener("change", toggleMethod));
  clearOnInput(form);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearErrors(form);
    const { body, errors } = readForm(form);
    if (errors.length) return showErrors(form, errors);
    const button = find(view, "#submit", HTMLButtonElement);
    button.disabled = true;
    try {
      const created = await api("/v1/jobs", { method: "POST", json: body });
      location.hash = `#/jobs/${created.id}`;
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return fail(err, view);
      showApiErrors(form, err instanceof Error ? err : new Error(String(err)));
    } finally {
      button.disabled = false;
    }
  });
}

/**
 * Where the weights of `pretrained` for model `m` come from.
 * @param {Model} m
 * @param {string} pretrained
 * @param {Models} models
 * @returns {{kind: "offline" | "download" | "file" | "none" | "unknown", text: string}}
 */
function weightsWhere(m, pretrained, models) {
  const tag = pretrained === "default" ? m.default_pretrained : pretrained;
  if (tag == null || ["none", "random", ""].includes(tag.toLowerCase())) return { kind: "none", text: "no weights: a random init" };
  if (m.cached_pretrained.includes(tag)) return { kind: "offline", text: "on this service: no download" };
  if (m.pretrained.includes(tag)) return { kind: "download", text: "downloads on first use (fails on a service without internet)" };
  if (models.weights_files.includes(tag)) return { kind: "file", text: "a file in the service's models folder" };
  return { kind: "unknown", text: "not a tag of this model: the service looks for a file of that name in its models folder" };
}

/** @param {HTMLFormElement} form */
const isSaftChosen = (form) => find(form, '[name="method.type"]:checked', HTMLInputElement).value === "saft";

/**
 * The request body from the form, and the obvious mistakes found on the way.
 * @param {HTMLFormElement} form
 * @returns {{body: Record<string, any>, errors: FieldError[]}}
 */
function readForm(form) {
  /** @type {Record<string, any>} */
  const body = {};
  /** @type {FieldError[]} */
  const errors = [];
  const isSaft = isSaftChosen(form);
  setPath(body, "method.type", isSaft ? "saft" : "full");
  for (const el of /** @type {NodeListOf<Control>} */ (form.querySelectorAll("input[name], select[name], textarea[name]"))) {
    const path = el.name;
    if (path === "eval" || path === "method.type" || path === "templates") continue;
    if (path.startsWith("method.") && !isSaft) continue;
    if (el instanceof HTMLInputElement && el.type === "checkbox") { setPath(body, path, el.checked); continue; }
    if (path === "pretrained") { setPath(body, path, el.value.trim() || "default"); continue; }
    if (!(el instanceof HTMLInputElement) || el.type !== "number") { setPath(body, path, el.value); continue; }
    if (el.value.trim() === "") {
      if (el.dataset.nullable) setPath(body, path, null);
      else errors.push({ path, msg: "required" });
      continue;
    }
    const v = Number(el.value);
    const bad = numberProblem(el, v);
    if (bad) errors.push({ path, msg: bad });
    else setPath(body, path, v);
  }
  body.eval_dataset_ids = [...form.querySelectorAll('[name="eval"]:checked')].map((c) => /** @type {HTMLInputElement} */ (c).value);
  const templates = find(form, '[name="templates"]', HTMLTextAreaElement).value.split("\n").map((t) => t.trim()).filter(Boolean);
  if (templates.length) body.templates = templates;
  return { body, errors };
}
