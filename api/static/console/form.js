// @ts-check
// Forms built from the OpenAPI schema: an input per property (its default, range and help text from the schema),
// the request body read back with the obvious mistakes caught, and each message shown next to its field.

import { ApiError } from "./api.js";
import { esc } from "./format.js";
import { find, problemBox } from "./ui.js";

/**
 * A property of an OpenAPI schema, as far as the form reads it.
 * @typedef {object} SchemaProperty
 * @property {string} [type]
 * @property {string} [description]
 * @property {unknown} [default]
 * @property {string[]} [enum]
 * @property {number} [minimum]
 * @property {number} [maximum]
 * @property {number} [exclusiveMinimum]
 * @property {number} [exclusiveMaximum]
 * @property {SchemaProperty[]} [anyOf]
 * @property {boolean} [nullable]
 */
/** @typedef {{path: string, msg: string}} FieldError a message for the field at `path` (a.b.c) */
/** @typedef {HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement} Control */

/** @param {string} key */
const humanize = (key) => key.charAt(0).toUpperCase() + key.slice(1).replaceAll("_", " ");

/**
 * One input for a property of the OpenAPI schema, named by its path in the request (a.b.c).
 * @param {string} path
 * @param {SchemaProperty} prop
 * @param {string} [label]
 * @returns {string} HTML
 */
export function field(path, prop, label = humanize(path.split(".").at(-1) ?? path)) {
  /** @type {SchemaProperty} */
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

/**
 * Why a number input's value is refused (its kind and range, as `field` wrote them), or null.
 * @param {HTMLInputElement} el
 * @param {number} v
 * @returns {string | null}
 */
export function numberProblem(el, v) {
  return !Number.isFinite(v) ? "not a number"
    : el.dataset.kind === "integer" && !Number.isInteger(v) ? "must be a whole number"
    : el.min !== "" && v < Number(el.min) ? `must be at least ${el.min}`
    : el.max !== "" && v > Number(el.max) ? `must be at most ${el.max}`
    : el.dataset.xmin && v <= Number(el.dataset.xmin) ? `must be greater than ${el.dataset.xmin}`
    : el.dataset.xmax && v >= Number(el.dataset.xmax) ? `must be less than ${el.dataset.xmax}` : null;
}

/**
 * Set `value` at `path` (a.b.c) in `body`, making the objects on the way.
 * @param {Record<string, any>} body
 * @param {string} path
 * @param {unknown} value
 */
export function setPath(body, path, value) {
  const keys = path.split(".");
  let o = body;
  for (const k of keys.slice(0, -1)) o = o[k] ??= {};
  o[keys[keys.length - 1]] = value;
}

/**
 * An edited field drops its old message.
 * @param {HTMLFormElement} form
 */
export function clearOnInput(form) {
  form.addEventListener("input", (e) => {
    const box = e.target instanceof Element ? e.target.closest("[data-field]") : null;
    box?.classList.remove("invalid");
    box?.querySelectorAll("[data-error-for]").forEach((el) => { el.textContent = ""; });
  });
}

/** @param {HTMLFormElement} form */
export function clearErrors(form) {
  find(form, "#form-problem").innerHTML = "";
  form.querySelectorAll("[data-error-for]").forEach((el) => { el.textContent = ""; });
  form.querySelectorAll(".invalid").forEach((el) => el.classList.remove("invalid"));
}

/**
 * Put each message next to its field (the longest known prefix of its path); the rest above the form.
 * @param {HTMLFormElement} form
 * @param {FieldError[]} errors
 */
export function showErrors(form, errors) {
  /** @type {string[]} */
  const rest = [];
  for (const { path, msg } of errors) {
    const parts = path.split(".");
    /** @type {Element | null} */
    let slot = null;
    for (let n = parts.length; n > 0 && !slot; n--) slot = form.querySelector(`[data-error-for="${parts.slice(0, n).join(".")}"]`);
    if (!slot) { rest.push(`${path || "request"}: ${msg}`); continue; }
    slot.textContent = slot.textContent ? `${slot.textContent}; ${msg}` : msg;
    slot.closest("[data-field]")?.classList.add("invalid");
  }
  if (rest.length) find(form, "#form-problem").insertAdjacentHTML("beforeend", rest.map((r) => `<div class="problem">${esc(r)}</div>`).join(""));
  /** @type {HTMLElement | null} */ (form.querySelector(".invalid input, .invalid select, .invalid textarea"))?.focus();
}

/**
 * The API's 422: each of its `errors` names its `field` as the request does (method.ratio) in plain words.
 * @param {HTMLFormElement} form
 * @param {Error} err
 */
export function showApiErrors(form, err) {
  find(form, "#form-problem").innerHTML = problemBox(err);
  const errors = (err instanceof ApiError ? err.errors : []).map((e) => ({ path: e.field ?? "", msg: e.msg }));
  // A refusal that names its field only in the message (e.g. "eval_dataset_ids: no dataset ...").
  const named = err.message.match(/^([a-z_.]+): /);
  if (!errors.length && named) errors.push({ path: named[1], msg: err.message.slice(named[0].length) });
  showErrors(form, errors.filter((e) => e.path));
}
