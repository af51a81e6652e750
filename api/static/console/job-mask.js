// @ts-check
// Where SAFT put its budget: a mask's selected entries grouped by tower, layer and kind of parameter (the rules
// for open_clip's parameter names), drawn as two stacked bar charts.

import { maskChart } from "./charts.js";
import { esc, fmt } from "./format.js";
import { find, onLeave } from "./ui.js";

/** @typedef {import("./types.js").Job} Job */
/** @typedef {import("./types.js").Mask} Mask */
/** @typedef {import("./types.js").MaskTensor} MaskTensor */
/** @typedef {{labels: string[], rows: Record<string, number>[]}} Tower a label and {kind: entries} per layer */

/**
 * Where a parameter of an open_clip CLIP lives: tower (image: `visual.*`, text: the rest), layer ("in" for
 * embeddings and the first norm, the block number for `resblocks.N`, "out" for final norms and projections)
 * and kind.
 * @param {string} name
 * @returns {{tower: "image" | "text", layer: number | "in" | "out", kind: string}}
 */
export function describeParam(name) {
  const tower = name.startsWith("visual.") ? "image" : "text";
  const block = name.match(/resblocks\.(\d+)\./);
  let kind = "projection";
  if (/attn\.in_proj/.test(name)) kind = "attention in";
  else if (/attn\.out_proj/.test(name)) kind = "attention out";
  else if (/\.mlp\./.test(name)) kind = "MLP";
  else if (/(^|\.)ln_|norm/.test(name)) kind = "norm";
  else if (/embedding|conv1/.test(name)) kind = "embedding";
  /** @type {number | "in" | "out"} */
  let layer = "out";
  if (block) layer = Number(block[1]);
  else if (kind === "embedding" || /ln_pre/.test(name)) layer = "in";
  return { tower, layer, kind };
}

/**
 * Selected entries by tower -> layer -> kind, with the layers in model order ("in", 0..N-1, "out").
 * @param {MaskTensor[]} tensors
 * @returns {{image: Tower, text: Tower}}
 */
export function groupMask(tensors) {
  /** @type {{image: Map<number | string, Record<string, number>>, text: Map<number | string, Record<string, number>>}} */
  const towers = { image: new Map(), text: new Map() };
  for (const t of tensors) {
    const { tower, layer, kind } = describeParam(t.name);
    const layers = towers[tower];
    const row = layers.get(layer) ?? {};
    layers.set(layer, row);
    row[kind] = (row[kind] || 0) + t.selected;
  }
  /** @param {number | string} a @param {number | string} b */
  const order = (a, b) => (a === "in" ? -1 : b === "in" ? 1 : a === "out" ? 1 : b === "out" ? -1 : Number(a) - Number(b));
  /** @param {Map<number | string, Record<string, number>>} layers @returns {Tower} */
  const tower = (layers) => {
    const keys = [...layers.keys()].sort(order);
    return {
      labels: keys.map((k) => (typeof k === "number" ? `block ${k}` : k === "in" ? "embed" : "head")),
      rows: keys.map((k) => layers.get(k) ?? {}),
    };
  };
  return { image: tower(towers.image), text: tower(towers.text) };
}

/** @param {Tower} tower @returns {number[]} entries per layer */
const layerTotals = (tower) => tower.rows.map((r) => Object.values(r).reduce((x, y) => x + y, 0));

/**
 * @param {HTMLElement} card
 * @param {Mask | null} mask null for full fine-tuning
 * @param {Job} job
 */
export function showMask(card, mask, job) {
  if (!mask) {
    card.insertAdjacentHTML("beforeend", `<p class="empty">${job.method.type === "full" ? "Full fine-tuning trains every parameter: there is no mask." : "No mask."}</p>`);
    return;
  }
  const groups = groupMask(mask.tensors);
  /** @param {Tower} tower */
  const sum = (tower) => layerTotals(tower).reduce((a, b) => a + b, 0);
  const yMax = Math.max(...layerTotals(groups.image), ...layerTotals(groups.text), 1);
  const top = [...mask.tensors].sort((a, b) => b.selected - a.selected).slice(0, 5);
  card.insertAdjacentHTML("beforeend", `
    <div class="stats inline-stats">
      <div><span data-k="${mask.k}">${fmt.int(mask.k)}</span>entries selected</div>
      <div><span>${+(mask.ratio * 100).toPrecision(3)} %</span>of ${fmt.int(mask.num_eligible)} eligible</div>
      <div><span data-image-total="${sum(groups.image)}">${fmt.int(sum(groups.image))}</span>image tower</div>
      <div><span data-text-total="${sum(groups.text)}">${fmt.int(sum(groups.text))}</span>text tower</div>
    </div>
    <div class="grid two">
      <div class="chart" style="height:300px"><canvas id="mask-image"></canvas></div>
      <div class="chart" style="height:300px"><canvas id="mask-text"></canvas></div>
    </div>
    <p class="small muted">Largest tensors: ${top.map((t) => `<code>${esc(t.name)}</code> ${fmt.int(t.selected)} of ${fmt.int(t.numel)}`).join(" · ")}</p>`);
  const charts = [
    maskChart(find(card, "#mask-image", HTMLCanvasElement), groups.image, "Image tower", yMax),
    maskChart(find(card, "#mask-text", HTMLCanvasElement), groups.text, "Text tower", yMax),
  ];
  onLeave(() => charts.forEach((c) => c.destroy()));
}
