"""The image picker's query over imported assets (``db/tilda_assets.py``), on SQLite
and PostgreSQL: newest first, one page's in order, one site's, by file name or page
text; a shared image is listed once."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from orchestrator.config import Settings
from orchestrator.db.engine import open_database
from orchestrator.domain.tilda import ImportStatus
from orchestrator.testing import tilda_export as te
from orchestrator.tilda.service import TildaService


@pytest.fixture
async def tilda_db(
    make_settings: Callable[..., Settings], db_url: str
) -> AsyncIterator[TildaService]:
    settings = make_settings(database_url=db_url)
    db = await open_database(settings.db_url)
    try:
        yield TildaService(settings, db)
    finally:
        await db.dispose()


async def test_list_assets(tilda_db: TildaService, tmp_path: Path) -> None:
    tilda = tilda_db
    assert await tilda.list_assets() == []
    te.build_export(tmp_path / "a")
    te.build_export(tmp_path / "b", project_id="5550001")
    for folder in ("a", "b"):
        run = await tilda.import_path(tmp_path / folder)
        assert run.status == ImportStatus.SUCCEEDED, run
    sites = {s.tilda_project_id: s for s in await tilda.list_sites()}
    a = sites[te.PROJECT_ID]

    everything = await tilda.list_assets()
    ids = [x.id for x in everything]
    assert len(ids) == len(set(ids)) == a.asset_count  # both sites share the same files
    assert len(await tilda.list_assets(limit=2)) == 2
    assert [x.id for x in await tilda.list_assets(site_id=a.id)] == ids
    assert await tilda.list_assets(site_id="no-such-site") == []

    about = next(p for p in (await tilda.list_pages(site_id=a.id)).items if p.alias == "about")
    detail = await tilda.get_page(about.id)
    on_page = await tilda.list_assets(page_id=about.id)
    assert [x.id for x in on_page] == [x.id for x in detail.images]  # in page order
    assert {x.original_name for x in on_page} <= set(te.IMG_GALLERY) | {te.IMG_GALLERY_DUP}

    product = await tilda.list_assets(text="PRODUCT_0")  # file names, any case
    assert [x.original_name for x in product] == [te.IMG_PRODUCTS[0]]
    by_text = await tilda.list_assets(text="eco spray")  # text of a page that uses it
    assert {x.original_name for x in by_text} == set(te.IMG_PRODUCTS)
    assert await tilda.list_assets(text="100%_no_match") == []  # LIKE wildcards escaped
    assert all(x.url == f"/api/tilda/assets/{x.id}" for x in everything)
