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

// A broken live stream stays on show until the stream is back (a re-render of
// the panel's content does not hide it).
let streamProblem = null;

summary.onRender(() => {
  const s = summary.body.querySelector("[data-status]");
  if (s) { status = s.dataset.status; showButtons(); }
  if (streamProblem && !isTerminal(status)) summary.fail(streamProblem, { toastIt: false });
});

bindJobActions(head, { onDone: refreshAll, onError: (err) => summary.fail(err), navigateOnRetry: true });

// The job's own live stream: progress moves the bar at once; anything else
// re-renders the panels. A drop while the job runs is this panel's error.
let stream = null;
function follow() {
  if (isTerminal(status)) return;
  stream = new EventSource(`/api/jobs/${jobId}/events`);
  let failedOnce = streamProblem !== null;
  stream.addEventListener("open", () => {
    if (failedOnce) { streamProblem = null; summary.clearError(); refreshAll(); }
  });
  stream.addEventListener("error", () => {
    if (isTerminal(status)) { stream.close(); return; }
    failedOnce = true;
    const closed = stream.readyState === EventSource.CLOSED;
    streamProblem = new Error(
      closed
        ? "Live updates for this job were interrupted (the stream was refused); retrying in 5 s…"
        : "Live updates for this job were interrupted; reconnecting…",
    );
    summary.fail(streamProblem);
    if (closed) setTimeout(() => { if (!isTerminal(status)) { stream.close(); follow(); } }, 5000);
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
