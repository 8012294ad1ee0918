"""Imported Tilda sites: start an import (upload or server-side path), follow it,
and browse sites, pages (blocks, texts, images) and asset files."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response, status
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import UploadFile

from orchestrator import errors
from orchestrator.api.deps import ServiceDep
from orchestrator.api.files import ProblemFileResponse
from orchestrator.api.problems import Problem
from orchestrator.domain.tilda import ImportRun, Site, SitePageDetail, SitePagePage

router = APIRouter(prefix="/api/tilda", tags=["tilda"])
UPLOAD_CHUNK = 1024 * 1024
PROBLEMS: dict[int | str, dict[str, object]] = {
    404: {"model": Problem, "description": "Not found"},
}
IMPORT_PROBLEMS: dict[int | str, dict[str, object]] = {
    403: {"model": Problem, "description": "The path is outside the allowed roots"},
    422: {"model": Problem, "description": "Invalid request or export"},
}


class ImportRequest(BaseModel):
    path: str | None = Field(
        default=None,
        max_length=4096,
        description="A server-side export folder or zip under TILDA_DUMP_PATH or "
        "TILDA_IMPORT_ROOTS. Absent: TILDA_DUMP_PATH.",
    )


IMPORT_BODY = {
    "requestBody": {
        "required": False,
        "content": {
            "application/json": {"schema": ImportRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "The export zip (project<ID>.zip).",
                        }
                    },
                    "required": ["file"],
                    "additionalProperties": False,
                }
            },
        },
    }
}


@router.post(
    "/import",
    status_code=status.HTTP_202_ACCEPTED,
    responses=IMPORT_PROBLEMS,
    openapi_extra=IMPORT_BODY,
    summary="Import a Tilda export in the background",
)
async def start_import(request: Request, service: ServiceDep, response: Response) -> ImportRun:
    """Upload the export's zip as multipart ``file``, or send JSON ``{"path": …}`` for a
    folder or zip on the server (under the allowed roots); no body imports
    ``TILDA_DUMP_PATH``. Answers 202 with the run; follow it at ``Location``."""
    tilda = service.tilda
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=10, max_part_size=1024 * 1024)
        upload = form.get("file")
        others = sorted({k for k in form if k != "file"})
        if others:
            await form.close()
            raise errors.InvalidRequest(
                "the upload takes one multipart field, 'file'",
                errors=[
                    {"loc": ["body", k], "msg": "unknown field", "type": "extra_forbidden"}
                    for k in others
                ],
            )
        if not isinstance(upload, UploadFile):
            raise errors.InvalidRequest(
                "send the export zip as the multipart field 'file'",
                errors=[{"loc": ["body", "file"], "msg": "missing", "type": "missing"}],
            )

        async def chunks() -> AsyncIterator[bytes]:
            while chunk := await upload.read(UPLOAD_CHUNK):
                yield chunk

        try:
            name = (upload.filename or "upload.zip")[:200]
            path = await tilda.save_upload(chunks(), name)
        finally:
            await upload.close()
            await form.close()
        run = await tilda.start_import(path, source=name, delete_after=True)
    else:
        raw = await request.body()
        try:
            body = ImportRequest.model_validate_json(raw) if raw.strip() else ImportRequest()
        except (ValidationError, json.JSONDecodeError) as exc:
            raise errors.InvalidRequest(f"invalid import request: {exc}") from None
        path = await asyncio.to_thread(tilda.allowed_path, body.path)
        run = await tilda.start_import(path, source=path.name)
    response.headers["Location"] = f"/api/tilda/imports/{run.id}"
    return run


@router.get("/imports", summary="Recent import runs")
async def list_imports(
    service: ServiceDep, limit: Annotated[int, Query(ge=1, le=200)] = 20
) -> list[ImportRun]:
    return await service.tilda.list_imports(limit)


@router.get("/imports/{import_id}", responses=PROBLEMS, summary="An import run")
async def get_import(
    service: ServiceDep, import_id: Annotated[str, Path(max_length=64)]
) -> ImportRun:
    """Status (queued, running, succeeded, failed), progress (stage, done, total),
    the report (added/changed/removed pages, assets) or the error."""
    return await service.tilda.get_import(import_id)


@router.get("/sites", summary="Imported sites")
async def list_sites(service: ServiceDep) -> list[Site]:
    return await service.tilda.list_sites()


@router.get("/pages", summary="Imported pages")
async def list_pages(
    service: ServiceDep,
    site: Annotated[str | None, Query(max_length=64, description="A site id.")] = None,
    q: Annotated[
        str | None,
        Query(max_length=200, description="Text in the title, description, alias or blocks."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> SitePagePage:
    return await service.tilda.list_pages(site_id=site, text=q, limit=limit, offset=offset)


@router.get("/pages/{page_id}", responses=PROBLEMS, summary="An imported page")
async def get_page(
    service: ServiceDep, page_id: Annotated[str, Path(max_length=64)]
) -> SitePageDetail:
    """Blocks in order (texts with line breaks, links, image asset ids), the shared
    header and footer blocks, and the page's images."""
    return await service.get_site_page(page_id)


@router.get(
    "/assets/{asset_id}",
    responses={**PROBLEMS, 200: {"content": {"image/*": {}}, "description": "The file"}},
    response_class=ProblemFileResponse,
    summary="An imported image",
)
async def get_asset(
    service: ServiceDep, asset_id: Annotated[str, Path(max_length=64)]
) -> ProblemFileResponse:
    """Use ``asset:<id>`` as ``image_prompt``, ``input_image`` or ``init_image``."""
    asset, path = await service.tilda.asset_file(asset_id)
    return ProblemFileResponse(
        path,
        media_type=asset.mime_type,
        headers={"Cache-Control": "public, max-age=31536000, immutable"},
    )
