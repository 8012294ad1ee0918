import { panel } from "../panels.js";

const grid = panel("gallery-panel");
const form = document.getElementById("gallery-filters");

function query() {
  const params = new URLSearchParams();
  for (const [k, v] of new FormData(form)) if (String(v).trim()) params.set(k, String(v).trim());
  return params.toString();
}

function apply() {
  const q = query();
  grid.src = "/ui/panels/gallery" + (q ? `?${q}` : "");
  history.replaceState(null, "", "/ui/gallery" + (q ? `?${q}` : ""));
  grid.refresh();
}

form.addEventListener("submit", grid.guard((e) => { e.preventDefault(); apply(); }));
let typing = null;
form.addEventListener("input", (e) => {
  if (!(e.target instanceof HTMLInputElement) || e.target.type !== "search") return;
  clearTimeout(typing);
  typing = setTimeout(apply, 350);
});
form.addEventListener("change", (e) => { if (e.target instanceof HTMLSelectElement || e.target.type === "date") apply(); });

// "Load more": fetch the next page and append its tiles.
grid.el.addEventListener("click", grid.guard(async (e) => {
  const more = e.target instanceof Element ? e.target.closest("button[data-more]") : null;
  if (!more) return;
  more.disabled = true;
  const url = new URL(grid.src, location.origin);
  url.searchParams.set("cursor", more.dataset.more);
  const html = await grid.fetchHtml(url.pathname + url.search);
  const tpl = document.createElement("template");
  tpl.innerHTML = html;
  grid.body.querySelector(".gallery-grid")?.append(...tpl.content.querySelectorAll(".tile"));
  const next = tpl.content.querySelector("p.more");
  more.closest("p.more")?.replaceWith(...(next ? [next] : []));
}));

document.addEventListener("orch:job-event", (e) => {
  const ev = e.detail;
  if (ev.kind === "transition" && ev.status === "succeeded" && !grid.body.querySelector("[data-more]:disabled")) grid.soon(500);
});
