"""Jobs with the S3 output store (moto's server on 127.0.0.1, fake BFL on 127.0.0.1):
the output and manifest land in the bucket before the job succeeds, nothing is left in
the local output folder, the API serves the output (whole, ranges, problem documents,
presigned redirects), and a store that cannot be reached fails the job with
``storage_unavailable`` after a few tries."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from tests.conftest import TEST_KEY
from tests.s3_server import ACCESS_KEY, REGION, SECRET_KEY, S3Server, free_port

from orchestrator.config import Settings
from orchestrator.domain.jobs import Job, JobStatus
from orchestrator.domain.params import FluxDevParams, FluxRequest
from orchestrator.engine.worker import WorkerOptions
from orchestrator.errors import ErrorCode
from orchestrator.object_store import S3Credentials, S3Location, S3ObjectStore
from orchestrator.runtime import Runtime, open_runtime
from orchestrator.storage import read_embedded
from orchestrator.testing.fake_bfl import FakeBfl
from orchestrator.testing.serve import ServedApp

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


@pytest.fixture
def settings_for(
    make_settings: Callable[..., Settings], fake_bfl: FakePair
) -> Callable[..., Settings]:
    _fake, served = fake_bfl

    def make(**kw: object) -> Settings:
        base: dict[str, object] = {"bfl_api_key": TEST_KEY, "flux_base_url": served.base_url}
        base.update(kw)
        return make_settings(**base)

    return make


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
