"""Builds the v0 backend from the settings: the real API when ``V0_API_KEY`` is set,
the in-process fake (simulated) in demo mode, disabled (with its reason) otherwise."""

from __future__ import annotations

from contextlib import AsyncExitStack

import httpx2

from orchestrator.backends.v0 import V0Backend
from orchestrator.config import Settings
from orchestrator.storage import InputStore

SIMULATED_V0_ORIGIN = "http://simulated-v0.invalid"
SIMULATED_V0_KEY = "simulated-v0-key"


async def build_v0_backend(
    settings: Settings,
    stack: AsyncExitStack,
    http: httpx2.AsyncClient,
    *,
    demo: bool,
    inputs: InputStore,
    http_timeout: httpx2.Timeout,
) -> V0Backend:
    base_url = str(settings.v0_base_url)
    key = settings.v0_api_key.get_secret_value() if settings.v0_api_key is not None else None
    simulated = False
    if key is None and demo:
        from orchestrator.testing.asgi_stream import StreamingASGITransport
        from orchestrator.testing.fake_v0 import FakeV0, FakeV0Config

        fake = FakeV0(
            FakeV0Config(
                api_keys={SIMULATED_V0_KEY}, chunk_chars=48, chunk_delay_s=0.02, label="SIMULATED"
            )
        )
        http = await stack.enter_async_context(
            # in process, streamed as it is written (progress shows while v0 "types")
            httpx2.AsyncClient(transport=StreamingASGITransport(fake.app), timeout=http_timeout)
        )
        base_url, key, simulated = SIMULATED_V0_ORIGIN, SIMULATED_V0_KEY, True
    return V0Backend(
        http,
        base_url=base_url,
        api_key=key,
        inputs=inputs,
        max_active=settings.v0_max_active,
        deadline_s=settings.v0_deadline_s,
        simulated=simulated,
    )
