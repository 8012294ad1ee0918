"""CSRF protection for the web UI and for every request a session cookie authenticates.

Three layers, each enough to stop the attacks the others miss:

* **Where the request comes from.** An unsafe request carrying the session cookie (or
  any unsafe request with authentication off) is refused when the browser says it
  comes from another origin: ``Sec-Fetch-Site: cross-site`` or ``same-site`` (a page on
  another port of this host, or on a sibling subdomain), or an ``Origin`` (else a
  ``Referer``) whose scheme, host and port are not this request's own (its scheme and
  ``Host``; :func:`foreign`).
* **A token bound to the session.** The token a session must send (``X-CSRF-Token``
  header or ``csrf_token`` form field) is derived from its session cookie, which is
  HttpOnly: a page elsewhere cannot read it, and a token it tosses into a cookie of its
  own does not match. Pages get it rendered in (``<meta name="csrf-token">``, hidden
  form fields); it is never read from a cookie.
* **Before a session** (the login form, and the UI with authentication off) the token is
  a double-submit cookie, ``orch_csrf`` (``SameSite=Strict``, HttpOnly: pages get its
  value rendered in too, so no script needs to read it).

Over https both cookies carry the ``__Host-`` prefix (``__Host-orch_session``,
``__Host-orch_csrf``): the browser then accepts them only from this exact origin,
Secure, with ``Path=/`` and no ``Domain``, so a sibling subdomain or a plain-http page
cannot plant them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response

from orchestrator.auth_service import SESSION_COOKIE

CSRF_COOKIE = "orch_csrf"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
HOST_PREFIX = "__Host-"
_CONTEXT = b"orchestrator csrf v1\0"


def cookie_name(base: str, scheme: str) -> str:
    """``base`` over plain http, ``__Host-base`` over https (and wss)."""
    return HOST_PREFIX + base if scheme in ("https", "wss") else base


def session_cookie(request: Request) -> str | None:
    value = request.cookies.get(cookie_name(SESSION_COOKIE, request.url.scheme))
    return value or None


def session_token(session: str) -> str:
    """The CSRF token of a session: derived from its (HttpOnly, secret) cookie, so any
    process of the deployment can check it and nobody without the cookie can make it."""
    digest = hashlib.sha256(_CONTEXT + session.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def token_for(request: Request) -> str:
    """The token a page must send back: the session's, or before a session the
    double-submit cookie's value (or a new one; :func:`issue` then sets the cookie)."""
    session = session_cookie(request)
    if session is not None:
        return session_token(session)
    existing = request.cookies.get(cookie_name(CSRF_COOKIE, request.url.scheme))
    if existing and 16 <= len(existing) <= 128:
        return existing
    token: str | None = getattr(request.state, "csrf_token", None)
    if token is None:
        token = secrets.token_urlsafe(32)
        request.state.csrf_token = token
    return token


def issue(request: Request, response: Response) -> None:
    """Set the double-submit cookie when :func:`token_for` had to make a new token
    (pages of a session need none)."""
    if session_cookie(request) is not None:
        return
    name = cookie_name(CSRF_COOKIE, request.url.scheme)
    if request.cookies.get(name) == token_for(request):
        return
    response.set_cookie(
        name,
        token_for(request),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )


def matches(expected: str | None, submitted: str | None) -> bool:
    """Constant-time comparison of the expected and the submitted token."""
    if not expected or not submitted:
        return False
    return hmac.compare_digest(expected.encode(), submitted.encode())


_DEFAULT_PORTS = {"http": 80, "https": 443}
_PAGE_SCHEME = {"ws": "http", "wss": "https"}  # a websocket's Origin is its page's


def origin_of(url: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of an http(s) URL, the port filled in when it is the
    scheme's default; None when it is not one (``null``, ``file:``, unparsable)."""
    try:
        parts = urlsplit(url)
        scheme, host, port = parts.scheme.lower(), parts.hostname, parts.port
    except ValueError:
        return None
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    return scheme, host.lower(), _DEFAULT_PORTS[scheme] if port is None else port


def own_origin(headers: Headers, scheme: str) -> tuple[str, str, int] | None:
    """This request's own origin: its scheme (as uvicorn decided it, ``X-Forwarded-Proto``
    from a trusted proxy included) with its ``Host`` (which the Host guard has checked
    against ALLOWED_HOSTS)."""
    host = headers.get("host", "").strip()
    if not host or any(c in host for c in "/?#@\\"):
        return None
    scheme = _PAGE_SCHEME.get(scheme, scheme)
    return origin_of(f"{scheme}://{host}")


def foreign(headers: Headers, scheme: str) -> bool:
    """True when the browser says the request comes from a page of another origin:
    ``Sec-Fetch-Site`` cross-site or same-site, or an ``Origin`` (without one, a
    ``Referer``) whose scheme, host or port is not this request's (``scheme`` is the
    request's, ``http``/``https``/``ws``/``wss``). With neither header, False: the
    token decides."""
    if headers.get("sec-fetch-site") in ("cross-site", "same-site"):
        return True
    origin = headers.get("origin")
    if origin is None:
        origin = headers.get("referer")
        if not origin:
            return False
    theirs = origin_of(origin)
    return theirs is None or theirs != own_origin(headers, scheme)


async def verify(request: Request) -> bool:
    """True when a request with an unsafe method carries its token in the header or
    (for form posts) the form field: the session's token when the request has a
    session cookie, else the double-submit cookie's value. Safe methods always pass."""
    if request.method in SAFE_METHODS:
        return True
    session = session_cookie(request)
    if session is not None:
        expected: str | None = session_token(session)
    else:
        expected = request.cookies.get(cookie_name(CSRF_COOKIE, request.url.scheme))
    header = request.headers.get(CSRF_HEADER)
    if header is not None:
        return matches(expected, header)
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()
        field = form.get(CSRF_FIELD)
        return matches(expected, field if isinstance(field, str) else None)
    return False
