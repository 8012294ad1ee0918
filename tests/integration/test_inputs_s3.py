"""Uploaded input images with the S3 output store (moto's server on 127.0.0.1): stored
once by content hash in the bucket (``prefix/inputs/``) as well as in the local
folder, so a worker on another machine (its own DATA_DIR) finds an input the API
node received. Local-only behaviour is unchanged."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image
from pydantic import TypeAdapter
from tests.s3_server import ACCESS_KEY, REGION, SECRET_KEY, S3Server

from orchestrator import errors
from orchestrator.config import Settings
from orchestrator.domain.jobs import JobStatus
from orchestrator.domain.params import GenerateRequest
from orchestrator.engine.worker import WorkerOptions
from orchestrator.object_store import S3Credentials, S3Location, S3ObjectStore
from orchestrator.runtime import open_runtime
from orchestrator.storage import InputStore


def png(color: tuple[int, int, int] = (0, 120, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(buf, format="PNG")
    return buf.getvalue()


def bucket(server: S3Server, url: str) -> S3ObjectStore:
    creds = S3Credentials(server.endpoint_url, REGION, ACCESS_KEY, SECRET_KEY)
    return S3ObjectStore(S3Location.parse(url), creds)


async def test_input_saved_on_one_node_is_found_on_another(
    tmp_path: Path, s3_server: S3Server
) -> None:
    name = s3_server.make_bucket()
    api_node = InputStore(
        tmp_path / "api" / "inputs", remote=bucket(s3_server, f"s3://{name}/p/inputs")
    )
    worker_node = InputStore(
        tmp_path / "worker" / "inputs", remote=bucket(s3_server, f"s3://{name}/p/inputs")
    )
    data = png()
    ref = await api_node.store(data)
    assert ref.startswith("input:") and ref.endswith(".png")
    key = ref.removeprefix("input:")
    assert await bucket(s3_server, f"s3://{name}/p/inputs").read_bytes(key) == data
    path = await worker_node.fetch(ref)
    assert path.read_bytes() == data
    assert path.is_relative_to(tmp_path / "worker")
    assert await api_node.store(data) == ref  # stored once: same reference


async def test_missing_input_is_invalid_request(tmp_path: Path, s3_server: S3Server) -> None:
    name = s3_server.make_bucket()
    store = InputStore(tmp_path / "inputs", remote=bucket(s3_server, f"s3://{name}/inputs"))
    with pytest.raises(errors.InvalidRequest, match="missing"):
        await store.fetch("input:" + "0" * 64 + ".png")
    with pytest.raises(errors.InvalidRequest):
        await store.fetch("input:not-a-ref")


async def test_local_input_store_unchanged(tmp_path: Path) -> None:
    store = InputStore(tmp_path / "inputs")
    ref = await store.store(png())
    assert await store.fetch(ref) == store.path(ref)
    assert sorted(p.name for p in (tmp_path / "inputs").iterdir()) == [ref.removeprefix("input:")]


@pytest.mark.slow
async def test_svd_job_from_the_api_node_runs_on_a_worker_node(
    make_settings: Callable[..., Settings], s3_server: S3Server, tmp_path: Path
) -> None:
    """Two runtimes with their own DATA_DIR, one database and one bucket: the API node
    stores the init image, the worker node (simulated ComfyUI) reads it from the bucket
    and its video output is downloadable on the API node."""
    name = s3_server.make_bucket()
    shared = {
        "demo_mode": "on",
        "database_url": f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}",
        **s3_server.env_settings(name, "studio"),
    }
    api_settings = make_settings(data_dir=tmp_path / "api", **shared)
    worker_settings = make_settings(data_dir=tmp_path / "worker", **shared)
    opts = WorkerOptions(
        concurrency=2,
        lease_s=worker_settings.lease_s,
        poll_interval_s=0.05,
        shutdown_grace_s=5.0,
    )
    async with (
        open_runtime(api_settings, run_worker=False) as api,
        open_runtime(worker_settings, run_worker=True, worker_options=opts),
    ):
        req = TypeAdapter(GenerateRequest).validate_python(
            {
                "backend": "svd",
                "params": {
                    "init_image": base64.b64encode(png((200, 10, 10))).decode(),
                    "frames": 3,
                    "width": 128,
                    "height": 64,
                    "steps": 2,
                },
            }
        )
        job, _ = await api.service.submit(req)
        assert str(job.params["init_image"]).startswith("input:")
        give_up = time.monotonic() + 60
        while job.status in (JobStatus.QUEUED, JobStatus.RUNNING) and time.monotonic() < give_up:
            await asyncio.sleep(0.1)
            job = await api.service.get_job(job.id)
        assert job.status == JobStatus.SUCCEEDED, job.error
        _out, path = await api.service.output(job.id, 0)
        assert path.is_relative_to(tmp_path / "api") and path.stat().st_size > 0
    # the worker node never saw the API node's folder: its input came from the bucket
    assert list((tmp_path / "worker" / "inputs").iterdir())
