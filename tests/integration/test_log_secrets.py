"""A whole job's logs, at DEBUG, with the API served: the BFL key never appears."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator

import httpx2
import pytest
import structlog

from orchestrator import logs
from orchestrator.api.app import create_app
from orchestrator.config import Settings
from orchestrator.testing.fake_bfl import FakeBfl, FakeBflConfig
from orchestrator.testing.serve import serve_in_thread

SECRET = "bfl-SECRET-key-do-not-log-4242"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def test_full_job_logs_never_contain_the_key(
    make_settings: Callable[..., Settings], restore_logging: None
) -> None:
    fake = FakeBfl(FakeBflConfig(api_keys={SECRET}, task_duration_s=0.1, poll_retry_after_s=0))
    # one failing poll so an error path is logged too
    fake.faults.add("poll", status=502, body=f"<html>upstream echoed {SECRET}</html>")
    with serve_in_thread(fake.app) as bfl:
        fake.public_base_url = bfl.base_url
        settings = make_settings(bfl_api_key=SECRET, flux_base_url=bfl.base_url, log_level="DEBUG")
        stream = io.StringIO()
        logs.configure("DEBUG", "json", settings.secret_values(), stream=stream)
        with (
            serve_in_thread(create_app(settings), lifespan="on") as app,
            httpx2.Client(base_url=app.base_url, timeout=30) as client,
        ):
            r = client.post(
                "/api/flux/generate",
                params={"wait": "true"},
                json={"model": "flux-dev", "prompt": "logged", "width": 256, "height": 256},
            )
            assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
            client.get("/api/system/health")
    text = stream.getvalue()
    lines = [json.loads(ln) for ln in text.splitlines() if ln.strip()]
    assert len(lines) > 10  # a real run's worth of logs was captured
    assert any(ln.get("job_id") for ln in lines)
    assert any(ln.get("request_id") for ln in lines)
    assert SECRET not in text
    assert SECRET[-8:] not in text
