// @ts-check
// What every view shares besides formatting: finding its elements, what to undo when it is left, messages
// (toasts, problem boxes, errors), images fetched with the key, and drop zones.

import { ApiError } from "./api.js";
import { esc } from "./format.js";

/** @type {(() => void)[]} */
let cleanups = [];
/** @type {(message: string) => void} */
let onUnauthorized = () => {};
/** @type {ReturnType<typeof setTimeout> | undefined} */
let toastTimer;

/**
 * The element `selector` finds in `root`, of `type` (HTMLElement by default). A missing one is a bug of the
 * page's own markup, so it throws rather than answer null.
 * @template {Element} [T=HTMLElement]
 * @param {ParentNode} root
 * @param {string} selector
 * @param {{new (): T, prototype: T}} [type]
 * @returns {T}
 */
export function find(root, selector, type) {
  const el = root.querySelector(selector);
  const want = type ?? HTMLElement;
  if (!(el instanceof want)) throw new Error(`the page has no ${want.name} ${selector}`);
  return /** @type {T} */ (el);
}

/**
 * Register what to stop (timers, streams, charts) when the user leaves the current view.
 * @param {() => void} fn
 */
export function onLeave(fn) { cleanups.push(fn); }

export function leaveView() {
  for (const fn of cleanups) { try { fn(); } catch { /* best effort */ } }
  cleanups = [];
}

/** @param {(message: string) => void} fn what a refused key (401) does: sign out */
export function setUnauthorizedHandler(fn) { onUnauthorized = fn; }

/**
 * A short message at the bottom of the page for 4 s.
 * @param {string} text
 * @param {"info" | "ok"} [kind]
 */
export function toast(text, kind = "info") {
  const el = find(document, "#toast");
  el.textContent = text;
  el.className = `toast ${kind}`;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, 4000);
}

/**
 * A problem as a message box: the API's detail, and its stable code.
 * @param {Error} err
 * @returns {string} HTML
 */
export function problemBox(err) {
  const code = err instanceof ApiError && err.status ? ` <code>${esc(err.code)}</code>` : "";
  return `<div class="problem" role="alert">${esc(err.message)}${code}</div>`;
}

/**
 * Show an error of a view in `target`; a refused key (401) signs out instead.
 * @param {unknown} err
 * @param {Element} target
 */
export function fail(err, target) {
  if (err instanceof ApiError && err.status === 401) return onUnauthorized(err.message);
  target.querySelectorAll(":scope > .problem").forEach((el) => el.remove());
  target.insertAdjacentHTML("afterbegin", problemBox(err instanceof Error ? err : new Error(String(err))));
}

/**
 * Fetch an API image (the key goes in a header, so <img src> cannot) and show it in `img`.
 * @param {HTMLImageElement} img
 * @param {string} path
 * @param {(path: string, options: {raw: true}) => Promise<Response>} fetcher the API's `api`
 */
export async function loadImage(img, path, fetcher) {
  const blob = await (await fetcher(path, { raw: true })).blob();
  const url = URL.createObjectURL(blob);
  img.src = url;
  onLeave(() => URL.revokeObjectURL(url));
}

/**
 * Make `zone` accept dropped files and clicks (through `input`).
 * @param {HTMLElement} zone
 * @param {HTMLInputElement} input a hidden file input
 * @param {(files: FileList) => void} onFiles
 */
export function dropZone(zone, input, onFiles) {
  zone.addEventListener("click", () => input.click());
  zone.addEventListener("keydown", (e) => (e.key === "Enter" || e.key === " ") && input.click());
  input.addEventListener("change", () => input.files?.length && onFiles(input.files));
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (e) => { e.preventDefault(); zone.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) zone.addEventListener(type, () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => { e.preventDefault(); e.dataTransfer?.files.length && onFiles(e.dataTransfer.files); });
}
