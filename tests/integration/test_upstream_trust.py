"""Trust boundaries against hostile upstreams (issue 14, items 1 and 2).

An evil BFL on 127.0.0.1 answers with URLs that point inside (another local port, a
redirect), and with bodies that are too big, never end or are HTML; a victim server on
another port records every request it gets. A faithful BFL fake served over TLS under
BFL's own host names (a test CA, names mapped to loopback at the socket) answers its
``polling_url`` on a cluster host other than the submit host, as BFL does, and refuses
polls without the key.
"""

from __future__ import annotations

import asyncio
import io
import ssl
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpcore2
import httpx2
import pytest
import trustme
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route
from tests.conftest import TEST_KEY

from orchestrator import errors
from orchestrator.backends.flux import FluxClient, Ready
from orchestrator.config import Settings
from orchestrator.db.engine import open_database
from orchestrator.domain.jobs import Job, JobStatus
from orchestrator.domain.params import FluxDevParams, FluxRequest
from orchestrator.domain.tilda import ImportStatus
from orchestrator.engine.worker import WorkerOptions
from orchestrator.outbound import AddressGuard
from orchestrator.runtime import Runtime, open_runtime
from orchestrator.testing import tilda_export as te
from orchestrator.testing.fake_bfl import FakeBfl, FakeBflConfig
from orchestrator.testing.fake_tilda import FakeTilda, FakeTildaConfig
from orchestrator.testing.serve import ServedApp, serve_in_thread
from orchestrator.tilda.api_client import import_from_api
from orchestrator.tilda.service import TildaService


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


@dataclass
class Victim:
    """An internal service nobody outside should reach: records every request and
    answers with an image, so a download of it would look like a result."""

    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    @property
    def app(self) -> Starlette:
        async def anything(request: Request) -> Response:
            self.seen.append((request.url.path, dict(request.headers)))
            return Response(png_bytes(), media_type="image/png")

        return Starlette(routes=[Route("/{path:path}", anything, methods=["GET", "POST"])])


@dataclass
class EvilBfl:
    """Speaks BFL's submit/poll shapes (and wants the key) but chooses its URLs and
    bodies to hurt: ``polling_url(origin, id)``, ``sample_url(origin, id)`` and
    ``body`` (png, html, huge, endless, redirect)."""

    polling_url: Callable[[str, str], str] = lambda o, i: f"{o}/v1/get_result?id={i}"
    sample_url: Callable[[str, str], str] = lambda o, i: f"{o}/sample/{i}.png"
    body: str = "png"
    redirect_to: str = ""
    origin: str = ""

    @property
    def app(self) -> Starlette:
        def refused(request: Request) -> Response | None:
            if request.headers.get("x-key") != TEST_KEY:
                return JSONResponse(
                    {"detail": "Not authenticated - Invalid Authentication"}, status_code=403
                )
            return None

        async def submit(request: Request) -> Response:
            if (r := refused(request)) is not None:
                return r
            task = str(uuid.uuid4())
            return JSONResponse(
                {"id": task, "polling_url": self.polling_url(self.origin, task), "cost": 2.5}
            )

        async def get_result(request: Request) -> Response:
            if (r := refused(request)) is not None:
                return r
            task = request.query_params.get("id", "")
            sample = self.sample_url(self.origin, task)
            return JSONResponse(
                {"id": task, "status": "Ready", "result": {"sample": sample, "seed": 1}}
            )

        async def sample(request: Request) -> Response:
            if self.body == "html":
                page = b"<!doctype html><html><body>Sign in to continue</body></html>"
                return Response(page, media_type="image/jpeg")  # it lies about the type
            if self.body == "huge":
                return Response(png_bytes() + b"\0" * (3 * 1024 * 1024), media_type="image/png")
            if self.body == "endless":

                async def forever() -> AsyncIterator[bytes]:
                    yield png_bytes()
                    while True:
                        await asyncio.sleep(0.01)
                        yield b"\0" * 65536

                return StreamingResponse(forever(), media_type="image/png")
            if self.body == "redirect":
                return RedirectResponse(self.redirect_to, status_code=302)
            return Response(png_bytes(), media_type="image/png")

        return Starlette(
            routes=[
                Route("/v1/get_result", get_result),
                Route("/v1/{model}", submit, methods=["POST"]),
                Route("/sample/{name}", sample),
            ]
        )


@pytest.fixture
def victim() -> Iterator[tuple[Victim, ServedApp]]:
    v = Victim()
    with serve_in_thread(v.app) as served:
        yield v, served


@pytest.fixture
def evil() -> Iterator[tuple[EvilBfl, ServedApp]]:
    e = EvilBfl()
    with serve_in_thread(e.app) as served:
        e.origin = served.base_url
        yield e, served


@asynccontextmanager
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    options = WorkerOptions(
        concurrency=4,
        lease_s=settings.lease_s,
        poll_interval_s=settings.worker_poll_interval_s,
        shutdown_grace_s=1.0,
    )
    async with open_runtime(settings, run_worker=True, worker_options=options) as rt:
        yield rt


async def run_one(settings: Settings, prompt: str) -> tuple[Job, Path]:
    async with runtime(settings) as rt:
        req = FluxRequest(params=FluxDevParams(prompt=prompt, width=256, height=256))
        job, _ = await rt.service.submit(req)
        done = await asyncio.wait_for(rt.service.wait_for(job.id, None), 30)
        return done, rt.service.store.partial_dir


def leftovers(partial_dir: Path) -> list[str]:
    return sorted(p.name for p in partial_dir.glob("*")) if partial_dir.exists() else []


# --- item 1: URLs an upstream hands over ------------------------------------------------


async def test_polling_url_on_another_local_port_never_gets_the_key(
    make_settings: Callable[..., Settings],
    evil: tuple[EvilBfl, ServedApp],
    victim: tuple[Victim, ServedApp],
) -> None:
    e, served = evil
    v, inside = victim
    e.polling_url = lambda _o, i: f"{inside.base_url}/v1/get_result?id={i}"
    settings = make_settings(bfl_api_key=TEST_KEY, flux_base_url=served.base_url)
    job, _ = await run_one(settings, "poll elsewhere")
    assert v.seen == [], "the key (or any request) reached an internal port"
    assert job.status == JobStatus.FAILED
    assert job.error is not None and job.error.code == "untrusted_url", job.error


async def test_sample_naming_an_internal_url_is_not_downloaded(
    make_settings: Callable[..., Settings],
    evil: tuple[EvilBfl, ServedApp],
    victim: tuple[Victim, ServedApp],
) -> None:
    e, served = evil
    v, inside = victim
    e.sample_url = lambda _o, i: f"{inside.base_url}/internal/secret.png"
    settings = make_settings(bfl_api_key=TEST_KEY, flux_base_url=served.base_url)
    job, _ = await run_one(settings, "internal sample")
    assert v.seen == [], "an internal URL was fetched"
    assert job.status == JobStatus.FAILED and job.outputs == []
    assert job.error is not None and job.error.code == "untrusted_url", job.error


async def test_sample_redirect_to_an_internal_url_is_not_followed(
    make_settings: Callable[..., Settings],
    evil: tuple[EvilBfl, ServedApp],
    victim: tuple[Victim, ServedApp],
) -> None:
    e, served = evil
    v, inside = victim
    e.body, e.redirect_to = "redirect", f"{inside.base_url}/internal/secret.png"
    settings = make_settings(bfl_api_key=TEST_KEY, flux_base_url=served.base_url)
    job, _ = await run_one(settings, "redirect inside")
    assert v.seen == []
    assert job.status == JobStatus.FAILED
    assert job.error is not None and job.error.code == "untrusted_url", job.error


# --- item 2: bodies ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code", "extra"),
    [
        ("huge", "output_too_large", {"flux_max_output_mb": 1}),
        ("endless", "download_timeout", {"download_timeout_s": 1.0}),
        ("html", "invalid_output", {}),
    ],
)
async def test_hostile_result_bodies_fail_the_job_and_leave_no_partial_file(
    make_settings: Callable[..., Settings],
    evil: tuple[EvilBfl, ServedApp],
    body: str,
    code: str,
    extra: dict[str, Any],
) -> None:
    e, served = evil
    e.body = body
    settings = make_settings(bfl_api_key=TEST_KEY, flux_base_url=served.base_url, **extra)
    job, partial_dir = await run_one(settings, f"body {body}")
    assert job.status == JobStatus.FAILED and job.outputs == []
    assert job.error is not None and job.error.code == code, job.error
    assert leftovers(partial_dir) == []
    stored = [p for p in settings.output_dir.rglob("*") if p.is_file()]
    assert stored == [], stored


async def test_a_good_body_still_succeeds(
    make_settings: Callable[..., Settings], evil: tuple[EvilBfl, ServedApp]
) -> None:
    _e, served = evil
    settings = make_settings(bfl_api_key=TEST_KEY, flux_base_url=served.base_url)
    job, partial_dir = await run_one(settings, "good body")
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert [o.mime_type for o in job.outputs] == ["image/png"]
    assert leftovers(partial_dir) == []


# --- BFL's real host layout over TLS ------------------------------------------------------

BFL_NAMES = ("api.eu.bfl.ai", "api.eu2.bfl.ai", "bfldeliveryprodeu4.blob.core.windows.net")
PUBLIC_STAND_IN = "93.184.215.14"  # what the test resolver answers for BFL's names


class ToLoopback(httpcore2.AsyncNetworkBackend):
    """Connects BFL's names (and the stand-in public address the resolver gives for
    them) to the fake on 127.0.0.1; records every host it was asked for."""

    def __init__(self) -> None:
        self.inner = httpcore2.AnyIOBackend()
        self.hosts: list[str] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore2's interface)
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore2.AsyncNetworkStream:
        self.hosts.append(host)
        target = "127.0.0.1" if host in (*BFL_NAMES, PUBLIC_STAND_IN) else host
        return await self.inner.connect_tcp(target, port, timeout, local_address, socket_options)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass
class Bfl:
    fake: FakeBfl
    port: int
    ca: trustme.CA


@pytest.fixture
def bfl_over_tls(tmp_path: Path) -> Iterator[Bfl]:
    ca = trustme.CA()
    cert = ca.issue_cert(*BFL_NAMES)
    chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key))
    fake = FakeBfl(FakeBflConfig(api_keys={TEST_KEY}, task_duration_s=0.05, poll_retry_after_s=0))
    with serve_in_thread(fake.app, tls=(str(chain), str(key))) as served:
        port = served.port
        fake.public_base_url = f"https://api.eu.bfl.ai:{port}"
        fake.config.cluster_base_url = f"https://api.eu2.bfl.ai:{port}"
        fake.config.delivery_base_url = f"https://bfldeliveryprodeu4.blob.core.windows.net:{port}"
        yield Bfl(fake, port, ca)


def tls_client(ca: trustme.CA, network: ToLoopback) -> httpx2.AsyncClient:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    transport = httpx2.AsyncHTTPTransport(verify=context)
    transport._pool._network_backend = network  # test-only: names to loopback
    return httpx2.AsyncClient(transport=transport, follow_redirects=False)


def resolver_for(answers: dict[str, str]) -> Callable[[str, int], Any]:
    async def resolve(host: str, _port: int) -> list[str]:
        return [answers[host]] if host in answers else []

    return resolve


async def test_cluster_polling_url_gets_the_key_and_the_sample_downloads(
    bfl_over_tls: Bfl,
) -> None:
    """Submit on api.eu.bfl.ai, poll api.eu2.bfl.ai (it refuses without the key),
    download from the blob host: with the default rules, only ports made explicit."""
    port = bfl_over_tls.port
    network = ToLoopback()
    guard = AddressGuard(
        False,
        "UPSTREAM_ALLOW_PRIVATE",
        resolver_for({name: PUBLIC_STAND_IN for name in BFL_NAMES}),
    )
    async with tls_client(bfl_over_tls.ca, network) as http:
        client = FluxClient(
            http,
            f"https://api.eu.bfl.ai:{port}",
            TEST_KEY,
            key_hosts=f"api.bfl.ai:{port},api.eu*.bfl.ai:{port},api.us*.bfl.ai:{port}",
            result_hosts=f"*.bfl.ai:{port},bfldelivery*.blob.core.windows.net:{port}",
            guard=guard,
        )
        sub = await client.submit("flux-dev", {"prompt": "cluster", "width": 256, "height": 256})
        assert sub.polling_url.startswith(f"https://api.eu2.bfl.ai:{port}/")
        for _ in range(200):
            outcome, _hint = await client.get_result(sub.polling_url)
            if isinstance(outcome, Ready):
                break
            await asyncio.sleep(0.02)
        assert isinstance(outcome, Ready), outcome
        assert outcome.result.sample.startswith("https://bfldeliveryprodeu4.blob.core.windows.net")
        data = b"".join([c async for c in client.download(outcome.result.sample)])
    assert data[:3] == b"\xff\xd8\xff"  # flux-dev answers JPEG
    state = bfl_over_tls.fake.state()
    assert state["misrouted_polls"] == 0 and state["downloads"] == 1
    # the submit went to the configured host by name; the cluster and the blob host
    # to the address the guard checked
    assert network.hosts.count("api.eu.bfl.ai") >= 1
    assert PUBLIC_STAND_IN in network.hosts
    assert "api.eu2.bfl.ai" not in network.hosts


async def test_a_bfl_name_resolving_to_a_private_address_is_refused(bfl_over_tls: Bfl) -> None:
    """DNS rebinding of a delivery host: the name is allowed, its address is not."""
    port = bfl_over_tls.port
    network = ToLoopback()
    answers = {name: PUBLIC_STAND_IN for name in BFL_NAMES}
    answers["bfldeliveryprodeu4.blob.core.windows.net"] = "127.0.0.1"
    guard = AddressGuard(False, "UPSTREAM_ALLOW_PRIVATE", resolver_for(answers))
    async with tls_client(bfl_over_tls.ca, network) as http:
        client = FluxClient(
            http,
            f"https://api.eu.bfl.ai:{port}",
            TEST_KEY,
            key_hosts=f"api.eu*.bfl.ai:{port}",
            result_hosts=f"bfldelivery*.blob.core.windows.net:{port}",
            guard=guard,
        )
        sub = await client.submit("flux-dev", {"prompt": "rebind", "width": 256, "height": 256})
        for _ in range(200):
            outcome, _hint = await client.get_result(sub.polling_url)
            if isinstance(outcome, Ready):
                break
            await asyncio.sleep(0.02)
        assert isinstance(outcome, Ready)
        with pytest.raises(errors.UpstreamError) as caught:
            _ = [c async for c in client.download(outcome.result.sample)]
    assert caught.value.code == "untrusted_url"
    assert "127.0.0.1" in caught.value.detail and "UPSTREAM_ALLOW_PRIVATE" in caught.value.detail
    assert bfl_over_tls.fake.state()["downloads"] == 0


# --- the Tilda API's image URLs -------------------------------------------------------------


async def test_tilda_image_urls_pointing_inside_are_not_fetched(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    victim: tuple[Victim, ServedApp],
) -> None:
    """An evil (or compromised) Tilda API names internal URLs as the project's
    images: the import fails and nothing inside is requested."""
    v, inside = victim
    te.build_export(tmp_path / "export")
    fake = FakeTilda(FakeTildaConfig(export_dir=tmp_path / "export", project_id=te.PROJECT_ID))
    with serve_in_thread(fake.app) as served:
        fake.config.public_base_url = inside.base_url  # images[].from: the internal port
        settings = make_settings(
            tilda_api_url=served.base_url,
            tilda_public_key="pub-test",
            tilda_secret_key="sec-test",
            tilda_project_id=te.PROJECT_ID,
        )
        db = await open_database(settings.db_url)
        try:
            run = await import_from_api(TildaService(settings, db))
        finally:
            await db.dispose()
    assert v.seen == [], f"{len(v.seen)} internal URLs were fetched"
    assert run.status == ImportStatus.FAILED
    assert run.error_message is not None and "TILDA_ASSET_HOSTS" in run.error_message
