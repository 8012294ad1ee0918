"""The UI's panels: HTML fragments that pages load and refresh on their own, so
one failing panel shows its own error while the rest of the page keeps working.
Also the thumbnails and the UI's own form actions."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, time, timedelta
from pathlib import Path as FsPath
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from PIL import Image

from orchestrator import errors
from orchestrator.api.deps import get_principal
from orchestrator.backends.user_workflows import load_user_workflows
from orchestrator.domain.jobs import Job, JobStatus
from orchestrator.domain.params import BACKENDS
from orchestrator.ui import csrf, error_page, media, rerun, thumbs
from orchestrator.ui.pages import STATUSES, service_of
from orchestrator.ui.templating import render

router = APIRouter(prefix="/ui", include_in_schema=False)
TEXT_PREVIEW_BYTES = 256 * 1024
NO_STORE = {"Cache-Control": "no-store"}
Cursor = Annotated[str | None, Query(max_length=512)]


def _panel(request: Request, template: str, context: dict[str, object]) -> HTMLResponse:
    response = render(request, f"panels/{template}", context)
    response.headers.update(NO_STORE)
    return response


@router.get("/panels/queue", response_class=HTMLResponse)
async def queue(request: Request) -> HTMLResponse:
    counts = await service_of(request).repo.counts()
    totals = {s: sum(by.get(s, 0) for by in counts.values()) for s in STATUSES}
    return _panel(request, "queue.html", {"counts": counts, "totals": totals, "statuses": STATUSES})


async def _backend_rows(request: Request) -> list[dict[str, object]]:
    """Each backend: health, limit, jobs in flight and its last error."""
    service = service_of(request)
    health = await service.cached_backend_health(30.0)
    counts = await service.repo.counts()
    limits: dict[str, int] = {}
    for m in service.models():
        if m.max_active is not None:
            limits[m.backend] = max(limits.get(m.backend, 0), m.max_active)
    rows: list[dict[str, object]] = []
    for h in health:
        failed = await service.list_jobs(status=[JobStatus.FAILED], backend=[h.name], limit=1)
        last = failed.items[0] if failed.items else None
        rows.append(
            {
                "health": h,
                "limit": limits.get(h.name),
                "in_flight": counts.get(h.name, {}).get("running", 0),
                "queued": counts.get(h.name, {}).get("queued", 0),
                "last_error": last.error.message if last and last.error else None,
                "last_error_at": last.finished_at if last else None,
                "last_error_job": last.id if last else None,
            }
        )
    return rows


@router.get("/panels/backends", response_class=HTMLResponse)
async def backends(request: Request, compact: bool = False) -> HTMLResponse:
    service = service_of(request)
    instances = service.comfy_instances() if service.comfy is not None else []
    return _panel(
        request,
        "backends.html",
        {
            "rows": await _backend_rows(request),
            "instances": instances,
            "compact": compact,
            "simulated_comfy": service.comfy.simulated if service.comfy else False,
        },
    )


@router.get("/panels/workers", response_class=HTMLResponse)
async def workers(request: Request) -> HTMLResponse:
    service = service_of(request)
    listed = await service.worker_statuses()
    return _panel(
        request,
        "workers.html",
        {
            "workers": listed,
            "live": sum(1 for w in listed if w.state == "live"),
            "lease_s": service.settings.lease_s,
        },
    )


@router.get("/panels/templates", response_class=HTMLResponse)
async def templates(request: Request) -> HTMLResponse:
    service = service_of(request)
    instances = service.comfy_instances() if service.comfy is not None else []
    found, problems = load_user_workflows(service.settings.comfy_workflows_dir)
    return _panel(
        request,
        "templates.html",
        {
            "instances": instances,
            "user_workflows": sorted(found),
            "user_problems": problems,
            "workflows_dir": service.settings.comfy_workflows_dir,
        },
    )


@router.get("/panels/recent", response_class=HTMLResponse)
async def recent(request: Request) -> HTMLResponse:
    page = await service_of(request).search_outputs(limit=12)
    return _panel(request, "outputs_grid.html", {"jobs": page.items, "next_cursor": None})


@router.get("/panels/jobs", response_class=HTMLResponse)
async def jobs(
    request: Request,
    status: Annotated[list[JobStatus] | None, Query()] = None,
    backend: Annotated[str | None, Query(max_length=32)] = None,
    cursor: Cursor = None,
) -> HTMLResponse:
    page = await service_of(request).list_jobs(
        status=status or (),
        backend=[backend] if backend else (),
        cursor=cursor,
        limit=50,
    )
    return _panel(request, "jobs.html", {"jobs": page.items, "next_cursor": page.next_cursor})


async def _text_previews(request: Request, job: Job) -> dict[int, tuple[str, bool]]:
    """The text of each text/code output (the first 256 KB; True when cut)."""
    out: dict[int, tuple[str, bool]] = {}
    for o in job.outputs:
        if media.kind(o.mime_type, o.path) != "text":
            continue
        try:
            _o, path = await service_of(request).output(job.id, o.n)
        except errors.OutputNotFound:
            continue  # the template says so: no preview, the download link stays
        data = await asyncio.to_thread(_head, path)
        out[o.n] = (
            data[:TEXT_PREVIEW_BYTES].decode("utf-8", "replace"),
            len(data) > TEXT_PREVIEW_BYTES,
        )
    return out


def _head(path: FsPath) -> bytes:
    with path.open("rb") as fh:
        return fh.read(TEXT_PREVIEW_BYTES + 1)


@router.get("/panels/job/{job_id}", response_class=HTMLResponse)
async def job_summary(request: Request, job_id: str) -> HTMLResponse:
    job = await service_of(request).get_job(job_id)
    return _panel(
        request, "job_summary.html", {"job": job, "texts": await _text_previews(request, job)}
    )


@router.get("/panels/job/{job_id}/timeline", response_class=HTMLResponse)
async def job_timeline(request: Request, job_id: str) -> HTMLResponse:
    events = await service_of(request).events(job_id)
    return _panel(request, "timeline.html", {"events": events})


def _day(value: str | None, end: bool = False) -> datetime | None:
    """``YYYY-MM-DD`` as the start of that day (UTC), or of the next one for ``end``."""
    if not value:
        return None
    try:
        day = datetime.combine(datetime.strptime(value, "%Y-%m-%d").date(), time(), UTC)
    except ValueError:
        raise errors.InvalidRequest(f"dates look like 2026-01-31, not {value!r}") from None
    return day + timedelta(days=1) if end else day


@router.get("/panels/gallery", response_class=HTMLResponse)
async def gallery(
    request: Request,
    q: Annotated[str | None, Query(max_length=200)] = None,
    backend: Annotated[str | None, Query(max_length=32)] = None,
    model: Annotated[str | None, Query(max_length=64)] = None,
    date_from: Annotated[str | None, Query(alias="from", max_length=10)] = None,
    date_to: Annotated[str | None, Query(alias="to", max_length=10)] = None,
    cursor: Cursor = None,
) -> HTMLResponse:
    page = await service_of(request).search_outputs(
        text=q,
        backend=[backend] if backend in BACKENDS else (),
        model=[model] if model else (),
        created_after=_day(date_from),
        created_before=_day(date_to, end=True),
        cursor=cursor,
        limit=24,
    )
    return _panel(
        request, "outputs_grid.html", {"jobs": page.items, "next_cursor": page.next_cursor}
    )


@router.get("/panels/pick-outputs", response_class=HTMLResponse)
async def pick_outputs(
    request: Request, q: Annotated[str | None, Query(max_length=200)] = None
) -> HTMLResponse:
    page = await service_of(request).search_outputs(text=q, limit=30)
    return _panel(request, "pick_outputs.html", {"jobs": page.items})


@router.get("/thumbs/{job_id}/{n}")
async def thumb(
    request: Request, job_id: str, n: Annotated[int, Path(ge=0, le=10_000)]
) -> Response:
    """A cached thumbnail of an image output (404 for other kinds)."""
    service = service_of(request)
    out, path = await service.output(job_id, n)
    if media.kind(out.mime_type, out.path) != "image":
        raise errors.OutputNotFound(f"output {n} of job {job_id} is not an image")
    cache = service.settings.data_path / "thumbs"
    try:
        target = await asyncio.to_thread(thumbs.ensure_thumb, path, cache, out.sha256)
    except (OSError, Image.DecompressionBombError) as exc:  # not an image Pillow can read
        raise errors.OutputNotFound(f"output {n} of job {job_id} has no thumbnail: {exc}") from None
    return FileResponse(
        target,
        media_type=f"image/{thumbs.THUMB_FORMAT}",
        headers={"Cache-Control": "private, max-age=31536000, immutable"},
    )


@router.post("/jobs/{job_id}/rerun")
async def rerun_job(request: Request, job_id: str) -> Response:
    """Run a job again with a new random seed (a form post); then show the new job."""
    if not await csrf.verify(request):
        return error_page.csrf_rejected(request)
    service = service_of(request)
    principal = get_principal(request)
    job = await service.get_job(job_id)
    if rerun.has_seed(job):
        new, _ = await service.submit(
            rerun.with_new_seed(job, random.randint(0, 2**53)), principal=principal
        )
    else:
        new = await service.retry_job(job_id, principal=principal)
    return RedirectResponse(f"/ui/jobs/{new.id}", status_code=303)
