// @ts-check
// A job's events: the history, the live stream after it, and the log that lists them.

import { api, followEvents } from "./api.js";
import { esc } from "./format.js";

/** @typedef {import("./types.js").JobEvent} JobEvent */

/**
 * Every event of job `id` so far, oldest first, through `onEvent`.
 * @param {string} id
 * @param {(e: JobEvent) => void} onEvent
 * @returns {Promise<number>} the id of the last one (0: none), where the live stream goes on
 */
export async function replayHistory(id, onEvent) {
  let lastId = 0;
  /** @type {{data: JobEvent[]}} */
  const history = await api(`/v1/jobs/${id}/events`);
  for (const e of history.data) { onEvent(e); lastId = e.id; }
  return lastId;
}

/**
 * The live events of job `id` after event `after`, until the service ends the stream (the job ended) or
 * `signal` aborts it. `onEvent(e, rowChanged)`: rowChanged when the event changed the job row (its status or
 * stage, or an error), which is then worth reading again.
 * @param {string} id
 * @param {number} after
 * @param {(e: JobEvent, rowChanged: boolean) => void} onEvent
 * @param {AbortSignal} signal
 */
export function streamEvents(id, after, onEvent, signal) {
  return followEvents(`/v1/jobs/${id}/events/stream?after=${after}`, ({ event, data }) => {
    if (event === "end") return;
    onEvent(data, event === "status" || event === "stage" || event === "error");
  }, signal);
}

/**
 * Add event `e` to the log `list`, scrolled to the newest.
 * @param {HTMLElement} list
 * @param {JobEvent} e
 */
export function appendEvent(list, e) {
  const time = new Date(e.created_at).toLocaleTimeString();
  const li = document.createElement("li");
  li.dataset.kind = e.kind;
  li.dataset.level = e.level;
  li.innerHTML = `<time>${esc(time)}</time><span class="kind">${esc(e.kind)}</span><span>${esc(e.message)}</span>`;
  list.append(li);
  list.scrollTop = list.scrollHeight;
}
