"""OutputStore on an S3 bucket (moto's server on 127.0.0.1): outputs are processed in
the local partial folder as before (metadata embedded, hashed, checked), then uploaded
whole before ``save`` returns; a store that cannot be reached is retried, then fails
with ``storage_unavailable``; manifests go to the bucket too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.s3_server import ACCESS_KEY, REGION, SECRET_KEY, S3Server, free_port
from tests.unit.test_storage import JOB_ID, chunked, image_bytes, make_job

from orchestrator import errors
from orchestrator.object_store import (
    LocalObjectStore,
    S3Credentials,
    S3Location,
    S3ObjectStore,
)
from orchestrator.storage import PARTIAL_DIR, UPLOAD_ATTEMPTS, OutputStore, read_embedded


def s3(server_url: str, url: str) -> S3ObjectStore:
    return S3ObjectStore(
        S3Location.parse(url), S3Credentials(server_url, REGION, ACCESS_KEY, SECRET_KEY, 1.0, 30)
    )


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    return s3_server.make_bucket()


@pytest.fixture
def store(s3_server: S3Server, bucket: str, tmp_path: Path) -> OutputStore:
    return OutputStore(
        tmp_path / "outputs",
        tmp_path / "jobs",
        objects=s3(s3_server.endpoint_url, f"s3://{bucket}/studio/outputs"),
        manifests=s3(s3_server.endpoint_url, f"s3://{bucket}/studio/jobs"),
        cache_dir=tmp_path / "cache",
    )


async def test_save_uploads_the_finished_file(store: OutputStore, tmp_path: Path) -> None:
    job = make_job()
    out = await store.save(job, 0, chunked(image_bytes("PNG")), mime_type="image/png")
    assert out.path == f"2026/03/07/{JOB_ID}-0.png"
    assert not store.is_local
    info = await store.objects.stat(out.path)
    assert info.size == out.size_bytes
    # nothing left behind locally: the partial went after the upload
    leftovers = [p for p in (tmp_path / "outputs").rglob("*") if p.is_file()]
    assert leftovers == []
    assert store.location(out.path).startswith("s3://")
    # the bytes in the bucket carry the embedded metadata, like a local output
    local = await store.local_copy(out.path, out.sha256)
    assert local.is_file()
    meta = read_embedded(local)
    assert meta is not None and meta["job_id"] == JOB_ID


async def test_local_copy_of_a_missing_object_is_output_not_found(store: OutputStore) -> None:
    with pytest.raises(errors.OutputNotFound):
        await store.local_copy("2026/03/07/nope-0.png", "0" * 64)


async def test_manifest_goes_to_the_bucket(store: OutputStore) -> None:
    job = make_job()
    await store.write_manifest(job)
    raw = await store.manifests.read_bytes(f"2026/03/07/{JOB_ID}.json")
    doc = json.loads(raw)
    assert doc["id"] == JOB_ID
    assert doc["output_root"].startswith("s3://")


async def test_unreachable_store_retries_then_storage_unavailable(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    store = OutputStore(
        tmp_path / "outputs",
        tmp_path / "jobs",
        objects=s3(dead, "s3://bucket/outputs"),
        manifests=s3(dead, "s3://bucket/jobs"),
        cache_dir=tmp_path / "cache",
    )
    with pytest.raises(errors.StorageUnavailable) as info:
        await store.save(make_job(), 0, chunked(image_bytes("PNG")), mime_type="image/png")
    assert info.value.code is errors.ErrorCode.STORAGE_UNAVAILABLE
    assert f"after {UPLOAD_ATTEMPTS} tries" in info.value.detail
    assert list((tmp_path / "outputs" / PARTIAL_DIR).glob("*")) == []
    # a manifest that cannot be written is an OSError, which the worker logs and retries
    with pytest.raises(OSError):
        await store.write_manifest(make_job())


async def test_local_default_is_a_local_object_store(tmp_path: Path) -> None:
    store = OutputStore(tmp_path / "outputs", tmp_path / "jobs")
    assert store.is_local
    assert isinstance(store.objects, LocalObjectStore)
    out = await store.save(make_job(), 0, chunked(image_bytes("PNG")), mime_type="image/png")
    assert store.location(out.path) == str(store.resolve(out.path))
    assert await store.local_copy(out.path, out.sha256) == store.resolve(out.path)
