// Small helpers every view uses: escaping, formatting, messages, and what to undo when a view is left.

import { ApiError } from "./api.js";

let cleanups = [];
let onUnauthorized = () => {};

/** Escape text for HTML. */
export const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

/** Register what to stop (timers, streams, charts) when the user leaves the current view. */
export function onLeave(fn) { cleanups.push(fn); }

export function leaveView() {
  for (const fn of cleanups) { try { fn(); } catch { /* best effort */ } }
  cleanups = [];
}

export function setUnauthorizedHandler(fn) { onUnauthorized = fn; }

export function toast(text, kind = "info") {
  const el = document.getElementById("toast");
  el.textContent = text;
  el.className = `toast ${kind}`;
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, 4000);
}

/** A problem as a message box: the API's detail, and its stable code. */
export function problemBox(err) {
  const code = err instanceof ApiError && err.status ? ` <code>${esc(err.code)}</code>` : "";
  return `<div class="problem" role="alert">${esc(err.message)}${code}</div>`;
}

/** Show an error of a view in `target`; a refused key (401) signs out instead. */
export function fail(err, target) {
  if (err instanceof ApiError && err.status === 401) return onUnauthorized(err.message);
  target.querySelectorAll(":scope > .problem").forEach((el) => el.remove());
  target.insertAdjacentHTML("afterbegin", problemBox(err));
}

export const fmt = {
  date: (iso) => (iso ? new Date(iso).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" }) : "–"),
  bytes: (n) => (n == null ? "–" : n < 1024 ? `${n} B` : n < 1 << 20 ? `${(n / 1024).toFixed(1)} KB` : `${(n / (1 << 20)).toFixed(1)} MB`),
  seconds: (s) => (s == null || !isFinite(s) ? "–" : s < 60 ? `${Math.max(0, Math.round(s))} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`),
  pct: (x) => (x == null ? "–" : `${(x * 100).toFixed(1)} %`),
  method: (m) => (m.type === "saft" ? `SAFT ${+(m.ratio * 100).toPrecision(3)} %` : "full"),
  int: (n) => (n == null ? "–" : Number(n).toLocaleString("en-US")),
  shortId: (id) => String(id ?? "").replace(/^([a-z]+_[0-9a-f]{8})[0-9a-f]+$/, "$1…"), // ds_0123abcd…, as git does
};

export const badge = (status) => `<span class="badge ${esc(status)}">${esc(status)}</span>`;

/** Fetch an API image (the key goes in a header, so <img src> cannot) and show it in `img`. */
export async function loadImage(img, path, fetcher) {
  const blob = await (await fetcher(path, { raw: true })).blob();
  const url = URL.createObjectURL(blob);
  img.src = url;
  onLeave(() => URL.revokeObjectURL(url));
}

/** Make `zone` accept dropped files and clicks (through `input`); onFiles(FileList). */
export function dropZone(zone, input, onFiles) {
  zone.addEventListener("click", () => input.click());
  zone.addEventListener("keydown", (e) => (e.key === "Enter" || e.key === " ") && input.click());
  input.addEventListener("change", () => input.files.length && onFiles(input.files));
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (e) => { e.preventDefault(); zone.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) zone.addEventListener(type, () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => { e.preventDefault(); e.dataTransfer.files.length && onFiles(e.dataTransfer.files); });
}
