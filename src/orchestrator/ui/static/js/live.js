// The server-wide event stream (/api/events): every job's events, re-dispatched
// as "orch:job-event" DOM events, and a toast when a job finishes or fails.
import { toast } from "./toast.js";

const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
let source = null;
let leaving = false;
let dropTimer = null;
let toastedDrop = false;

function setStatus(on, title) {
  const dot = document.getElementById("live-status");
  if (!dot) return;
  dot.classList.toggle("on", on);
  dot.classList.toggle("off", !on);
  dot.title = title;
  dot.setAttribute("aria-label", title);
}

export function isTerminal(status) { return TERMINAL.has(status); }

function announce(ev) {
  if (ev.kind !== "transition" || !TERMINAL.has(ev.status)) return;
  const short = ev.job_id.slice(0, 8);
  const href = `/ui/jobs/${ev.job_id}`;
  if (ev.status === "succeeded") {
    toast(`Job ${short} succeeded.`, { kind: "success", href, linkText: "View" });
  } else if (ev.status === "failed") {
    toast(`Job ${short} failed: ${ev.message || "no reason given"}`, { kind: "error", href, linkText: "Details" });
  } else {
    toast(`Job ${short} was canceled.`, { kind: "info", href, linkText: "View" });
  }
}

export function connect() {
  if (source) return;
  addEventListener("pagehide", () => { leaving = true; source?.close(); });
  source = new EventSource("/api/events");
  source.addEventListener("open", () => {
    clearTimeout(dropTimer);
    if (toastedDrop) toast("Live updates are back.", { kind: "info" });
    toastedDrop = false;
    setStatus(true, "Live updates: connected");
  });
  source.addEventListener("error", () => {
    if (leaving) return;
    setStatus(false, "Live updates: connection lost, reconnecting");
    clearTimeout(dropTimer);
    dropTimer = setTimeout(() => {
      if (source.readyState !== EventSource.OPEN && !toastedDrop && !leaving) {
        toastedDrop = true;
        toast("Live updates were interrupted; reconnecting…", { kind: "warn" });
      }
    }, 5000);
  });
  for (const kind of ["created", "transition", "progress", "upstream", "info"]) {
    source.addEventListener(kind, (msg) => {
      let ev;
      try { ev = JSON.parse(msg.data); } catch { return; }
      document.dispatchEvent(new CustomEvent("orch:job-event", { detail: ev }));
      announce(ev);
    });
  }
}
