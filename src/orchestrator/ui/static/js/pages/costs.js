// The Costs page: filters reload the totals panel; admins set or remove a token's
// daily budget (PUT/DELETE /api/budgets/tokens/{id}, with the CSRF header).
import { apiFetch } from "../api.js";
import { panel } from "../panels.js";
import { toast } from "../toast.js";

const costs = panel("costs-panel");
const budgets = panel("budgets-panel");
const filters = document.getElementById("cost-filters");

filters.addEventListener("change", costs.guard(() => {
  const params = new URLSearchParams();
  for (const [k, v] of new FormData(filters)) if (v) params.set(k, String(v));
  const qs = params.toString();
  history.replaceState(null, "", `/ui/costs?${qs}`);
  costs.src = `/ui/panels/costs?${qs}`;
  costs.refresh();
}));
filters.addEventListener("submit", (e) => { e.preventDefault(); filters.dispatchEvent(new Event("change")); });

// New jobs change today's totals and budgets.
document.addEventListener("orch:job-event", (e) => {
  const ev = e.detail;
  if (ev.kind === "transition") { costs.soon(1000); budgets.soon(1000); }
});

const form = document.getElementById("budget-form");
if (form) {
  const formPanel = panel("budget-form-panel");
  const tokenSelect = document.getElementById("budget-token");
  const limit = document.getElementById("budget-limit");
  const limitError = document.getElementById("budget-limit-error");
  const field = form.querySelector('[data-field="daily_limit"]');

  const label = () => tokenSelect.selectedOptions[0]?.dataset.name || tokenSelect.value;

  function clearErrors() {
    formPanel.clearError();
    limitError.hidden = true;
    limitError.textContent = "";
    field.classList.remove("invalid");
    limit.removeAttribute("aria-invalid");
  }

  /** A refused request: the field's message when the problem names it, always the
   * panel's error box and a toast (the problem's text and request id). */
  function refused(err) {
    const messages = (err.errors || []).filter((e) => (e.loc || []).includes("daily_limit")).map((e) => e.msg);
    if (messages.length) {
      field.classList.add("invalid");
      limit.setAttribute("aria-invalid", "true");
      limitError.textContent = messages.join("; ");
      limitError.hidden = false;
    }
    formPanel.fail(err);
  }

  async function send(method, body, done) {
    clearErrors();
    const id = tokenSelect.value;
    for (const b of form.querySelectorAll("button")) b.disabled = true;
    try {
      await apiFetch(`/api/budgets/tokens/${encodeURIComponent(id)}`, { method, body, what: method === "PUT" ? "Set budget" : "Remove budget" });
      toast(done, { kind: "success" });
      budgets.soon(50);
    } catch (err) {
      refused(err);
    } finally {
      for (const b of form.querySelectorAll("button")) b.disabled = false;
    }
  }

  form.addEventListener("submit", formPanel.guard(async (e) => {
    e.preventDefault();
    const raw = limit.value.trim();
    // Sent as typed (a number when it is one): the API's validation is the one rule.
    const value = raw !== "" && !Number.isNaN(Number(raw)) ? Number(raw) : raw;
    await send("PUT", { daily_limit: value }, `Budget of ${label()} set to ${raw} credits per day.`);
  }));
  document.getElementById("budget-clear").addEventListener("click", formPanel.guard(async () => {
    await send("DELETE", undefined, `Budget of ${label()} removed.`);
  }));
}
