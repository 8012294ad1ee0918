"""CSRF beyond the double-submit cookie (issue 14, item 4), end to end on a real server.

A page on another port of this host, or on a sibling subdomain, is the same *site* but
another *origin*: it can set cookies for this host and send any header it likes with
``fetch``. So an unsafe request authenticated by the session cookie must

* come from this origin: ``Origin`` (else ``Referer``) with this request's scheme, host
  and port; ``Sec-Fetch-Site`` neither ``cross-site`` nor ``same-site``;
* carry the token bound to the session (rendered into the page, never taken from a
  cookie), so a cookie and header pair planted by another origin does not verify;

and over https the cookies are ``__Host-`` cookies (Secure, ``Path=/``, no ``Domain``),
which no other origin can plant. Bearer requests need none of this.
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
import trustme
from starlette.datastructures import Headers
from tests.integration.test_auth import (
    FLUX_JOB,
    Key,
    Server,
    _first_admin,
    _login,
    _setting_envs,
)

from orchestrator.api.app import create_app
from orchestrator.auth_service import SESSION_COOKIE
from orchestrator.config import load_settings
from orchestrator.testing.serve import serve_in_thread
from orchestrator.ui import csrf


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k in _setting_envs()}
    root = tmp_path_factory.mktemp("csrf")
    settings = load_settings(
        root / "orchestrator.toml",
        {"data_dir": root / "data", "demo_mode": "on", "worker_enabled": False},
    )
    admin = asyncio.run(_first_admin(settings.db_url))
    app = create_app(settings)
    try:
        with serve_in_thread(app, lifespan="on") as served:
            s = Server(served.base_url, app, settings, admin, admin, admin, admin)
            s.gen = s.new_token("maker", "generate")
            yield s
    finally:
        os.environ.update(saved)


def page_token(c: httpx2.Client) -> str:
    """The CSRF token a UI page of this session carries (its csrf-token meta tag)."""
    page = c.get("/ui/", headers={"Accept": "text/html"})
    found = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text)
    assert found, page.text[:500]
    return found[1]


def a_job(server: Server) -> str:
    with server.client() as c:
        r = c.post("/api/generate", json=FLUX_JOB, headers=server.gen.headers)
    assert r.status_code == 202, r.text
    job_id: str = r.json()["id"]
    return job_id


def other_scheme(base_url: str) -> str:
    """This server's host and port under the other scheme: another origin."""
    scheme, rest = base_url.split("://", 1)
    return ("https" if scheme == "http" else "http") + "://" + rest


# --- (a) a cookie and header pair tossed by another origin -------------------------------


def test_a_tossed_csrf_cookie_does_not_verify(server: Server) -> None:
    """A page on another port of this host (or a sibling subdomain) can set cookies
    for this host: one that sets orch_csrf and sends the same value in the header (or
    the form field) is refused, because a session's token is bound to the session."""
    with server.client() as c:
        _login(c, server.gen.secret)
        job_id = a_job(server)
        tossed = "t" * 43
        c.cookies.set(csrf.CSRF_COOKIE, tossed)
        r = c.post(f"/api/jobs/{job_id}/cancel", headers={csrf.CSRF_HEADER: tossed})
        assert r.status_code == 403 and r.json()["type"].endswith("csrf-failed"), r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        form = c.post("/ui/logout", data={csrf.CSRF_FIELD: tossed})
        assert form.status_code == 403
        assert c.get("/api/auth/whoami").status_code == 200  # still logged in
        ok = c.post(f"/api/jobs/{job_id}/cancel", headers={csrf.CSRF_HEADER: page_token(c)})
        assert ok.status_code == 200, ok.text


def test_the_token_is_bound_to_its_session(server: Server) -> None:
    """One session's token does not verify for another session."""
    with server.client() as mine, server.client() as theirs:
        _login(mine, server.gen.secret)
        _login(theirs, server.gen.secret)
        job_id = a_job(server)
        r = mine.post(f"/api/jobs/{job_id}/cancel", headers={csrf.CSRF_HEADER: page_token(theirs)})
        assert r.status_code == 403 and r.json()["type"].endswith("csrf-failed"), r.text


# --- (b), (c) another origin, even with the right token ----------------------------------


@pytest.mark.parametrize(
    "where",
    [
        {"Origin": "http://127.0.0.1:1"},  # another port of this host
        {"Origin": "http://evil.example"},
        {"Origin": "{other scheme}"},  # this host and port, the other scheme
        {"Origin": "null"},
        {"Sec-Fetch-Site": "same-site"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "{self}", "Sec-Fetch-Site": "cross-site"},
        {"Referer": "http://127.0.0.1:1/attack.html"},
    ],
)
def test_session_requests_from_another_origin_are_refused(
    server: Server, where: dict[str, str]
) -> None:
    where = {
        k: v.replace("{self}", server.base_url).replace(
            "{other scheme}", other_scheme(server.base_url)
        )
        for k, v in where.items()
    }
    with server.client() as c:
        _login(c, server.gen.secret)
        job_id = a_job(server)
        good = {csrf.CSRF_HEADER: page_token(c)}
        r = c.post(f"/api/jobs/{job_id}/cancel", headers={**good, **where})
        assert r.status_code == 403, r.text
        assert r.json()["type"].endswith("cross-site"), r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        # a bearer request is not a browser's: the same headers do not matter
        bearer = c.post(f"/api/jobs/{job_id}/cancel", headers={**server.gen.headers, **where})
        assert bearer.status_code == 200, bearer.text
        # the login form too (login CSRF: signing the victim in as the attacker)
        c.cookies.clear()
        c.get("/ui/login")
        token = c.cookies[csrf.CSRF_COOKIE]
        login = c.post(
            "/ui/login", data={"token": server.gen.secret, csrf.CSRF_FIELD: token}, headers=where
        )
        assert login.status_code == 403 and SESSION_COOKIE not in c.cookies


# --- (d) this origin, with the right token -----------------------------------------------


@pytest.mark.parametrize(
    "where",
    [
        {},  # no Origin, no Referer, no Sec-Fetch-*: the token decides
        {"Origin": "{self}"},
        {"Origin": "{self}", "Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "none"},  # typed in, bookmarked
        {"Referer": "{self}/ui/jobs"},
    ],
)
def test_session_requests_from_this_origin_pass(server: Server, where: dict[str, str]) -> None:
    where = {k: v.replace("{self}", server.base_url) for k, v in where.items()}
    with server.client() as c:
        _login(c, server.gen.secret)
        token = page_token(c)
        job_id = a_job(server)
        r = c.post(f"/api/jobs/{job_id}/cancel", headers={csrf.CSRF_HEADER: token, **where})
        assert r.status_code == 200 and r.json()["status"] == "canceled", r.text
        made = c.post("/api/generate", json=FLUX_JOB, headers={csrf.CSRF_HEADER: token, **where})
        assert made.status_code == 202, made.text
        form = c.post("/ui/logout", data={csrf.CSRF_FIELD: token}, headers=where)
        assert form.status_code == 303 and form.headers["location"] == "/ui/login"


# --- how "this origin" is decided --------------------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "headers", "foreign"),
    [
        ("http", {"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:8000"}, False),
        ("http", {"host": "localhost:8000", "origin": "http://LOCALHOST:8000"}, False),
        ("http", {"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:8001"}, True),
        ("http", {"host": "127.0.0.1:8000", "origin": "http://localhost:8000"}, True),
        ("http", {"host": "127.0.0.1:8000", "origin": "https://127.0.0.1:8000"}, True),
        ("https", {"host": "127.0.0.1:8443", "origin": "http://127.0.0.1:8443"}, True),
        ("https", {"host": "127.0.0.1:8443", "origin": "https://127.0.0.1:8443"}, False),
        # default ports: said or not, the same origin
        ("https", {"host": "orch.example", "origin": "https://orch.example"}, False),
        ("https", {"host": "orch.example:443", "origin": "https://orch.example"}, False),
        ("http", {"host": "orch.example", "origin": "http://orch.example:80"}, False),
        ("https", {"host": "orch.example", "origin": "https://orch.example:8443"}, True),
        ("https", {"host": "a.orch.example", "origin": "https://b.orch.example"}, True),
        ("http", {"host": "[::1]:8000", "origin": "http://[::1]:8000"}, False),
        ("http", {"host": "[::1]:8000", "origin": "http://[::1]:8001"}, True),
        # a websocket's Origin is the page's (http or https)
        ("ws", {"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:8000"}, False),
        ("wss", {"host": "127.0.0.1:8000", "origin": "https://127.0.0.1:8000"}, False),
        ("wss", {"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:8000"}, True),
        # no Origin: the Referer's origin
        ("http", {"host": "127.0.0.1:8000", "referer": "http://127.0.0.1:8000/ui/x"}, False),
        ("http", {"host": "127.0.0.1:8000", "referer": "https://127.0.0.1:8000/ui/x"}, True),
        ("http", {"host": "127.0.0.1:8000", "referer": "http://127.0.0.1:9/x"}, True),
        # nothing to go by: not foreign (the token decides)
        ("http", {"host": "127.0.0.1:8000"}, False),
        # what cannot be read is foreign
        ("http", {"host": "127.0.0.1:8000", "origin": "null"}, True),
        ("http", {"host": "127.0.0.1:8000", "origin": "http://[::1"}, True),
        ("http", {"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:99999"}, True),
        ("http", {"origin": "http://127.0.0.1:8000"}, True),  # no Host to compare with
        ("http", {"host": "127.0.0.1:8000", "origin": "file:///etc/passwd"}, True),
        # what the browser says
        ("http", {"host": "127.0.0.1:8000", "sec-fetch-site": "same-origin"}, False),
        ("http", {"host": "127.0.0.1:8000", "sec-fetch-site": "none"}, False),
        ("http", {"host": "127.0.0.1:8000", "sec-fetch-site": "same-site"}, True),
        ("http", {"host": "127.0.0.1:8000", "sec-fetch-site": "cross-site"}, True),
    ],
)
def test_this_origin_is_scheme_host_and_port(
    scheme: str, headers: dict[str, str], foreign: bool
) -> None:
    assert csrf.foreign(Headers(headers), scheme) is foreign


# --- (e) __Host- cookies over https ------------------------------------------------------


def test_cookies_carry_the_host_prefix_over_https(tmp_path: Path) -> None:
    """Over https the session and CSRF cookies are __Host- cookies (Secure, Path=/,
    no Domain): no sibling subdomain or plain-http page can plant them; a plain
    orch_session cookie is not taken there."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k in _setting_envs()}
    try:
        settings = load_settings(
            tmp_path / "orchestrator.toml",
            {"data_dir": tmp_path / "data", "demo_mode": "on", "worker_enabled": False},
        )
        admin: Key = asyncio.run(_first_admin(settings.db_url))
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
        chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        cert.private_key_pem.write_to_path(str(key))
        context = ssl.create_default_context()
        ca.configure_trust(context)
        app = create_app(settings)
        with (
            serve_in_thread(app, lifespan="on", tls=(str(chain), str(key))) as served,
            httpx2.Client(base_url=served.base_url, verify=context, timeout=30) as c,
        ):
            assert served.base_url.startswith("https://")
            page = c.get("/ui/login")
            csrf_cookie = _set_cookie(page, "__Host-" + csrf.CSRF_COOKIE)
            assert _host_prefix_rules_hold(csrf_cookie) and "httponly" in csrf_cookie.lower()
            token = c.cookies["__Host-" + csrf.CSRF_COOKIE]
            r = c.post("/ui/login", data={"token": admin.secret, csrf.CSRF_FIELD: token})
            assert r.status_code == 303, r.text
            session = _set_cookie(r, "__Host-" + SESSION_COOKIE)
            assert _host_prefix_rules_hold(session) and "httponly" in session.lower()
            assert c.get("/api/auth/whoami").json()["principal"]["via"] == "session"
            # this origin, over https, with the page's token: passes
            same = {"Origin": served.base_url, "Sec-Fetch-Site": "same-origin"}
            made = c.post(
                "/api/generate", json=FLUX_JOB, headers={csrf.CSRF_HEADER: page_token(c), **same}
            )
            assert made.status_code == 202, made.text
            # the same host and port over plain http is another origin
            plain_origin = {"Origin": other_scheme(served.base_url)}
            r = c.post(
                "/api/generate",
                json=FLUX_JOB,
                headers={csrf.CSRF_HEADER: page_token(c), **plain_origin},
            )
            assert r.status_code == 403 and r.json()["type"].endswith("cross-site"), r.text
            value = c.cookies["__Host-" + SESSION_COOKIE]
            with httpx2.Client(
                base_url=served.base_url, verify=context, cookies={SESSION_COOKIE: value}
            ) as plain:
                assert plain.get("/api/auth/whoami").status_code == 401
    finally:
        os.environ.update(saved)


def _set_cookie(r: httpx2.Response, name: str) -> str:
    found = [h for h in r.headers.get_list("set-cookie") if h.startswith(name + "=")]
    assert found, r.headers.get_list("set-cookie")
    return found[0]


def _host_prefix_rules_hold(header: str) -> bool:
    attrs = {p.strip().split("=")[0].lower(): p.strip() for p in header.split(";")[1:]}
    return "secure" in attrs and attrs.get("path") == "Path=/" and "domain" not in attrs
