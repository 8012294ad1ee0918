// Cancel and retry buttons ([data-action][data-job]) wherever they are.
import { apiFetch } from "../api.js";
import { flash, toast } from "../toast.js";

/** Handle clicks on action buttons inside ``root``; errors go to ``onError``. */
export function bindJobActions(root, { onDone = () => {}, onError, navigateOnRetry = false } = {}) {
  root.addEventListener("click", async (e) => {
    const button = e.target instanceof Element ? e.target.closest("button[data-action][data-job]") : null;
    if (!button) return;
    const { action, job } = button.dataset;
    const short = job.slice(0, 8);
    button.disabled = true;
    try {
      if (action === "cancel") {
        const j = await apiFetch(`/api/jobs/${job}/cancel`, { method: "POST", what: `Cancel job ${short}` });
        toast(j.status === "canceled" ? `Job ${short} canceled.` : `Cancel requested for job ${short}.`, { kind: "success" });
      } else if (action === "retry") {
        const j = await apiFetch(`/api/jobs/${job}/retry`, { method: "POST", what: `Retry job ${short}` });
        if (navigateOnRetry) {
          flash(`Job ${j.id.slice(0, 8)} queued (retry of ${short}).`, { kind: "success" });
          location.assign(`/ui/jobs/${j.id}`);
          return;
        }
        toast(`Job ${j.id.slice(0, 8)} queued (retry of ${short}).`, { kind: "success", href: `/ui/jobs/${j.id}`, linkText: "View" });
      }
      onDone();
    } catch (err) {
      button.disabled = false;
      if (onError) onError(err);
      else toast(err.message, { kind: "error", requestId: err.requestId });
    }
  });
}

/** Set a progress bar (and its text, if any) for a job. */
export function setProgress(jobId, progress) {
  const pct = Math.round(Math.min(Math.max(progress, 0), 1) * 100);
  for (const bar of document.querySelectorAll(`[data-progress-job="${jobId}"]`)) {
    bar.classList.remove("indeterminate");
    bar.setAttribute("aria-valuenow", String(pct));
    const fill = bar.querySelector(".progress-fill");
    if (fill) fill.style.width = `${pct}%`;
  }
  for (const text of document.querySelectorAll(`[data-progress-text="${jobId}"]`)) text.textContent = `${pct}%`;
}
