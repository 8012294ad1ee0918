// Toasts: visible, stacked, dismissible. Errors are role="alert" (announced at
// once and kept until dismissed); the rest are role="status" and fade out.
const MAX_TOASTS = 6;
const FLASH_KEY = "orch-flash";

function container() {
  let box = document.getElementById("toasts");
  if (!box) {
    box = document.createElement("div");
    box.id = "toasts";
    box.className = "toasts";
    document.body.append(box);
  }
  return box;
}

/**
 * Show a toast.
 * @param {string} message
 * @param {{kind?: "success"|"error"|"info"|"warn", requestId?: string|null, href?: string, linkText?: string, timeoutMs?: number}} [opts]
 */
export function toast(message, opts = {}) {
  const kind = opts.kind || "info";
  const el = document.createElement("div");
  el.className = `toast toast-${kind}`;
  el.setAttribute("role", kind === "error" ? "alert" : "status");
  const text = document.createElement("div");
  text.className = "toast-text";
  text.textContent = message;
  if (opts.href) {
    const a = document.createElement("a");
    a.href = opts.href;
    a.textContent = opts.linkText || "Open";
    a.className = "toast-link";
    text.append(" ", a);
  }
  if (opts.requestId) {
    const rid = document.createElement("div");
    rid.className = "toast-rid";
    rid.textContent = `Request id: ${opts.requestId}`;
    text.append(rid);
  }
  const close = document.createElement("button");
  close.type = "button";
  close.className = "toast-close";
  close.setAttribute("aria-label", "Dismiss");
  close.textContent = "✕";
  close.addEventListener("click", () => el.remove());
  el.append(text, close);
  const box = container();
  box.append(el);
  while (box.children.length > MAX_TOASTS) box.firstElementChild?.remove();
  const timeout = opts.timeoutMs ?? (kind === "error" ? 0 : 7000);
  if (timeout > 0) {
    let timer = setTimeout(() => el.remove(), timeout);
    el.addEventListener("mouseenter", () => clearTimeout(timer));
    el.addEventListener("mouseleave", () => { timer = setTimeout(() => el.remove(), 3000); });
  }
  return el;
}

/** A toast for the next page (e.g. after a submit that navigates). */
export function flash(message, opts = {}) {
  const list = JSON.parse(sessionStorage.getItem(FLASH_KEY) || "[]");
  list.push({ message, opts });
  sessionStorage.setItem(FLASH_KEY, JSON.stringify(list));
}

export function showFlashes() {
  const list = JSON.parse(sessionStorage.getItem(FLASH_KEY) || "[]");
  sessionStorage.removeItem(FLASH_KEY);
  for (const { message, opts } of list) toast(message, opts);
}
