"""The UI's pages (``/ui/...``): server-rendered skeletons whose live parts are
panels (see :mod:`orchestrator.ui.panels`) loaded and refreshed by the browser."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import JsonValue

from orchestrator.backends.user_workflows import load_user_workflows
from orchestrator.config import Settings, check_writable, env_name
from orchestrator.domain.jobs import JobStatus
from orchestrator.domain.params import BACKENDS
from orchestrator.services import ModelInfo, Service
from orchestrator.ui import forms, pickers, rerun
from orchestrator.ui.templating import render

router = APIRouter(prefix="/ui", include_in_schema=False)
STATUSES = [s.value for s in JobStatus]


def service_of(request: Request) -> Service:
    service: Service = request.app.state.runtime.service
    return service


@router.get("/", response_class=HTMLResponse)
async def dashboard(request: Request) -> HTMLResponse:
    return render(request, "dashboard.html", active="dashboard")


def _pick_model(models: list[ModelInfo], backend: str | None, model: str | None) -> ModelInfo:
    for m in models:
        if m.backend == backend and (model is None or m.model == model):
            return m
    return models[0]


@router.get("/generate", response_class=HTMLResponse)
async def generate(
    request: Request,
    backend: Annotated[str | None, Query(max_length=32)] = None,
    model: Annotated[str | None, Query(max_length=64)] = None,
    image: Annotated[str | None, Query(max_length=300)] = None,
    site_page_id: Annotated[str | None, Query(max_length=128)] = None,
) -> HTMLResponse:
    """The form for one (backend, model); ``image`` prefills the first image input
    (e.g. ``output:<job>/<n>`` or ``asset:<id>`` from "use as input"),
    ``site_page_id`` the v0 form's imported page."""
    service = service_of(request)
    models = service.models()
    chosen = _pick_model(models, backend, model)
    enabled = {name: b.enabled for name, b in service.backends.items()}
    reasons = {name: b.disabled_reason for name, b in service.backends.items()}
    fields = forms.fields_for(chosen.params_schema)
    return render(
        request,
        "generate.html",
        {
            "models": models,
            "chosen": chosen,
            "enabled": enabled,
            "reasons": reasons,
            "fields": fields,
            "send_model": forms.model_in_params(chosen.backend, chosen.params_schema),
            "prefill_image": image,
            "prefill_field": next(
                (f.name for f in fields if f.widget in ("image", "images")), None
            ),
            "image_sources": pickers.IMAGE_SOURCES,
            "prefill": {"site_page_id": site_page_id} if site_page_id else {},
        },
        active="generate",
    )


@router.get("/jobs", response_class=HTMLResponse)
async def jobs(
    request: Request,
    status: Annotated[list[JobStatus] | None, Query()] = None,
    backend: Annotated[str | None, Query(max_length=32)] = None,
) -> HTMLResponse:
    return render(
        request,
        "jobs.html",
        {
            "statuses": STATUSES,
            "backends": BACKENDS,
            "selected_status": [s.value for s in status or ()],
            "selected_backend": backend or "",
            "query": request.url.query,
        },
        active="jobs",
    )


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
async def job_detail(request: Request, job_id: str) -> HTMLResponse:
    job = await service_of(request).get_job(job_id)
    params: dict[str, JsonValue] = dict(job.params)
    return render(
        request,
        "job.html",
        {"job": job, "params": params, "can_reseed": rerun.has_seed(job)},
        active="jobs",
    )


@router.get("/gallery", response_class=HTMLResponse)
async def gallery(request: Request) -> HTMLResponse:
    service = service_of(request)
    q = request.query_params
    return render(
        request,
        "gallery.html",
        {
            "backends": BACKENDS,
            "models": sorted({m.model for m in service.models()}),
            "q": q.get("q", ""),
            "backend": q.get("backend", ""),
            "model": q.get("model", ""),
            "date_from": q.get("from", ""),
            "date_to": q.get("to", ""),
            "query": request.url.query,
        },
        active="gallery",
    )


@router.get("/backends", response_class=HTMLResponse)
async def backends(request: Request) -> HTMLResponse:
    return render(request, "backends.html", active="backends")


def settings_notes(service: Service) -> list[str]:
    """What is off or wrong in the running configuration, each with its reason."""
    settings: Settings = service.settings
    notes: list[str] = []
    if service.demo:
        notes.append(
            "Demo mode: backends that are not configured are simulated, and their outputs "
            "are placeholders. Set BFL_API_KEY or COMFY_URL for real ones."
        )
    for name, b in service.backends.items():
        if not b.enabled:
            notes.append(f"Backend {name} is disabled: {b.disabled_reason}")
    if settings.webhooks_disabled_reason is not None:
        notes.append(f"Webhooks are disabled: {settings.webhooks_disabled_reason}")
    for problem in check_writable(settings):
        notes.append(str(problem))
    _found, wf_problems = load_user_workflows(settings.comfy_workflows_dir)
    for file, why in wf_problems.items():
        notes.append(f"User workflow {file} is ignored: {why}")
    return notes


@router.get("/settings", response_class=HTMLResponse)
async def settings_page(request: Request) -> HTMLResponse:
    service = service_of(request)
    masked = service.settings.masked()
    rows = []
    for name, field in Settings.model_fields.items():
        env = env_name(name)
        if env not in masked:
            continue
        rows.append({"env": env, "value": masked[env], "description": field.description or ""})
    return render(
        request,
        "settings.html",
        {"rows": rows, "notes": settings_notes(service)},
        active="settings",
    )
