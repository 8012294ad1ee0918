"""CSRF protection for the web UI: the double-submit pattern.

The UI keeps a random token in the ``orch_csrf`` cookie (readable by our own scripts,
``SameSite=Strict``). Every unsafe request the UI makes carries the same value, as the
``csrf_token`` form field (HTML forms) or the ``X-CSRF-Token`` header (``fetch``).
A request authenticated by the session cookie and sent with an unsafe method must
pass :func:`verify`; requests with a bearer token need not (no ambient credential).
"""

from __future__ import annotations

import hmac
import secrets

from starlette.requests import Request
from starlette.responses import Response

CSRF_COOKIE = "orch_csrf"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


def token_for(request: Request) -> str:
    """The request's CSRF token: the cookie's value, or a new one (then :func:`issue`
    must set it on the response)."""
    existing = request.cookies.get(CSRF_COOKIE)
    if existing and 16 <= len(existing) <= 128:
        return existing
    token: str | None = getattr(request.state, "csrf_token", None)
    if token is None:
        token = secrets.token_urlsafe(32)
        request.state.csrf_token = token
    return token


def issue(request: Request, response: Response) -> None:
    """Set the cookie when :func:`token_for` had to make a new token."""
    if request.cookies.get(CSRF_COOKIE) == token_for(request):
        return
    response.set_cookie(
        CSRF_COOKIE,
        token_for(request),
        httponly=False,  # our scripts copy it into the X-CSRF-Token header
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )


def matches(cookie: str | None, submitted: str | None) -> bool:
    """Constant-time comparison of the cookie and the submitted token."""
    if not cookie or not submitted:
        return False
    return hmac.compare_digest(cookie.encode(), submitted.encode())


async def verify(request: Request) -> bool:
    """True when a request with an unsafe method carries the cookie's token in the
    header or (for form posts) the form field. Safe methods always pass."""
    if request.method in SAFE_METHODS:
        return True
    cookie = request.cookies.get(CSRF_COOKIE)
    header = request.headers.get(CSRF_HEADER)
    if header is not None:
        return matches(cookie, header)
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()
        field = form.get(CSRF_FIELD)
        return matches(cookie, field if isinstance(field, str) else None)
    return False
