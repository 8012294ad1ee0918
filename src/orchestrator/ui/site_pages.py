"""The Sites pages (``/ui/sites``): imported Tilda sites → pages → blocks and images,
the import panel, thumbnails of imported images, and the image picker's source of
imported assets. Handlers call ``Service.tilda`` in-process."""

from __future__ import annotations

import asyncio
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from PIL import Image

from orchestrator import errors
from orchestrator.domain.auth import Principal, Scope
from orchestrator.domain.tilda import SiteAsset
from orchestrator.ui import thumbs, tilda_view
from orchestrator.ui.pages import service_of
from orchestrator.ui.panels import NO_STORE
from orchestrator.ui.templating import render

router = APIRouter(prefix="/ui", include_in_schema=False)
Id = Annotated[str, Path(max_length=64)]
OptId = Annotated[str | None, Query(max_length=64)]
Text = Annotated[str | None, Query(max_length=200)]


def _panel(request: Request, template: str, context: dict[str, object]) -> HTMLResponse:
    response = render(request, f"panels/{template}", context)
    response.headers.update(NO_STORE)
    return response


def _can_import(request: Request) -> bool:
    """POST /api/tilda/import needs an admin (see api/auth.py's rules)."""
    p = getattr(request.state, "principal", None)
    return isinstance(p, Principal) and p.scope.allows(Scope.ADMIN)


# --- pages ---------------------------------------------------------------------------------
@router.get("/sites", response_class=HTMLResponse)
async def sites_page(request: Request, site: OptId = None, q: Text = None) -> HTMLResponse:
    service = service_of(request)
    sites = await service.tilda.list_sites()
    query = urlencode({k: v for k, v in (("site", site), ("q", q)) if v})
    return render(
        request,
        "sites.html",
        {
            "sites": sites,
            "site": site or "",
            "q": q or "",
            "pages_src": "/ui/panels/site-pages" + (f"?{query}" if query else ""),
            "dump_path": service.settings.tilda_dump_path,
            "can_import": _can_import(request),
        },
        active="sites",
    )


@router.get("/sites/pages/{page_id}", response_class=HTMLResponse)
async def site_page(request: Request, page_id: Id) -> HTMLResponse:
    service = service_of(request)
    page = await service.tilda.get_page(page_id)  # 404 → the friendly error page
    site = next((s for s in await service.tilda.list_sites() if s.id == page.site_id), None)
    return render(request, "site_page.html", {"page": page, "site": site}, active="sites")


# --- panels --------------------------------------------------------------------------------
@router.get("/panels/sites", response_class=HTMLResponse)
async def sites_panel(request: Request, site: OptId = None) -> HTMLResponse:
    sites = await service_of(request).tilda.list_sites()
    return _panel(request, "sites.html", {"sites": sites, "selected": site or ""})


@router.get("/panels/site-pages", response_class=HTMLResponse)
async def pages_panel(
    request: Request,
    site: OptId = None,
    q: Text = None,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> HTMLResponse:
    result = await service_of(request).tilda.list_pages(
        site_id=site or None, text=q or None, limit=tilda_view.PAGE_SIZE, offset=offset
    )
    return _panel(
        request,
        "site_pages.html",
        {
            "pages": result.items,
            "paging": tilda_view.paging(result.total, result.limit, result.offset),
            "q": q or "",
        },
    )


async def _assets_by_id(request: Request, ids: set[str]) -> dict[str, SiteAsset]:
    out: dict[str, SiteAsset] = {}
    for asset_id in sorted(ids):
        try:
            out[asset_id] = await service_of(request).tilda.get_asset(asset_id)
        except errors.SiteNotFound:
            continue  # the template shows the id alone
    return out


@router.get("/panels/site-page/{page_id}/blocks", response_class=HTMLResponse)
async def blocks_panel(request: Request, page_id: Id) -> HTMLResponse:
    page = await service_of(request).tilda.get_page(page_id)
    known = {a.id: a for a in page.images}
    wanted = {
        i
        for b in (*page.header_blocks, *page.blocks, *page.footer_blocks)
        for i in b.image_asset_ids
        if i not in known
    }
    known.update(await _assets_by_id(request, wanted))
    return _panel(
        request,
        "site_blocks.html",
        {"page": page, "assets": known, "has_content": tilda_view.has_content},
    )


@router.get("/panels/site-page/{page_id}/images", response_class=HTMLResponse)
async def images_panel(request: Request, page_id: Id) -> HTMLResponse:
    page = await service_of(request).tilda.get_page(page_id)
    return _panel(request, "site_images.html", {"page": page})


@router.get("/panels/tilda-imports", response_class=HTMLResponse)
async def imports_panel(request: Request) -> HTMLResponse:
    runs = await service_of(request).tilda.list_imports(10)
    return _panel(
        request,
        "tilda_imports.html",
        {"runs": runs, "summary": tilda_view.run_summary, "pct": tilda_view.progress_pct},
    )


@router.get("/panels/pick-assets", response_class=HTMLResponse)
async def pick_assets(
    request: Request, site: OptId = None, page: OptId = None, q: Text = None
) -> HTMLResponse:
    """The image picker's imported-assets source: choose a site, then a page (or
    see the newest assets); ``q`` matches file names and page text."""
    tilda = service_of(request).tilda
    sites = await tilda.list_sites()
    pages = (await tilda.list_pages(site_id=site, limit=200)).items if site else []
    assets = await tilda.list_assets(
        site_id=site or None, page_id=page or None, text=q or None, limit=60
    )
    return _panel(
        request,
        "pick_assets.html",
        {
            "sites": sites,
            "pages": pages,
            "assets": assets,
            "site": site or "",
            "page": page or "",
        },
    )


# --- thumbnails ----------------------------------------------------------------------------
@router.get("/asset-thumbs/{asset_id}")
async def asset_thumb(request: Request, asset_id: Id) -> Response:
    """A cached thumbnail of an imported image (made once, under DATA_DIR/thumbs)."""
    service = service_of(request)
    asset, path = await service.tilda.asset_file(asset_id)
    cache = service.settings.data_path / "thumbs"
    try:
        target = await asyncio.to_thread(thumbs.ensure_thumb, path, cache, asset.sha256)
    except (OSError, Image.DecompressionBombError) as exc:
        raise errors.SiteNotFound(f"asset {asset_id} has no thumbnail: {exc}") from None
    return FileResponse(
        target,
        media_type=f"image/{thumbs.THUMB_FORMAT}",
        headers={"Cache-Control": "private, max-age=31536000, immutable"},
    )
