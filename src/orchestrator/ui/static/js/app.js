// Every page: theme, toasts carried over from the last page, panels, the live
// stream, the lightbox, and a last-resort toast for uncaught script errors.
import { loadPanels } from "./panels.js";
import { connect } from "./live.js";
import { showFlashes, toast } from "./toast.js";

const THEMES = ["auto", "light", "dark"];

function initTheme() {
  const button = document.getElementById("theme-toggle");
  if (!button) return;
  const label = () => {
    const t = document.documentElement.dataset.theme || "auto";
    button.title = `Theme: ${t}`;
    button.setAttribute("aria-label", `Theme: ${t} (switch)`);
  };
  label();
  button.addEventListener("click", () => {
    const now = document.documentElement.dataset.theme || "auto";
    const next = THEMES[(THEMES.indexOf(now) + 1) % THEMES.length];
    document.documentElement.dataset.theme = next;
    localStorage.setItem("orch-theme", next);
    label();
  });
}

function initLightbox() {
  const dialog = document.getElementById("lightbox");
  if (!dialog) return;
  document.addEventListener("click", (e) => {
    const link = e.target instanceof Element ? e.target.closest("a[data-lightbox]") : null;
    if (!link || e.ctrlKey || e.metaKey || e.shiftKey) return;
    const kind = link.dataset.lightbox;
    if (kind !== "image" && kind !== "video") return;
    e.preventDefault();
    const body = dialog.querySelector(".lightbox-body");
    const media = document.createElement(kind === "image" ? "img" : "video");
    media.src = link.dataset.src || link.href;
    if (kind === "video") { media.controls = true; media.autoplay = true; media.loop = true; }
    else media.alt = link.dataset.caption || "output";
    const caption = document.createElement("p");
    caption.className = "lightbox-caption";
    caption.textContent = link.dataset.caption || "";
    const open = document.createElement("a");
    open.href = link.href;
    open.textContent = "Open full size";
    open.target = "_blank";
    caption.append(" ", open);
    body.replaceChildren(media, caption);
    dialog.showModal();
  });
  dialog.addEventListener("close", () => dialog.querySelector(".lightbox-body").replaceChildren());
  dialog.addEventListener("click", (e) => { if (e.target === dialog) dialog.close(); });
}

addEventListener("error", (e) => {
  toast(`Unexpected script error: ${e.message}`, { kind: "error" });
});
addEventListener("unhandledrejection", (e) => {
  const reason = e.reason instanceof Error ? e.reason.message : String(e.reason);
  toast(`Unexpected error: ${reason}`, { kind: "error", requestId: e.reason?.requestId });
});

initTheme();
initLightbox();
showFlashes();
loadPanels();
connect();
