"""The import of one export: read and parse it, copy its images (staged, then moved)
under ``DATA_DIR/assets`` by content hash, and write everything in one database
transaction.

Order of work, so that a refused or failed import changes nothing:

1. ``prepare`` (in a thread): every entry was checked when the export was opened
   (``archive.py``); pages are parsed; every image the pages use is streamed through
   SHA-256 into ``DATA_DIR/assets/.staging/<run>/``. Nothing else is written.
2. ``commit_files``: staged files whose content is not stored yet are moved (an
   atomic rename on the same file system) to ``assets/<ab>/<sha256>.<ext>``.
3. ``TildaRepo.apply``: one transaction. If it fails, the files moved in step 2 are
   removed again; the staging folder is always removed.

A re-import of the same export produces the same content hashes, so step 2 moves
nothing and step 3 touches no row but the run's.
"""

from __future__ import annotations

import hashlib
import io
import json
import mimetypes
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

from PIL import Image, UnidentifiedImageError

from orchestrator import errors, logs
from orchestrator.db.tilda import AssetRecord, ImportPlan, PageRecord, SiteRecord, TildaRepo
from orchestrator.domain.tilda import ImportReport, SiteBlock, SiteLink, SiteTextField
from orchestrator.errors import ErrorCode
from orchestrator.storage import EXTENSIONS, sniff_mime
from orchestrator.tilda import parse
from orchestrator.tilda.archive import ExportSource

log = logs.get(__name__)

ASSETS_DIR = "assets"
STAGING_DIR = ".staging"
ASSET_ID_CHARS = 32
IN_MEMORY_BYTES = 32 * 1024 * 1024  # a file up to this size is hashed before staging
EXTRA_EXTENSIONS = {
    "image/svg+xml": "svg",
    "image/x-icon": "ico",
    "image/vnd.microsoft.icon": "ico",
}
SAFE_EXT = re.compile(r"^[a-z0-9]{1,8}$")
BODY_FILE = re.compile(r"^files/(page\d+)body\.html$", re.IGNORECASE)

Progress = Callable[[str, int, int], None]


def _no_progress(_stage: str, _done: int, _total: int) -> None:
    return None


@dataclass
class Prepared:
    plan: ImportPlan
    staged: list[tuple[Path, Path]]  # (staged file, final path) for content not stored yet
    staging_dir: Path
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class _Stored:
    record: AssetRecord


def prepare(
    source: ExportSource,
    data_dir: Path,
    run_id: str,
    progress: Progress = _no_progress,
) -> Prepared:
    """Parse the export and stage its images (no database, nothing outside staging)."""
    started = time.perf_counter()
    names = source.names()
    lower = {n.lower(): n for n in names}

    def text_of(*candidates: str) -> str | None:
        for c in candidates:
            if c in lower:
                return source.read_text(lower[c])
        return None

    htaccess = parse.parse_htaccess(text_of("htaccess", ".htaccess") or "")
    robots_text = text_of("robots.txt")
    sitemap_text = text_of("sitemap.xml")
    disallowed = parse.parse_robots(robots_text) if robots_text is not None else set()
    sitemap = parse.parse_sitemap(sitemap_text) if sitemap_text is not None else None
    html_files = sorted(n for n in names if "/" not in n and n.lower().endswith((".html", ".htm")))
    body_files = {m[1].lower() + ".html": n for n in names if (m := BODY_FILE.match(n))}
    file_alias: dict[str, str] = {}
    for alias_, target in htaccess.aliases.items():
        file_alias.setdefault(target.lower(), alias_)
    domains = {sitemap.domain} if sitemap is not None and sitemap.domain else set()
    resolver = parse.LinkResolver(
        aliases=frozenset(htaccess.aliases),
        file_alias=file_alias,
        domains=frozenset(domains | {f"www.{d}" for d in domains}),
    )
    warnings: list[str] = []
    pages: dict[str, parse.Page] = {}
    total_steps = len(html_files)
    progress("parsing", 0, total_steps)
    not_tilda = 0
    for i, name in enumerate(html_files):
        html = source.read_text(name)
        try:
            page = parse.parse_page(html, name, resolver)
        except parse.NotTildaPage:
            not_tilda += 1
            if name.lower() != "404.html":
                warnings.append(f"{name}: not a Tilda page (no #allrecords), skipped")
            continue
        _keep(pages, page, warnings)
        progress("parsing", i + 1, total_steps)
    present = {p.file_name.lower() for p in pages.values()}
    for page_file, body_name in sorted(body_files.items()):
        if page_file in present:
            continue
        try:
            page = parse.parse_page(source.read_text(body_name), lower.get(page_file, page_file))
        except parse.NotTildaPage:
            continue
        page = _renamed(page, page_file)
        warnings.append(f"{page_file}: missing, read from {body_name}")
        _keep(pages, page, warnings)
    if not pages:
        if html_files:
            detail = (
                f"{source.label} is not a Tilda export: none of its {len(html_files)} HTML "
                "files has Tilda's #allrecords page container"
            )
        else:
            detail = f"{source.label} is not a Tilda export: it has no HTML pages at its root"
        raise errors.InvalidExport(ErrorCode.NOT_TILDA_EXPORT, detail)
    parse_s = time.perf_counter() - started

    # --- the site -----------------------------------------------------------------------
    projects = Counter(p.project_id for p in pages.values() if p.project_id)
    project_id = projects.most_common(1)[0][0] if projects else None
    if len(projects) > 1:
        warnings.append(f"pages of several Tilda projects: {sorted(projects)}")
    domain = sitemap.domain if sitemap is not None else None
    if domain is None:
        for p in pages.values():
            host = urlsplit(p.canonical_url or "").hostname
            if host:
                domain = host
                break
    if domain is not None:  # links to the own domain, also when only canonical URLs name it
        resolver = parse.LinkResolver(
            aliases=resolver.aliases,
            file_alias=resolver.file_alias,
            domains=frozenset({domain, f"www.{domain.removeprefix('www.')}"}),
        )
    home_id = None
    if htaccess.home_file:
        home_id = _page_id_of_file(htaccess.home_file, pages)
    header_ids = {p.header_id for p in pages.values() if p.header_id}
    footer_ids = {p.footer_id for p in pages.values() if p.footer_id}

    # --- images ---------------------------------------------------------------------------
    index = {n[len("images/") :].lower(): n for n in names if n.lower().startswith("images/")}
    missing: set[str] = set()

    def resolve(ref: str) -> str | None:
        orig = parse.original_image_name(ref)
        hit = index.get(orig.lower()) or index.get(parse.image_name(ref).lower())
        if hit is None:
            missing.add(orig)
        return hit

    needed: dict[str, None] = {}
    layout_blocks: dict[str, tuple[str, tuple[parse.Block, ...]]] = {}
    for p in pages.values():
        for r in p.head_image_refs:
            if (hit := resolve(r)) is not None:
                needed[hit] = None
        for b in (*p.blocks, *p.header_blocks, *p.footer_blocks):
            for r in b.image_refs:
                if (hit := resolve(r)) is not None:
                    needed[hit] = None
        if p.header_id and p.header_blocks:
            layout_blocks.setdefault(p.header_id, ("header", p.header_blocks))
        if p.footer_id and p.footer_blocks:
            layout_blocks.setdefault(p.footer_id, ("footer", p.footer_blocks))
    copy_started = time.perf_counter()
    staging = data_dir / ASSETS_DIR / STAGING_DIR / run_id
    stored: dict[str, AssetRecord] = {}  # export file name -> asset
    staged: list[tuple[Path, Path]] = []
    by_sha: dict[str, AssetRecord] = {}
    progress("copying", 0, len(needed))
    try:
        for i, name in enumerate(needed):
            rec, move = _stage(source, name, staging, data_dir, i, by_sha)
            stored[name] = rec
            if move is not None:
                staged.append(move)
            progress("copying", i + 1, len(needed))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    copy_s = time.perf_counter() - copy_started

    def asset_ids(refs: tuple[str, ...]) -> list[str]:
        out: dict[str, None] = {}
        for r in refs:
            orig = parse.original_image_name(r)
            hit = index.get(orig.lower()) or index.get(parse.image_name(r).lower())
            if hit is not None and hit in stored:
                out[stored[hit].id] = None
        return list(out)

    def missing_of(refs: list[str]) -> list[str]:
        out: dict[str, None] = {}
        for r in refs:
            orig = parse.original_image_name(r)
            if index.get(orig.lower()) is None and index.get(parse.image_name(r).lower()) is None:
                out[orig] = None
        return list(out)

    def blocks_of(blocks: tuple[parse.Block, ...], placement: str) -> list[SiteBlock]:
        return [
            SiteBlock(
                record_id=b.record_id,
                record_type=b.record_type,
                code=b.code,
                position=i,
                placement=placement,
                texts=[SiteTextField(field=t.field, text=t.text, html=t.html) for t in b.texts],
                links=[
                    SiteLink(href=lk.href, text=lk.text, target_alias=resolver.target(lk.href))
                    for lk in b.links
                ],
                image_asset_ids=asset_ids(b.image_refs),
            )
            for i, b in enumerate(blocks)
        ]

    records: list[PageRecord] = []
    for p in pages.values():
        alias = p.alias or file_alias.get(p.file_name.lower())
        if p.tilda_page_id in header_ids or (alias == "header" and not p.header_id):
            role = "header"
        elif p.tilda_page_id in footer_ids or (alias == "footer" and not p.footer_id):
            role = "footer"
        else:
            role = "page"
        is_home = p.tilda_page_id == home_id
        blocks = blocks_of(p.blocks, role)
        refs = parse.all_image_refs(p)
        ids = list(dict.fromkeys([*asset_ids(p.head_image_refs), *asset_ids(tuple(refs))]))
        indexable = parse.is_indexable(
            file_name=p.file_name,
            alias=alias,
            is_home=is_home,
            disallowed=disallowed,
            sitemap=sitemap,
        )
        public = p.canonical_url or (
            f"https://{domain}/{'' if is_home else (alias or p.file_name)}" if domain else None
        )
        records.append(
            _record(
                p,
                alias=alias,
                role=role,
                is_home=is_home,
                indexable=indexable,
                public_url=public,
                blocks=blocks,
                asset_ids=ids,
                missing=missing_of(refs),
            )
        )
    # A header/footer used by pages but not exported as a page of its own: keep the
    # nested copy once, as a synthetic page.
    present_ids = {p.tilda_page_id for p in pages.values()}
    for tid, (kind, blocks_) in sorted(layout_blocks.items()):
        if tid in present_ids:
            continue
        blocks = blocks_of(blocks_, kind)
        refs = [r for b in blocks_ for r in b.image_refs]
        ids = list(dict.fromkeys(a for b in blocks for a in b.image_asset_ids))
        records.append(_layout_record(tid, kind, project_id, blocks, ids, missing_of(refs)))
    name = domain or (f"project{project_id}" if project_id else source.label)
    plan = ImportPlan(
        site=SiteRecord(
            tilda_project_id=project_id,
            name=name,
            domain=domain,
            home_tilda_page_id=home_id,
        ),
        pages=records,
        assets=_unique_assets(stored.values()),
        warnings=warnings,
        missing_images=sorted(missing),
    )
    return Prepared(
        plan=plan,
        staged=staged,
        staging_dir=staging,
        timings={"parse_s": parse_s, "copy_s": copy_s},
    )


def _keep(pages: dict[str, parse.Page], page: parse.Page, warnings: list[str]) -> None:
    """One page per Tilda page id; a ``pageNNN.html`` wins over a renamed copy."""
    old = pages.get(page.tilda_page_id)
    if old is None:
        pages[page.tilda_page_id] = page
        return
    keep, drop = old, page
    if parse.PAGE_FILE.match(page.file_name) and not parse.PAGE_FILE.match(old.file_name):
        keep, drop = page, old
    pages[page.tilda_page_id] = keep
    warnings.append(
        f"{drop.file_name}: same Tilda page {page.tilda_page_id} as {keep.file_name}, skipped"
    )


def _renamed(page: parse.Page, file_name: str) -> parse.Page:
    from dataclasses import replace

    return replace(page, file_name=file_name)


def _page_id_of_file(file_name: str, pages: dict[str, parse.Page]) -> str | None:
    for p in pages.values():
        if p.file_name.lower() == file_name.lower():
            return p.tilda_page_id
    m = parse.PAGE_FILE.match(file_name)
    return m[1] if m else None


def _mime_and_ext(head: bytes, name: str) -> tuple[str, str]:
    mime = sniff_mime(head)
    if mime is None:
        if head.lstrip().startswith((b"<svg", b"<?xml")) and name.lower().endswith(".svg"):
            mime = "image/svg+xml"
        elif head[:4] == b"\x00\x00\x01\x00":
            mime = "image/x-icon"
        else:
            mime = mimetypes.guess_type(name)[0] or "application/octet-stream"
    ext = EXTENSIONS.get(mime) or EXTRA_EXTENSIONS.get(mime)
    if ext is None:
        suffix = Path(name).suffix.lower().lstrip(".")
        ext = suffix if SAFE_EXT.match(suffix) else "bin"
    return mime, ext


def _stage(
    source: ExportSource,
    name: str,
    staging: Path,
    data_dir: Path,
    n: int,
    by_sha: dict[str, AssetRecord],
) -> tuple[AssetRecord, tuple[Path, Path] | None]:
    """Hash one file; stage it only when its content is not stored yet. Small files
    stay in memory until then (a re-import writes nothing); big ones spill to disk."""
    tmp = staging / f"{n}.part"
    digest = hashlib.sha256()
    size = 0
    held: list[bytes] = []
    out: BinaryIO | None = None
    try:
        for chunk in source.chunks(name):
            digest.update(chunk)
            size += len(chunk)
            if out is None and size <= IN_MEMORY_BYTES:
                held.append(chunk)
                continue
            if out is None:
                staging.mkdir(parents=True, exist_ok=True)
                out = tmp.open("wb")
                out.writelines(held)
                held = []
            out.write(chunk)
    finally:
        if out is not None:
            out.close()
    sha = digest.hexdigest()
    if sha in by_sha:
        tmp.unlink(missing_ok=True)
        return by_sha[sha], None
    data = b"".join(held) if out is None else None
    head = data[:64] if data is not None else tmp.read_bytes()[:64]
    mime, ext = _mime_and_ext(head, name)
    rel = f"{ASSETS_DIR}/{sha[:2]}/{sha}.{ext}"
    final = data_dir / rel
    width = height = None
    if mime.startswith("image/") and mime != "image/svg+xml":
        try:
            with Image.open(io.BytesIO(data) if data is not None else tmp) as im:
                width, height = im.size
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
            pass
    record = AssetRecord(
        id=sha[:ASSET_ID_CHARS],
        sha256=sha,
        original_name=name.split("/", 1)[1] if "/" in name else name,
        mime_type=mime,
        width=width,
        height=height,
        size_bytes=size,
        path=rel,
    )
    by_sha[sha] = record
    if final.exists():
        tmp.unlink(missing_ok=True)
        return record, None
    if data is not None:
        staging.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
    return record, (tmp, final)


def _unique_assets(records: Iterable[AssetRecord]) -> list[AssetRecord]:
    out: dict[str, AssetRecord] = {}
    for r in records:
        out.setdefault(r.id, r)
    return list(out.values())


def _content_hash(data: dict[str, object]) -> str:
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _record(
    p: parse.Page,
    *,
    alias: str | None,
    role: str,
    is_home: bool,
    indexable: bool,
    public_url: str | None,
    blocks: list[SiteBlock],
    asset_ids: list[str],
    missing: list[str],
) -> PageRecord:
    texts = [t.text for b in blocks for t in b.texts]
    search = " ".join([p.title, p.description, alias or "", p.file_name, *texts]).casefold()
    data: dict[str, object] = {
        "tilda_page_id": p.tilda_page_id,
        "alias": alias,
        "file_name": p.file_name,
        "role": role,
        "is_home": is_home,
        "indexable": indexable,
        "title": p.title,
        "description": p.description,
        "keywords": p.keywords,
        "canonical_url": p.canonical_url,
        "public_url": public_url,
        "og": p.og,
        "header_tilda_id": p.header_id,
        "footer_tilda_id": p.footer_id,
        "asset_ids": asset_ids,
        "missing_images": missing,
    }
    content = {**data, "blocks": [b.model_dump(mode="json") for b in blocks]}
    return PageRecord(
        tilda_page_id=p.tilda_page_id,
        alias=alias,
        file_name=p.file_name,
        role=role,
        is_home=is_home,
        indexable=indexable,
        title=p.title,
        description=p.description,
        keywords=p.keywords,
        canonical_url=p.canonical_url,
        public_url=public_url,
        og=p.og,
        header_tilda_id=p.header_id,
        footer_tilda_id=p.footer_id,
        blocks=blocks,
        asset_ids=asset_ids,
        missing_images=missing,
        search_text=search,
        content_hash=_content_hash(content),
    )


def _layout_record(
    tid: str,
    kind: str,
    project_id: str | None,
    blocks: list[SiteBlock],
    asset_ids: list[str],
    missing: list[str],
) -> PageRecord:
    page = parse.Page(
        file_name=f"page{tid}.html",
        tilda_page_id=tid,
        project_id=project_id,
        alias=kind,
        title=kind.capitalize(),
        description="",
        keywords="",
        canonical_url=None,
        og={},
        head_image_refs=(),
        blocks=(),
        header_id=None,
        footer_id=None,
        header_blocks=(),
        footer_blocks=(),
    )
    return _record(
        page,
        alias=kind,
        role=kind,
        is_home=False,
        indexable=False,
        public_url=None,
        blocks=blocks,
        asset_ids=asset_ids,
        missing=missing,
    )


def commit_files(prepared: Prepared) -> list[Path]:
    """Move staged files to their content-addressed place; returns those created."""
    created: list[Path] = []
    try:
        for tmp, final in prepared.staged:
            if final.exists():
                continue
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp.replace(final)
            created.append(final)
    except OSError as exc:
        remove_files(created)
        raise errors.InvalidExport(
            ErrorCode.IMPORT_FAILED, f"could not store imported files: {exc.strerror}"
        ) from None
    return created


def remove_files(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def cleanup(prepared_or_dir: Prepared | Path) -> None:
    folder = (
        prepared_or_dir.staging_dir if isinstance(prepared_or_dir, Prepared) else prepared_or_dir
    )
    shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Outcome:
    report: ImportReport
    timings: dict[str, float]


async def run_import(
    repo: TildaRepo,
    source: ExportSource,
    data_dir: Path,
    run_id: str,
    progress: Progress = _no_progress,
) -> Outcome:
    """Prepare in a thread, move files, write the database; undo files on failure."""
    import asyncio

    staging = data_dir / ASSETS_DIR / STAGING_DIR / run_id
    try:
        prepared = await asyncio.to_thread(prepare, source, data_dir, run_id, progress)
        created = await asyncio.to_thread(commit_files, prepared)
        progress("saving", 0, len(prepared.plan.pages))
        db_started = time.perf_counter()
        try:
            report = await repo.apply(run_id, prepared.plan, datetime.now(UTC))
        except Exception:
            # The transaction rolled back: nothing refers to the new files. (A cancel
            # lets the transaction finish first, committed or not, so the files stay:
            # an unreferenced file is harmless, a referenced missing one is not.)
            await asyncio.to_thread(remove_files, created)
            raise
        prepared.timings["db_s"] = time.perf_counter() - db_started
        progress("done", len(prepared.plan.pages), len(prepared.plan.pages))
        log.info(
            "tilda import finished",
            run_id=run_id,
            pages=report.pages_total,
            added=len(report.added),
            changed=len(report.changed),
            removed=len(report.removed),
            assets_added=report.assets_added,
        )
        return Outcome(report=report, timings=prepared.timings)
    finally:
        await asyncio.to_thread(cleanup, staging)
