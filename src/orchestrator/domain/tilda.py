"""Imported Tilda sites: the typed records every entry point (API, UI, MCP, CLI, the
v0 backend) reads. The importer (``orchestrator.tilda``) writes them; the service
layer (``Service.tilda`` / ``Service.get_site_page``) hands them out.

An imported image is a :class:`SiteAsset`, stored once per content hash under
``DATA_DIR/assets/``; generation requests reference it as ``asset:<id>``."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field, computed_field

ASSET_REF_PREFIX = "asset:"

BlockPlacement = Literal["page", "header", "footer"]


class ImportStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (ImportStatus.SUCCEEDED, ImportStatus.FAILED)


class SiteAsset(BaseModel):
    """One imported file (an image), deduplicated by content."""

    id: str = Field(description="Asset id; reference it as 'asset:<id>' in generation inputs.")
    original_name: str = Field(description="File name in the export's images/ folder.")
    mime_type: str
    width: int | None = None
    height: int | None = None
    sha256: str
    size_bytes: int
    path: str = Field(description="Path relative to DATA_DIR (see Service.asset_path).")
    url: str = Field(description="API path that serves the file.")


class SiteTextField(BaseModel):
    """The text of one ``field="…"`` element, in document order."""

    field: str = Field(description="Tilda's field name, e.g. 'title', 'descr', 'tn_text_1'.")
    text: str = Field(description="Plain text; <br> and block ends kept as line breaks.")
    html: str = Field(description="The element's inner HTML as exported.")


class SiteLink(BaseModel):
    href: str = Field(description="As written in the export.")
    text: str = ""
    target_alias: str | None = Field(
        default=None, description="The site's own page alias it points to, when internal."
    )


class SiteBlock(BaseModel):
    """One Tilda record (``div.t-rec``) of a page, or of the shared header/footer."""

    record_id: str = Field(description="Tilda record id (the digits of 'rec<id>').")
    record_type: str | None = Field(default=None, description="data-record-type.")
    code: str | None = Field(default=None, description="Catalogue code, e.g. 'T004'.")
    position: int = Field(description="0-based order within the page (or header/footer).")
    placement: BlockPlacement = "page"
    texts: list[SiteTextField] = Field(default_factory=list)
    links: list[SiteLink] = Field(default_factory=list)
    image_asset_ids: list[str] = Field(default_factory=list)


class SitePageSummary(BaseModel):
    id: str
    site_id: str
    tilda_project_id: str | None = None
    tilda_page_id: str
    alias: str | None = None
    file_name: str
    title: str = ""
    description: str = ""
    indexable: bool = True
    is_home: bool = False
    role: Literal["page", "header", "footer"] = "page"
    block_count: int = 0
    image_count: int = 0
    updated_at: datetime


class SitePageDetail(SitePageSummary):
    keywords: str = ""
    canonical_url: str | None = None
    public_url: str | None = None
    og: dict[str, str] = Field(default_factory=dict, description="og:* tags, key without 'og:'.")
    blocks: list[SiteBlock] = Field(default_factory=list)
    header_blocks: list[SiteBlock] = Field(
        default_factory=list, description="The site's shared header (stored once per site)."
    )
    footer_blocks: list[SiteBlock] = Field(
        default_factory=list, description="The site's shared footer (stored once per site)."
    )
    images: list[SiteAsset] = Field(
        default_factory=list, description="Every image the page's own blocks and head use."
    )
    missing_images: list[str] = Field(
        default_factory=list, description="images/… references with no file in the export."
    )


class SitePagePage(BaseModel):
    items: list[SitePageSummary]
    total: int
    limit: int
    offset: int


class Site(BaseModel):
    id: str
    tilda_project_id: str | None = None
    name: str = Field(description="Domain when known, else 'project<id>'.")
    domain: str | None = None
    home_page_id: str | None = Field(default=None, description="Tilda page id of the home page.")
    page_count: int = 0
    asset_count: int = 0
    imported_at: datetime
    last_import_id: str | None = None


class ImportReport(BaseModel):
    site_id: str
    tilda_project_id: str | None = None
    pages_total: int = 0
    added: list[str] = Field(default_factory=list, description="Tilda page ids added.")
    changed: list[str] = Field(default_factory=list, description="Tilda page ids changed.")
    removed: list[str] = Field(default_factory=list, description="Tilda page ids removed.")
    unchanged: int = 0
    layout_changed: bool = Field(default=False, description="Header or footer changed.")
    assets_total: int = 0
    assets_added: int = 0
    missing_images: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)

    # mypy does not accept a decorator over @property; pydantic documents this ignore
    @computed_field  # type: ignore[prop-decorator]
    @property
    def no_change(self) -> bool:
        """True when the import changed nothing (a re-import of the same export)."""
        return not (
            self.added or self.changed or self.removed or self.layout_changed or self.assets_added
        )


class ImportProgress(BaseModel):
    stage: str = Field(default="queued", description="queued, reading, parsing, copying, saving…")
    done: int = 0
    total: int = 0


class ImportRun(BaseModel):
    id: str
    status: ImportStatus
    source: str = Field(description="What was imported: a folder, a zip name, or 'api:<id>'.")
    site_id: str | None = None
    progress: ImportProgress = Field(default_factory=ImportProgress)
    report: ImportReport | None = None
    error_code: str | None = None
    error_message: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


def asset_ref(asset_id: str) -> str:
    return f"{ASSET_REF_PREFIX}{asset_id}"


def parse_asset_ref(value: str) -> str | None:
    """The asset id of an ``asset:<id>`` reference, else None."""
    if value.startswith(ASSET_REF_PREFIX):
        ident = value[len(ASSET_REF_PREFIX) :]
        if ident and all(c in "0123456789abcdef" for c in ident):
            return ident
    return None
