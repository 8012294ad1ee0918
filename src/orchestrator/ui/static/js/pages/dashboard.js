import { panel } from "../panels.js";

const queue = panel("queue-panel");
const recent = panel("recent-panel");
const backends = panel("backends-panel");

document.addEventListener("orch:job-event", (e) => {
  const ev = e.detail;
  if (ev.kind === "created" || ev.kind === "transition") {
    queue.soon();
    backends.soon(1000);
  }
  if (ev.kind === "transition" && ev.status === "succeeded") recent.soon();
});
