"""A v0 job from an imported Tilda page: the synthetic export is imported for real,
the page's texts and images reach the fake v0 server on 127.0.0.1, and the job
stores a .tsx page; also the same in demo mode, and the pure page conversion."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from PIL import Image

from orchestrator import errors
from orchestrator.backends.v0 import V0Backend
from orchestrator.backends.v0_pages import TildaPages, page_context
from orchestrator.config import Settings
from orchestrator.domain.jobs import JobStatus
from orchestrator.domain.params import V0Params, V0Request
from orchestrator.domain.tilda import SiteAsset, SiteBlock, SitePageDetail, SiteTextField
from orchestrator.runtime import Runtime, open_runtime
from orchestrator.testing import tilda_export
from orchestrator.testing.fake_v0 import FakeV0, FakeV0Config
from orchestrator.testing.serve import ServedApp, serve_in_thread

V0_KEY = "v0-test-key-0123456789"


@pytest.fixture
def fake_v0() -> Iterator[tuple[FakeV0, ServedApp]]:
    fake = FakeV0(FakeV0Config(api_keys={V0_KEY}, chunk_chars=64))
    with serve_in_thread(fake.app) as served:
        yield fake, served


async def import_site(rt: Runtime, tmp_path: Path) -> str:
    """Import the synthetic export; the id of its about page (text and a gallery)."""
    tilda_export.build_export(tmp_path / "export")
    run = await rt.service.tilda.import_path(tmp_path / "export")
    assert run.status == "succeeded", run.error_message
    pages = await rt.service.tilda.list_pages(limit=100)
    return next(p.id for p in pages.items if p.tilda_page_id == tilda_export.ABOUT_ID)


async def test_v0_job_from_an_imported_page(
    make_settings: Callable[..., Settings], fake_v0: tuple[FakeV0, ServedApp], tmp_path: Path
) -> None:
    fake, served = fake_v0
    settings = make_settings(v0_api_key=V0_KEY, v0_base_url=served.base_url)
    async with open_runtime(settings, run_worker=True) as rt:
        backend = rt.service.backends["v0"]
        assert isinstance(backend, V0Backend) and isinstance(backend.pages, TildaPages)
        page_id = await import_site(rt, tmp_path)
        detail = await rt.service.get_site_page(page_id)
        job, _ = await rt.service.submit(
            V0Request(params=V0Params(prompt="Redesign this page", site_page_id=page_id))
        )
        job = await rt.service.wait_for(job.id, 30)
        assert job.status == JobStatus.SUCCEEDED, job.error
        code_out = job.outputs[0]
        assert code_out.path.endswith(".tsx") and code_out.mime_type == "text/x-typescript"
        code = rt.service.store.resolve(code_out.path).read_text(encoding="utf-8")
        assert '{"About us"}' in code and "Our team of twelve." in code
        with pytest.raises(errors.InvalidRequest):
            await rt.service.submit(
                V0Request(params=V0Params(prompt="x", site_page_id="no-such-page"))
            )
        # an imported image as an explicit input
        asset_id = detail.images[0].id
        job2, _ = await rt.service.submit(
            V0Request(params=V0Params(prompt="Use this", images=[f"asset:{asset_id}"]))
        )
        assert (await rt.service.wait_for(job2.id, 30)).status == JobStatus.SUCCEEDED
    first = fake.requests[0]
    user = first["messages"][1]["content"]  # type: ignore[index]
    context = user[0]["text"]  # type: ignore[index]
    assert context.startswith("Context:") and "Title: About us" in context
    assert "Address: /about" in context and "Our team of twelve." in context
    assert "site header" in context and "site footer" in context
    images = [p for p in user if p["type"] == "image_url"]  # type: ignore[union-attr,index]
    assert len(images) == 3  # the gallery's 3 distinct images (the 4th is a duplicate)
    sent = base64.b64decode(images[0]["image_url"]["url"].split(",", 1)[1])  # type: ignore[index]
    with Image.open(io.BytesIO(sent)) as im:
        assert im.format == "JPEG"
    second = fake.requests[1]["messages"][1]["content"]  # type: ignore[index]
    assert [p["type"] for p in second] == ["text", "image_url"]  # type: ignore[index,union-attr]


async def test_demo_v0_job_from_an_imported_page(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with open_runtime(make_settings(demo_mode="on"), run_worker=True) as rt:
        page_id = await import_site(rt, tmp_path)
        job, _ = await rt.service.submit(
            V0Request(params=V0Params(prompt="A fresh version", site_page_id=page_id))
        )
        job = await rt.service.wait_for(job.id, 30)
        assert job.status == JobStatus.SUCCEEDED, job.error
        assert job.simulated
        code = rt.service.store.resolve(job.outputs[0].path).read_text(encoding="utf-8")
        assert "(SIMULATED)" in code and '{"About us"}' in code


def test_page_context_conversion() -> None:
    now = datetime.now(UTC)

    def block(
        n: int, texts: list[str], images: tuple[str, ...] = (), code: str | None = "T004"
    ) -> SiteBlock:
        return SiteBlock(
            record_id=str(n),
            code=code,
            record_type="106",
            position=n,
            texts=[SiteTextField(field="text", text=t, html=t) for t in texts],
            image_asset_ids=list(images),
        )

    def asset(i: str) -> SiteAsset:
        return SiteAsset(
            id=i,
            original_name=f"{i}.png",
            mime_type="image/png",
            sha256=i,
            size_bytes=1,
            path=f"assets/{i}.png",
            url=f"/x/{i}",
        )

    page = SitePageDetail(
        id="pid",
        site_id="s",
        tilda_page_id="1",
        alias="services/cleaning/",
        file_name="page1.html",
        title="",
        description="",
        og={"title": "OG title", "description": "OG descr"},
        updated_at=now,
        blocks=[block(2, ["Second"], ("b", "a")), block(1, ["First", "  "], ("a",), code=None)],
        header_blocks=[block(0, ["Menu"], ("logo",))],
        footer_blocks=[block(0, ["© 2026"])],
        images=[asset("og"), asset("a"), asset("b")],
    )
    ctx = page_context(page)
    assert ctx.page_id == "pid" and ctx.title == "OG title" and ctx.description == "OG descr"
    assert ctx.address == "/services/cleaning"
    assert [(b.kind, b.texts) for b in ctx.blocks] == [
        ("site header, T004", ["Menu"]),
        ("106", ["First"]),
        ("T004", ["Second"]),
        ("site footer, T004", ["© 2026"]),
    ]
    assert ctx.image_ids == ["a", "b", "og"]  # the blocks' images in page order, then the rest
    bare = page_context(page.model_copy(update={"alias": None, "public_url": None}))
    assert bare.address == "page1.html"
