"""Fixtures shared by the integration tests: settings pointing at the fake BFL, and
the fake ComfyUI served on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from tests.conftest import TEST_KEY

from orchestrator.config import Settings
from orchestrator.testing.fake_bfl import FakeBfl
from orchestrator.testing.fake_comfy import FakeComfy, FakeComfyConfig
from orchestrator.testing.serve import ServedApp, serve_in_thread

Pair = tuple[FakeComfy, ServedApp]


@pytest.fixture
def settings_for(
    make_settings: Callable[..., Settings], fake_bfl: tuple[FakeBfl, ServedApp]
) -> Callable[..., Settings]:
    """Settings for the fake BFL (key and base URL), plus ``kw``. A test module with
    other needs (webhooks, timeouts) defines its own ``settings_for``."""
    _fake, served = fake_bfl

    def make(**kw: object) -> Settings:
        base: dict[str, object] = {"bfl_api_key": TEST_KEY, "flux_base_url": served.base_url}
        base.update(kw)
        return make_settings(**base)

    return make


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
