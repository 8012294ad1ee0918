"""Outputs on disk.

Files are streamed to ``OUTPUT_DIR/.partial/`` and moved into place
(``OUTPUT_DIR/YYYY/MM/DD/<job id>-<n>.<ext>``) only when complete, so a crash never
leaves a half-written output under its final name. The job's parameters are embedded
in the file itself (a PNG ``iTXt`` chunk or a JPEG ``COM`` segment, inserted without
re-encoding), and ``JOBS_DIR`` gets a JSON manifest per finished job so a folder of
outputs describes itself without the database. Width, height and (for animations and
videos) duration are recorded: from Pillow for images, from the MP4 / WebM headers
(`orchestrator.media_probe`) for videos.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import errno
import hashlib
import json
import os
import re
import struct
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import stamina
from PIL import Image, UnidentifiedImageError
from pydantic import JsonValue

from orchestrator import errors
from orchestrator.db.jobs import NewOutput
from orchestrator.domain.jobs import Job
from orchestrator.media_probe import probe_video
from orchestrator.object_store import (
    LocalObjectStore,
    ObjectInfo,
    ObjectMissing,
    ObjectStore,
    S3ObjectStore,
    StoreUnavailable,
)

if TYPE_CHECKING:
    from orchestrator.config import Settings

PARTIAL_DIR = ".partial"
# Out of space: the output folder is full (or over quota); a write may succeed later.
OUT_OF_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
# Tries at storing an output or manifest in an object store before the job fails
# (``storage_unavailable``); stamina backs off between them.
UPLOAD_ATTEMPTS = 4
# Bytes of a download held in memory before they are written out (see ``save``).
WRITE_BATCH = 1 << 20
METADATA_KEY = "orchestrator"
MAX_EMBED_STRING = 512
EXTENSIONS = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/webp": "webp",
    "image/gif": "gif",
    "video/mp4": "mp4",
    "video/webm": "webm",
    "text/x-typescript": "tsx",
    "text/markdown": "md",
}


def extension_for(mime_type: str, fallback: str = "bin") -> str:
    return EXTENSIONS.get(mime_type.split(";")[0].strip().lower(), fallback)


def sniff_mime(head: bytes) -> str | None:
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[4:8] == b"ftyp":
        return "video/mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm"
    return None


def embeddable(value: JsonValue) -> JsonValue:
    """Parameters as embedded in files: long strings (base64 images) shortened."""
    if isinstance(value, str) and len(value) > MAX_EMBED_STRING:
        return f"<{len(value)} characters omitted>"
    if isinstance(value, dict):
        return {k: embeddable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [embeddable(v) for v in value]
    return value


async def with_upload_retries(what: str, put: Callable[[], Awaitable[None]]) -> None:
    """``put``, tried again with backoff while the store is unavailable; then
    :class:`StoreUnavailable` naming ``what`` and the number of tries."""
    tries = 0
    try:
        async for attempt in stamina.retry_context(
            on=StoreUnavailable, attempts=UPLOAD_ATTEMPTS, wait_initial=0.5, wait_max=10.0
        ):
            with attempt:
                tries = attempt.num
                await put()
    except StoreUnavailable as exc:
        raise StoreUnavailable(f"could not store {what} after {tries} tries: {exc}") from exc


class OutputStore:
    """Job outputs and manifests. Downloads are always assembled in the local
    ``OUTPUT_DIR/.partial`` folder (metadata embedded, hashed, checked); then the
    finished file is moved into place in ``objects``: renamed into ``OUTPUT_DIR``
    (the default :class:`LocalObjectStore`), or uploaded whole to a bucket, before
    ``save`` returns and so before the job can be marked succeeded."""

    def __init__(
        self,
        output_dir: Path,
        jobs_dir: Path,
        *,
        objects: ObjectStore | None = None,
        manifests: ObjectStore | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.output_dir = output_dir
        self.jobs_dir = jobs_dir
        self.partial_dir = output_dir / PARTIAL_DIR
        if objects is None or isinstance(objects, LocalObjectStore):
            self.local: LocalObjectStore | None = objects or LocalObjectStore(
                output_dir, hidden=(PARTIAL_DIR,)
            )
            self.objects: ObjectStore = self.local
        else:
            self.local, self.objects = None, objects
        self.manifests: ObjectStore = manifests or LocalObjectStore(jobs_dir)
        # local copies of remote outputs (thumbnails, previews), named by content hash
        self.cache_dir = cache_dir or output_dir.parent / "cache" / "outputs"

    @property
    def is_local(self) -> bool:
        """Outputs are files under OUTPUT_DIR (not in an object store)."""
        return self.local is not None

    def location(self, relative: str) -> str:
        """Where a stored output is, for people: its path, or its ``s3://`` URL."""
        if self.local is not None:
            return str(self.resolve(relative))
        return self.objects.location(relative)

    def local_file(self, relative: str) -> Path | None:
        """The output's file when outputs are local; None in an object store."""
        return self.resolve(relative) if self.local is not None else None

    async def local_copy(self, relative: str, sha256: str) -> Path:
        """A local file with the output's bytes: the output itself when local, else a
        copy cached under ``cache_dir`` by content hash (outputs never change)."""
        if self.local is not None:
            path = self.resolve(relative)
            if not path.is_file():
                raise errors.OutputNotFound(f"output {relative} is missing on disk")
            return path
        name = relative.rsplit("/", 1)[-1]
        ext = name.rsplit(".", 1)[-1] if "." in name else "bin"
        digest = (
            sha256
            if re.fullmatch(r"[0-9a-f]{64}", sha256)
            else hashlib.sha256(relative.encode()).hexdigest()
        )
        target = self.cache_dir / digest[:2] / f"{digest}.{ext}"
        if target.is_file():
            return target
        with self._reading(relative):
            await self.objects.get_file(relative, target)
        return target

    async def stat_output(self, relative: str) -> ObjectInfo:
        """Size and modification time of a stored output (404 when it is missing)."""
        with self._reading(relative):
            info = await self.objects.stat(relative)
        return info

    async def presign_output(self, relative: str, expires_s: float) -> str | None:
        """A short-lived URL to download the output from the store itself (None: the
        store cannot make one, e.g. a local folder)."""
        with self._reading(relative, "sign"):
            url = await self.objects.presign(relative, expires_s)
        return url

    @contextlib.contextmanager
    def _reading(self, relative: str, verb: str = "read") -> Iterator[None]:
        """A missing object is a 404 (``OutputNotFound``), an unreachable store
        ``storage_unavailable``."""
        try:
            yield
        except ObjectMissing:
            raise errors.OutputNotFound(
                f"output {relative} is missing in {self.objects.url}"
            ) from None
        except StoreUnavailable as exc:
            raise errors.StorageUnavailable(f"could not {verb} output {relative}: {exc}") from exc

    async def _with_retries(self, what: str, put: Callable[[], Awaitable[None]]) -> None:
        await with_upload_retries(f"{what} in {self.objects.url}", put)

    def relative_path(self, job: Job, n: int, ext: str) -> str:
        day = job.created_at.strftime("%Y/%m/%d")
        return f"{day}/{job.id}-{n}.{ext}"

    def resolve(self, relative: str) -> Path:
        """The absolute path of a stored output; refuses anything outside OUTPUT_DIR."""
        root = self.output_dir.resolve()
        candidate = (root / relative).resolve()
        if not candidate.is_relative_to(root) or PARTIAL_DIR in candidate.parts:
            raise errors.OutputNotFound("no such output")
        return candidate

    def metadata_for(self, job: Job) -> dict[str, JsonValue]:
        return {
            "job_id": job.id,
            "backend": job.backend,
            "model": job.model,
            "params": embeddable(job.params),
            "simulated": job.simulated,
            "created_at": job.created_at.isoformat(),
            "generator": "orchestrator",
        }

    async def save_text(self, job: Job, n: int, text: str, *, mime_type: str) -> NewOutput:
        """A text output (generated code, Markdown), UTF-8, saved like any other."""

        async def one() -> AsyncIterator[bytes]:
            yield text.encode("utf-8")

        return await self.save(job, n, one(), mime_type=mime_type)

    async def save(
        self,
        job: Job,
        n: int,
        chunks: AsyncIterator[bytes],
        *,
        mime_type: str | None = None,
        extra_metadata: Mapping[str, JsonValue] | None = None,
        max_bytes: int | None = None,
        timeout_s: float | None = None,
        expect_image: bool = False,
    ) -> NewOutput:
        """Stream ``chunks`` to a partial file, embed metadata, hash, move into place.

        ``max_bytes``: a longer download stops there (``output_too_large``);
        ``timeout_s``: the whole download must end in time (``download_timeout``);
        ``expect_image``: the bytes must be an image Pillow can read. Any file that
        claims to be an image must be one (``invalid_output``). The partial file is
        removed on every path out, a cancellation included."""
        partial = self.partial_dir / f"{job.id}-{n}-{uuid.uuid4().hex[:8]}.part"
        loop = asyncio.get_running_loop()
        writing: asyncio.Future[Any] | None = None  # a write (None) or the final result
        try:
            # Chunks are gathered in memory and written WRITE_BATCH bytes at a time: a
            # small image is one hop to a thread (create, write, finalise), not one
            # per chunk.
            buffer: list[bytes] = []
            held = total = 0
            started = False
            try:
                async with asyncio.timeout(timeout_s):
                    async for chunk in chunks:
                        if chunk:
                            buffer.append(chunk)
                            held += len(chunk)
                            total += len(chunk)
                        if max_bytes is not None and total > max_bytes:
                            raise errors.UpstreamError(
                                errors.ErrorCode.OUTPUT_TOO_LARGE,
                                f"output {n} is larger than {max_bytes} bytes: download stopped",
                                limit_bytes=max_bytes,
                            )
                        if held >= WRITE_BATCH:
                            # shielded: a cancelled save waits for the write below, so
                            # the partial file is never re-created after its removal
                            writing = loop.run_in_executor(
                                None, self._append, partial, buffer, not started
                            )
                            await asyncio.shield(writing)
                            started, buffer, held = True, [], 0
            except TimeoutError:
                raise errors.UpstreamError(
                    errors.ErrorCode.DOWNLOAD_TIMEOUT,
                    f"output {n} did not finish downloading within {timeout_s:g} s",
                ) from None
            finally:
                aclose = getattr(chunks, "aclose", None)
                if aclose is not None:
                    await aclose()  # the upstream connection goes back at once
            meta = {**self.metadata_for(job), **(extra_metadata or {})}
            finishing = loop.run_in_executor(
                None,
                self._complete,
                job,
                n,
                partial,
                buffer,
                not started,
                mime_type,
                meta,
                expect_image,
            )
            writing = finishing
            out: NewOutput = await asyncio.shield(finishing)
            if self.local is None:  # to the bucket, whole, before the job can succeed
                try:
                    await self._with_retries(
                        f"output {n}", lambda: self.objects.put_file(out.path, partial)
                    )
                except StoreUnavailable as exc:
                    raise errors.StorageUnavailable(str(exc)) from exc
            return out
        except OSError as exc:
            if exc.errno in OUT_OF_SPACE:
                raise errors.StorageFull(
                    f"could not write output {n}: {exc.strerror} (the output folder is full)"
                ) from exc
            raise errors.UpstreamError(
                errors.ErrorCode.STORAGE_ERROR, f"could not write output {n}: {exc.strerror}"
            ) from exc
        finally:
            if writing is not None and not writing.done():
                await asyncio.wait({writing})
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()

    def _append(self, partial: Path, chunks: list[bytes], first: bool) -> None:
        if first:
            self.partial_dir.mkdir(parents=True, exist_ok=True)
        with partial.open("wb" if first else "ab") as fh:
            for chunk in chunks:
                fh.write(chunk)

    def _complete(
        self,
        job: Job,
        n: int,
        partial: Path,
        chunks: list[bytes],
        first: bool,
        mime_type: str | None,
        meta: dict[str, JsonValue],
        expect_image: bool = False,
    ) -> NewOutput:
        self._append(partial, chunks, first)
        return self._finalise(job, n, partial, mime_type, meta, expect_image)

    def _finalise(
        self,
        job: Job,
        n: int,
        partial: Path,
        mime_type: str | None,
        meta: dict[str, JsonValue],
        expect_image: bool = False,
    ) -> NewOutput:
        with partial.open("rb") as fh:
            # text we wrote ourselves is what it says; a binary download is sniffed
            text = (mime_type or "").startswith("text/")
            sniffed = None if text else sniff_mime(fh.read(16))
        mime = sniffed or (mime_type or "application/octet-stream")
        if expect_image and not mime.startswith("image/"):
            raise invalid_output(n, f"it is not an image ({_describe(partial)})")
        payload = json.dumps(meta, separators=(",", ":"), ensure_ascii=False)
        if mime == "image/png":
            _embed_png(partial, payload)
        elif mime == "image/jpeg":
            _embed_jpeg(partial, payload)
        width = height = None
        duration_s: float | None = None
        if mime.startswith("image/"):
            try:
                with Image.open(partial) as im:
                    width, height = im.size
                    duration_s = _animation_seconds(im)
                with Image.open(partial) as im:
                    im.verify()  # the structure (PNG chunk checksums…), no full decode
            except (UnidentifiedImageError, OSError, EOFError, SyntaxError, ValueError) as exc:
                raise invalid_output(n, f"it does not read as {mime}: {exc}") from None
        elif mime in ("video/mp4", "video/webm"):
            # from the container headers; a video they do not describe is kept without them
            video = probe_video(partial, mime)
            if video is not None:
                width, height, duration_s = video.width, video.height, video.duration_s
        digest = hashlib.sha256()
        size = 0
        with partial.open("rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
                size += len(block)
        rel = self.relative_path(job, n, extension_for(mime))
        if self.local is not None:  # flushed, then renamed into place
            self.local.place(rel, partial)
        # else: ``save`` uploads the partial file under ``rel``
        return NewOutput(
            n=n,
            path=rel,
            mime_type=mime,
            size_bytes=size,
            sha256=digest.hexdigest(),
            width=width,
            height=height,
            duration_s=duration_s,
        )

    async def write_manifest(self, job: Job, *, repair: bool = False) -> Path | None:
        """``JOBS_DIR/YYYY/MM/DD/<job id>.json``: the job, its parameters and outputs.
        ``repair``: a manifest a crash may have cut short; its temporary files are
        looked for and removed (a scan of the day's folder, so not on every write).
        With manifests in an object store: the same key there (None is returned), an
        ``OSError`` when it cannot be stored after a few tries."""
        if isinstance(self.manifests, LocalObjectStore):
            return await asyncio.to_thread(self._write_manifest, job, repair)
        data = json.dumps(self._manifest_doc(job), indent=2, ensure_ascii=False).encode()
        key = f"{job.created_at.strftime('%Y/%m/%d')}/{job.id}.json"
        await self._with_retries(
            f"the manifest of job {job.id}", lambda: self.manifests.put_bytes(key, data)
        )
        return None

    def _manifest_doc(self, job: Job) -> dict[str, Any]:
        doc = job.model_dump(mode="json")
        doc["params"] = embeddable(doc["params"])
        doc["output_root"] = str(self.output_dir) if self.local is not None else self.objects.url
        return doc

    def manifest_path(self, job: Job) -> Path:
        return self.jobs_dir / job.created_at.strftime("%Y/%m/%d") / f"{job.id}.json"

    def _write_manifest(self, job: Job, repair: bool = False) -> Path:
        path = self.manifest_path(job)
        path.parent.mkdir(parents=True, exist_ok=True)
        if repair:
            self._remove_manifest_temps(path)  # left by a process killed mid-write
        doc = self._manifest_doc(job)
        tmp = path.with_suffix(f".{uuid.uuid4().hex[:8]}.tmp")
        try:
            tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False), encoding="utf-8")
            tmp.replace(path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return path

    @staticmethod
    def _remove_manifest_temps(path: Path) -> None:
        for stale in path.parent.glob(f"{path.stem}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()

    def remove_partials(self, job_id: str | None = None, older_than_s: float | None = None) -> int:
        """Delete partial files of one job (taken over after a crash), or all
        partials older than ``older_than_s``. Returns how many were removed."""
        if not self.partial_dir.is_dir():
            return 0
        removed = 0
        now = time.time()
        pattern = f"{job_id}-*.part" if job_id else "*.part"
        for p in self.partial_dir.glob(pattern):
            try:
                if older_than_s is not None and now - p.stat().st_mtime < older_than_s:
                    continue
                p.unlink()
                removed += 1
            except FileNotFoundError:
                continue
        return removed


def invalid_output(n: int, why: str) -> errors.UpstreamError:
    return errors.UpstreamError(errors.ErrorCode.INVALID_OUTPUT, f"output {n} is refused: {why}")


def _describe(path: Path) -> str:
    """What a refused file starts with, for the error message (printable bytes only)."""
    with path.open("rb") as fh:
        head = fh.read(40)
    shown = "".join(chr(b) if 32 <= b < 127 else "." for b in head)
    return f"{path.stat().st_size} bytes starting {shown!r}"


def _animation_seconds(im: Image.Image) -> float | None:
    """Total duration of an animated image (WEBP, APNG, GIF); None for stills."""
    frames = int(getattr(im, "n_frames", 1))
    if frames <= 1:
        return None
    total_ms = 0.0
    for i in range(frames):
        im.seek(i)
        im.load()  # WEBP reports a frame's duration only once it is decoded
        total_ms += float(im.info.get("duration", 0) or 0)
    return round(total_ms / 1000, 3)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _embed_png(path: Path, text: str) -> None:
    """Insert an ``iTXt`` chunk just before ``IEND`` (no re-encoding)."""
    with path.open("r+b") as fh:
        fh.seek(-12, os.SEEK_END)
        tail = fh.read(12)
        if tail[4:8] != b"IEND":
            return
        fh.seek(-12, os.SEEK_END)
        data = METADATA_KEY.encode() + b"\x00\x00\x00\x00\x00" + text.encode("utf-8")
        fh.write(_png_chunk(b"iTXt", data))
        fh.write(tail)
        fh.truncate()


def _embed_jpeg(path: Path, text: str) -> None:
    """Insert a ``COM`` segment after SOI (no re-encoding). One segment holds at
    most 65,533 bytes: larger metadata keeps its identity fields only (the full
    parameters are in the manifest and the database)."""
    payload = f"{METADATA_KEY}:{text}".encode()
    if len(payload) > 65_533:
        doc = json.loads(text)
        small = {k: v for k, v in doc.items() if k != "params"}
        small["params_omitted"] = "too large for a JPEG comment; see the job manifest"
        payload = f"{METADATA_KEY}:{json.dumps(small, separators=(',', ':'))}".encode()[:65_533]
    tmp = path.with_name(path.stem + "-com.part")
    try:
        with path.open("rb") as src, tmp.open("wb") as dst:
            soi = src.read(2)
            if soi != b"\xff\xd8":
                return
            dst.write(soi)
            dst.write(b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload)
            _copy(src, dst)
        tmp.replace(path)
    finally:  # a full disk (or any failure) leaves no temp file behind
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _copy(src: BinaryIO, dst: BinaryIO) -> None:
    while block := src.read(1 << 20):
        dst.write(block)


def read_embedded(path: Path) -> dict[str, JsonValue] | None:
    """The metadata Orchestrator embedded in an output file, if any."""
    with Image.open(path) as im:
        im.load()  # text chunks after the image data are read only on load
        if im.format == "PNG":
            raw = im.info.get(METADATA_KEY)
        elif im.format == "JPEG":
            com = im.info.get("comment", b"")
            raw = com.decode("utf-8", "replace") if isinstance(com, bytes) else str(com)
            raw = raw.removeprefix(f"{METADATA_KEY}:") if raw.startswith(METADATA_KEY) else None
        else:
            raw = None
    if not raw:
        return None
    doc = json.loads(raw)
    return doc if isinstance(doc, dict) else None


def input_store_for(settings: Settings) -> InputStore:
    """``DATA_DIR/inputs``, backed by ``prefix/inputs`` of an S3 output store."""
    s3 = settings.output_store_s3
    remote = None if s3 is None else S3ObjectStore(s3.child("inputs"), settings.s3_credentials)
    return InputStore(settings.data_path / "inputs", remote)


def output_store_for(settings: Settings) -> OutputStore:
    """The output store the settings name: the local OUTPUT_DIR and JOBS_DIR, or an S3
    bucket (``OUTPUT_STORE_URL=s3://bucket/prefix``: outputs under ``prefix/outputs``,
    manifests under ``prefix/jobs``). Partial downloads stay in the local OUTPUT_DIR."""
    cache = settings.data_path / "cache" / "outputs"
    s3 = settings.output_store_s3
    if s3 is None:
        return OutputStore(settings.output_path, settings.jobs_path, cache_dir=cache)
    creds = settings.s3_credentials
    return OutputStore(
        settings.output_path,
        settings.jobs_path,
        objects=S3ObjectStore(s3.child("outputs"), creds),
        manifests=S3ObjectStore(s3.child("jobs"), creds),
        cache_dir=cache,
    )


INPUT_REF = re.compile(r"^input:([0-9a-f]{64})\.(png|jpg|webp|gif)$")
MAX_INPUT_BYTES = 20 * 1024 * 1024


class InputStore:
    """Input images (SVD init images, img2img sources), stored once by content hash
    under ``DATA_DIR/inputs`` and referenced from job parameters as
    ``input:<sha256>.<ext>`` (so a job row never carries megabytes of base64).

    With ``remote`` (the S3 output store's ``prefix/inputs/``), each input is also
    uploaded there before its job is queued, and a process that lacks it locally (a
    worker on another machine) fetches it into its own folder on first use: the
    content hash names it, so a local copy is always the same bytes."""

    def __init__(self, inputs_dir: Path, remote: ObjectStore | None = None) -> None:
        self.inputs_dir = inputs_dir
        self.remote = remote

    def save(self, data: bytes) -> str:
        if len(data) > MAX_INPUT_BYTES:
            raise errors.InvalidRequest(f"input image larger than {MAX_INPUT_BYTES} bytes")
        mime = sniff_mime(data[:16])
        if mime not in ("image/png", "image/jpeg", "image/webp", "image/gif"):
            raise errors.InvalidRequest("input image must be PNG, JPEG, WEBP or GIF")
        digest = hashlib.sha256(data).hexdigest()
        ext = extension_for(mime)
        path = self.inputs_dir / f"{digest}.{ext}"
        if not path.exists():
            self.inputs_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{digest}.{uuid.uuid4().hex[:8]}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return f"input:{digest}.{ext}"

    async def store(self, data: bytes) -> str:
        """:meth:`save`, and with a remote store, the upload there (retried; then
        ``storage_unavailable``)."""
        ref = await asyncio.to_thread(self.save, data)
        remote = self.remote
        if remote is not None:
            key = ref.removeprefix("input:")

            async def put() -> None:
                if not await remote.exists(key):
                    await remote.put_bytes(key, data)

            try:
                await with_upload_retries(f"input {ref} in {remote.url}", put)
            except StoreUnavailable as exc:
                raise errors.StorageUnavailable(str(exc)) from exc
        return ref

    def path(self, ref: str) -> Path:
        if not INPUT_REF.match(ref):
            raise errors.InvalidRequest(f"not an input reference: {ref[:80]!r}")
        path = self.inputs_dir / ref.removeprefix("input:")
        if not path.is_file():
            raise errors.InvalidRequest(f"input {ref} is missing")
        return path

    async def fetch(self, ref: str) -> Path:
        """The local file of ``ref``: already here, or copied from the remote store."""
        if not INPUT_REF.match(ref):
            raise errors.InvalidRequest(f"not an input reference: {ref[:80]!r}")
        path = self.inputs_dir / ref.removeprefix("input:")
        if path.is_file() or self.remote is None:
            return self.path(ref)
        try:
            await self.remote.get_file(path.name, path)
        except ObjectMissing:
            raise errors.InvalidRequest(f"input {ref} is missing") from None
        except StoreUnavailable as exc:
            raise errors.StorageUnavailable(f"could not read input {ref}: {exc}") from exc
        return path


def decode_image_data(value: str) -> bytes:
    """Base64 (or a ``data:`` URL) to bytes, refusing anything else."""
    text = value.strip()
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise errors.InvalidRequest("image is not valid base64 or a data: URL") from exc
