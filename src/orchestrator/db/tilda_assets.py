"""Browsing imported assets (the UI's image picker): the newest first, or one
page's in order, optionally only one site's, or matching a text."""

from __future__ import annotations

import sqlalchemy as sa

from orchestrator.db.engine import Database
from orchestrator.db.schema import site_assets, site_page_assets, site_pages
from orchestrator.db.tilda import asset_url
from orchestrator.domain.tilda import SiteAsset


async def list_assets(
    db: Database,
    *,
    site_id: str | None = None,
    page_id: str | None = None,
    text: str | None = None,
    limit: int = 60,
) -> list[SiteAsset]:
    """Assets of one page (``page_id``, in page order), else the newest first;
    ``site_id`` keeps one site's; ``text`` matches the file name or the text of a
    page that uses the asset."""
    where: list[sa.ColumnElement[bool]] = []
    if page_id is not None:
        query = (
            sa.select(site_assets)
            .select_from(site_page_assets.join(site_assets))
            .where(site_page_assets.c.page_id == page_id)
            .order_by(site_page_assets.c.position)
        )
    else:
        query = sa.select(site_assets).order_by(
            site_assets.c.created_at.desc(), site_assets.c.original_name, site_assets.c.id
        )
    if site_id is not None:
        where.append(
            sa.exists()
            .where(site_page_assets.c.asset_id == site_assets.c.id)
            .where(site_page_assets.c.page_id == site_pages.c.id)
            .where(site_pages.c.site_id == site_id)
        )
    if text:
        needle = text.casefold()
        where.append(
            sa.or_(
                sa.func.lower(site_assets.c.original_name).contains(needle, autoescape=True),
                sa.exists()
                .where(site_page_assets.c.asset_id == site_assets.c.id)
                .where(site_page_assets.c.page_id == site_pages.c.id)
                .where(site_pages.c.search_text.contains(needle, autoescape=True)),
            )
        )
    async with db.read() as conn:
        rows = await conn.execute(query.where(*where).limit(limit))
        return [
            SiteAsset(
                id=r.id,
                original_name=r.original_name,
                mime_type=r.mime_type,
                width=r.width,
                height=r.height,
                sha256=r.sha256,
                size_bytes=r.size_bytes,
                path=r.path,
                url=asset_url(r.id),
            )
            for r in rows
        ]
