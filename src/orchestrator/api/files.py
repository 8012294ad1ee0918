"""File responses whose refusals are problem documents.

Starlette's ``FileResponse`` answers a malformed ``Range`` (400) and one past the end
of the file (416) with ``text/plain``; every other error of this API is an RFC 9457
problem. :class:`ProblemFileResponse` checks the range first, the same way the file
response will, and answers those two with problems (the 416 keeps its
``Content-Range: bytes */<size>``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from email.utils import formatdate

import anyio
from fastapi.responses import FileResponse
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable, Response
from starlette.types import Receive, Scope, Send

from orchestrator.api.problems import problem_response
from orchestrator.object_store import ObjectInfo, ObjectMissing, ObjectStore


def range_problem(request: Request, exc: MalformedRangeHeader | RangeNotSatisfiable) -> Response:
    """The problem document for a refused ``Range``: 400, or 416 with the size."""
    if isinstance(exc, MalformedRangeHeader):
        return problem_response(
            request, 400, "Malformed Range header", "malformed-range", exc.content
        )
    return problem_response(
        request,
        416,
        "Range not satisfiable",
        "range-not-satisfiable",
        f"the file has {exc.max_size} bytes",
        headers={"Content-Range": f"bytes */{exc.max_size}"},
    )


class ProblemFileResponse(FileResponse):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        http_range = headers.get("range")
        if_range = headers.get("if-range")
        if (
            scope["type"] == "http"
            and http_range is not None
            and self.status_code == 200
            and scope["method"].upper() in ("GET", "HEAD")
        ):
            if self.stat_result is None:
                self.stat_result = await anyio.to_thread.run_sync(os.stat, self.path)
                self.set_stat_headers(self.stat_result)
            if if_range is None or self._should_use_range(if_range):
                request = Request(scope)
                try:
                    self._parse_range_header(http_range, self.stat_result.st_size)
                except (MalformedRangeHeader, RangeNotSatisfiable) as exc:
                    await range_problem(request, exc)(scope, receive, send)
                    return
        await super().__call__(scope, receive, send)


class ProblemObjectResponse(Response):
    """An output streamed from an object store (an S3 bucket), with the same answers as
    :class:`ProblemFileResponse`: ``Accept-Ranges``, one byte range as a 206 (several
    ranges get the whole object, which RFC 9110 allows), ``If-Range`` against the
    ETag or Last-Modified, and 400 / 416 problem documents. The first chunk is read
    before the headers go out, so an object missing from the store is a 404 problem,
    not a cut-off body."""

    def __init__(
        self,
        store: ObjectStore,
        info: ObjectInfo,
        *,
        media_type: str,
        filename: str,
        etag: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(content=None, media_type=media_type, headers=headers)
        self.store = store
        self.info = info
        self.headers["accept-ranges"] = "bytes"
        self.headers["content-disposition"] = f'inline; filename="{filename}"'
        self.headers["etag"] = etag
        if info.modified is not None:
            self.headers["last-modified"] = formatdate(info.modified.timestamp(), usegmt=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope)
        size = self.info.size
        start, end, status = 0, size, 200
        http_range = request.headers.get("range")
        if_range = request.headers.get("if-range")
        use_range = if_range is None or (
            not if_range.startswith("W/")
            and if_range in (self.headers.get("etag"), self.headers.get("last-modified"))
        )
        if http_range is not None and use_range:
            try:
                ranges = FileResponse._parse_range_header(http_range, size)
            except (MalformedRangeHeader, RangeNotSatisfiable) as exc:
                await range_problem(request, exc)(scope, receive, send)
                return
            if len(ranges) == 1:
                (start, end), status = ranges[0], 206
                self.headers["content-range"] = f"bytes {start}-{end - 1}/{size}"
        self.headers["content-length"] = str(end - start)
        chunks = self.store.read(self.info.key, start, end)
        try:
            first = await anext(chunks, b"")
        except ObjectMissing:
            response = problem_response(
                request, 404, "Output not found", "output-not-found", "the output is missing"
            )
            await response(scope, receive, send)
            return
        except OSError as exc:
            response = problem_response(
                request, 502, "Output store unavailable", "upstream-error", str(exc)
            )
            await response(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": status, "headers": self.raw_headers})
        if scope["method"].upper() == "HEAD":
            await chunks.aclose()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        try:
            if first:
                await send({"type": "http.response.body", "body": first, "more_body": True})
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        finally:
            await chunks.aclose()
        await send({"type": "http.response.body", "body": b"", "more_body": False})
