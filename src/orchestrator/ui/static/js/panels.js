// Panels are error boundaries: each loads its own HTML fragment, and a failed
// request, a dropped live stream or a script error inside it shows a message in
// that panel (with the request id) and a toast; the rest of the page goes on.
import { ApiError } from "./api.js";
import { toast } from "./toast.js";

const registry = new WeakMap();

export class Panel {
  constructor(el) {
    this.el = el;
    this.src = el.dataset.panelSrc || "";
    this.body = el.querySelector(".panel-body");
    this.errorBox = el.querySelector(".panel-error");
    this.title = el.querySelector("h2")?.textContent?.trim() || el.id || "panel";
    this.renderHooks = [];
    this.loading = null;
    this.again = false;
    this.timer = null;
    this.lastError = null;
    const every = Number(el.dataset.refresh || 0);
    if (every > 0) setInterval(() => { if (!document.hidden) this.refresh(); }, every);
  }

  /** Run ``fn`` after each successful render (guarded). */
  onRender(fn) { this.renderHooks.push(fn); }

  /** Wrap a handler: an exception (or rejected promise) becomes this panel's error. */
  guard(fn) {
    return (...args) => {
      try {
        const out = fn(...args);
        if (out && typeof out.catch === "function") out.catch((err) => this.fail(err));
        return out;
      } catch (err) {
        this.fail(err);
        return undefined;
      }
    };
  }

  /** Refresh soon, once, however many times this is called meanwhile. */
  soon(delayMs = 250) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.refresh(), delayMs);
  }

  async refresh() {
    if (!this.src) return;
    if (this.loading) { this.again = true; return this.loading; }
    this.loading = this._load(this.src).finally(() => {
      this.loading = null;
      if (this.again) { this.again = false; this.refresh(); }
    });
    return this.loading;
  }

  async fetchHtml(url) {
    let resp;
    try {
      resp = await fetch(url, { headers: { Accept: "text/html", "X-Panel": "1" }, credentials: "same-origin" });
    } catch (err) {
      throw new ApiError(`${this.title} could not be loaded: the server could not be reached`);
    }
    if (!resp.ok) {
      throw new ApiError(`${this.title} could not be loaded (HTTP ${resp.status})`, {
        status: resp.status, requestId: resp.headers.get("X-Request-ID"),
      });
    }
    return resp.text();
  }

  async _load(url) {
    try {
      const html = await this.fetchHtml(url);
      this.body.innerHTML = html;
      this.body.setAttribute("aria-busy", "false");
      this.clearError();
      for (const hook of this.renderHooks) this.guard(hook)(this);
    } catch (err) {
      this.fail(err);
    }
  }

  /** Show ``err`` in the panel (and toast it, once per distinct message). */
  fail(err, { toastIt = true } = {}) {
    const message = err instanceof Error ? err.message : String(err);
    const requestId = err && err.requestId ? err.requestId : null;
    if (!(err instanceof ApiError)) console.error(err);  // a script error: keep the stack for developers
    this.el.classList.add("has-error");
    if (this.body.getAttribute("aria-busy") === "true") this.body.replaceChildren();  // no "Loading…" forever
    this.body.setAttribute("aria-busy", "false");
    if (this.errorBox) {
      this.errorBox.hidden = false;
      this.errorBox.replaceChildren();
      const text = document.createElement("p");
      text.className = "panel-error-text";
      text.textContent = message;
      this.errorBox.append(text);
      if (requestId) {
        const rid = document.createElement("p");
        rid.className = "small";
        rid.append("Request id: ");
        const code = document.createElement("code");
        code.className = "request-id";
        code.textContent = requestId;
        rid.append(code);
        this.errorBox.append(rid);
      }
      if (this.src) {
        const retry = document.createElement("button");
        retry.type = "button";
        retry.className = "button small";
        retry.textContent = "Retry";
        retry.addEventListener("click", () => this.refresh());
        this.errorBox.append(retry);
      }
    }
    if (toastIt && message !== this.lastError) toast(message, { kind: "error", requestId });
    this.lastError = message;
  }

  clearError() {
    this.el.classList.remove("has-error");
    if (this.errorBox) { this.errorBox.hidden = true; this.errorBox.replaceChildren(); }
    this.lastError = null;
  }
}

/** The Panel of an element (or element id), made on first use. */
export function panel(elOrId) {
  const el = typeof elOrId === "string" ? document.getElementById(elOrId) : elOrId;
  if (!el) return null;
  let p = registry.get(el);
  if (!p) { p = new Panel(el); registry.set(el, p); }
  return p;
}

/** Load every panel of the page that is not lazy. */
export function loadPanels() {
  for (const el of document.querySelectorAll("[data-panel-src]")) {
    if (!("lazy" in el.dataset)) panel(el).refresh();
  }
}
