"""Ignite: check everything Orchestrator depends on, before (or while) serving.

Each check gives a :class:`CheckResult`. A failed *essential* check means the
service cannot do its job as configured (``orchestrator ignite`` exits 1); a warning
names something optional that is off or degraded."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, JsonValue

from orchestrator.db.engine import head_revision

if TYPE_CHECKING:
    from orchestrator.services import Service

CheckStatus = Literal["ok", "warn", "fail"]


class CheckResult(BaseModel):
    component: str
    status: CheckStatus
    message: str
    latency_ms: float | None = None
    details: dict[str, JsonValue] = {}
    essential: bool = True


class IgniteReport(BaseModel):
    ok: bool
    checks: list[CheckResult]


def report(checks: list[CheckResult]) -> IgniteReport:
    return IgniteReport(
        ok=not any(c.essential and c.status == "fail" for c in checks), checks=checks
    )


async def _timed(
    fn: Callable[[], Awaitable[CheckResult]],
) -> CheckResult:
    started = time.perf_counter()
    result = await fn()
    if result.latency_ms is None:
        result.latency_ms = round((time.perf_counter() - started) * 1000, 1)
    return result


async def check_database(service: Service) -> CheckResult:
    async def run() -> CheckResult:
        problem = service.db.file_problem()
        if problem is None:
            try:
                problem = await service.db.integrity_problem()
            except Exception as exc:
                problem = f"unreachable: {str(exc).splitlines()[0] if str(exc) else type(exc)}"
            else:
                problem = None if problem is None else f"integrity check failed: {problem}"
        if problem is not None:
            return CheckResult(component="database", status="fail", message=problem)
        try:
            await service.db.ping()
            current = await service.db.current_revision()
        except Exception as exc:
            return CheckResult(
                component="database",
                status="fail",
                message=f"unreachable: {str(exc).splitlines()[0] if str(exc) else type(exc)}",
            )
        head = head_revision()
        details: dict[str, JsonValue] = {"revision": current, "head": head}
        if current != head:
            return CheckResult(
                component="database",
                status="fail",
                message=f"not migrated: revision {current}, head {head}",
                details=details,
            )
        return CheckResult(
            component="database", status="ok", message=f"reachable, at head {head}", details=details
        )

    return await _timed(run)


def _check_folder(component: str, folder: Path, min_free_mb: int) -> CheckResult:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".ignite-"):
            pass
        free_mb = shutil.disk_usage(folder).free / 1_048_576
    except OSError as exc:
        return CheckResult(
            component=component,
            status="fail",
            message=f"{folder} is not writable ({exc.strerror or exc})",
            details={"path": str(folder)},
        )
    details: dict[str, JsonValue] = {"path": str(folder), "free_mb": round(free_mb, 1)}
    if free_mb < min_free_mb:
        return CheckResult(
            component=component,
            status="warn",
            message=f"writable, but only {free_mb:.0f} MB free (MIN_FREE_DISK_MB={min_free_mb})",
            details=details,
            essential=False,
        )
    return CheckResult(
        component=component,
        status="ok",
        message=f"writable, {free_mb:.0f} MB free",
        details=details,
    )


async def check_folders(service: Service) -> list[CheckResult]:
    s = service.settings
    out = []
    for component, folder in (
        ("folder:data", s.data_path),
        ("folder:output", s.output_path),
        ("folder:jobs", s.jobs_path),
    ):
        started = time.perf_counter()
        result = await asyncio.to_thread(_check_folder, component, folder, s.min_free_disk_mb)
        result.latency_ms = round((time.perf_counter() - started) * 1000, 1)
        out.append(result)
    return out


PROBE_KEY = ".orchestrator-ignite-probe"


async def check_output_store(service: Service) -> list[CheckResult]:
    """With an object store (S3): write, read back and delete a probe object. A store
    that fails this would fail every job (``storage_unavailable``), so it is essential.
    Nothing to add for the local folder (``folder:output`` covers it)."""
    store = service.store
    if store.is_local:
        return []
    objects = store.objects
    details: dict[str, JsonValue] = {"url": objects.url}
    started = time.perf_counter()
    probe = f"{PROBE_KEY}-{uuid.uuid4().hex[:8]}"
    try:
        await objects.put_bytes(probe, b"ok")
        back = await objects.read_bytes(probe)
        await objects.delete(probe)
    except OSError as exc:
        return [
            CheckResult(
                component="output_store",
                status="fail",
                message=f"{objects.url}: {exc}",
                latency_ms=round((time.perf_counter() - started) * 1000, 1),
                details=details,
            )
        ]
    latency = round((time.perf_counter() - started) * 1000, 1)
    if back != b"ok":
        return [
            CheckResult(
                component="output_store",
                status="fail",
                message=f"{objects.url}: a probe object read back different bytes",
                latency_ms=latency,
                details=details,
            )
        ]
    return [
        CheckResult(
            component="output_store",
            status="ok",
            message=f"{objects.url}: write, read and delete work",
            latency_ms=latency,
            details=details,
        )
    ]


async def check_flux(service: Service) -> CheckResult:
    flux = service.backends.get("flux")
    if flux is None or not flux.enabled:
        return CheckResult(
            component="flux", status="warn", message="BFL_API_KEY not set", essential=False
        )
    health = await flux.health()
    details: dict[str, JsonValue] = dict(health.details)
    details["simulated"] = flux.simulated
    if health.status == "ok":
        credits = health.details.get("credits")
        label = "simulated (demo mode)" if flux.simulated else "key valid"
        return CheckResult(
            component="flux",
            status="ok",
            message=f"{label}, {credits} credits" if credits is not None else label,
            latency_ms=health.latency_ms,
            details=details,
        )
    return CheckResult(
        component="flux",
        status="fail",
        message=health.reason or f"status {health.status}",
        latency_ms=health.latency_ms,
        details=details,
    )


async def check_comfy(service: Service) -> list[CheckResult]:
    pool = service.comfy
    if pool is None:
        return [
            CheckResult(
                component="comfy",
                status="warn",
                message="no ComfyUI instance configured (COMFY_URL, comfy_instances, "
                "comfy_processes)",
                essential=False,
            )
        ]
    started = time.perf_counter()
    await pool.refresh(force_info=True)
    latency = round((time.perf_counter() - started) * 1000, 1)
    out: list[CheckResult] = []
    for st in pool.statuses():
        component = f"comfy:{st.name}"
        if not st.healthy:
            out.append(
                CheckResult(
                    component=component,
                    status="fail",
                    message=f"unreachable at {st.url}: {st.last_error or 'no answer'}",
                    latency_ms=latency,
                    details={"url": st.url},
                )
            )
            continue
        free = [d.get("vram_free") for d in st.devices]
        free_mb = [round(f / 1_048_576) for f in free if isinstance(f, int | float)]
        devices: list[JsonValue] = [
            {"name": d.get("name"), "type": d.get("type"), "vram_free": d.get("vram_free")}
            for d in st.devices
        ]
        out.append(
            CheckResult(
                component=component,
                status="ok",
                message=f"ComfyUI {st.version or '(unknown version)'}, "
                f"{len(st.devices)} device(s), free memory "
                + (", ".join(f"{m} MB" for m in free_mb) or "unknown")
                + (" (simulated)" if pool.simulated else ""),
                latency_ms=latency,
                details={"url": st.url, "version": st.version, "devices": devices},
            )
        )
        for template, rep in sorted(st.templates.items()):
            missing: list[str] = [*rep.missing_nodes, *rep.missing_models]
            out.append(
                CheckResult(
                    component=f"comfy:{st.name}:{template}",
                    status="ok" if rep.ok else "warn",
                    message="nodes and models present"
                    if rep.ok
                    else "missing: " + ", ".join(missing),
                    details={
                        "missing_nodes": list(rep.missing_nodes),
                        "missing_models": list(rep.missing_models),
                    },
                    essential=False,
                )
            )
    return out


def check_processes(service: Service) -> list[CheckResult]:
    sup = service.processes
    if sup is None:
        return []
    out = []
    for st in sup.statuses():
        ok = st.state == "ready"
        out.append(
            CheckResult(
                component=f"process:{st.name}",
                status="ok" if ok else "fail",
                message=f"running (pid {st.pid}), {st.restarts} restart(s)"
                if ok
                else f"{st.state}: {st.last_error or 'not ready'} (log: {st.log_path})",
                details=st.model_dump(mode="json"),
            )
        )
    return out


def check_v0(service: Service) -> CheckResult:
    if service.settings.v0_api_key is None:
        return CheckResult(component="v0", status="warn", message="not set", essential=False)
    return CheckResult(
        component="v0",
        status="ok",
        message="set (not verified: v0 cannot be reached from here)",
        essential=False,
    )


async def run_checks(service: Service) -> list[CheckResult]:
    db, folders, store, flux, comfy = await asyncio.gather(
        check_database(service),
        check_folders(service),
        check_output_store(service),
        _timed(lambda: check_flux(service)),
        check_comfy(service),
    )
    return [db, *folders, *store, flux, *check_processes(service), *comfy, check_v0(service)]
