"""The imported Tilda pages as the v0 backend's ``PageSource`` (see ``v0_prompt``): a
page's header, own blocks and footer (texts in order), and its images, the ones its own
blocks show first."""

from __future__ import annotations

from typing import Protocol

from orchestrator.backends.v0_prompt import ImageData, PageBlock, PageContext
from orchestrator.domain.tilda import SiteAsset, SiteBlock, SitePageDetail


class TildaReader(Protocol):
    """What is read of the Tilda import (``orchestrator.tilda.service.TildaService``).
    Both raise :class:`orchestrator.errors.SiteNotFound` for unknown ids."""

    async def get_page(self, page_id: str) -> SitePageDetail: ...

    async def asset_bytes(self, ref_or_id: str) -> tuple[SiteAsset, bytes]: ...


def _block(block: SiteBlock, placement: str | None = None) -> PageBlock:
    kind = block.code or block.record_type
    if placement:
        kind = f"{placement}, {kind}" if kind else placement
    return PageBlock(texts=[t.text for t in block.texts if t.text.strip()], kind=kind)


def page_context(page: SitePageDetail) -> PageContext:
    """What v0 is told about an imported page."""
    blocks = [_block(b, "site header") for b in page.header_blocks]
    blocks += [_block(b) for b in sorted(page.blocks, key=lambda b: b.position)]
    blocks += [_block(b, "site footer") for b in page.footer_blocks]
    image_ids: list[str] = []
    for b in sorted(page.blocks, key=lambda b: b.position):
        image_ids += [i for i in b.image_asset_ids if i not in image_ids]
    image_ids += [a.id for a in page.images if a.id not in image_ids]
    address = f"/{page.alias.strip('/')}" if page.alias else page.public_url or page.file_name
    return PageContext(
        page_id=page.id,
        title=page.title or page.og.get("title", ""),
        description=page.description or page.og.get("description") or None,
        address=address,
        blocks=blocks,
        image_ids=image_ids,
    )


class TildaPages:
    def __init__(self, tilda: TildaReader) -> None:
        self.tilda = tilda

    async def page_context(self, page_id: str) -> PageContext:
        return page_context(await self.tilda.get_page(page_id))

    async def asset_image(self, asset_id: str) -> ImageData:
        asset, data = await self.tilda.asset_bytes(asset_id)
        return ImageData(asset.mime_type, data)
