"""Jobs with the S3 output store (moto's server on 127.0.0.1, fake BFL on 127.0.0.1):
the output and manifest land in the bucket before the job succeeds, nothing is left in
the local output folder, the API serves the output (whole, ranges, problem documents,
presigned redirects), and a store that cannot be reached fails the job with
``storage_unavailable`` after a few tries."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp_types import BlobResourceContents, ImageContent, ResourceLink
from tests.s3_server import ACCESS_KEY, REGION, SECRET_KEY, S3Server, free_port

from orchestrator.api.app import create_app
from orchestrator.config import Settings
from orchestrator.domain.jobs import Job, JobStatus
from orchestrator.domain.params import FluxDevParams, FluxRequest
from orchestrator.engine.worker import WorkerOptions
from orchestrator.errors import ErrorCode
from orchestrator.mcp_server import build_mcp
from orchestrator.object_store import S3Credentials, S3Location, S3ObjectStore
from orchestrator.runtime import Runtime, open_runtime
from orchestrator.storage import read_embedded
from orchestrator.testing.fake_bfl import FakeBfl
from orchestrator.testing.serve import ServedApp, serve_in_thread

FakePair = tuple[FakeBfl, ServedApp]


def s3_settings(server_url: str, bucket: str, prefix: str = "studio") -> dict[str, object]:
    return {
        "output_store_url": f"s3://{bucket}/{prefix}",
        "aws_endpoint_url": server_url,
        "aws_region": REGION,
        "aws_access_key_id": ACCESS_KEY,
        "aws_secret_access_key": SECRET_KEY,
    }


def bucket_store(server: S3Server, url: str) -> S3ObjectStore:
    creds = S3Credentials(server.endpoint_url, REGION, ACCESS_KEY, SECRET_KEY)
    return S3ObjectStore(S3Location.parse(url), creds)


@asynccontextmanager
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    options = WorkerOptions(
        concurrency=4,
        lease_s=settings.lease_s,
        poll_interval_s=settings.worker_poll_interval_s,
        shutdown_grace_s=5.0,
    )
    async with open_runtime(settings, run_worker=True, worker_options=options) as rt:
        yield rt


async def run_one(rt: Runtime, prompt: str) -> Job:
    req = FluxRequest(params=FluxDevParams(prompt=prompt, width=256, height=256, seed=3))
    job, _ = await rt.service.submit(req)
    return await rt.service.wait_for(job.id, 20)


async def test_flux_job_output_and_manifest_in_the_bucket(
    settings_for: Callable[..., Settings], s3_server: S3Server
) -> None:
    bucket = s3_server.make_bucket()
    settings = settings_for(**s3_settings(s3_server.endpoint_url, bucket))
    async with runtime(settings) as rt:
        job = await run_one(rt, "a harbour in fog")
        assert job.status == JobStatus.SUCCEEDED, job.error
        [out] = job.outputs
        outputs = bucket_store(s3_server, f"s3://{bucket}/studio/outputs")
        data = await outputs.read_bytes(out.path)
        assert hashlib.sha256(data).hexdigest() == out.sha256 and len(data) == out.size_bytes
        manifests = bucket_store(s3_server, f"s3://{bucket}/studio/jobs")
        key = f"{job.created_at.strftime('%Y/%m/%d')}/{job.id}.json"
        manifest = json.loads(await manifests.read_bytes(key))
        assert manifest["outputs"][0]["sha256"] == out.sha256
        # services that need a file (thumbnails, previews) get a cached local copy
        _o, path = await rt.service.output(job.id, 0)
        assert path.read_bytes() == data
        meta = read_embedded(path)
        assert meta is not None and meta["job_id"] == job.id
    # nothing under the local output folder but the (empty) partial folder
    assert [p for p in settings.output_path.rglob("*") if p.is_file()] == []
    assert not settings.jobs_path.exists() or not any(settings.jobs_path.rglob("*.json"))


async def test_unreachable_store_fails_the_job_storage_unavailable(
    settings_for: Callable[..., Settings],
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    settings = settings_for(**s3_settings(dead, "bucket"), http_connect_timeout_s=1.0)
    async with runtime(settings) as rt:
        job = await run_one(rt, "nowhere to put it")
    assert job.status == JobStatus.FAILED
    assert job.error is not None and job.error.code == ErrorCode.STORAGE_UNAVAILABLE, job.error
    assert "could not store output 0" in job.error.message
    assert not list((settings.output_path / ".partial").glob("*"))


# --- the API process serves outputs from the bucket -----------------------------------


@pytest.fixture
def api_for(
    settings_for: Callable[..., Settings], s3_server: S3Server
) -> Iterator[Callable[..., tuple[httpx2.Client, Settings]]]:
    stack: list[tuple[object, httpx2.Client]] = []

    def make(**kw: object) -> tuple[httpx2.Client, Settings]:
        bucket = s3_server.make_bucket()
        settings = settings_for(**s3_settings(s3_server.endpoint_url, bucket), **kw)
        cm = serve_in_thread(create_app(settings), lifespan="on")
        served = cm.__enter__()
        client = httpx2.Client(base_url=served.base_url, timeout=30)
        stack.append((cm, client))
        return client, settings

    yield make
    for cm, client in reversed(stack):
        client.close()
        cm.__exit__(None, None, None)  # type: ignore[attr-defined]


def generate(client: httpx2.Client, prompt: str) -> dict[str, Any]:
    body = {
        "backend": "flux",
        "params": {"model": "flux-dev", "prompt": prompt, "width": 256, "height": 256},
    }
    r = client.post("/api/generate", json=body)
    assert r.status_code == 202, r.text
    give_up = time.monotonic() + 20
    while True:
        job: dict[str, Any] = client.get(f"/api/jobs/{r.json()['id']}").json()
        if job["status"] not in ("queued", "running") or time.monotonic() > give_up:
            break
        time.sleep(0.05)
    assert job["status"] == "succeeded", job
    return job


def test_api_streams_outputs_from_the_bucket_with_ranges(
    api_for: Callable[..., tuple[httpx2.Client, Settings]],
) -> None:
    client, settings = api_for()
    job = generate(client, "served from the bucket")
    out = job["outputs"][0]
    url, size = out["url"], out["size_bytes"]
    full = client.get(url)
    assert full.status_code == 200, full.text
    assert full.headers["content-type"] == "image/jpeg"
    assert full.headers["accept-ranges"] == "bytes"
    assert int(full.headers["content-length"]) == size == len(full.content)
    assert hashlib.sha256(full.content).hexdigest() == out["sha256"]
    assert "inline" in full.headers["content-disposition"]
    assert full.headers["cache-control"] == "private, max-age=31536000, immutable"
    part = client.get(url, headers={"Range": "bytes=0-9"})
    assert part.status_code == 206 and part.content == full.content[:10]
    assert part.headers["content-range"] == f"bytes 0-9/{size}"
    assert part.headers["content-length"] == "10"
    tail = client.get(url, headers={"Range": "bytes=-7"})
    assert tail.status_code == 206 and tail.content == full.content[-7:]
    open_end = client.get(url, headers={"Range": f"bytes={size - 3}-"})
    assert open_end.status_code == 206 and open_end.content == full.content[-3:]
    # an If-Range that still matches keeps the range; a stale one gets the whole file
    etag = full.headers["etag"]
    same = client.get(url, headers={"Range": "bytes=0-1", "If-Range": etag})
    assert same.status_code == 206 and same.content == full.content[:2]
    stale = client.get(url, headers={"Range": "bytes=0-1", "If-Range": '"other"'})
    assert stale.status_code == 200 and stale.content == full.content
    # nothing of it on the API process's disk but the thumbnail/preview cache
    assert [p for p in settings.output_path.rglob("*") if p.is_file()] == []


def test_api_range_errors_are_problem_documents(
    api_for: Callable[..., tuple[httpx2.Client, Settings]],
) -> None:
    client, _settings = api_for()
    job = generate(client, "range errors from the bucket")
    out = job["outputs"][0]
    url, size = out["url"], out["size_bytes"]
    bad = client.get(url, headers={"Range": "bytes=abc"})
    assert bad.status_code == 400, bad.text
    assert bad.headers["content-type"].startswith("application/problem+json")
    assert bad.json()["type"].endswith("/malformed-range")
    past = client.get(url, headers={"Range": f"bytes={size + 10}-"})
    assert past.status_code == 416, past.text
    assert past.headers["content-type"].startswith("application/problem+json")
    assert past.headers["content-range"] == f"bytes */{size}"
    assert past.json()["type"].endswith("/range-not-satisfiable")
    assert client.get(f"/api/outputs/{job['id']}/5").status_code == 404


def test_api_output_missing_from_the_bucket_is_404(
    api_for: Callable[..., tuple[httpx2.Client, Settings]], s3_server: S3Server
) -> None:
    client, settings = api_for()
    job = generate(client, "deleted behind our back")
    out = job["outputs"][0]
    assert settings.output_store_url is not None
    store = bucket_store(s3_server, settings.output_store_url + "/outputs")
    asyncio.run(store.delete(out["path"]))
    r = client.get(out["url"])
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")


def test_api_redirects_to_a_presigned_url_when_configured(
    api_for: Callable[..., tuple[httpx2.Client, Settings]],
) -> None:
    client, _settings = api_for(output_store_presign_s=120)
    job = generate(client, "presigned")
    out = job["outputs"][0]
    r = client.get(out["url"], follow_redirects=False)
    assert r.status_code == 307, r.text
    location = r.headers["location"]
    assert "X-Amz-Expires=120" in location and "X-Amz-Signature=" in location
    assert r.headers["cache-control"] == "private, no-store"
    data = httpx2.get(location, timeout=10)
    assert data.status_code == 200
    assert hashlib.sha256(data.content).hexdigest() == out["sha256"]
    ranged = httpx2.get(location, headers={"Range": "bytes=0-3"}, timeout=10)
    assert ranged.status_code == 206 and ranged.content == data.content[:4]


def test_ui_thumbnail_with_the_bucket(
    api_for: Callable[..., tuple[httpx2.Client, Settings]],
) -> None:
    client, settings = api_for()
    job = generate(client, "thumbnail from the bucket")
    r = client.get(f"/ui/thumbs/{job['id']}/0")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/webp"
    cached = list((settings.data_path / "cache" / "outputs").rglob("*.jpg"))
    assert len(cached) == 1


async def test_mcp_get_output_and_resource_with_the_bucket(
    settings_for: Callable[..., Settings], s3_server: S3Server
) -> None:
    """MCP works unchanged: no local file_path (there is none), the output:// resource
    and get_output's preview come from the bucket."""
    bucket = s3_server.make_bucket()
    settings = settings_for(**s3_settings(s3_server.endpoint_url, bucket))
    async with runtime(settings) as rt, Client(build_mcp(lambda: rt.service)) as c:
        r = await c.call_tool(
            "generate",
            {
                "backend": "flux",
                "params": {
                    "model": "flux-dev",
                    "prompt": "mcp bucket",
                    "width": 256,
                    "height": 256,
                },
                "wait": True,
            },
        )
        assert not r.is_error, r.content
        job = r.structured_content
        assert job is not None and job["status"] == "succeeded"
        out = job["outputs"][0]
        assert out["file_path"] is None
        stored = await bucket_store(s3_server, f"s3://{bucket}/studio/outputs").read_bytes(
            f"{job['created_at'][:10].replace('-', '/')}/{job['id']}-0.jpg"
        )
        blob = (await c.read_resource(out["uri"])).contents[0]
        assert isinstance(blob, BlobResourceContents)
        assert base64.b64decode(blob.blob) == stored
        preview = await c.call_tool("get_output", {"job_id": job["id"], "max_px": 128})
        assert not preview.is_error, preview.content
        image, link = preview.content
        assert isinstance(image, ImageContent) and isinstance(link, ResourceLink)
        assert f"s3://{bucket}/studio/outputs/" in (link.description or "")


async def test_ignite_checks_the_output_store(
    make_settings: Callable[..., Settings], s3_server: S3Server
) -> None:
    """`ignite` writes, reads back and deletes a probe object in the bucket; a store
    that cannot be reached fails the check (essential: jobs could not succeed)."""
    bucket = s3_server.make_bucket()
    settings = make_settings(demo_mode="on", **s3_settings(s3_server.endpoint_url, bucket))
    async with open_runtime(settings, run_worker=False) as rt:
        result = await rt.service.ignite()
    by = {c.component: c for c in result.checks}
    assert by["output_store"].status == "ok", by["output_store"]
    assert by["output_store"].details["url"] == f"s3://{bucket}/studio/outputs"
    assert [i async for i in bucket_store(s3_server, f"s3://{bucket}/studio").list()] == []

    dead = f"http://127.0.0.1:{free_port()}"
    settings = make_settings(
        demo_mode="on", http_connect_timeout_s=1.0, **s3_settings(dead, bucket)
    )
    async with open_runtime(settings, run_worker=False) as rt:
        result = await rt.service.ignite()
    check = {c.component: c for c in result.checks}["output_store"]
    assert check.status == "fail" and check.essential
    assert not result.ok


async def test_ignite_has_no_output_store_check_when_local(
    make_settings: Callable[..., Settings],
) -> None:
    async with open_runtime(make_settings(demo_mode="on"), run_worker=False) as rt:
        result = await rt.service.ignite()
    assert "output_store" not in {c.component for c in result.checks}
