import { panel } from "../panels.js";
import { isTerminal } from "../live.js";
import { bindJobActions, setProgress } from "./actions.js";

const head = document.querySelector("[data-job-id]");
const jobId = head.dataset.jobId;
let status = head.dataset.jobStatus;
const summary = panel("job-panel");
const timeline = panel("timeline-panel");

function refreshAll() { summary.soon(); timeline.soon(); }

function showButtons() {
  const done = isTerminal(status);
  head.querySelector('[data-action="cancel"]').hidden = done;
  head.querySelector('[data-action="retry"]').hidden = !done;
}

summary.onRender(() => {
  const s = summary.body.querySelector("[data-status]");
  if (s) { status = s.dataset.status; showButtons(); }
});

bindJobActions(head, { onDone: refreshAll, onError: (err) => summary.fail(err), navigateOnRetry: true });

// The job's own live stream: progress moves the bar at once; anything else
// re-renders the panels. A drop while the job runs is this panel's error.
let stream = null;
function follow() {
  if (isTerminal(status)) return;
  stream = new EventSource(`/api/jobs/${jobId}/events`);
  let failedOnce = false;
  stream.addEventListener("open", () => { if (failedOnce) { summary.clearError(); refreshAll(); } });
  stream.addEventListener("error", () => {
    if (isTerminal(status)) { stream.close(); return; }
    failedOnce = true;
    summary.fail(new Error("Live updates for this job were interrupted; reconnecting…"));
  });
  const onEvent = summary.guard((msg) => {
    const ev = JSON.parse(msg.data);
    if (ev.kind === "progress" && ev.progress != null) {
      setProgress(jobId, ev.progress);
      timeline.soon(1000);
      return;
    }
    if (ev.status) status = ev.status;
    if (isTerminal(status)) { stream.close(); showButtons(); }
    refreshAll();
  });
  for (const kind of ["created", "transition", "progress", "upstream", "info"]) stream.addEventListener(kind, onEvent);
}
addEventListener("pagehide", () => stream?.close());
follow();
