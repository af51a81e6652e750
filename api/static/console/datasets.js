// @ts-check
// Datasets: the list with an upload zone, and one dataset's page (class counts, thumbnails).

import { api, ApiError, upload } from "./api.js";
import { countsChart } from "./charts.js";
import { esc, fmt } from "./format.js";
import { dropZone, fail, find, loadImage, onLeave, problemBox, toast } from "./ui.js";

/** @typedef {import("./types.js").Dataset} Dataset */

const THUMBS_PER_CLASS = 6;
const ACCEPT = ".zip,.tar,.tar.gz,.tgz";

/** @param {HTMLElement} view */
export async function datasetsView(view) {
  view.innerHTML = `
    <div class="page-head"><h1>Datasets</h1></div>
    <section class="card upload">
      <div class="dropzone" id="drop" tabindex="0" role="button" aria-label="Upload a dataset archive">
        <span><strong>Drop a dataset archive here</strong> or click to choose one</span>
        <span class="muted">.zip, .tar or .tar.gz of an ImageFolder: one folder per class (optional classes.json)</span>
      </div>
      <input type="file" id="file" accept="${ACCEPT}" hidden>
      <div class="upload-row" id="upload-row" hidden>
        <label>Name <input id="ds-name" maxlength="200"></label>
        <span id="file-label" class="muted"></span>
        <button class="primary" id="upload-btn">Upload</button>
      </div>
      <div class="progress" id="upload-progress" hidden><div class="bar"></div><span class="label"></span></div>
      <div id="upload-msg"></div>
    </section>
    <section class="card"><div id="ds-list"><p class="muted">Loading…</p></div></section>`;
  /** @type {File | null} */
  let file = null;
  /** @param {string} selector */
  const $ = (selector) => find(view, selector);
  const nameInput = find(view, "#ds-name", HTMLInputElement);
  const button = find(view, "#upload-btn", HTMLButtonElement);
  dropZone($("#drop"), find(view, "#file", HTMLInputElement), (files) => {
    file = files[0];
    $("#upload-row").hidden = false;
    nameInput.value = file.name.replace(/\.(zip|tar|tar\.gz|tgz)$/i, "");
    $("#file-label").textContent = `${file.name} · ${fmt.bytes(file.size)}`;
    $("#upload-msg").innerHTML = "";
    $("#upload-progress").hidden = true;
  });
  button.addEventListener("click", async () => {
    if (!file) return;
    const form = new FormData();
    form.append("name", nameInput.value.trim() || file.name);
    form.append("file", file);
    const bar = $("#upload-progress");
    bar.hidden = false;
    bar.classList.remove("succeeded");
    button.disabled = true;
    $("#upload-msg").innerHTML = "";
    /** @param {number} f @param {string} text */
    const show = (f, text) => {
      find(bar, ".bar").style.width = `${(f * 100).toFixed(1)}%`;
      find(bar, ".label").textContent = text;
    };
    try {
      /** @type {Dataset} */
      const ds = await upload("/v1/datasets", form, (f) => show(f, f < 1 ? `uploading ${Math.round(f * 100)} %` : "checking images…"));
      show(1, `uploaded ${ds.name}: ${ds.num_images} images, ${ds.classes.length} classes`);
      bar.classList.add("succeeded");
      file = null;
      $("#upload-row").hidden = true;
      await renderList(view);
    } catch (err) {
      bar.hidden = true;
      if (err instanceof ApiError && err.status === 401) return fail(err, view);
      $("#upload-msg").innerHTML = problemBox(err instanceof Error ? err : new Error(String(err)));
    } finally {
      button.disabled = false;
    }
  });
  await renderList(view);
}

/** @param {HTMLElement} view */
async function renderList(view) {
  const list = find(view, "#ds-list");
  /** @type {{data: Dataset[]}} */
  const { data } = await api("/v1/datasets?limit=100");
  if (!data.length) {
    list.innerHTML = `<p class="empty">No datasets yet. Drop an archive above (<code>saft synth --out shapes</code> makes a small one).</p>`;
    return;
  }
  list.innerHTML = `
    <table class="table" id="datasets-table">
      <thead><tr><th>Name</th><th class="num">Images</th><th class="num">Classes</th><th class="num">Size</th><th>Created</th><th></th></tr></thead>
      <tbody>${data.map((d) => `
        <tr data-id="${esc(d.id)}">
          <td><a href="#/datasets/${esc(d.id)}">${esc(d.name)}</a><div class="sub mono">${esc(d.id)}</div></td>
          <td class="num">${fmt.int(d.num_images)}</td><td class="num">${d.classes.length}</td>
          <td class="num">${fmt.bytes(d.size_bytes)}</td><td>${fmt.date(d.created_at)}</td>
          <td><div class="actions end"><a class="button small" href="#/new?dataset=${esc(d.id)}">Train</a>
            <button class="ghost small danger" data-delete="${esc(d.id)}">Delete</button></div></td>
        </tr>`).join("")}</tbody>
    </table>`;
  for (const b of list.querySelectorAll("[data-delete]")) {
    const id = /** @type {HTMLElement} */ (b).dataset.delete ?? "";
    b.addEventListener("click", () => deleteDataset(view, id, () => renderList(view)));
  }
}

/**
 * Delete dataset `id` once the user confirms, then `then()`.
 * @param {HTMLElement} view
 * @param {string} id
 * @param {() => void} then
 */
async function deleteDataset(view, id, then) {
  if (!confirm("Delete this dataset and its images? This cannot be undone.")) return;
  try {
    await api(`/v1/datasets/${id}`, { method: "DELETE" });
    toast("Dataset deleted", "ok");
    then();
  } catch (err) {
    fail(err, view);
  }
}

/**
 * @param {HTMLElement} view
 * @param {string} id
 */
export async function datasetView(view, id) {
  /** @type {Dataset} */
  const ds = await api(`/v1/datasets/${id}`);
  const classes = ds.classes.map((c, i) => ({ id: c, name: ds.class_names[i], n: ds.counts[c] || 0 }));
  view.innerHTML = `
    <div class="page-head">
      <div><a class="muted" href="#/datasets">Datasets</a> / <h1 class="inline">${esc(ds.name)}</h1></div>
      <div class="actions"><a class="button primary" href="#/new?dataset=${esc(ds.id)}">Train on it</a>
        <button class="danger" id="delete">Delete</button></div>
    </div>
    <div class="stats">
      <div><span>${fmt.int(ds.num_images)}</span>images</div>
      <div><span>${classes.length}</span>classes</div>
      <div><span>${fmt.bytes(ds.size_bytes)}</span>on disk</div>
      <div><span class="small-stat">${fmt.date(ds.created_at)}</span>created</div>
      <div><span class="small-stat mono">${esc(ds.id)}</span>id</div>
    </div>
    <div class="grid two">
      <section class="card"><h2>Images per class</h2>
        <div class="chart" style="height:${Math.max(160, 28 * classes.length + 40)}px"><canvas id="counts"></canvas></div></section>
      <section class="card"><h2>Samples</h2><div id="thumbs" class="thumbs">${classes.map((c) => `
        <div class="thumb-row" data-class="${esc(c.id)}">
          <div class="thumb-class">${esc(c.name)} <span class="muted">${c.n}</span></div>
          <div class="thumb-strip">${Array.from({ length: Math.min(c.n, THUMBS_PER_CLASS) }, (_, i) =>
            `<img alt="${esc(c.name)} ${i}" data-src="/v1/datasets/${esc(ds.id)}/thumbnails/${encodeURIComponent(c.id)}/${i}?size=96">`).join("")}</div>
        </div>`).join("")}</div></section>
    </div>`;
  const chart = countsChart(find(view, "#counts", HTMLCanvasElement), classes.map((c) => c.name), classes.map((c) => c.n));
  onLeave(() => chart.destroy());
  find(view, "#delete").addEventListener("click", () => deleteDataset(view, ds.id, () => { location.hash = "#/datasets"; }));
  await Promise.all([...view.querySelectorAll("img[data-src]")].map((img) =>
    loadImage(/** @type {HTMLImageElement} */ (img), /** @type {HTMLImageElement} */ (img).dataset.src ?? "", api).catch(() => img.classList.add("broken"))));
}
