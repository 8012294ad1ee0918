import { apiFetch } from "../api.js";
import { panel } from "../panels.js";
import { toast } from "../toast.js";

const ignite = panel("ignite-panel");
const button = document.getElementById("ignite-button");

function cell(tag, text, cls) {
  const el = document.createElement(tag);
  el.textContent = text;
  if (cls) el.className = cls;
  return el;
}

function renderReport(report) {
  const table = document.createElement("table");
  table.className = "table";
  const head = table.createTHead().insertRow();
  for (const h of ["Component", "Status", "Message", "Latency", "Essential"]) head.append(cell("th", h));
  const body = table.createTBody();
  for (const c of report.checks) {
    const row = body.insertRow();
    row.dataset.component = c.component;
    row.append(cell("td", c.component, "mono small"));
    const st = cell("td", "");
    st.append(cell("span", c.status, `badge check-${c.status}`));
    row.append(st);
    row.append(cell("td", c.message));
    row.append(cell("td", c.latency_ms == null ? "–" : `${c.latency_ms} ms`, "num"));
    row.append(cell("td", c.essential ? "yes" : "no"));
  }
  const summary = cell("p", report.ok ? "Ready: every essential check passed." : "Not ready: an essential check failed.", report.ok ? "ok" : "error-text");
  const wrap = document.createElement("div");
  wrap.className = "table-wrap";
  wrap.append(table);
  ignite.body.replaceChildren(summary, wrap);
}

button.addEventListener("click", ignite.guard(async () => {
  button.disabled = true;
  button.textContent = "Checking…";
  try {
    const report = await apiFetch("/api/system/ignite", { method: "POST", what: "Ignite" });
    ignite.clearError();
    renderReport(report);
    toast(report.ok ? "Ignite: everything essential is ready." : "Ignite: some essential checks failed.", { kind: report.ok ? "success" : "error" });
    panel("backends-panel").soon();
    panel("templates-panel").soon();
  } finally {
    button.disabled = false;
    button.textContent = "Ignite: check everything";
  }
}));
