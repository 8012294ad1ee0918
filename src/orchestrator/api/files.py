"""File responses whose refusals are problem documents.

Starlette's ``FileResponse`` answers a malformed ``Range`` (400) and one past the end
of the file (416) with ``text/plain``; every other error of this API is an RFC 9457
problem. :class:`ProblemFileResponse` checks the range first, the same way the file
response will, and answers those two with problems (the 416 keeps its
``Content-Range: bytes */<size>``).
"""

from __future__ import annotations

import os

import anyio
from fastapi.responses import FileResponse
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable
from starlette.types import Receive, Scope, Send

from orchestrator.api.problems import problem_response


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
                except MalformedRangeHeader as exc:
                    response = problem_response(
                        request, 400, "Malformed Range header", "malformed-range", exc.content
                    )
                    await response(scope, receive, send)
                    return
                except RangeNotSatisfiable as exc:
                    response = problem_response(
                        request,
                        416,
                        "Range not satisfiable",
                        "range-not-satisfiable",
                        f"the file has {exc.max_size} bytes",
                        headers={"Content-Range": f"bytes */{exc.max_size}"},
                    )
                    await response(scope, receive, send)
                    return
        await super().__call__(scope, receive, send)
