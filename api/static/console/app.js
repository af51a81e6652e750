// @ts-check
// The console: a hash-routed page over the public /v1 API. Views: sign-in, jobs, job, new job, datasets,
// dataset. Each view renders into #view and registers what to stop (timers, streams, charts) when left.

import { api, ApiError, session } from "./api.js";
import { datasetsView, datasetView } from "./datasets.js";
import { jobView } from "./job.js";
import { newJobView } from "./job-form.js";
import { jobsView } from "./jobs.js";
import { fail, find, leaveView, problemBox, setUnauthorizedHandler } from "./ui.js";

const view = find(document, "#view");

/** @param {string} [message] why the page asks again */
function signIn(message) {
  session.key = null;
  chrome(false);
  view.innerHTML = `
    <section class="signin card">
      <h1>Sign in</h1>
      <p class="muted">Paste an API key. Make one with <code>saft keys create --tenant NAME</code>
        (<code>saft serve</code> prints one for the default tenant). The key stays in this browser tab only.</p>
      ${message ? problemBox(new Error(message)) : ""}
      <form id="signin-form">
        <label>API key <input id="key" name="key" type="password" autocomplete="off" placeholder="saft_..." required></label>
        <button class="primary" type="submit">Sign in</button>
      </form>
    </section>`;
  const keyInput = find(view, "#key", HTMLInputElement);
  find(view, "#signin-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const key = keyInput.value.trim();
    try {
      await api("/v1/datasets?limit=1", { key });
      session.key = key;
      if (!location.hash || location.hash === "#/signin") location.hash = "#/jobs";
      route();
    } catch (err) {
      signIn(err instanceof ApiError && err.status === 401 ? `That key was refused: ${err.message}.` : err instanceof Error ? err.message : String(err));
    }
  });
  keyInput.focus();
}

/** @param {boolean} signedIn */
function chrome(signedIn) {
  find(document, "#nav").hidden = !signedIn;
  find(document, "#signout").hidden = !signedIn;
  const who = find(document, "#who");
  who.hidden = !signedIn;
  if (signedIn) who.textContent = `key ${(session.key ?? "").slice(0, 12)}…`;
}

/** @type {[RegExp, (m: RegExpMatchArray) => Promise<void>][]} */
const routes = [
  [/^#\/jobs\/?(\?.*)?$/, (m) => jobsView(view, new URLSearchParams(m[1] || ""))],
  [/^#\/jobs\/([\w-]+)$/, (m) => jobView(view, m[1])],
  [/^#\/new(\?.*)?$/, (m) => newJobView(view, new URLSearchParams(m[1] || ""))],
  [/^#\/datasets\/?$/, () => datasetsView(view)],
  [/^#\/datasets\/([\w-]+)$/, (m) => datasetView(view, m[1])],
];

async function route() {
  leaveView();
  if (!session.key) return signIn();
  chrome(true);
  const hash = location.hash || "#/jobs";
  const section = hash.split(/[/?]/)[1];
  for (const a of document.querySelectorAll("[data-nav]")) a.classList.toggle("active", a instanceof HTMLElement && a.dataset.nav === section);
  for (const [pattern, show] of routes) {
    const m = hash.match(pattern);
    if (m) {
      view.innerHTML = `<p class="muted loading">Loading…</p>`;
      try { await show(m); } catch (err) { fail(err, view); }
      return;
    }
  }
  location.hash = "#/jobs";
}

setUnauthorizedHandler((message) => signIn(`Signed out: ${message}.`));
find(document, "#signout").addEventListener("click", () => { session.key = null; route(); });
window.addEventListener("hashchange", route);
route();
