"""Friendly HTML error pages for the UI (never a stack trace): the status, what
went wrong in words, and the request id that finds it in the logs."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from orchestrator.ui.templating import render

HINTS = {
    403: "The page's security token did not match. Reload the page and try again.",
    404: "There is nothing at this address (or it was removed).",
    422: "The request was not valid.",
    500: "Something went wrong on the server. The request id below finds it in the logs.",
}


def page(request: Request, status: int, title: str, detail: str | None) -> Response:
    """Installed as the app's ``html_error_page`` (see ``api/problems.py``)."""
    if status >= 500:
        detail = None  # internal details stay in the logs
    response = render(
        request,
        "error.html",
        {"status": status, "title": title, "detail": detail, "hint": HINTS.get(status)},
        status_code=status,
    )
    request_id = getattr(request.state, "request_id", None)
    if request_id:
        response.headers["X-Request-ID"] = request_id
    return response


def csrf_rejected(request: Request) -> Response:
    return page(request, 403, "Forbidden", "the form's CSRF token is missing or does not match")
