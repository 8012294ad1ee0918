"""OutputStore with text outputs (v0's code and answers): the given text type is
kept (never sniffed into an image or video type), the extension follows it, the
text is stored as UTF-8, and nothing is embedded in it."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from orchestrator.domain.jobs import Job, JobStatus
from orchestrator.storage import OutputStore, extension_for

CREATED = datetime(2026, 11, 27, 21, 0, tzinfo=UTC)


def make_job() -> Job:
    return Job(
        id="3f1e2d3c-4b5a-4687-9a0b-1c2d3e4f5a6b",
        backend="v0",
        model="v0-1.5-md",
        params={"prompt": "a page"},
        status=JobStatus.RUNNING,
        priority=0,
        deadline_at=CREATED + timedelta(minutes=10),
        created_at=CREATED,
        updated_at=CREATED,
    )


@pytest.mark.parametrize(
    ("mime", "ext"),
    [
        ("text/x-typescript", "tsx"),
        ("text/markdown", "md"),
        ("text/markdown; charset=utf-8", "md"),
        ("text/plain", "bin"),
        ("image/png", "png"),
    ],
)
def test_extensions(mime: str, ext: str) -> None:
    assert extension_for(mime) == ext


@pytest.mark.parametrize(
    ("text", "mime", "ext"),
    [
        ("export default function Page() {}\n", "text/x-typescript", "tsx"),
        ("# Привет 👋\n\n```tsx\nx\n```\n", "text/markdown", "md"),
        # starts like a GIF / an MP4 box: a text output is still text
        ("GIF89a is a format\n", "text/markdown", "md"),
        ("abcdftypisom\n", "text/x-typescript", "tsx"),
    ],
)
async def test_save_text(tmp_path: Path, text: str, mime: str, ext: str) -> None:
    store = OutputStore(tmp_path / "out", tmp_path / "jobs")
    job = make_job()
    out = await store.save_text(job, 1, text, mime_type=mime)
    assert out.mime_type == mime and out.path == f"2026/11/27/{job.id}-1.{ext}"
    data = store.resolve(out.path).read_bytes()
    assert data == text.encode("utf-8")  # nothing embedded
    assert out.size_bytes == len(data) and out.sha256 == hashlib.sha256(data).hexdigest()
    assert out.width is None and out.height is None and out.duration_s is None
    assert not list((tmp_path / "out" / ".partial").iterdir())
