"""The Tilda importer on a real database (SQLite and PostgreSQL): a realistic export
gives the right pages, aliases, titles, texts and images; a re-import changes nothing;
a newer export reports added/changed/removed; a zip gives the same as the folder; the
Tilda API gives the same as the folder; hostile or broken input is refused with a clear
error, nothing written outside, and the database unchanged."""

from __future__ import annotations

import io
import os
import struct
import zipfile
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from orchestrator.config import Settings
from orchestrator.db.engine import Database, open_database
from orchestrator.db.schema import (
    site_assets,
    site_blocks,
    site_page_assets,
    site_pages,
    sites,
    tilda_imports,
)
from orchestrator.db.tilda import ImportPlan, TildaRepo
from orchestrator.domain.tilda import ImportReport, ImportRun, ImportStatus, SitePageDetail
from orchestrator.testing import tilda_export as te
from orchestrator.testing.fake_tilda import FakeTilda, FakeTildaConfig
from orchestrator.testing.serve import serve_in_thread
from orchestrator.tilda.api_client import import_from_api
from orchestrator.tilda.service import TildaService

TABLES = (sites, site_pages, site_blocks, site_assets, site_page_assets)


@pytest.fixture
async def tilda(make_settings: Callable[..., Settings]) -> AsyncIterator[TildaService]:
    """On SQLite."""
    settings = make_settings()
    db = await open_database(settings.db_url)
    try:
        yield TildaService(settings, db)
    finally:
        await db.dispose()


@pytest.fixture
async def tilda_db(
    make_settings: Callable[..., Settings], db_url: str
) -> AsyncIterator[TildaService]:
    """On SQLite and on PostgreSQL."""
    settings = make_settings(database_url=db_url)
    db = await open_database(settings.db_url)
    try:
        yield TildaService(settings, db)
    finally:
        await db.dispose()


async def snapshot(db: Database) -> dict[str, list[tuple[object, ...]]]:
    out: dict[str, list[tuple[object, ...]]] = {}
    async with db.read() as conn:
        for t in TABLES:
            rows = await conn.execute(sa.select(t))
            out[t.name] = sorted((tuple(r) for r in rows), key=repr)
    return out


def files_under(folder: Path) -> dict[str, int]:
    if not folder.exists():
        return {}
    return {
        p.relative_to(folder).as_posix(): p.stat().st_mtime_ns
        for p in folder.rglob("*")
        if p.is_file()
    }


async def by_alias(tilda: TildaService) -> dict[str, SitePageDetail]:
    page = await tilda.list_pages(limit=500)
    out = {}
    for p in page.items:
        key = "/" if p.is_home else (p.alias or p.file_name)
        out[key] = await tilda.get_page(p.id)
    return out


def succeeded(run: ImportRun) -> ImportRun:
    assert run.status == ImportStatus.SUCCEEDED, (run.error_code, run.error_message)
    assert run.report is not None
    return run


async def test_realistic_export(tilda_db: TildaService, tmp_path: Path) -> None:
    tilda = tilda_db
    exp = te.build_export(tmp_path / "export")
    stages: list[str] = []
    run = succeeded(
        await tilda.import_path(tmp_path / "export", on_progress=lambda s, _d, _t: stages.append(s))
    )
    assert {"parsing", "copying", "saving", "done"} <= set(stages)
    report = run.report
    assert report is not None
    assert sorted(report.added) == sorted(exp.pages)
    assert report.missing_images == exp.missing
    pages = await by_alias(tilda)
    assert set(pages) == {
        "/",
        "about",
        "services/regular-cleaning",
        "shop",
        "contacts",
        "header",
        "footer",
    }
    for page in pages.values():
        want = exp.pages[page.tilda_page_id]
        assert page.title == want.title
        assert page.file_name == want.file_name
        assert page.role == want.role
        assert page.indexable is want.indexable, page.alias
        assert page.is_home is want.is_home
        assert [b.code for b in page.blocks] == want.codes
        assert {a.original_name for a in page.images} >= {
            n for n in want.images if n != te.IMG_GALLERY_DUP
        }
        assert page.tilda_project_id == te.PROJECT_ID
    home = pages["/"]
    assert home.public_url == f"https://{te.DOMAIN}/"
    assert home.keywords == "cleaning, home, office"
    assert home.blocks[1].texts[0].text == (
        "We clean homes and offices.\nSince 2015.\n\nSee regular cleaning or our shop."
    )
    assert [lk.target_alias for lk in home.blocks[1].links] == ["services/regular-cleaning", "shop"]
    # og:image is a -__resize__504x__ variant with another case: the original is used
    og = next(a for a in home.images if a.original_name == te.IMG_OG)
    assert (og.width, og.height, og.mime_type) == (120, 63, "image/png")
    # the shared header and footer: stored once, on their own pages, shown with each page
    assert [b.code for b in home.header_blocks] == ["T228"]
    assert [b.code for b in home.footer_blocks] == ["T345", None]
    assert home.header_blocks == pages["about"].header_blocks == pages["header"].blocks
    async with tilda.repo.db.read() as conn:
        menus = (
            await conn.execute(
                sa.select(sa.func.count())
                .select_from(site_blocks)
                .where(site_blocks.c.code == "T228")
            )
        ).scalar_one()
    assert menus == 1
    # images: deduplicated by content (gallery_0 and its copy are one asset), on disk
    about = pages["about"]
    gallery = about.blocks[2]
    assert len(gallery.image_asset_ids) == 3
    assert about.image_count == 3
    for asset in about.images:
        path = tilda.path_of(asset)
        assert path.read_bytes() == exp.images[asset.original_name]
        assert path.relative_to(tilda.data_dir).as_posix() == (
            f"assets/{asset.sha256[:2]}/{asset.sha256}.jpg"
        )
    service = pages["services/regular-cleaning"]
    assert service.missing_images == exp.missing
    assert service.blocks[0].texts[0].text == "Regular cleaning\nevery week"
    contacts = pages["contacts"]
    assert [lk.href for lk in contacts.blocks[0].links] == [
        "tel:+15550100",
        f"mailto:hi@{te.DOMAIN}",
    ]
    counts = await tilda.repo.counts()
    assert counts["site_assets"] == len(set(exp.images.values()))
    sites_ = await tilda.list_sites()
    assert [(s.name, s.tilda_project_id, s.page_count) for s in sites_] == [
        (te.DOMAIN, te.PROJECT_ID, 7)
    ]
    # search and paging
    found = await tilda.list_pages(text="MOP DELUXE")
    assert [p.alias for p in found.items] == ["shop"]
    first = await tilda.list_pages(limit=3)
    rest = await tilda.list_pages(limit=10, offset=3)
    assert first.total == 7 and len(first.items) == 3 and len(rest.items) == 4
    assert first.items[0].is_home


async def test_reimport_is_a_no_op_and_newer_export_reports(
    tilda_db: TildaService, tmp_path: Path
) -> None:
    tilda = tilda_db
    te.build_export(tmp_path / "v1")
    succeeded(await tilda.import_path(tmp_path / "v1"))
    before = await snapshot(tilda.repo.db)
    files_before = files_under(tilda.data_dir / "assets")
    again = succeeded(await tilda.import_path(tmp_path / "v1"))
    assert again.report is not None and again.report.no_change
    assert again.report.unchanged == 7
    assert await snapshot(tilda.repo.db) == before
    assert files_under(tilda.data_dir / "assets") == files_before

    te.build_export(tmp_path / "v2", revision=2)
    newer = succeeded(await tilda.import_path(tmp_path / "v2"))
    r = newer.report
    assert r is not None
    assert r.added == [te.BLOG_ID]
    # about's text changed; the home page and the header menu link to /shop, which no
    # longer resolves to a page of the site
    assert sorted(r.changed) == sorted([te.ABOUT_ID, te.HOME_ID])
    assert r.removed == [te.SHOP_ID]
    assert r.layout_changed
    assert r.unchanged == 3  # the footer, the service and contacts pages
    assert r.assets_added == 1  # the blog image
    pages = await by_alias(tilda)
    assert "shop" not in pages and "blog/esp" in pages
    assert pages["about"].blocks[1].texts[0].text == (
        "Our team of fifteen.\nFriendly & insured.\nNow also on Sundays."
    )
    assert [p.alias for p in (await tilda.list_pages(text="fifteen")).items] == ["about"]
    counts = await tilda.repo.counts()
    async with tilda.repo.db.read() as conn:
        orphans = (
            await conn.execute(
                sa.select(sa.func.count())
                .select_from(site_blocks)
                .where(site_blocks.c.page_id.not_in(sa.select(site_pages.c.id)))
            )
        ).scalar_one()
    assert orphans == 0 and counts["site_pages"] == 7


async def test_zip_gives_the_same_as_the_folder(tilda: TildaService, tmp_path: Path) -> None:
    te.build_export(tmp_path / "export")
    zipped = te.zip_folder(
        tmp_path / "export", tmp_path / "project7732209.zip", top="project7732209"
    )
    succeeded(await tilda.import_path(tmp_path / "export"))
    before = await snapshot(tilda.repo.db)
    again = succeeded(await tilda.import_path(zipped))
    assert again.report is not None and again.report.no_change
    assert await snapshot(tilda.repo.db) == before


async def test_tilda_api_gives_the_same_as_the_folder(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    te.build_export(tmp_path / "export")
    fake = FakeTilda(FakeTildaConfig(export_dir=tmp_path / "export", project_id=te.PROJECT_ID))
    with serve_in_thread(fake.app) as served:
        fake.config.public_base_url = served.base_url
        settings = make_settings(
            tilda_api_url=served.base_url,
            tilda_public_key="pub-test",
            tilda_secret_key="sec-test",
            tilda_project_id=te.PROJECT_ID,
        )
        db = await open_database(settings.db_url)
        try:
            tilda = TildaService(settings, db)
            via_api = succeeded(await import_from_api(tilda))
            assert via_api.source == f"api:project{te.PROJECT_ID}"
            from_api = await by_alias(tilda)
            assert {"getprojectexport", "getpageslist", "getpagefullexport"} <= set(
                fake.config.calls
            )
            assert not (tilda.data_dir / "tilda-api" / via_api.id).exists()
            # the folder export on the same database: the same content, so nothing changes
            # except indexability (the API has no robots.txt or sitemap.xml)
            folder = succeeded(await tilda.import_path(tmp_path / "export"))
            assert folder.report is not None
            assert folder.report.added == [] and folder.report.removed == []
            from_folder = await by_alias(tilda)
            assert set(from_api) == set(from_folder)
            for key, page in from_api.items():
                other = from_folder[key]
                assert (page.title, page.alias, page.blocks, page.header_blocks) == (
                    other.title,
                    other.alias,
                    other.blocks,
                    other.header_blocks,
                )
                assert [a.sha256 for a in page.images] == [a.sha256 for a in other.images]
            # wrong keys: a failed run with Tilda's message
            bad = make_settings(
                tilda_api_url=served.base_url,
                tilda_public_key="wrong",
                tilda_secret_key="sec-test",
                tilda_project_id=te.PROJECT_ID,
            )
            failed = await import_from_api(TildaService(bad, db))
            assert failed.status == ImportStatus.FAILED
            assert failed.error_message is not None and "Wrong Public Key" in failed.error_message
        finally:
            await db.dispose()


# --- hostile and broken input ------------------------------------------------------------


def _good_zip_bytes(tmp_path: Path) -> bytes:
    te.build_export(tmp_path / "good")
    path = te.zip_folder(tmp_path / "good", tmp_path / "good.zip", top="project1")
    return path.read_bytes()


def _zip_with(tmp_path: Path, name: str, data: bytes, **info: int) -> Path:
    """The good export's zip plus one more entry."""
    base = _good_zip_bytes(tmp_path)
    out = tmp_path / "hostile.zip"
    buf = io.BytesIO(base)
    with zipfile.ZipFile(buf, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        zi = zipfile.ZipInfo(name)
        zi.compress_type = zipfile.ZIP_DEFLATED
        for k, v in info.items():
            setattr(zi, k, v)
        zf.writestr(zi, data)
    out.write_bytes(buf.getvalue())
    return out


def zip_slip(tmp_path: Path) -> Path:
    return _zip_with(tmp_path, "project1/../../evil.txt", b"pwned")


def absolute_entry(tmp_path: Path) -> Path:
    return _zip_with(tmp_path, f"{tmp_path.as_posix()}/evil.txt", b"pwned")


def drive_entry(tmp_path: Path) -> Path:
    return _zip_with(tmp_path, "C:\\evil.txt", b"pwned")


def symlink_entry(tmp_path: Path) -> Path:
    return _zip_with(
        tmp_path, "project1/images/link.png", b"../../../outside", external_attr=0o120777 << 16
    )


def zip_bomb(tmp_path: Path) -> Path:
    return _zip_with(tmp_path, "project1/images/bomb.png", b"\0" * (8 * 1024 * 1024))


def bomb_of_exact_mib_entries(tmp_path: Path) -> Path:
    """Entries of exactly 1 MiB (the size below which single entries are not judged
    by ratio): 200 MiB of zeros in about 200 KB. Each entry alone escaped the check
    (it was ``>``), and so did the whole archive."""
    base = _good_zip_bytes(tmp_path)
    buf = io.BytesIO(base)
    with zipfile.ZipFile(buf, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        for i in range(200):
            zf.writestr(f"project1/images/b{i}.png", b"\0" * (1024 * 1024))
    out = tmp_path / "bomb.zip"
    out.write_bytes(buf.getvalue())
    return out


def bomb_of_small_entries(tmp_path: Path) -> Path:
    """Entries just under 1 MiB: none is judged alone, the archive as a whole is a
    bomb (about 1,000 times its size)."""
    base = _good_zip_bytes(tmp_path)
    buf = io.BytesIO(base)
    with zipfile.ZipFile(buf, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        for i in range(200):
            zf.writestr(f"project1/images/s{i}.png", b"\0" * (1024 * 1024 - 1))
    out = tmp_path / "bomb.zip"
    out.write_bytes(buf.getvalue())
    return out


def truncated(tmp_path: Path) -> Path:
    data = _good_zip_bytes(tmp_path)
    out = tmp_path / "truncated.zip"
    out.write_bytes(data[: len(data) // 2])
    return out


def corrupt_entry(tmp_path: Path) -> Path:
    """The central directory is intact, an image's compressed bytes are not."""
    data = bytearray(_good_zip_bytes(tmp_path))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(te.IMG_COVER))
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for i in range(start + 5, start + 25):
        data[i] ^= 0xFF
    out = tmp_path / "corrupt.zip"
    out.write_bytes(bytes(data))
    return out


def lying_sizes(tmp_path: Path) -> Path:
    """A 3 MB page that declares 1,000 bytes (a bomb that lies about its size)."""
    path = _zip_with(tmp_path, "project1/page1.html", b"\0" * (3 * 1024 * 1024))
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = zf.getinfo("project1/page1.html")
    struct.pack_into("<I", data, info.header_offset + 22, 1000)
    central = data.rfind(b"PK\x01\x02")  # the appended entry's record is the last one
    struct.pack_into("<I", data, central + 24, 1000)
    path.write_bytes(bytes(data))
    return path


def non_utf8_name(tmp_path: Path) -> Path:
    path = _zip_with(tmp_path, "project1/images/XX-name.png", te.png(3))
    raw = path.read_bytes().replace(b"images/XX-name.png", b"images/\xff\xfe-name.png")
    path.write_bytes(raw)
    return path


def not_tilda(tmp_path: Path) -> Path:
    out = tmp_path / "site.zip"
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("site/index.html", "<html><body><h1>My WordPress</h1></body></html>")
        zf.writestr("site/about.html", "<html><body>About</body></html>")
    return out


def not_a_zip(tmp_path: Path) -> Path:
    out = tmp_path / "export.zip"
    out.write_bytes(b"this is not a zip archive at all")
    return out


def folder_with_symlink(tmp_path: Path) -> Path:
    te.build_export(tmp_path / "folder")
    (tmp_path / "outside.txt").write_text("secret")
    (tmp_path / "folder" / "images" / "link.png").symlink_to(tmp_path / "outside.txt")
    return tmp_path / "folder"


def folder_with_non_utf8_name(tmp_path: Path) -> Path:
    te.build_export(tmp_path / "folder")
    # a file name made of bytes that are not UTF-8 (Linux allows it)
    name = os.fsdecode(os.fsencode(tmp_path / "folder") + b"/\xff\xfe.html")
    Path(name).write_bytes(b"<html></html>")
    return tmp_path / "folder"


HOSTILE: list[tuple[Callable[[Path], Path], str, str]] = [
    (zip_slip, "unsafe_archive", "'..'"),
    (absolute_entry, "unsafe_archive", "absolute path"),
    (drive_entry, "unsafe_archive", "absolute path"),
    (symlink_entry, "unsafe_archive", "symbolic link"),
    (zip_bomb, "unsafe_archive", "zip bomb"),
    (bomb_of_exact_mib_entries, "unsafe_archive", "zip bomb"),
    (bomb_of_small_entries, "unsafe_archive", "zip bomb"),
    (truncated, "corrupt_archive", "not a readable zip"),
    (corrupt_entry, "corrupt_archive", "corrupt"),
    (lying_sizes, "corrupt_archive", "CRC"),
    (non_utf8_name, "unsafe_archive", "not valid UTF-8"),
    (not_tilda, "not_tilda_export", "not a Tilda export"),
    (not_a_zip, "corrupt_archive", "not a readable zip"),
    (folder_with_symlink, "unsafe_archive", "symbolic link"),
    (folder_with_non_utf8_name, "unsafe_archive", "not valid UTF-8"),
]


@pytest.mark.parametrize(("make", "code", "words"), HOSTILE, ids=[h[0].__name__ for h in HOSTILE])
async def test_hostile_input_is_refused_and_changes_nothing(
    tilda: TildaService,
    tmp_path: Path,
    make: Callable[[Path], Path],
    code: str,
    words: str,
) -> None:
    te.build_export(tmp_path / "first")
    succeeded(await tilda.import_path(tmp_path / "first"))
    before = await snapshot(tilda.repo.db)
    data_before = files_under(tilda.data_dir / "assets")
    work = tmp_path / "work"
    work.mkdir()
    hostile = make(work)
    tree_before = files_under(tmp_path)
    run = await tilda.import_path(hostile)
    assert run.status == ImportStatus.FAILED
    assert run.error_code == code, run.error_message
    assert run.error_message is not None and words in run.error_message
    assert await snapshot(tilda.repo.db) == before
    assert files_under(tilda.data_dir / "assets") == data_before  # staging removed too
    # nothing was written anywhere under the test's folder (no evil.txt, no extraction)
    after = files_under(tmp_path)
    new = {k for k in after if k not in tree_before}
    assert {k for k in new if not k.startswith("data/")} == set()
    assert not any("evil" in k for k in after)


async def test_limits_on_files_and_size(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    te.build_export(tmp_path / "export")
    zipped = te.zip_folder(tmp_path / "export", tmp_path / "e.zip")
    for overrides, words in (
        ({"tilda_max_files": 10}, "files"),
        ({"tilda_max_total_mb": 1, "tilda_max_files": 1000}, None),
    ):
        settings = make_settings(**overrides)
        db = await open_database(settings.db_url)
        try:
            tilda = TildaService(settings, db)
            if words is None:
                # a 2 MB image (incompressible) pushes the export over 1 MB
                (tmp_path / "export" / "images" / "big.png").write_bytes(os.urandom(2 << 20))
                zipped = te.zip_folder(tmp_path / "export", tmp_path / "big.zip")
            for source in (tmp_path / "export", zipped):
                run = await tilda.import_path(source)
                assert run.status == ImportStatus.FAILED
                assert run.error_code == "archive_too_large", run.error_message
            assert (await tilda.repo.counts())["site_pages"] == 0
        finally:
            await db.dispose()


async def test_a_run_whose_process_ended_shows_as_interrupted(tilda: TildaService) -> None:
    long_ago = datetime.now(UTC) - timedelta(minutes=10)
    orphan = await tilda.repo.create_run("export.zip", long_ago)
    await tilda.repo.start_run(orphan.id, long_ago)
    shown = await tilda.get_import(orphan.id)
    assert shown.status == ImportStatus.FAILED and shown.error_code == "interrupted"
    fresh = await tilda.create_run("other.zip")  # records it
    assert (await tilda.get_import(fresh.id)).status == ImportStatus.QUEUED
    async with tilda.repo.db.read() as conn:
        status = (
            await conn.execute(
                sa.select(tilda_imports.c.status).where(tilda_imports.c.id == orphan.id)
            )
        ).scalar_one()
    assert status == "failed"


class FailingRepo(TildaRepo):
    """Fault injection: the database write of an import fails."""

    async def apply(self, run_id: str, plan: ImportPlan, now: datetime) -> ImportReport:
        raise RuntimeError("the database went away")


async def test_a_failed_database_write_leaves_no_files(tilda: TildaService, tmp_path: Path) -> None:
    te.build_export(tmp_path / "export")
    tilda.repo = FailingRepo(tilda.repo.db)
    run = await tilda.import_path(tmp_path / "export")
    assert run.status == ImportStatus.FAILED and run.error_code == "internal_error"
    assert files_under(tilda.data_dir / "assets") == {}  # moved files removed, staging too
    assert all(n == 0 for n in (await tilda.repo.counts()).values())


async def test_two_sites_share_identical_images(tilda: TildaService, tmp_path: Path) -> None:
    te.build_export(tmp_path / "a")
    te.build_export(tmp_path / "b", project_id="5550001")
    first = succeeded(await tilda.import_path(tmp_path / "a"))
    second = succeeded(await tilda.import_path(tmp_path / "b"))
    assert first.report is not None and second.report is not None
    assert second.report.site_id != first.report.site_id
    assert len(second.report.added) == 7
    assert second.report.assets_added == 0  # the same files, stored once
    sites_ = {s.tilda_project_id: s for s in await tilda.list_sites()}
    assert set(sites_) == {te.PROJECT_ID, "5550001"}
    only_b = await tilda.list_pages(site_id=sites_["5550001"].id, limit=100)
    assert only_b.total == 7
    assert {p.tilda_project_id for p in only_b.items} == {"5550001"}
    assert (await tilda.list_pages()).total == 14
