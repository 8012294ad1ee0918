"""Queries on imported Tilda sites: ``sites``, ``site_pages``, ``site_blocks``,
``site_assets``, ``site_page_assets`` and the import runs (``tilda_imports``).

:meth:`TildaRepo.apply` writes one import in ONE transaction: it compares each page's
content hash with what is stored, inserts added pages, rewrites changed ones,
deletes removed ones, inserts new assets, and marks the run succeeded with its
report — all or nothing. Pages whose hash did not change are not touched, so a
re-import of the same export changes no row but the run's own."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator import errors
from orchestrator.db.engine import Database, cancel_safe
from orchestrator.db.schema import (
    site_assets,
    site_blocks,
    site_page_assets,
    site_pages,
    sites,
    tilda_imports,
)
from orchestrator.domain.tilda import (
    ImportProgress,
    ImportReport,
    ImportRun,
    ImportStatus,
    Site,
    SiteAsset,
    SiteBlock,
    SitePageDetail,
    SitePagePage,
    SitePageSummary,
)

ERROR_MAX_CHARS = 2000
STALE_S = 60.0  # a running import beats every few seconds; silent this long: it ended
INTERRUPTED = "interrupted"
INTERRUPTED_MESSAGE = "the import stopped without finishing (its process ended); run it again"


@dataclass
class SiteRecord:
    tilda_project_id: str | None
    name: str
    domain: str | None
    home_tilda_page_id: str | None


@dataclass
class AssetRecord:
    id: str
    sha256: str
    original_name: str
    mime_type: str
    width: int | None
    height: int | None
    size_bytes: int
    path: str


@dataclass
class PageRecord:
    tilda_page_id: str
    alias: str | None
    file_name: str
    role: str
    is_home: bool
    indexable: bool
    title: str
    description: str
    keywords: str
    canonical_url: str | None
    public_url: str | None
    og: dict[str, str]
    header_tilda_id: str | None
    footer_tilda_id: str | None
    blocks: list[SiteBlock]
    asset_ids: list[str]
    missing_images: list[str]
    search_text: str
    content_hash: str


@dataclass
class ImportPlan:
    """Everything one import writes."""

    site: SiteRecord
    pages: list[PageRecord]
    assets: list[AssetRecord]
    warnings: list[str] = field(default_factory=list)
    missing_images: list[str] = field(default_factory=list)


def asset_url(asset_id: str) -> str:
    return f"/api/tilda/assets/{asset_id}"


class TildaRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    # --- import runs ---------------------------------------------------------------
    @cancel_safe
    async def create_run(self, source: str, now: datetime) -> ImportRun:
        run_id = str(uuid.uuid4())
        async with self.db.write() as conn:
            await conn.execute(
                tilda_imports.insert().values(
                    id=run_id,
                    status=ImportStatus.QUEUED.value,
                    source=source,
                    stage="queued",
                    done=0,
                    total=0,
                    created_at=now,
                    heartbeat_at=now,
                )
            )
            await _fail_stale(conn, now)
        return await self.get_run(run_id)

    @cancel_safe
    async def start_run(self, run_id: str, now: datetime) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                tilda_imports.update()
                .where(tilda_imports.c.id == run_id)
                .values(
                    status=ImportStatus.RUNNING.value,
                    stage="reading",
                    started_at=now,
                    heartbeat_at=now,
                )
            )

    @cancel_safe
    async def progress(
        self, run_id: str, stage: str | None, done: int, total: int, now: datetime
    ) -> None:
        """Record progress (``stage`` None: only the heartbeat), never over a finished
        run's final state."""
        values: dict[str, object] = {"heartbeat_at": now}
        if stage is not None:
            values.update(stage=stage, done=done, total=total)
        async with self.db.write() as conn:
            await conn.execute(
                tilda_imports.update()
                .where(
                    tilda_imports.c.id == run_id,
                    tilda_imports.c.status.in_(
                        [ImportStatus.RUNNING.value, ImportStatus.QUEUED.value]
                    ),
                )
                .values(values)
            )

    @cancel_safe
    async def fail_run(self, run_id: str, code: str, message: str, now: datetime) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                tilda_imports.update()
                .where(tilda_imports.c.id == run_id)
                .values(
                    status=ImportStatus.FAILED.value,
                    stage="failed",
                    error_code=code,
                    error_message=message[:ERROR_MAX_CHARS],
                    finished_at=now,
                )
            )

    async def get_run(self, run_id: str) -> ImportRun:
        async with self.db.read() as conn:
            row = (
                await conn.execute(sa.select(tilda_imports).where(tilda_imports.c.id == run_id))
            ).first()
        if row is None:
            raise errors.SiteNotFound(f"no Tilda import run {run_id}", import_id=run_id)
        return _run(row._mapping)

    async def list_runs(self, limit: int = 20) -> list[ImportRun]:
        async with self.db.read() as conn:
            rows = await conn.execute(
                sa.select(tilda_imports)
                .order_by(tilda_imports.c.created_at.desc(), tilda_imports.c.id.desc())
                .limit(limit)
            )
            return [_run(r._mapping) for r in rows]

    # --- the import's one transaction ------------------------------------------------
    async def existing_asset_ids(self, ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        async with self.db.read() as conn:
            for chunk in _chunks(list(ids), 500):
                rows = await conn.execute(
                    sa.select(site_assets.c.id).where(site_assets.c.id.in_(chunk))
                )
                found.update(r[0] for r in rows)
        return found

    @cancel_safe
    async def apply(self, run_id: str, plan: ImportPlan, now: datetime) -> ImportReport:
        async with self.db.write() as conn:
            site_id, site_new = await self._site(conn, plan.site, now)
            stored = {
                r.tilda_page_id: (r.id, r.content_hash)
                for r in await conn.execute(
                    sa.select(
                        site_pages.c.id, site_pages.c.tilda_page_id, site_pages.c.content_hash
                    ).where(site_pages.c.site_id == site_id)
                )
            }
            report = ImportReport(
                site_id=site_id,
                tilda_project_id=plan.site.tilda_project_id,
                pages_total=len(plan.pages),
                missing_images=plan.missing_images,
                warnings=plan.warnings,
            )
            wanted_ids = [a.id for a in plan.assets]
            have: set[str] = set()
            for chunk in _chunks(wanted_ids, 500):
                rows = await conn.execute(
                    sa.select(site_assets.c.id).where(site_assets.c.id.in_(chunk))
                )
                have.update(r[0] for r in rows)
            new_assets = [a for a in plan.assets if a.id not in have]
            if new_assets:
                await conn.execute(
                    site_assets.insert(),
                    [{**a.__dict__, "created_at": now} for a in new_assets],
                )
            report.assets_added = len(new_assets)
            report.assets_total = len(plan.assets)
            page_rows: list[dict[str, object]] = []
            block_rows: list[dict[str, object]] = []
            link_rows: list[dict[str, object]] = []
            rewritten: list[str] = []
            seen: set[str] = set()
            for page in plan.pages:
                seen.add(page.tilda_page_id)
                old = stored.get(page.tilda_page_id)
                if old is not None and old[1] == page.content_hash:
                    report.unchanged += 1
                    continue
                if old is None:
                    page_id = str(uuid.uuid4())
                    report.added.append(page.tilda_page_id)
                    page_rows.append(_page_row(page, page_id, site_id, now, created=now))
                else:
                    page_id = old[0]
                    rewritten.append(page_id)
                    if page.role == "page":
                        report.changed.append(page.tilda_page_id)
                    else:
                        report.layout_changed = True
                    await conn.execute(
                        site_pages.update()
                        .where(site_pages.c.id == page_id)
                        .values(_page_row(page, page_id, site_id, now, created=None))
                    )
                block_rows += [_block_row(page_id, b) for b in page.blocks]
                link_rows += [
                    {"page_id": page_id, "asset_id": a, "position": i}
                    for i, a in enumerate(page.asset_ids)
                ]
            removed = [(tid, ids[0]) for tid, ids in stored.items() if tid not in seen]
            report.removed = sorted(tid for tid, _ in removed)
            gone = rewritten + [pid for _, pid in removed]
            for chunk in _chunks(gone, 500):
                await conn.execute(site_blocks.delete().where(site_blocks.c.page_id.in_(chunk)))
                await conn.execute(
                    site_page_assets.delete().where(site_page_assets.c.page_id.in_(chunk))
                )
            for chunk in _chunks([pid for _, pid in removed], 500):
                await conn.execute(site_pages.delete().where(site_pages.c.id.in_(chunk)))
            if page_rows:
                await conn.execute(site_pages.insert(), page_rows)
            if block_rows:
                await conn.execute(site_blocks.insert(), block_rows)
            if link_rows:
                await conn.execute(site_page_assets.insert(), link_rows)
            if site_new or not report.no_change:
                await conn.execute(
                    sites.update()
                    .where(sites.c.id == site_id)
                    .values(
                        name=plan.site.name,
                        domain=plan.site.domain,
                        home_tilda_page_id=plan.site.home_tilda_page_id,
                        imported_at=now,
                        last_import_id=run_id,
                    )
                )
            await conn.execute(
                tilda_imports.update()
                .where(tilda_imports.c.id == run_id)
                .values(
                    status=ImportStatus.SUCCEEDED.value,
                    stage="done",
                    site_id=site_id,
                    report=report.model_dump(mode="json"),
                    finished_at=now,
                )
            )
        return report

    async def _site(
        self, conn: AsyncConnection, site: SiteRecord, now: datetime
    ) -> tuple[str, bool]:
        if site.tilda_project_id is not None:
            where = sites.c.tilda_project_id == site.tilda_project_id
        else:
            where = sa.and_(sites.c.tilda_project_id.is_(None), sites.c.name == site.name)
        row = (await conn.execute(sa.select(sites.c.id).where(where))).first()
        if row is not None:
            return str(row[0]), False
        site_id = str(uuid.uuid4())
        await conn.execute(
            sites.insert().values(
                id=site_id,
                tilda_project_id=site.tilda_project_id,
                name=site.name,
                domain=site.domain,
                home_tilda_page_id=site.home_tilda_page_id,
                created_at=now,
                imported_at=now,
            )
        )
        return site_id, True

    # --- reads ------------------------------------------------------------------------
    async def list_sites(self) -> list[Site]:
        async with self.db.read() as conn:
            counts = {
                r[0]: r[1]
                for r in await conn.execute(
                    sa.select(site_pages.c.site_id, sa.func.count()).group_by(site_pages.c.site_id)
                )
            }
            asset_counts = {
                r[0]: r[1]
                for r in await conn.execute(
                    sa.select(
                        site_pages.c.site_id,
                        sa.func.count(sa.distinct(site_page_assets.c.asset_id)),
                    )
                    .select_from(site_pages.join(site_page_assets))
                    .group_by(site_pages.c.site_id)
                )
            }
            rows = await conn.execute(sa.select(sites).order_by(sites.c.name, sites.c.id))
            return [
                Site(
                    id=r.id,
                    tilda_project_id=r.tilda_project_id,
                    name=r.name,
                    domain=r.domain,
                    home_page_id=r.home_tilda_page_id,
                    page_count=counts.get(r.id, 0),
                    asset_count=asset_counts.get(r.id, 0),
                    imported_at=r.imported_at,
                    last_import_id=r.last_import_id,
                )
                for r in rows
            ]

    async def list_pages(
        self,
        *,
        site_id: str | None = None,
        text: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> SitePagePage:
        where: list[sa.ColumnElement[bool]] = []
        if site_id is not None:
            where.append(site_pages.c.site_id == site_id)
        if text:
            where.append(site_pages.c.search_text.contains(text.casefold(), autoescape=True))
        async with self.db.read() as conn:
            total = (
                await conn.execute(sa.select(sa.func.count()).select_from(site_pages).where(*where))
            ).scalar_one()
            rows = await conn.execute(
                sa.select(site_pages, sites.c.tilda_project_id)
                .select_from(site_pages.join(sites))
                .where(*where)
                .order_by(
                    site_pages.c.site_id,
                    site_pages.c.is_home.desc(),
                    site_pages.c.role,
                    site_pages.c.file_name,
                    site_pages.c.id,
                )
                .limit(limit)
                .offset(offset)
            )
            items = [SitePageSummary.model_validate(_summary(r._mapping)) for r in rows]
        return SitePagePage(items=items, total=total, limit=limit, offset=offset)

    async def get_page(self, page_id: str) -> SitePageDetail:
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    sa.select(site_pages, sites.c.tilda_project_id)
                    .select_from(site_pages.join(sites))
                    .where(site_pages.c.id == page_id)
                )
            ).first()
            if row is None:
                raise errors.SiteNotFound(f"no imported page {page_id}", page_id=page_id)
            m = row._mapping
            blocks = await _blocks(conn, page_id)
            layout: dict[str, list[SiteBlock]] = {"header": [], "footer": []}
            for kind, col in (("header", "header_tilda_id"), ("footer", "footer_tilda_id")):
                tid = m[col]
                if tid is None:
                    continue
                lrow = (
                    await conn.execute(
                        sa.select(site_pages.c.id).where(
                            site_pages.c.site_id == m["site_id"],
                            site_pages.c.tilda_page_id == tid,
                        )
                    )
                ).first()
                if lrow is not None:
                    layout[kind] = await _blocks(conn, str(lrow[0]))
            assets = await conn.execute(
                sa.select(site_assets)
                .select_from(site_page_assets.join(site_assets))
                .where(site_page_assets.c.page_id == page_id)
                .order_by(site_page_assets.c.position)
            )
            images = [_asset(a._mapping) for a in assets]
        data = _summary(m)
        data.update(
            keywords=m["keywords"],
            canonical_url=m["canonical_url"],
            public_url=m["public_url"],
            og=m["og"],
            blocks=blocks,
            header_blocks=layout["header"],
            footer_blocks=layout["footer"],
            images=images,
            missing_images=m["missing_images"],
        )
        return SitePageDetail.model_validate(data)

    async def get_asset(self, asset_id: str) -> SiteAsset:
        async with self.db.read() as conn:
            row = (
                await conn.execute(sa.select(site_assets).where(site_assets.c.id == asset_id))
            ).first()
        if row is None:
            raise errors.SiteNotFound(f"no imported asset {asset_id}", asset_id=asset_id)
        return _asset(row._mapping)

    async def counts(self) -> dict[str, int]:
        """Rows per table (tests and the benchmark use it to prove a no-op)."""
        out: dict[str, int] = {}
        async with self.db.read() as conn:
            for table in (sites, site_pages, site_blocks, site_assets, site_page_assets):
                out[table.name] = (
                    await conn.execute(sa.select(sa.func.count()).select_from(table))
                ).scalar_one()
        return out


async def _fail_stale(conn: AsyncConnection, now: datetime) -> None:
    """Runs whose process stopped beating (it ended mid-import) become failed."""
    await conn.execute(
        tilda_imports.update()
        .where(
            tilda_imports.c.status.in_([ImportStatus.RUNNING.value, ImportStatus.QUEUED.value]),
            tilda_imports.c.heartbeat_at < now - timedelta(seconds=STALE_S),
        )
        .values(
            status=ImportStatus.FAILED.value,
            stage="failed",
            error_code=INTERRUPTED,
            error_message=INTERRUPTED_MESSAGE,
            finished_at=now,
        )
    )


def _chunks(items: list[str], n: int) -> list[list[str]]:
    return [items[i : i + n] for i in range(0, len(items), n)]


def _page_row(
    page: PageRecord, page_id: str, site_id: str, now: datetime, *, created: datetime | None
) -> dict[str, object]:
    row: dict[str, object] = {
        "id": page_id,
        "site_id": site_id,
        "tilda_page_id": page.tilda_page_id,
        "alias": page.alias,
        "file_name": page.file_name,
        "role": page.role,
        "is_home": page.is_home,
        "indexable": page.indexable,
        "title": page.title,
        "description": page.description,
        "keywords": page.keywords,
        "canonical_url": page.canonical_url,
        "public_url": page.public_url,
        "og": page.og,
        "header_tilda_id": page.header_tilda_id,
        "footer_tilda_id": page.footer_tilda_id,
        "block_count": len(page.blocks),
        "image_count": len(page.asset_ids),
        "missing_images": page.missing_images,
        "search_text": page.search_text,
        "content_hash": page.content_hash,
        "updated_at": now,
    }
    if created is not None:
        row["created_at"] = created
    return row


def _block_row(page_id: str, b: SiteBlock) -> dict[str, object]:
    return {
        "page_id": page_id,
        "position": b.position,
        "record_id": b.record_id,
        "record_type": b.record_type,
        "code": b.code,
        "placement": b.placement,
        "texts": [t.model_dump(mode="json") for t in b.texts],
        "links": [lk.model_dump(mode="json") for lk in b.links],
        "image_asset_ids": b.image_asset_ids,
    }


async def _blocks(conn: AsyncConnection, page_id: str) -> list[SiteBlock]:
    rows = await conn.execute(
        sa.select(site_blocks)
        .where(site_blocks.c.page_id == page_id)
        .order_by(site_blocks.c.position)
    )
    return [
        SiteBlock(
            record_id=r.record_id,
            record_type=r.record_type,
            code=r.code,
            position=r.position,
            placement=r.placement,
            texts=r.texts,
            links=r.links,
            image_asset_ids=r.image_asset_ids,
        )
        for r in rows
    ]


def _summary(m: sa.RowMapping) -> dict[str, object]:
    return {
        "id": m["id"],
        "site_id": m["site_id"],
        "tilda_project_id": m["tilda_project_id"],
        "tilda_page_id": m["tilda_page_id"],
        "alias": m["alias"],
        "file_name": m["file_name"],
        "title": m["title"],
        "description": m["description"],
        "indexable": m["indexable"],
        "is_home": m["is_home"],
        "role": m["role"],
        "block_count": m["block_count"],
        "image_count": m["image_count"],
        "updated_at": m["updated_at"],
    }


def _asset(m: sa.RowMapping) -> SiteAsset:
    return SiteAsset(
        id=m["id"],
        original_name=m["original_name"],
        mime_type=m["mime_type"],
        width=m["width"],
        height=m["height"],
        sha256=m["sha256"],
        size_bytes=m["size_bytes"],
        path=m["path"],
        url=asset_url(m["id"]),
    )


def _run(m: sa.RowMapping) -> ImportRun:
    report = m["report"]
    status = ImportStatus(m["status"])
    stale = not status.terminal and m["heartbeat_at"] < datetime.now(UTC) - timedelta(
        seconds=STALE_S
    )
    if stale:  # shown as it will be recorded by the next import
        return ImportRun(
            id=m["id"],
            status=ImportStatus.FAILED,
            source=m["source"],
            site_id=m["site_id"],
            progress=ImportProgress(stage="failed", done=m["done"], total=m["total"]),
            error_code=INTERRUPTED,
            error_message=INTERRUPTED_MESSAGE,
            created_at=m["created_at"],
            started_at=m["started_at"],
            finished_at=m["heartbeat_at"],
        )
    return ImportRun(
        id=m["id"],
        status=status,
        source=m["source"],
        site_id=m["site_id"],
        progress=ImportProgress(stage=m["stage"], done=m["done"], total=m["total"]),
        report=ImportReport.model_validate(report) if report is not None else None,
        error_code=m["error_code"],
        error_message=m["error_message"],
        created_at=m["created_at"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
    )
