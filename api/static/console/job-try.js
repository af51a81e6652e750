// @ts-check
// "Try it": classify a dropped image with the base model (α = 0) and with the job's checkpoint at a chosen α.

import { api, ApiError } from "./api.js";
import { esc } from "./format.js";
import { dropZone, fail, find, problemBox } from "./ui.js";

/** @typedef {import("./types.js").Job} Job */
/** @typedef {import("./types.js").Prediction} Prediction */
/** @typedef {import("./types.js").SucceededJob} SucceededJob */

/**
 * @param {HTMLElement} card
 * @param {SucceededJob} job a succeeded job
 */
export function showTry(card, job) {
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
  /** @param {string} selector */
  const $ = (selector) => find(card, selector);
  const slider = find(card, "#alpha", HTMLInputElement);
  /** @type {File | null} */
  let image = null;
  /** @param {File} file @param {number} alpha @returns {Promise<Prediction[]>} */
  const classify = async (file, alpha) => {
    const form = new FormData();
    form.append("images", file, file.name || "image.png");
    form.append("job_id", job.id);
    form.append("alpha", String(alpha));
    form.append("top_k", "5");
    return (await api("/v1/classify", { method: "POST", form })).results[0].predictions;
  };
  /** @param {HTMLElement} list @param {Prediction[]} preds */
  const bars = (list, preds) => {
    list.innerHTML = preds.map((p) => `<li><span class="label" title="${esc(p.label)}">${esc(p.label)}</span><span class="bar-track"><span class="bar" style="width:${(p.score * 100).toFixed(1)}%"></span></span><span class="score">${(p.score * 100).toFixed(1)} %</span></li>`).join("");
  };
  /** @param {"both" | "tuned"} which */
  const run = async (which) => {
    if (!image) return;
    $("#try-problem").innerHTML = "";
    const alpha = Number(slider.value);
    $("#tuned-title").textContent = alpha === 1 ? "Fine-tuned" : `Interpolated (α = ${alpha.toFixed(2)})`;
    try {
      if (which !== "tuned") bars($("#pred-base"), await classify(image, 0));
      bars($("#pred-tuned"), await classify(image, alpha));
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return fail(err, card);
      $("#try-problem").innerHTML = problemBox(err instanceof Error ? err : new Error(String(err)));
    }
  };
  dropZone($("#try-drop"), find(card, "#try-file", HTMLInputElement), (files) => {
    image = files[0];
    const preview = find(card, "#try-preview", HTMLImageElement);
    if (preview.src) URL.revokeObjectURL(preview.src);
    preview.src = URL.createObjectURL(image);
    preview.hidden = false;
    $("#try-hint").hidden = true;
    run("both");
  });
  slider.addEventListener("input", () => { $("#alpha-out").textContent = Number(slider.value).toFixed(2); });
  slider.addEventListener("change", () => run("tuned"));
  card.querySelector("#alpha-recommended")?.addEventListener("click", () => {
    if (rec == null) return;
    slider.value = String(rec);
    $("#alpha-out").textContent = rec.toFixed(2);
    run("tuned");
  });
}
