// The Sites page: import an export (upload or TILDA_DUMP_PATH) and follow the run
// live; search and page through the imported pages.
import { ApiError, apiFetch, CSRF_HEADER, csrfToken } from "../api.js";
import { panel } from "../panels.js";
import { toast } from "../toast.js";

const importPanel = panel("import-panel");
const imports = panel("imports-panel");
const sites = panel("sites-panel");
const pages = panel("pages-panel");
const form = document.getElementById("import-form");
const fileInput = document.getElementById("import-file");
const button = document.getElementById("import-button");
const fromDump = document.getElementById("import-default");
const POLL_MS = 300;

function plural(n, word) { return `${n} ${word}${n === 1 ? "" : "s"}`; }

/** The report in words (as the server's tilda_view.report_summary). */
function reportSummary(r) {
  if (r.no_change) return `${r.pages_total} pages: nothing changed`;
  let text = `${r.pages_total} pages: ${r.added.length} added, ${r.changed.length} changed, ${r.removed.length} removed, ${r.unchanged} unchanged`;
  const extra = [];
  if (r.assets_added) extra.push(plural(r.assets_added, "new image"));
  if (r.layout_changed) extra.push("header or footer changed");
  return extra.length ? `${text}; ${extra.join(", ")}` : text;
}

function showRun(run) {
  const box = document.getElementById("import-run");
  box.hidden = false;
  document.getElementById("import-source").textContent = run.source;
  const status = document.getElementById("import-status");
  status.textContent = run.status;
  status.className = `badge status-${run.status}`;
  const p = run.progress || { stage: run.status, done: 0, total: 0 };
  const pct = run.status === "succeeded" ? 100 : (p.total > 0 ? Math.min(100, Math.round((p.done * 100) / p.total)) : 0);
  const bar = document.getElementById("import-progress");
  bar.setAttribute("aria-valuenow", String(pct));
  bar.classList.toggle("indeterminate", run.status === "running" && p.total === 0);
  const fill = bar.querySelector(".progress-fill");
  fill.style.width = `${pct}%`;
  fill.className = `progress-fill status-${run.status}`;
  document.getElementById("import-stage").textContent = p.total ? `${p.stage}: ${p.done} / ${p.total}` : p.stage;
}

function showReport(run) {
  const out = document.getElementById("import-report");
  out.replaceChildren();
  if (run.status === "failed") {
    const c = document.createElement("div");
    c.className = "callout error";
    c.setAttribute("role", "note");
    const code = document.createElement("strong");
    code.textContent = run.error_code || "failed";
    c.append(code, `: ${run.error_message || "no reason given"}`);
    out.append(c);
    return;
  }
  const r = run.report;
  if (!r) return;
  const p = document.createElement("p");
  p.className = "ok import-summary";
  p.textContent = reportSummary(r);
  const dl = document.createElement("dl");
  dl.className = "params small import-report";
  for (const [label, ids] of [["added", r.added], ["changed", r.changed], ["removed", r.removed]]) {
    const dt = document.createElement("dt");
    dt.textContent = label;
    const dd = document.createElement("dd");
    dd.dataset.reportKey = label;
    dd.textContent = ids.length ? ids.join(", ") : "none";
    dl.append(dt, dd);
  }
  for (const w of r.warnings || []) {
    const dt = document.createElement("dt");
    dt.textContent = "warning";
    const dd = document.createElement("dd");
    dd.textContent = w;
    dl.append(dt, dd);
  }
  out.append(p, dl);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function follow(run) {
  showRun(run);
  imports.soon(100);
  while (run.status === "queued" || run.status === "running") {
    await sleep(POLL_MS);
    run = await apiFetch(`/api/tilda/imports/${encodeURIComponent(run.id)}`, { what: "Import progress" });
    showRun(run);
  }
  showReport(run);
  if (run.status === "succeeded") {
    toast(`Import of ${run.source} finished: ${reportSummary(run.report)}.`, { kind: "success" });
  } else {
    toast(`Import of ${run.source} failed: ${run.error_message || run.error_code}`, { kind: "error" });
  }
  imports.soon(50);
  sites.soon(50);
  pages.soon(50);
}

async function start(request) {
  importPanel.clearError();
  document.getElementById("import-report").replaceChildren();
  if (button) button.disabled = true;
  if (fromDump) fromDump.disabled = true;
  try {
    const run = await request();
    toast(`Import of ${run.source} started.`, { kind: "info" });
    await follow(run);
  } finally {
    if (button) button.disabled = false;
    if (fromDump) fromDump.disabled = false;
  }
}

/** POST the zip as multipart (fetch sets the boundary), with the CSRF header. */
async function upload(file) {
  const data = new FormData();
  data.append("file", file, file.name);
  let resp;
  try {
    resp = await fetch("/api/tilda/import", {
      method: "POST",
      body: data,
      headers: { Accept: "application/json", [CSRF_HEADER]: csrfToken() },
      credentials: "same-origin",
    });
  } catch (err) {
    throw new ApiError(`Import: the server could not be reached (${err.message})`);
  }
  if (!resp.ok) throw await ApiError.from(resp, "Import");
  return resp.json();
}

form?.addEventListener("submit", importPanel.guard(async (e) => {
  e.preventDefault();
  const file = fileInput.files?.[0];
  if (!file) {
    importPanel.fail(new Error("Choose the export's zip file first."));
    return;
  }
  await start(() => upload(file));
}));

fromDump?.addEventListener("click", importPanel.guard(async () => {
  await start(() => apiFetch("/api/tilda/import", { method: "POST", body: {}, what: "Import" }));
}));

// --- pages: search as you type, pagination ---------------------------------------------
const filters = document.getElementById("pages-filters");
let typing = null;

function applyFilters() {
  const params = new URLSearchParams();
  for (const [k, v] of new FormData(filters)) if (v) params.set(k, String(v));
  const qs = params.toString();
  history.replaceState(null, "", `/ui/sites${qs ? `?${qs}` : ""}`);
  pages.src = `/ui/panels/site-pages${qs ? `?${qs}` : ""}`;
  pages.refresh();
}
filters.addEventListener("submit", (e) => { e.preventDefault(); applyFilters(); });
filters.addEventListener("input", (e) => {
  if (!(e.target instanceof HTMLInputElement) || e.target.type !== "search") return;
  clearTimeout(typing);
  typing = setTimeout(applyFilters, 350);
});
filters.addEventListener("change", (e) => { if (e.target instanceof HTMLSelectElement) applyFilters(); });

pages.el.addEventListener("click", pages.guard((e) => {
  const b = e.target instanceof Element ? e.target.closest("button[data-offset]") : null;
  if (!b) return;
  const url = new URL(pages.src, location.origin);
  url.searchParams.set("offset", b.dataset.offset);
  pages.src = url.pathname + url.search;
  pages.refresh();
}));

// A run started elsewhere (CLI, API) shows up here too.
setInterval(() => {
  if (!document.hidden && imports.body.querySelector("[data-status=running], [data-status=queued]")) imports.refresh();
}, 2000);
