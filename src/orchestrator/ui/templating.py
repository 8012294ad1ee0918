"""Jinja2 set-up for the UI's pages, and the one way a handler renders one."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import HTMLResponse

from orchestrator import __version__
from orchestrator.ui import csrf, media, nav

if TYPE_CHECKING:
    import jinja2

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
STATIC_PREFIX = "/ui/static"


@functools.cache
def environment() -> jinja2.Environment:
    """The pages' Jinja2 environment, built (and jinja2 imported) by the first page
    rendered, not when the server starts."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["age"] = media.age
    env.filters["when"] = media.when
    env.filters["pct"] = media.pct
    env.filters["size"] = media.human_size
    env.filters["prompt_of"] = media.prompt_of
    env.globals["media_kind"] = media.kind
    env.globals["static"] = lambda name: f"{STATIC_PREFIX}/{name}?v={__version__}"
    return env


def render(
    request: Request,
    template: str,
    context: Mapping[str, Any] | None = None,  # Jinja's context: values of any kind
    *,
    status_code: int = 200,
    active: str | None = None,
) -> HTMLResponse:
    """Render a template to a response with the shared context (navigation, CSRF
    token, principal, request id), setting the CSRF cookie when it is new."""
    principal = getattr(request.state, "principal", None)
    runtime = getattr(request.app.state, "runtime", None)
    # a Jinja context: any value a template may use (Jinja is untyped)
    shared: dict[str, Any] = {
        "request": request,
        "nav": list(nav.NAV),
        "active": active,
        "csrf_token": csrf.token_for(request),
        "csrf_field": csrf.CSRF_FIELD,
        "principal": principal,
        "demo": bool(getattr(runtime, "demo", False)),
        "request_id": getattr(request.state, "request_id", None),
        "version": __version__,
        "now": datetime.now(UTC),
    }
    html = environment().get_template(template).render({**shared, **(context or {})})
    response = HTMLResponse(html, status_code=status_code)
    csrf.issue(request, response)
    return response
