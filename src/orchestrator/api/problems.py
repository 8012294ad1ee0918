"""RFC 9457 problem details: the one place exceptions become HTTP errors."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import iter_route_contexts
from pydantic import BaseModel, JsonValue
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from orchestrator import errors, logs
from orchestrator.db import engine as db_engine

log = logs.get(__name__)
PROBLEM_TYPE_BASE = "https://orchestrator.dev/problems/"
MEDIA_TYPE = "application/problem+json"
# An OSError that passed through these packages is the database's connection failing
# (asyncpg raises a refused or reset connection as a bare ConnectionRefusedError).
DATABASE_DRIVERS = frozenset({"sqlalchemy", "asyncpg", "aiosqlite"})


def database_outage(exc: BaseException) -> bool:
    """Whether an error means the database is unavailable for now (answered 503 with
    Retry-After): locked past its busy timeout, unreachable, connections cut, pool
    exhausted, or an OSError raised by the database driver. An OSError from elsewhere
    (e.g. the output folder) is not the database's."""
    if isinstance(exc, OSError):
        tb = exc.__traceback__
        while tb is not None:
            module = tb.tb_frame.f_globals.get("__name__")
            if isinstance(module, str) and module.split(".", 1)[0] in DATABASE_DRIVERS:
                return True
            tb = tb.tb_next
        return False
    return db_engine.is_transient(exc)


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    """An RFC 9457 problem document (extension members allowed)."""

    type: str
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    request_id: str | None = None
    errors: list[FieldError] | None = None
    code: str | None = None


def problem_response(
    request: Request,
    status: int,
    title: str,
    slug: str,
    detail: str | None = None,
    extra: dict[str, JsonValue] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, JsonValue] = {
        "type": PROBLEM_TYPE_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        "request_id": getattr(request.state, "request_id", None),
    }
    for k, v in (extra or {}).items():
        body.setdefault(k, v)
    return JSONResponse(
        body, status_code=status, media_type=MEDIA_TYPE, headers=dict(headers or {})
    )


# Renders an error as an HTML page (installed by the web UI): (request, status,
# title, detail) -> response.
HtmlErrorPage = Callable[[Request, int, str, str | None], Response]


def wants_html(request: Request) -> bool:
    """An HTML error page is for the web UI's pages (``/ui``, not its static files)
    when the client asks for HTML; everything else gets problem+json."""
    path = request.url.path
    if not (path == "/ui" or path.startswith("/ui/")) or path.startswith("/ui/static/"):
        return False
    return "text/html" in request.headers.get("accept", "")


def _answer(
    request: Request,
    status: int,
    title: str,
    slug: str,
    detail: str | None = None,
    extra: dict[str, JsonValue] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    page: HtmlErrorPage | None = getattr(request.app.state, "html_error_page", None)
    if page is not None and wants_html(request):
        try:
            response = page(request, status, title, detail)
        except Exception:  # the error page itself failed: fall back to the problem
            log.exception("error page failed")
        else:
            response.headers.update(dict(headers or {}))
            return response
    return problem_response(request, status, title, slug, detail, extra, headers)


def allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (Starlette's 405 names only the
    first route that matched the path, e.g. GET but not POST /api/tokens)."""
    path = request.url.path
    methods: set[str] = set()
    for ctx in iter_route_contexts(request.app.routes):
        regex = getattr(ctx, "path_regex", None)
        if regex is not None and ctx.methods and regex.match(path):
            methods |= ctx.methods
    return ", ".join(sorted(methods))


def install(app: FastAPI) -> None:
    @app.exception_handler(errors.OrchestratorError)
    async def _domain(request: Request, exc: errors.OrchestratorError) -> Response:
        extra = dict(exc.extra)
        if isinstance(exc, errors.UpstreamError):
            extra["code"] = exc.code.value
        headers = None
        if isinstance(exc, errors.DatabaseUnavailable):
            headers = {"Retry-After": str(exc.retry_after_s)}
        if exc.status >= 500:
            log.error("request failed", error=exc.detail, kind=type(exc).__name__)
        return _answer(
            request, exc.status, exc.title, exc.type_slug, exc.detail, extra, headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        field_errors: list[JsonValue] = [
            {
                "loc": [p for p in e.get("loc", ()) if isinstance(p, str | int)],
                "msg": str(e.get("msg", "")),
                "type": str(e.get("type", "")),
            }
            for e in exc.errors()
        ]
        first = field_errors[0] if field_errors else None
        where = ""
        if isinstance(first, dict) and isinstance(first.get("loc"), list):
            loc = first["loc"]
            assert isinstance(loc, list)
            where = ".".join(str(p) for p in loc)
        detail = f"{len(field_errors)} invalid field(s)" + (f", first: {where}" if where else "")
        return _answer(
            request, 422, "Invalid request", "invalid-request", detail, {"errors": field_errors}
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        title = {404: "Not found", 405: "Method not allowed", 413: "Payload too large"}.get(
            exc.status_code, "HTTP error"
        )
        slug = title.lower().replace(" ", "-")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = allowed_methods(request)
        return _answer(request, exc.status_code, title, slug, str(exc.detail), headers=headers)

    def _unavailable(request: Request, exc: Exception) -> Response:
        # Locked past the busy timeout, or unreachable: not the request's fault.
        log.warning("database unavailable", error=str(exc).splitlines()[0][:300])
        problem = errors.DatabaseUnavailable(
            "the database is busy or unreachable; try again shortly"
        )
        return _answer(
            request,
            problem.status,
            problem.title,
            problem.type_slug,
            problem.detail,
            headers={"Retry-After": str(problem.retry_after_s)},
        )

    # Handled here, not by the catch-all below: Starlette re-raises what reaches that
    # one after answering, and the server then drops the connection.
    @app.exception_handler(sa_exc.DBAPIError)
    @app.exception_handler(sa_exc.TimeoutError)
    @app.exception_handler(OSError)
    async def _database(request: Request, exc: Exception) -> Response:
        if database_outage(exc):
            return _unavailable(request, exc)
        return await _unexpected(request, exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        if database_outage(exc):
            return _unavailable(request, exc)
        log.exception("unhandled error")
        return _answer(
            request,
            500,
            "Internal error",
            "internal-error",
            "an unexpected error occurred; the request id identifies it in the logs",
        )


def document(app: FastAPI) -> None:
    """Make the OpenAPI document say what the handlers above send: every error
    response is ``application/problem+json`` with the :class:`Problem` schema, and
    every operation may answer 413 (body too large) and 500."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:  # the type FastAPI.openapi declares
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        schemas["Problem"] = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        for defs_name, defs in schemas["Problem"].pop("$defs", {}).items():
            schemas.setdefault(defs_name, defs)
        ref = {"$ref": "#/components/schemas/Problem"}
        for path_item in doc.get("paths", {}).values():
            for operation in path_item.values():
                if not isinstance(operation, dict) or "responses" not in operation:
                    continue
                responses = operation["responses"]
                codes = ["413", "500"]
                if "requestBody" in operation:
                    codes += ["400", "422"]  # unreadable body; invalid fields
                for code in codes:
                    responses.setdefault(code, {"description": "Problem"})
                for code, response in responses.items():
                    if code.startswith(("4", "5")):
                        response["content"] = {MEDIA_TYPE: {"schema": ref}}
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
