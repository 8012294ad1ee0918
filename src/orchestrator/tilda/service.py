"""The Tilda part of the service layer (``Service.tilda``): import runs (in-process or
in the background), and the reads every entry point needs — sites, pages, page
detail, asset files, import status."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import JsonValue

from orchestrator import errors, logs
from orchestrator.config import Settings
from orchestrator.db import tilda_assets
from orchestrator.db.engine import Database
from orchestrator.db.tilda import TildaRepo
from orchestrator.domain.tilda import (
    ImportRun,
    Site,
    SiteAsset,
    SitePageDetail,
    SitePagePage,
    parse_asset_ref,
)
from orchestrator.errors import ErrorCode
from orchestrator.object_store import (
    LocalObjectStore,
    ObjectMissing,
    ObjectStore,
    S3ObjectStore,
    StoreUnavailable,
    copy_store,
)
from orchestrator.tilda import importer
from orchestrator.tilda.archive import ExportSource, Limits, open_export

log = logs.get(__name__)

PROGRESS_WRITE_S = 0.25
HEARTBEAT_S = 5.0
UPLOADS_DIR = "tilda-uploads"

OnProgress = Callable[[str, int, int], None]


def limits_from(settings: Settings) -> Limits:
    return Limits(
        max_total_bytes=settings.tilda_max_total_mb * 1024 * 1024,
        max_files=settings.tilda_max_files,
        max_ratio=settings.tilda_max_ratio,
    )


@dataclass
class _Progress:
    stage: str = "reading"
    done: int = 0
    total: int = 0
    version: int = 0
    started: bool = False

    def set(self, stage: str, done: int, total: int) -> None:
        self.stage, self.done, self.total = stage, done, total
        self.version += 1


class TildaService:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.repo = TildaRepo(db)
        self.data_dir = settings.data_path
        self.limits = limits_from(settings)
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[ImportRun]] = set()
        self.last_timings: dict[str, float] = {}
        # With an S3 output store, imported asset files are kept in its prefix/assets/
        # too, so a node with another DATA_DIR (a worker) can read them.
        s3 = settings.output_store_s3
        self.remote_assets: ObjectStore | None = (
            None if s3 is None else S3ObjectStore(s3.child("assets"), settings.s3_credentials)
        )

    # --- imports ---------------------------------------------------------------------
    def allowed_path(self, raw: str | None) -> Path:
        """A server-side export path, which must lie under TILDA_DUMP_PATH or one of
        TILDA_IMPORT_ROOTS (symlinks resolved). ``None``: TILDA_DUMP_PATH itself."""
        dump = self.settings.tilda_dump_path
        if raw is None or not raw.strip():
            if dump is None:
                raise errors.InvalidRequest(
                    "no path given and TILDA_DUMP_PATH is not set", setting="TILDA_DUMP_PATH"
                )
            return dump
        try:
            return self._allowed(raw, dump)
        except (OSError, ValueError) as exc:  # NUL bytes, names too long…
            raise errors.InvalidRequest(f"not a usable path: {exc}") from None

    def _allowed(self, raw: str, dump: Path | None) -> Path:
        candidate = Path(raw)
        if not candidate.is_absolute():
            base = dump if dump is not None and dump.is_dir() else None
            if base is None:
                raise errors.InvalidRequest("give an absolute path (or set TILDA_DUMP_PATH)")
            candidate = base / candidate
        resolved = candidate.resolve()
        roots = [r.resolve() for r in self.settings.tilda_import_roots]
        if dump is not None:
            roots.append(dump.resolve())
        if not any(resolved == r or resolved.is_relative_to(r) for r in roots):
            raise errors.ImportPathNotAllowed(
                "the path is not under TILDA_DUMP_PATH or TILDA_IMPORT_ROOTS",
                setting="TILDA_IMPORT_ROOTS",
            )
        if not resolved.exists():
            raise errors.InvalidRequest(f"no export folder or zip at {raw}", path=raw)
        return resolved

    async def create_run(self, source: str) -> ImportRun:
        return await self.repo.create_run(source, datetime.now(UTC))

    async def import_path(
        self,
        path: Path,
        *,
        on_progress: OnProgress | None = None,
        run: ImportRun | None = None,
        delete_after: bool = False,
    ) -> ImportRun:
        """Import a folder or zip now (the CLI's way); returns the finished run. A
        refused or failed import is recorded as a failed run (not raised)."""
        run = run or await self.create_run(path.name)

        def opener() -> ExportSource:
            return open_export(path, self.limits)

        try:
            await self._execute(run.id, opener, on_progress)
        finally:
            if delete_after:
                await asyncio.to_thread(path.unlink, missing_ok=True)
        return await self.repo.get_run(run.id)

    async def import_source(
        self, run_id: str, opener: Callable[[], ExportSource], on_progress: OnProgress | None
    ) -> ImportRun:
        await self._execute(run_id, opener, on_progress)
        return await self.repo.get_run(run_id)

    async def start_import(
        self, path: Path, *, source: str, delete_after: bool = False
    ) -> ImportRun:
        """Queue an import that runs in the background; poll :meth:`get_import`."""
        run = await self.create_run(source)
        task = asyncio.create_task(
            self.import_path(path, run=run, delete_after=delete_after),
            name=f"tilda-import-{run.id}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return run

    async def save_upload(self, chunks: AsyncIterator[bytes], filename: str) -> Path:
        """Store an uploaded zip under DATA_DIR (never under its own name)."""
        folder = self.data_dir / UPLOADS_DIR
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        path = folder / f"{uuid.uuid4().hex}.zip"
        size = 0
        handle = await asyncio.to_thread(path.open, "wb")
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > self.limits.max_total_bytes:
                    raise errors.InvalidExport(
                        ErrorCode.ARCHIVE_TOO_LARGE,
                        f"the upload is larger than {self.limits.max_total_bytes} bytes",
                    )
                await asyncio.to_thread(handle.write, chunk)
        except BaseException:
            handle.close()
            path.unlink(missing_ok=True)
            raise
        handle.close()
        log.info("tilda upload stored", filename=filename[:200], bytes=size)
        return path

    async def _execute(
        self, run_id: str, opener: Callable[[], ExportSource], on_progress: OnProgress | None
    ) -> None:
        state = _Progress()

        def progress(stage: str, done: int, total: int) -> None:
            state.set(stage, done, total)
            if on_progress is not None:
                on_progress(stage, done, total)

        writer = asyncio.create_task(self._write_progress(run_id, state))
        try:
            async with self._lock:
                await self._run_locked(run_id, opener, progress, state)
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    async def _run_locked(
        self,
        run_id: str,
        opener: Callable[[], ExportSource],
        progress: OnProgress,
        state: _Progress,
    ) -> None:
        """One import; every failure is recorded on the run (never raised)."""
        await self.repo.start_run(run_id, datetime.now(UTC))
        state.started = True
        source: ExportSource | None = None
        try:
            started = time.perf_counter()
            source = await asyncio.to_thread(opener)
            outcome = await importer.run_import(self.repo, source, self.data_dir, run_id, progress)
            await self._upload_assets(run_id)
            self.last_timings = {**outcome.timings, "total_s": time.perf_counter() - started}
        except errors.InvalidExport as exc:
            await self.repo.fail_run(run_id, exc.code.value, exc.detail, datetime.now(UTC))
        except errors.OrchestratorError as exc:
            await self.repo.fail_run(
                run_id, ErrorCode.IMPORT_FAILED.value, exc.detail, datetime.now(UTC)
            )
        except Exception as exc:
            log.exception("tilda import failed", run_id=run_id)
            await self.repo.fail_run(
                run_id,
                ErrorCode.INTERNAL_ERROR.value,
                f"the import failed unexpectedly: {type(exc).__name__}",
                datetime.now(UTC),
            )
        finally:
            if source is not None:
                source.close()

    async def _write_progress(self, run_id: str, state: _Progress) -> None:
        """Progress when it changes, and a heartbeat every HEARTBEAT_S (a run that
        stops beating is shown as interrupted)."""
        seen = -1
        beat = time.monotonic()
        while True:
            await asyncio.sleep(PROGRESS_WRITE_S)
            changed = state.version != seen and state.started and state.stage != "done"
            if not changed and time.monotonic() - beat < HEARTBEAT_S:
                continue
            seen, beat = state.version, time.monotonic()
            try:
                await self.repo.progress(
                    run_id,
                    state.stage if changed else None,
                    state.done,
                    state.total,
                    datetime.now(UTC),
                )
            except Exception:
                log.warning("could not record import progress", run_id=run_id)

    async def get_import(self, run_id: str) -> ImportRun:
        return await self.repo.get_run(run_id)

    async def list_imports(self, limit: int = 20) -> list[ImportRun]:
        return await self.repo.list_runs(limit)

    async def aclose(self) -> None:
        """Wait for background imports (each is one transaction: cancelling one
        leaves the database as it was)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # --- reads ----------------------------------------------------------------------------
    async def list_sites(self) -> list[Site]:
        return await self.repo.list_sites()

    async def list_pages(
        self,
        *,
        site_id: str | None = None,
        text: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> SitePagePage:
        return await self.repo.list_pages(site_id=site_id, text=text, limit=limit, offset=offset)

    async def get_page(self, page_id: str) -> SitePageDetail:
        return await self.repo.get_page(page_id)

    async def get_asset(self, asset_id: str) -> SiteAsset:
        return await self.repo.get_asset(asset_id)

    async def list_assets(
        self,
        *,
        site_id: str | None = None,
        page_id: str | None = None,
        text: str | None = None,
        limit: int = 60,
    ) -> list[SiteAsset]:
        """Imported images to pick from: one page's, else the newest (see db.tilda_assets)."""
        return await tilda_assets.list_assets(
            self.repo.db, site_id=site_id, page_id=page_id, text=text, limit=limit
        )

    def path_of(self, asset: SiteAsset) -> Path:
        root = self.data_dir.resolve()
        path = (root / asset.path).resolve()
        if not path.is_relative_to(root / importer.ASSETS_DIR) or not path.is_file():
            raise errors.SiteNotFound(f"asset {asset.id} is missing on disk", asset_id=asset.id)
        return path

    async def asset_file(self, asset_id: str) -> tuple[SiteAsset, Path]:
        """The asset and its local file: here, or fetched from the output store's
        ``prefix/assets/`` when another node imported it."""
        asset = await self.get_asset(asset_id)
        try:
            return asset, await asyncio.to_thread(self.path_of, asset)
        except errors.SiteNotFound:
            if self.remote_assets is None:
                raise
        prefix = f"{importer.ASSETS_DIR}/"
        root = self.data_dir.resolve()
        target = (root / asset.path).resolve()
        if not asset.path.startswith(prefix) or not target.is_relative_to(root / prefix):
            raise errors.SiteNotFound(f"asset {asset.id} is missing", asset_id=asset.id)
        try:
            await self.remote_assets.get_file(asset.path.removeprefix(prefix), target)
        except ObjectMissing:
            raise errors.SiteNotFound(
                f"asset {asset.id} is missing on disk and in {self.remote_assets.url}",
                asset_id=asset.id,
            ) from None
        except StoreUnavailable as exc:
            raise errors.StorageUnavailable(f"could not read asset {asset.id}: {exc}") from exc
        return asset, await asyncio.to_thread(self.path_of, asset)

    async def _upload_assets(self, run_id: str) -> None:
        """Copy the imported asset files that the output store lacks (idempotent:
        objects already there with the same size are skipped). Failures are logged;
        the next import, or ``orchestrator storage migrate``, copies them again."""
        if self.remote_assets is None:
            return
        local = LocalObjectStore(
            self.data_dir / importer.ASSETS_DIR, hidden=(importer.STAGING_DIR,)
        )
        try:
            report = await copy_store(local, self.remote_assets)
        except OSError as exc:
            log.error("could not copy imported assets to the output store", error=str(exc))
            return
        if report.failed:
            log.error(
                "some imported assets were not copied to the output store",
                run_id=run_id,
                failed=report.failed,
                first=(report.errors or [""])[0],
            )

    async def asset_bytes(self, ref_or_id: str) -> tuple[SiteAsset, bytes]:
        """An asset's content, by id or by ``asset:<id>`` reference."""
        asset_id = parse_asset_ref(ref_or_id) or ref_or_id
        asset, path = await self.asset_file(asset_id)
        return asset, await asyncio.to_thread(path.read_bytes)

    def remove_upload_dir(self) -> None:
        shutil.rmtree(self.data_dir / UPLOADS_DIR, ignore_errors=True)


# Where generation parameters take an image that may be given as ``asset:<id>``.
FLUX_IMAGE_FIELDS = (
    "image_prompt",
    "input_image",
    "input_image_2",
    "input_image_3",
    "input_image_4",
)


async def resolve_flux_assets(
    params: dict[str, JsonValue], tilda: TildaService
) -> dict[str, JsonValue]:
    """FLUX sends images inline: each ``asset:<id>`` becomes the asset's base64."""
    out = dict(params)
    for name in FLUX_IMAGE_FIELDS:
        value = out.get(name)
        if isinstance(value, str) and parse_asset_ref(value) is not None:
            try:
                _asset, data = await tilda.asset_bytes(value)
            except errors.SiteNotFound as exc:
                raise errors.InvalidRequest(exc.detail, field=name) from None
            out[name] = base64.b64encode(data).decode("ascii")
    return out
