"""OutputStore: streaming saves, embedded metadata, safe paths, manifests, partials."""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from orchestrator import errors
from orchestrator.domain.jobs import Job, JobStatus
from orchestrator.storage import PARTIAL_DIR, OutputStore, read_embedded
from orchestrator.testing.fake_comfy import encode_mp4, encode_webm

JOB_ID = "0b7e4c1a-3f2d-4e5b-9a8c-1d2e3f4a5b6c"
OTHER_ID = "9f8e7d6c-5b4a-4321-8fed-cba987654321"
CREATED = datetime(2026, 3, 7, 23, 59, 30, tzinfo=UTC)
LONG = "A" * 100_000


def make_job(job_id: str = JOB_ID, **params: Any) -> Job:
    return Job(
        id=job_id,
        backend="flux",
        model="flux-dev",
        params={"prompt": "a red fox", "width": 64, "input_image": LONG, **params},
        status=JobStatus.RUNNING,
        priority=0,
        deadline_at=CREATED + timedelta(minutes=10),
        created_at=CREATED,
        updated_at=CREATED,
    )


def image_bytes(fmt: str, size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 40)).save(buf, format=fmt)
    return buf.getvalue()


async def chunked(data: bytes, size: int = 97) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]
    yield b""  # empty chunks are tolerated


async def failing(
    data: bytes, after: int = 3, exc: Exception | None = None
) -> AsyncIterator[bytes]:
    for i in range(after):
        yield data[i * 50 : (i + 1) * 50]
    raise exc or ConnectionResetError("stream cut")


@pytest.fixture
def store(tmp_path: Path) -> OutputStore:
    return OutputStore(tmp_path / "outputs", tmp_path / "jobs")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def partials(store: OutputStore) -> list[str]:
    return sorted(p.name for p in store.partial_dir.iterdir()) if store.partial_dir.exists() else []


def final_files(store: OutputStore) -> list[Path]:
    if not store.output_dir.exists():
        return []
    return [
        p
        for p in store.output_dir.rglob("*")
        if p.is_file() and PARTIAL_DIR not in p.relative_to(store.output_dir).parts
    ]


@pytest.mark.parametrize(
    ("fmt", "mime", "ext"), [("PNG", "image/png", "png"), ("JPEG", "image/jpeg", "jpg")]
)
async def test_save_image(store: OutputStore, fmt: str, mime: str, ext: str) -> None:
    job = make_job()
    original = image_bytes(fmt)
    out = await store.save(job, 1, chunked(original), extra_metadata={"seed": 42})

    assert out.path == f"2026/03/07/{JOB_ID}-1.{ext}"
    final = store.output_dir / "2026" / "03" / "07" / f"{JOB_ID}-1.{ext}"
    assert final.is_file()
    assert final_files(store) == [final]
    assert out.n == 1
    assert out.mime_type == mime
    assert out.size_bytes == final.stat().st_size
    assert out.size_bytes > len(original)  # metadata was embedded
    assert out.sha256 == sha256_of(final)
    assert (out.width, out.height) == (64, 48)

    with Image.open(final) as im:
        assert im.format == fmt
        assert im.size == (64, 48)
        im.load()
        assert im.convert("RGB").getpixel((10, 10))[0] > 150  # still the red image

    assert LONG[:1000] not in final.read_bytes().decode("latin-1")
    assert partials(store) == []


def video_bytes(tmp_path: Path, ext: str) -> bytes:
    frames = [Image.new("RGB", (96, 64), (i * 30, 0, 200)) for i in range(6)]
    path = tmp_path / f"v.{ext}"
    if ext == "mp4":
        encode_mp4(frames, 4.0, path, {"prompt": {"1": {}}})
    else:
        encode_webm(frames, 4.0, path, "vp9", 32.0, None)
    return path.read_bytes()


@pytest.mark.parametrize(("ext", "mime"), [("mp4", "video/mp4"), ("webm", "video/webm")])
async def test_save_video_records_size_and_duration(
    store: OutputStore, tmp_path: Path, ext: str, mime: str
) -> None:
    """Like an animated image: width, height and duration (6 frames at 4 fps: 1.5 s)."""
    original = video_bytes(tmp_path, ext)
    out = await store.save(make_job(), 0, chunked(original, 500), mime_type="video/quicktime")
    assert (out.mime_type, out.width, out.height, out.duration_s) == (mime, 96, 64, 1.5)
    assert out.path.endswith(f"-0.{ext}")
    assert store.resolve(out.path).read_bytes() == original  # stored as is


@pytest.mark.parametrize(("ext", "mime"), [("mp4", "video/mp4"), ("webm", "video/webm")])
async def test_save_broken_video_records_nothing(
    store: OutputStore, tmp_path: Path, ext: str, mime: str
) -> None:
    """A truncated or hostile video is still stored (ComfyUI made it), without the fields."""
    original = video_bytes(tmp_path, ext)
    hostile = original[:8] + b"\xff" * 64 if ext == "mp4" else original[:200]
    for n, data in enumerate((original[: len(original) // 2], hostile)):
        out = await store.save(make_job(), n, chunked(data))
        assert (out.mime_type, out.width, out.height, out.duration_s) == (mime, None, None, None)


def check_metadata(meta: object) -> None:
    assert isinstance(meta, dict)
    assert meta["job_id"] == JOB_ID
    assert meta["model"] == "flux-dev"
    assert meta["backend"] == "flux"
    assert meta["seed"] == 42
    params = meta["params"]
    assert isinstance(params, dict)
    assert params["prompt"] == "a red fox"
    assert params["width"] == 64
    assert params["input_image"] == "<100000 characters omitted>"


# Regression (PNG case, fixed): storage._embed_png puts the iTXt chunk after IDAT, and read_embedded
# only calls Image.open(); Pillow parses text chunks that follow IDAT only on load(),
# so read_embedded returns None for every PNG output (see the passing test below,
# which proves the chunk is there).
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
async def test_read_embedded(store: OutputStore, fmt: str) -> None:
    out = await store.save(make_job(), 0, chunked(image_bytes(fmt)), extra_metadata={"seed": 42})
    check_metadata(read_embedded(store.resolve(out.path)))


async def test_png_metadata_chunk_is_embedded(store: OutputStore) -> None:
    out = await store.save(make_job(), 0, chunked(image_bytes("PNG")), extra_metadata={"seed": 42})
    with Image.open(store.resolve(out.path)) as im:
        im.load()
        raw = im.info["orchestrator"]
    check_metadata(json.loads(raw))


async def test_save_uses_utc_day_of_creation(store: OutputStore) -> None:
    job = make_job()
    out = await store.save(job, 0, chunked(image_bytes("PNG")))
    assert out.path.startswith("2026/03/07/")
    assert store.resolve(out.path).is_file()


async def test_save_unknown_bytes_uses_given_mime(store: OutputStore) -> None:
    out = await store.save(make_job(), 0, chunked(b"\x00" * 300), mime_type="video/mp4")
    assert out.mime_type == "video/mp4"
    assert out.path.endswith(".mp4")
    assert out.size_bytes == 300
    assert (out.width, out.height) == (None, None)
    assert out.sha256 == hashlib.sha256(b"\x00" * 300).hexdigest()


async def test_save_sniffed_type_beats_declared(store: OutputStore) -> None:
    out = await store.save(make_job(), 0, chunked(image_bytes("PNG")), mime_type="image/jpeg")
    assert out.mime_type == "image/png"
    assert out.path.endswith(".png")


@pytest.mark.parametrize(
    ("exc", "raised"),
    [
        (ConnectionResetError("cut"), errors.UpstreamError),  # an OSError: storage_error
        (RuntimeError("boom"), RuntimeError),
        (ValueError("bad chunk"), ValueError),
    ],
)
async def test_failing_stream_leaves_nothing(
    store: OutputStore, exc: Exception, raised: type[Exception]
) -> None:
    with pytest.raises(raised):
        await store.save(make_job(), 0, failing(image_bytes("PNG"), exc=exc))
    assert partials(store) == []
    assert final_files(store) == []


async def test_os_error_while_streaming_is_storage_error(store: OutputStore) -> None:
    with pytest.raises(errors.UpstreamError) as info:
        await store.save(make_job(), 0, failing(image_bytes("PNG"), exc=OSError(28, "No space")))
    assert info.value.code is errors.ErrorCode.STORAGE_ERROR
    assert partials(store) == []
    assert final_files(store) == []


async def test_non_os_error_propagates_unchanged(store: OutputStore) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        await store.save(make_job(), 0, failing(image_bytes("PNG"), exc=RuntimeError("boom")))


async def test_two_outputs_of_one_job(store: OutputStore) -> None:
    job = make_job()
    a = await store.save(job, 0, chunked(image_bytes("PNG")))
    b = await store.save(job, 1, chunked(image_bytes("JPEG", (32, 32))))
    assert a.path != b.path
    assert {p.name for p in final_files(store)} == {f"{JOB_ID}-0.png", f"{JOB_ID}-1.jpg"}
    assert (b.width, b.height) == (32, 32)


# Regression (fixed): _embed_jpeg truncates a payload over 65,533 bytes to fit one COM segment,
# producing invalid JSON; read_embedded then raises json.JSONDecodeError instead of
# returning the metadata (or None). Reachable when params hold many strings below
# the 512-character shortening limit (e.g. a large workflow graph).
async def test_jpeg_with_large_params_still_reads(store: OutputStore) -> None:
    job = make_job(notes=["n" * 500 for _ in range(200)])
    out = await store.save(job, 0, chunked(image_bytes("JPEG")))
    final = store.resolve(out.path)
    with Image.open(final) as im:
        im.load()
    meta = read_embedded(final)
    assert meta is None or meta["job_id"] == JOB_ID


def test_read_embedded_of_plain_image_is_none(tmp_path: Path) -> None:
    for fmt in ("PNG", "JPEG"):
        p = tmp_path / f"plain.{fmt.lower()}"
        p.write_bytes(image_bytes(fmt))
        assert read_embedded(p) is None


# --- resolve ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "relative",
    [
        "../../etc/passwd",
        "../jobs/x.json",
        "2026/../../outside.png",
        "/etc/passwd",
        ".partial/x",
        f"{PARTIAL_DIR}/{JOB_ID}-0-abcd1234.part",
        "2026/../.partial/x",
    ],
)
def test_resolve_refuses_outside_and_partials(store: OutputStore, relative: str) -> None:
    store.output_dir.mkdir(parents=True)
    with pytest.raises(errors.OutputNotFound):
        store.resolve(relative)


def test_resolve_refuses_symlink_escape(store: OutputStore, tmp_path: Path) -> None:
    secret_dir = tmp_path / "private"
    secret_dir.mkdir()
    (secret_dir / "key.txt").write_text("x")
    store.output_dir.mkdir(parents=True)
    (store.output_dir / "link").symlink_to(secret_dir)
    with pytest.raises(errors.OutputNotFound):
        store.resolve("link/key.txt")


def test_resolve_inside(store: OutputStore) -> None:
    store.output_dir.mkdir(parents=True)
    got = store.resolve(f"2026/03/07/{JOB_ID}-0.png")
    assert got == (store.output_dir / "2026" / "03" / "07" / f"{JOB_ID}-0.png").resolve()


# --- manifests -------------------------------------------------------------------------------


async def test_write_manifest(store: OutputStore) -> None:
    job = make_job()
    path = await store.write_manifest(job)
    assert path == store.jobs_dir / "2026" / "03" / "07" / f"{JOB_ID}.json"
    assert path == store.manifest_path(job)
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["id"] == JOB_ID
    assert doc["status"] == "running"
    assert doc["params"]["prompt"] == "a red fox"
    assert doc["params"]["input_image"] == "<100000 characters omitted>"
    assert doc["output_root"] == str(store.output_dir)
    assert doc["created_at"].startswith("2026-03-07T23:59:30")
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
    assert LONG[:1000] not in path.read_text(encoding="utf-8")


async def test_write_manifest_overwrites(store: OutputStore) -> None:
    job = make_job()
    await store.write_manifest(job)
    path = await store.write_manifest(job.model_copy(update={"status": JobStatus.SUCCEEDED}))
    assert json.loads(path.read_text(encoding="utf-8"))["status"] == "succeeded"
    assert len(list(path.parent.iterdir())) == 1


# --- partials ---------------------------------------------------------------------------------


def test_remove_partials_without_dir(store: OutputStore) -> None:
    assert store.remove_partials(job_id=JOB_ID) == 0
    assert store.remove_partials() == 0


def test_remove_partials_of_one_job(store: OutputStore) -> None:
    store.partial_dir.mkdir(parents=True)
    mine = [f"{JOB_ID}-0-aaaa1111.part", f"{JOB_ID}-1-bbbb2222.part"]
    theirs = [f"{OTHER_ID}-0-cccc3333.part"]
    for name in mine + theirs:
        (store.partial_dir / name).write_bytes(b"x")
    (store.partial_dir / "unrelated.txt").write_bytes(b"x")
    assert store.remove_partials(job_id=JOB_ID) == 2
    assert partials(store) == sorted([*theirs, "unrelated.txt"])


def test_remove_partials_older_than(store: OutputStore) -> None:
    store.partial_dir.mkdir(parents=True)
    old = store.partial_dir / f"{OTHER_ID}-0-old00000.part"
    new = store.partial_dir / f"{JOB_ID}-0-new00000.part"
    old.write_bytes(b"x")
    new.write_bytes(b"x")
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    assert store.remove_partials(older_than_s=600) == 1
    assert partials(store) == [new.name]
    assert store.remove_partials() == 1
    assert partials(store) == []
