// @ts-check
// The console's only way to the service: the public /v1 API with the key kept in this browser tab.

const KEY = "saft.apiKey";

export const session = {
  /** @returns {string | null} */
  get key() { return sessionStorage.getItem(KEY); },
  /** @param {string | null} value */
  set key(value) { value ? sessionStorage.setItem(KEY, value) : sessionStorage.removeItem(KEY); },
};

/** @typedef {{detail?: string, code?: string, errors?: {field?: string, msg: string}[]}} Problem */

/** A refused request: the API's RFC 9457 problem document (status, code, detail, errors). */
export class ApiError extends Error {
  /** @param {number} status @param {Problem} problem */
  constructor(status, problem) {
    super(problem.detail || `HTTP ${status}`);
    this.status = status;
    this.code = problem.code || `http_${status}`;
    this.errors = problem.errors || [];
  }
}

/** @param {Response} response */
async function problemOf(response) {
  let body = {};
  try { body = await response.json(); } catch { /* not JSON: keep the status */ }
  return new ApiError(response.status, body);
}

/** @param {Record<string, string>} [extra] @returns {Record<string, string>} */
function headers(extra = {}) {
  return { Authorization: `Bearer ${session.key}`, ...extra };
}

/**
 * @typedef {object} CallOptions
 * @property {string} [method]
 * @property {unknown} [json] a body sent as JSON
 * @property {FormData} [form] a body sent as multipart
 * @property {boolean} [raw] answer the Response itself
 * @property {string} [key] another key than the session's (signing in)
 */

/**
 * Call the API; JSON in (json) or multipart (form); JSON out, the Response itself with raw. The answer's type is
 * the caller's to state (types.js).
 * @param {string} path
 * @param {CallOptions} options
 * @returns {Promise<any>}
 */
export async function api(path, { method = "GET", json, form, raw = false, key } = {}) {
  const h = key ? { Authorization: `Bearer ${key}` } : headers();
  /** @type {BodyInit | undefined} */
  let body;
  if (json !== undefined) { h["Content-Type"] = "application/json"; body = JSON.stringify(json); }
  else if (form) body = form;
  const response = await fetch(path, { method, headers: h, body });
  if (!response.ok) throw await problemOf(response);
  if (raw) return response;
  return response.status === 204 ? null : response.json();
}

/**
 * Multipart upload with progress (fetch has no upload progress).
 * @param {string} path
 * @param {FormData} form
 * @param {(fraction: number) => void} onProgress fraction 0..1 of the bytes sent
 * @returns {Promise<any>}
 */
export function upload(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    xhr.setRequestHeader("Authorization", `Bearer ${session.key}`);
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    xhr.onload = () => {
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch { /* keep {} */ }
      xhr.status < 300 ? resolve(body) : reject(new ApiError(xhr.status, body));
    };
    xhr.onerror = () => reject(new ApiError(0, { detail: "the service could not be reached" }));
    xhr.send(form);
  });
}

/** @typedef {{id?: string, event?: string, data: any}} StreamEvent */

/**
 * Follow a Server-Sent Events stream. EventSource cannot send an Authorization header, so this reads the
 * stream with fetch and parses it (id/event/data lines, a blank line ends an event). Resolves when the
 * server ends the stream.
 * @param {string} path
 * @param {(event: StreamEvent) => void} onEvent gets each event with data parsed as JSON
 * @param {AbortSignal} signal
 * @returns {Promise<void>}
 */
export async function followEvents(path, onEvent, signal) {
  const response = await fetch(path, { headers: headers({ Accept: "text/event-stream" }), signal });
  if (!response.ok || !response.body) throw await problemOf(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  /** @type {Record<string, string>} */
  let current = {};
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    const lines = buffer.split(/\r?\n/);
    buffer = lines.pop() ?? "";
    for (const line of lines) {
      if (line === "") {
        if (current.data !== undefined) onEvent({ ...current, data: JSON.parse(current.data) });
        current = {};
      } else if (!line.startsWith(":")) {
        const at = line.indexOf(":");
        const field = at < 0 ? line : line.slice(0, at);
        const val = at < 0 ? "" : line.slice(at + 1).replace(/^ /, "");
        current[field] = field === "data" && current.data !== undefined ? `${current.data}\n${val}` : val;
      }
    }
  }
}

/**
 * Hex SHA-256 of bytes, or null where the browser offers no WebCrypto (plain http on a non-local host).
 * @param {ArrayBuffer} buffer
 * @returns {Promise<string | null>}
 */
export async function sha256Hex(buffer) {
  if (!globalThis.crypto?.subtle) return null;
  const digest = await crypto.subtle.digest("SHA-256", buffer);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** @type {Promise<any> | undefined} */
let schemaPromise;
/**
 * The OpenAPI document (public): the job form takes its fields, defaults and ranges from it.
 * @returns {Promise<any>}
 */
export function openapi() {
  schemaPromise ??= fetch("/openapi.json").then((r) => r.json());
  return schemaPromise;
}
