import { panel } from "../panels.js";
import { bindJobActions, setProgress } from "./actions.js";

const jobs = panel("jobs-panel");
const baseSrc = jobs.src;

bindJobActions(jobs.el, { onDone: () => jobs.soon(100), onError: (err) => jobs.fail(err) });

jobs.el.addEventListener("click", jobs.guard((e) => {
  const more = e.target instanceof Element ? e.target.closest("button[data-more]") : null;
  if (!more) return;
  const url = new URL(baseSrc, location.origin);
  url.searchParams.set("cursor", more.dataset.more);
  jobs.src = url.pathname + url.search;
  jobs.refresh();
}));

document.addEventListener("orch:job-event", jobs.guard((e) => {
  const ev = e.detail;
  if (ev.kind === "progress" && ev.progress != null) {
    setProgress(ev.job_id, ev.progress);
  } else if (ev.kind === "created" || ev.kind === "transition" || ev.kind === "info") {
    jobs.soon();
  }
}));

// A safety net for changes made by other processes (their events reach the
// stream too, but a reconnect may miss some).
setInterval(() => { if (!document.hidden) jobs.refresh(); }, 15000);
