"""Fixtures shared by the integration tests: the fake ComfyUI served on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from orchestrator.config import Settings
from orchestrator.testing.fake_comfy import FakeComfy, FakeComfyConfig
from orchestrator.testing.serve import ServedApp, serve_in_thread

Pair = tuple[FakeComfy, ServedApp]


@pytest.fixture
def comfy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    fake = FakeComfy(FakeComfyConfig(base_dir=tmp_path_factory.mktemp("comfy")))
    with serve_in_thread(fake.app, lifespan="on") as served:
        yield fake, served


@pytest.fixture
def comfy2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    fake = FakeComfy(FakeComfyConfig(base_dir=tmp_path_factory.mktemp("comfy2")))
    with serve_in_thread(fake.app, lifespan="on") as served:
        yield fake, served


@pytest.fixture
def comfy_settings(make_settings: Callable[..., Settings], comfy: Pair) -> Callable[..., Settings]:
    def make(**kw: object) -> Settings:
        base: dict[str, object] = {
            "comfy_url": comfy[1].base_url,
            "comfy_reconcile_interval_s": 0.3,
            "comfy_health_interval_s": 0.3,
        }
        base.update(kw)
        return make_settings(**base)

    return make
