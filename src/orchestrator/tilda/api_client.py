"""Import through the Tilda API (Business plan): ``getprojectexport`` for the project
(its ``htaccess`` and home page), ``getpageslist``, then ``getpagefullexport`` per page
(full HTML already pointing at local paths, plus ``images: [{from, to}]``).

The pages and images are written as an export folder under ``DATA_DIR`` and imported
exactly like a folder export, so the result is the same; the folder is removed after.
The API has no robots.txt or sitemap.xml, so every page counts as indexable.
Requests carry ``publickey`` / ``secretkey`` from settings (never logged).

An image URL the API hands over is downloaded only when it is https on a host of
``TILDA_ASSET_HOSTS`` (Tilda's CDN) or on TILDA_API_URL's own origin, and only from a
public address unless ``UPSTREAM_ALLOW_PRIVATE`` (``outbound.AddressGuard``, every
redirect checked again); anything else fails the import, nothing inside is fetched."""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import httpx2
from pydantic import JsonValue

from orchestrator import errors, logs
from orchestrator.domain.hosts import UntrustedUrl, check_upstream_url, origin, parse_patterns
from orchestrator.domain.tilda import ImportRun
from orchestrator.errors import ErrorCode
from orchestrator.outbound import AddressGuard, Refused, guarded_stream
from orchestrator.tilda.archive import check_name

if TYPE_CHECKING:
    from orchestrator.tilda.service import OnProgress, TildaService

log = logs.get(__name__)

API_DIR = "tilda-api"


DEFAULT_ASSET_HOSTS = "*.tildacdn.com,*.tildacdn.info"


class TildaApiClient:
    def __init__(
        self,
        http: httpx2.AsyncClient,
        base_url: str,
        public_key: str,
        secret_key: str,
        *,
        asset_hosts: str = DEFAULT_ASSET_HOSTS,
        guard: AddressGuard | None = None,
    ) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self._keys = {"publickey": public_key, "secretkey": secret_key}
        self._origin = origin(self.base_url)
        self._asset_hosts = parse_patterns(asset_hosts)
        self._guard = guard or AddressGuard(False, "UPSTREAM_ALLOW_PRIVATE")

    def _asset_trusted(self, url: str) -> bool:
        return check_upstream_url(
            url,
            patterns=self._asset_hosts,
            trusted_origins=[self._origin],
            what="an image URL of the Tilda API",
            setting="TILDA_ASSET_HOSTS",
        )

    async def call(self, method: str, **params: str) -> JsonValue:
        """One API method; returns ``result`` or raises :class:`TildaApiError`."""
        url = f"{self.base_url}/v1/{method}/"
        try:
            r = await self.http.get(url, params={**self._keys, **params})
        except httpx2.HTTPError as exc:
            raise errors.TildaApiError(f"{method}: {type(exc).__name__}") from None
        if r.status_code != 200:
            raise errors.TildaApiError(f"{method}: HTTP {r.status_code}")
        try:
            doc = r.json()
        except ValueError:
            raise errors.TildaApiError(f"{method}: the answer is not JSON") from None
        if not isinstance(doc, dict):
            raise errors.TildaApiError(f"{method}: unexpected answer")
        if doc.get("status") != "FOUND":
            message = str(doc.get("message") or "unknown error")[:300]
            raise errors.TildaApiError(
                f"{method}: {message}", errorside=str(doc.get("errorside", ""))
            )
        result: JsonValue = doc.get("result")
        return result

    async def download(self, url: str, limit: int) -> bytes:
        shown = url[:100]
        try:
            async with guarded_stream(
                self.http, url, guard=self._guard, trusted=self._asset_trusted
            ) as r:
                if r.status_code != 200:
                    raise errors.TildaApiError(f"download {shown}: HTTP {r.status_code}")
                chunks = []
                size = 0
                async for chunk in r.aiter_bytes():
                    size += len(chunk)
                    if size > limit:
                        raise errors.InvalidExport(
                            ErrorCode.ARCHIVE_TOO_LARGE, "the project's files exceed the limit"
                        )
                    chunks.append(chunk)
        except (UntrustedUrl, Refused) as exc:
            raise errors.TildaApiError(f"refusing to download {shown!r}: {exc}") from None
        except OSError as exc:
            raise errors.TildaApiError(f"download {shown}: {exc}") from None
        except httpx2.HTTPError as exc:
            raise errors.TildaApiError(f"download {shown}: {type(exc).__name__}") from None
        return b"".join(chunks)


def _str(d: JsonValue, key: str) -> str:
    if isinstance(d, dict):
        v = d.get(key)
        return v if isinstance(v, str) else ""
    return ""


def _safe_file_name(name: str) -> str:
    clean = check_name(name)
    if not clean or "/" in clean:
        raise errors.InvalidExport(
            ErrorCode.UNSAFE_ARCHIVE, f"the API names an unsafe file: {name[:100]!r}"
        )
    return clean


async def fetch_project(
    client: TildaApiClient,
    project_id: str,
    folder: Path,
    *,
    max_bytes: int,
    on_progress: OnProgress | None = None,
) -> int:
    """Write the project as an export folder; returns the number of pages."""
    project = await client.call("getprojectexport", projectid=project_id)
    pages = await client.call("getpageslist", projectid=project_id)
    if not isinstance(pages, list):
        raise errors.TildaApiError("getpageslist: unexpected answer")
    await asyncio.to_thread((folder / "images").mkdir, parents=True, exist_ok=True)
    htaccess = _str(project, "htaccess")
    index_id = _str(project, "indexpageid")
    if not htaccess:
        lines = [f"DirectoryIndex page{index_id}.html"] if index_id else []
        for p in pages:
            alias, fname = _str(p, "alias"), _str(p, "filename")
            if alias and fname:
                lines.append(f"RewriteRule ^{alias}$ {fname} [NC]")
        htaccess = "\n".join(lines) + "\n"
    await asyncio.to_thread((folder / "htaccess").write_text, htaccess, encoding="utf-8")
    total = 0
    seen_images: set[str] = set()
    for i, p in enumerate(pages):
        page_id = _str(p, "id")
        if not page_id.isdigit():
            continue
        if on_progress is not None:
            on_progress("fetching", i, len(pages))
        full = await client.call("getpagefullexport", pageid=page_id)
        fname = _safe_file_name(_str(full, "filename") or f"page{page_id}.html")
        html = _str(full, "html")
        await asyncio.to_thread((folder / fname).write_text, html, encoding="utf-8")
        images = full.get("images") if isinstance(full, dict) else None
        for img in images if isinstance(images, list) else []:
            to = _safe_file_name(_str(img, "to").removeprefix("images/"))
            if to in seen_images:
                continue
            seen_images.add(to)
            data = await client.download(_str(img, "from"), max_bytes - total)
            total += len(data)
            await asyncio.to_thread((folder / "images" / to).write_bytes, data)
    if on_progress is not None:
        on_progress("fetching", len(pages), len(pages))
    return len(pages)


async def import_from_api(
    tilda: TildaService,
    *,
    on_progress: OnProgress | None = None,
    http: httpx2.AsyncClient | None = None,
    project_id: str | None = None,
) -> ImportRun:
    """Fetch the configured project through the API and import it (one tracked run)."""
    settings = tilda.settings
    pub, sec = settings.tilda_public_key, settings.tilda_secret_key
    project = project_id or settings.tilda_project_id
    if pub is None or sec is None or not project:
        raise errors.InvalidRequest(
            "importing through the Tilda API needs TILDA_PUBLIC_KEY, TILDA_SECRET_KEY and "
            "TILDA_PROJECT_ID",
            setting="TILDA_PUBLIC_KEY",
        )
    run = await tilda.create_run(f"api:project{project}")
    folder = tilda.data_dir / API_DIR / run.id
    owned = http is None
    client_http = http or httpx2.AsyncClient(
        timeout=httpx2.Timeout(
            connect=settings.http_connect_timeout_s,
            read=settings.http_read_timeout_s,
            write=settings.http_read_timeout_s,
            pool=settings.http_connect_timeout_s,
        ),
        follow_redirects=True,
        headers={"user-agent": "orchestrator"},
    )
    try:
        client = TildaApiClient(
            client_http,
            str(settings.tilda_api_url),
            pub.get_secret_value(),
            sec.get_secret_value(),
            asset_hosts=settings.tilda_asset_hosts,
            guard=AddressGuard(settings.upstream_allow_private, "UPSTREAM_ALLOW_PRIVATE"),
        )
        try:
            await fetch_project(
                client,
                project,
                folder,
                max_bytes=tilda.limits.max_total_bytes,
                on_progress=on_progress,
            )
        except errors.OrchestratorError as exc:
            code = exc.code if isinstance(exc, errors.InvalidExport) else ErrorCode.IMPORT_FAILED
            await tilda.repo.fail_run(run.id, code.value, exc.detail, datetime.now(UTC))
            return await tilda.get_import(run.id)
        return await tilda.import_path(folder, run=run, on_progress=on_progress)
    finally:
        if owned:
            await client_http.aclose()
        await asyncio.to_thread(shutil.rmtree, folder, ignore_errors=True)
