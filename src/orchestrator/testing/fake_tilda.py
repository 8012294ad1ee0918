"""A fake Tilda API (``/v1/<method>/``) serving an export folder, in the documented
JSON shapes (``shared/reference/tilda.md`` §5): every value a string, the envelope
``{"status": "FOUND", "result": …}`` or ``{"status": "ERROR", "message": …,
"errorside": …}``. It also serves the "CDN" files the ``images[].from`` URLs point at.

Methods: ``getprojectslist``, ``getprojectexport`` (the older method: project fields,
``export_*path``, ``indexpageid``, ``htaccess``, ``images``), ``getpageslist`` and
``getpagefullexport`` (page fields, ``html`` pointing at local paths, ``images``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from orchestrator.tilda import parse

PAGE_ID = re.compile(r'data-tilda-page-id="(\d+)"')
TITLE = re.compile(r"<title>(.*?)</title>", re.S)
DESCR = re.compile(r'<meta name="description" content="([^"]*)"')


@dataclass
class FakeTildaConfig:
    export_dir: Path
    project_id: str
    public_key: str = "pub-test"
    secret_key: str = "sec-test"
    public_base_url: str = "http://127.0.0.1"
    calls: list[str] = field(default_factory=list)


class FakeTilda:
    def __init__(self, config: FakeTildaConfig) -> None:
        self.config = config
        root = config.export_dir
        self.htaccess = (root / "htaccess").read_text(encoding="utf-8")
        parsed = parse.parse_htaccess(self.htaccess)
        self.pages: dict[str, dict[str, str]] = {}
        for path in sorted(root.glob("page*.html")):
            html = path.read_text(encoding="utf-8")
            m = PAGE_ID.search(html)
            if m is None:
                continue
            title = TITLE.search(html)
            descr = DESCR.search(html)
            self.pages[m[1]] = {
                "id": m[1],
                "projectid": config.project_id,
                "title": title[1] if title else "",
                "descr": descr[1] if descr else "",
                "img": "",
                "featureimg": "",
                "alias": parsed.alias_of(path.name) or "",
                "date": "2026-08-24 10:11:25",
                "sort": "10",
                "published": "1787000000",
                "filename": path.name,
                "html": html,
            }
        self.index_page = ""
        if parsed.home_file:
            m = re.match(r"page(\d+)\.html", parsed.home_file)
            self.index_page = m[1] if m else ""
        self.app = Starlette(
            routes=[
                Route("/v1/{method}/", self._api),
                Route("/v1/{method}", self._api),
                Route("/cdn/{name:path}", self._file),
            ]
        )

    def _images_of(self, html: str) -> list[dict[str, str]]:
        """Every image file the page references (variants included), as {from, to}."""
        folder = self.config.export_dir / "images"
        files = {p.name.lower(): p.name for p in folder.iterdir()}
        names: dict[str, None] = {}
        for ref in parse.image_refs(html):
            for candidate in (parse.image_name(ref), parse.original_image_name(ref)):
                if candidate.lower() in files:
                    names[files[candidate.lower()]] = None
        base = self.config.public_base_url
        return [{"from": f"{base}/cdn/{name}", "to": name} for name in names]

    async def _api(self, request: Request) -> Response:
        method = request.path_params["method"]
        q = request.query_params
        self.config.calls.append(method)
        if q.get("publickey") != self.config.public_key:
            return _error("Wrong Public Key", "user")
        if q.get("secretkey") != self.config.secret_key:
            return _error("Wrong Secret Key", "user")
        if method == "getprojectslist":
            return _found([{"id": self.config.project_id, "title": "Site", "descr": ""}])
        if method in ("getprojectexport", "getprojectinfo"):
            if q.get("projectid") != self.config.project_id:
                return _error("Project not found", "user")
            return _found(
                {
                    "id": self.config.project_id,
                    "title": "Site",
                    "descr": "",
                    "customdomain": "example-cleaning.com",
                    "export_csspath": "css",
                    "export_jspath": "js",
                    "export_imgpath": "images",
                    "export_basepath": "",
                    "indexpageid": self.index_page,
                    "htaccess": self.htaccess,
                    "css": [],
                    "js": [],
                    "images": [],
                }
            )
        if method == "getpageslist":
            if q.get("projectid") != self.config.project_id:
                return _error("Project not found", "user")
            return _found(
                [{k: v for k, v in p.items() if k != "html"} for p in self.pages.values()]
            )
        if method in ("getpagefullexport", "getpageexport"):
            page = self.pages.get(q.get("pageid", ""))
            if page is None:
                return _error("Page not found", "user")
            return _found(
                {
                    **page,
                    "export_csspath": "css",
                    "export_jspath": "js",
                    "export_imgpath": "images",
                    "project_alias": "",
                    "page_alias": page["alias"],
                    "project_domain": "example-cleaning.com",
                    "images": self._images_of(page["html"]),
                    "css": [],
                    "js": [],
                }
            )
        return _error(f"Unknown method {method}", "user")

    async def _file(self, request: Request) -> Response:
        name = request.path_params["name"]
        path = self.config.export_dir / "images" / name
        if "/" in name or not path.is_file():
            return Response(status_code=404)
        return Response(path.read_bytes(), media_type="application/octet-stream")


def _found(result: object) -> JSONResponse:
    return JSONResponse({"status": "FOUND", "result": result})


def _error(message: str, side: str) -> JSONResponse:
    return JSONResponse({"status": "ERROR", "message": message, "errorside": side})
