"""Logging in to the web UI with an API token.

``GET /ui/login`` shows the form; ``POST /ui/login`` checks the token (and the form's
CSRF token, and that it comes from this origin) and starts a server-side session: the
``orch_session`` cookie (``__Host-orch_session`` over https) is opaque, HttpOnly,
SameSite=Lax, Secure over https, and expires with the session
(SESSION_TTL_S). ``POST /ui/logout`` ends it. The auth middleware (``api/auth.py``)
renders this page, with status 401, for a browser that asks for any UI page without
a session.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from orchestrator import __version__, logs
from orchestrator.api.deps import ServiceDep
from orchestrator.auth_service import SESSION_COOKIE
from orchestrator.ui import csrf

if TYPE_CHECKING:
    import jinja2

log = logs.get(__name__)
router = APIRouter(prefix="/ui", include_in_schema=False)

DEFAULT_NEXT = "/ui/"


@functools.cache
def _env() -> jinja2.Environment:
    """Built (and jinja2 imported) by the first login page, not at start-up."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


def safe_next(value: object) -> str:
    """Where to go after logging in: a path on this server, never another site."""
    if not isinstance(value, str) or not value.startswith("/") or value.startswith("//"):
        return DEFAULT_NEXT
    if any(c in value for c in "\\\r\n\t") or len(value) > 2000:
        return DEFAULT_NEXT
    return value


def login_page(
    request: Request,
    *,
    status_code: int = 200,
    next_path: object = None,
    error: str | None = None,
) -> HTMLResponse:
    html = (
        _env()
        .get_template("login.html")
        .render(
            csrf_field=csrf.CSRF_FIELD,
            csrf_token=csrf.token_for(request),
            next_path=safe_next(next_path),
            error=error,
            version=__version__,
            request_id=getattr(request.state, "request_id", None),
        )
    )
    response = HTMLResponse(html, status_code=status_code, headers={"Cache-Control": "no-store"})
    csrf.issue(request, response)
    return response


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, service: ServiceDep, next: str | None = None) -> Response:
    if service.settings.auth_disabled:
        return RedirectResponse(safe_next(next), status_code=303)
    return login_page(request, next_path=next)


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, service: ServiceDep) -> Response:
    form = await request.form()
    next_path = safe_next(form.get("next"))
    if service.settings.auth_disabled:
        return RedirectResponse(next_path, status_code=303)
    if csrf.foreign(request.headers, request.url.scheme) or not await csrf.verify(request):
        return login_page(
            request,
            status_code=403,
            next_path=next_path,
            error="The form had expired. Paste your token and try again.",
        )
    token = form.get("token")
    started = await service.tokens.start_session(token.strip()) if isinstance(token, str) else None
    if started is None:
        log.warning("ui login refused: unknown or revoked token")
        return login_page(
            request,
            status_code=401,
            next_path=next_path,
            error="That token is not valid (unknown or revoked).",
        )
    _principal, cookie, _expires = started
    response = RedirectResponse(next_path, status_code=303)
    response.set_cookie(
        csrf.cookie_name(SESSION_COOKIE, request.url.scheme),
        cookie,
        max_age=int(service.settings.session_ttl_s),
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/logout")
async def logout(request: Request, service: ServiceDep) -> Response:
    cookie = csrf.session_cookie(request)
    if cookie:
        await service.tokens.end_session(cookie)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(
        csrf.cookie_name(SESSION_COOKIE, request.url.scheme),
        path="/",
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    return response
