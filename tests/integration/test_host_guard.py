"""DNS rebinding (issue 14, item 3): a server bound to loopback answers only requests
whose Host names it. A page on a rebinding host sent ``Host`` and ``Origin`` of its own
name, which match each other: with authentication off it created an admin token (201),
queued jobs and listed tokens."""

from __future__ import annotations

from collections.abc import Callable

from tests.integration.test_api import Api, api_factory

__all__ = ["api_factory"]  # fixture, re-used

EVIL = {"Host": "evil.example:8000", "Origin": "http://evil.example:8000"}
JOB = {"backend": "flux", "params": {"model": "flux-dev", "prompt": "p", "width": 256}}


def test_a_rebinding_host_is_refused_everywhere(api_factory: Callable[..., Api]) -> None:
    api = api_factory()
    created = api.client.post("/api/tokens", json={"name": "x", "scope": "admin"}, headers=EVIL)
    assert created.status_code == 421, created.text
    assert created.headers["content-type"].startswith("application/problem+json")
    assert created.json()["type"].endswith("/misdirected-request")
    assert api.client.post("/api/generate", json=JOB, headers=EVIL).status_code == 421
    assert api.client.get("/api/tokens", headers=EVIL).status_code == 421
    assert api.client.get("/ui", headers=EVIL).status_code == 421
    # nothing was created
    assert api.client.get("/api/tokens").json() == []
    # the server's own names are answered, with any port
    for host in ("127.0.0.1:1", "localhost", "LOCALHOST:8000", "[::1]:8000"):
        r = api.client.get("/api/jobs", headers={"Host": host})
        assert r.status_code == 200, (host, r.text)


def test_allowed_hosts_adds_names(api_factory: Callable[..., Api]) -> None:
    api = api_factory(allowed_hosts="orch.example, Studio.Example")
    for host in ("orch.example", "studio.example:443", "127.0.0.1"):
        assert api.client.get("/api/jobs", headers={"Host": host}).status_code == 200, host
    assert api.client.get("/api/jobs", headers={"Host": "evil.example"}).status_code == 421
