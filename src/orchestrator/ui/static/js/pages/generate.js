// The Generate form: widgets (ranges, seeds, image inputs), then a JSON submit to
// POST /api/generate whose field errors are shown next to their fields.
import { apiFetch } from "../api.js";
import { panel } from "../panels.js";
import { flash, toast } from "../toast.js";

const form = document.getElementById("generate-form");
const formPanel = panel(form.closest(".panel"));
const MAX_UPLOAD = 20 * 1024 * 1024;

// --- backend / model picker ---------------------------------------------------------
document.getElementById("model-picker").addEventListener("change", (e) => {
  const [backend, model] = e.target.value.split("|");
  const url = new URL(location.href);
  url.searchParams.set("backend", backend);
  url.searchParams.set("model", model);
  location.assign(url.pathname + url.search);
});

// --- ranges mirror their number inputs ------------------------------------------------
for (const range of form.querySelectorAll("input[type=range][data-range-for]")) {
  const num = document.getElementById(range.dataset.rangeFor);
  range.addEventListener("input", () => { num.value = range.value; });
  num.addEventListener("input", () => { if (num.value !== "") range.value = num.value; });
}

// --- seeds -----------------------------------------------------------------------------
for (const b of form.querySelectorAll("[data-randomize]")) {
  b.addEventListener("click", () => {
    const input = document.getElementById(b.dataset.randomize);
    const buf = new Uint32Array(1);
    crypto.getRandomValues(buf);
    input.value = String(buf[0]);
  });
}

// --- image inputs ------------------------------------------------------------------------
const isMultiple = (input) => "multiple" in input.closest(".image-input").dataset;

/** The chosen references of an image input (a list for multi-image fields). */
function values(input) {
  if (!input.value) return [];
  if (!isMultiple(input)) return [input.value];
  const list = JSON.parse(input.value);
  return Array.isArray(list) ? list : [];
}

/** Set (single) or add (multiple) a reference; ``thumb`` previews refs like asset:<id>. */
function choose(input, value, thumb) {
  if (isMultiple(input)) input.value = JSON.stringify([...values(input), value]);
  else input.value = value;
  if (thumb) {
    const thumbs = JSON.parse(input.dataset.thumbs || "{}");
    thumbs[value] = thumb;
    input.dataset.thumbs = JSON.stringify(thumbs);
  }
  preview(input);
}

function preview(input) {
  const box = input.closest(".image-input").querySelector(".image-preview");
  box.replaceChildren();
  const chosen = values(input);
  if (!chosen.length) {
    box.append(Object.assign(document.createElement("span"), { className: "muted small", textContent: "No image" }));
    return;
  }
  const thumbs = JSON.parse(input.dataset.thumbs || "{}");
  for (const value of chosen) {
    const fig = document.createElement("figure");
    let src = thumbs[value] || null;
    if (value.startsWith("data:image/")) src = value;
    else if (value.startsWith("output:")) src = `/ui/thumbs/${value.slice(7)}`;
    else if (value.startsWith("asset:")) src = `/ui/asset-thumbs/${encodeURIComponent(value.slice(6))}`;
    if (src) fig.append(Object.assign(document.createElement("img"), { src, alt: "chosen image" }));
    const label = value.startsWith("data:") ? `uploaded (${Math.round(value.length * 0.75 / 1024)} KB)` : value;
    fig.append(Object.assign(document.createElement("code"), { className: "small", textContent: label }));
    box.append(fig);
  }
}

for (const input of form.querySelectorAll(".image-input input[type=hidden]")) preview(input);

for (const file of form.querySelectorAll("input[type=file][data-upload]")) {
  file.addEventListener("change", formPanel.guard(() => {
    const target = document.getElementById(file.dataset.upload);
    const f = file.files?.[0];
    if (!f) return;
    if (f.size > MAX_UPLOAD) {
      toast(`${f.name} is larger than 20 MB.`, { kind: "error" });
      return;
    }
    const reader = new FileReader();
    reader.addEventListener("load", () => choose(target, String(reader.result)));
    reader.addEventListener("error", () => toast(`Could not read ${f.name}.`, { kind: "error" }));
    reader.readAsDataURL(f);
  }));
}

for (const b of form.querySelectorAll("[data-clear]")) {
  b.addEventListener("click", () => {
    const t = document.getElementById(b.dataset.clear);
    t.value = "";
    delete t.dataset.thumbs;
    preview(t);
  });
}

// The picker dialog: one tab per image source (see ui/pickers.py); each lists
// buttons with data-pick-value / data-pick-thumb.
const dialog = document.getElementById("picker");
const pickerPanel = panel("picker-panel");
const search = document.getElementById("picker-q");
let pickTarget = null;
let source = pickerPanel.src;

function loadPicker() {
  const q = search.value.trim();
  const url = new URL(source, location.origin);
  if (q) url.searchParams.set("q", q);
  pickerPanel.src = url.pathname + url.search;
  pickerPanel.refresh();
}
for (const b of form.querySelectorAll("[data-pick]")) {
  b.addEventListener("click", () => { pickTarget = document.getElementById(b.dataset.pick); dialog.showModal(); loadPicker(); });
}
for (const tab of dialog.querySelectorAll("[data-source]")) {
  tab.addEventListener("click", () => {
    for (const t of dialog.querySelectorAll("[data-source]")) t.setAttribute("aria-selected", String(t === tab));
    source = tab.dataset.source;
    loadPicker();
  });
}
let typing = null;
search.addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(loadPicker, 300); });
// A source may browse within itself (imported assets: a site, then a page).
pickerPanel.el.addEventListener("click", pickerPanel.guard((e) => {
  const go = e.target instanceof Element ? e.target.closest("[data-picker-src]") : null;
  if (go) { source = go.dataset.pickerSrc; loadPicker(); }
}));
pickerPanel.el.addEventListener("change", pickerPanel.guard((e) => {
  if (e.target instanceof HTMLSelectElement && "pickerSelect" in e.target.dataset) {
    source = e.target.value;
    loadPicker();
  }
}));
pickerPanel.el.addEventListener("click", pickerPanel.guard((e) => {
  const choice = e.target instanceof Element ? e.target.closest("[data-pick-value]") : null;
  if (!choice || !pickTarget) return;
  choose(pickTarget, choice.dataset.pickValue, choice.dataset.pickThumb);
  dialog.close();
}));

// --- submit --------------------------------------------------------------------------------
function clearErrors() {
  for (const p of form.querySelectorAll(".field-error")) { p.hidden = true; p.textContent = ""; }
  for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  for (const el of form.querySelectorAll(".field.invalid")) el.classList.remove("invalid");
  const top = form.querySelector(".form-error");
  top.hidden = true;
  top.textContent = "";
}

function fieldError(name, message) {
  const field = form.querySelector(`.field[data-field="${CSS.escape(name)}"]`);
  if (!field) return false;
  field.classList.add("invalid");
  field.querySelector("[name]")?.setAttribute("aria-invalid", "true");
  const p = field.querySelector(".field-error");
  p.textContent = p.textContent ? `${p.textContent}; ${message}` : message;
  p.hidden = false;
  return true;
}

function formError(message) {
  const top = form.querySelector(".form-error");
  top.textContent = message;
  top.hidden = false;
}

/** The request body, or null when a field could not be read (marked). */
function body() {
  const params = {};
  const top = {};
  let ok = true;
  for (const field of form.querySelectorAll(".field[data-field]")) {
    const name = field.dataset.field;
    const widget = field.dataset.widget;
    const input = field.querySelector(`[name="${CSS.escape(name)}"]`);
    if (!input) continue;
    const raw = widget === "checkbox" ? null : input.value.trim();
    let value;
    if (widget === "checkbox") value = input.checked;
    else if (["integer", "number", "seed"].includes(widget)) value = raw === "" ? undefined : Number(raw);
    else if (widget === "select" || widget === "image") value = raw === "" ? undefined : raw;
    else if (widget === "images") value = values(input).length ? values(input) : undefined;
    else if (widget === "json") {
      if (raw === "") value = undefined;
      else {
        try { value = JSON.parse(raw); } catch (err) { ok = false; fieldError(name, `not valid JSON: ${err.message}`); }
      }
    } else value = raw === "" && ("nullable" in field.dataset || !("required" in field.dataset)) && name !== "prompt" ? undefined : input.value;
    if (value === undefined || Number.isNaN(value)) continue;
    ("top" in field.dataset ? top : params)[name] = value;
  }
  if (!ok) return null;
  const backend = form.dataset.backend;
  const model = form.dataset.model;
  let p = params;
  if ("sendModel" in form.dataset) p = { ...params, model };
  else if (backend === "workflow") p = { name: model, inputs: params };
  return { backend, params: p, ...top };
}

function showProblem(err) {
  let placed = 0;
  const unplaced = [];
  for (const e of err.errors || []) {
    const names = (e.loc || []).filter((x) => typeof x === "string").reverse();
    const name = names.find((n) => form.querySelector(`.field[data-field="${CSS.escape(n)}"]`));
    if (name && fieldError(name, e.msg)) placed += 1;
    else unplaced.push(`${(e.loc || []).join(".")}: ${e.msg}`);
  }
  if (unplaced.length || !placed) formError(unplaced.length ? unplaced.join("; ") : (err.detail || err.message));
  const first = form.querySelector(".field.invalid [name], .field.invalid textarea");
  first?.focus();
  toast(placed ? `${placed} field(s) need attention.` : err.message, { kind: "error", requestId: err.requestId });
}

form.addEventListener("submit", formPanel.guard(async (e) => {
  e.preventDefault();
  clearErrors();
  const payload = body();
  if (!payload) { toast("Some fields could not be read.", { kind: "error" }); return; }
  const button = document.getElementById("submit-button");
  button.disabled = true;
  button.textContent = "Submitting…";
  try {
    const job = await apiFetch("/api/generate", { method: "POST", body: payload, what: "Submit" });
    flash(`Job ${job.id.slice(0, 8)} queued on ${job.backend}.`, { kind: "success" });
    location.assign(`/ui/jobs/${job.id}`);
  } catch (err) {
    button.disabled = false;
    button.textContent = "Generate";
    if (err.status === 422 || err.status === 409 || err.status === 400) showProblem(err);
    else { formError(err.message); toast(err.message, { kind: "error", requestId: err.requestId }); }
  }
}));
