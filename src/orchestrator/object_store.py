"""Where outputs and job manifests are kept: a local folder (the default) or an
S3-compatible bucket (``OUTPUT_STORE_URL=s3://bucket/prefix``).

:class:`ObjectStore` is the small interface both implement: put (a whole file or
bytes, atomic from a reader's side), read with a byte range, stat, exists, delete,
list and, where the store can, a presigned download URL. Keys are ``/``-separated
relative paths (``2026/03/07/<job id>-0.png``).

The S3 implementation uses obstore (the Rust ``object_store`` crate): native async,
typed, multipart uploads for large files and request signing built in, no botocore.
Its errors become :class:`ObjectMissing` (a ``FileNotFoundError``) and
:class:`StoreUnavailable` (an ``OSError``), so callers that already handle file
errors handle the bucket's too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from obstore.store import S3Store

READ_CHUNK = 256 * 1024
TEMP_SUFFIX = ".tmp"


class ObjectMissing(FileNotFoundError):
    """No object under that key."""


class StoreUnavailable(OSError):
    """The store could not be reached or refused the request (network, 5xx, auth)."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    modified: datetime | None = None
    etag: str | None = None


class ObjectStore(ABC):
    """A flat namespace of immutable-ish objects under ``/``-separated keys."""

    @property
    @abstractmethod
    def url(self) -> str:
        """Where the store is (a folder, or ``s3://bucket/prefix``), for messages."""

    def location(self, key: str) -> str:
        """Where one object is, for people (a path or an ``s3://`` URL)."""
        return f"{self.url.rstrip('/')}/{key}"

    def local_path(self, key: str) -> Path | None:
        """The object's file when the store is a local folder; None otherwise."""
        return None

    @abstractmethod
    async def put_file(self, key: str, source: Path, *, move: bool = False) -> None:
        """Store the file ``source`` under ``key``, whole or not at all. ``move``: the
        source may be consumed (a local store renames it into place)."""

    @abstractmethod
    async def put_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, whole or not at all."""

    @abstractmethod
    async def stat(self, key: str) -> ObjectInfo:
        """Size and modification time (:class:`ObjectMissing` when absent)."""

    async def exists(self, key: str) -> bool:
        try:
            await self.stat(key)
        except ObjectMissing:
            return False
        return True

    @abstractmethod
    def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncGenerator[bytes, None]:
        """The bytes ``[start, end)`` of the object (``end`` None: to its end), in
        chunks. :class:`ObjectMissing` when absent, raised on the first iteration."""

    async def read_bytes(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        return b"".join([chunk async for chunk in self.read(key, start, end)])

    async def get_file(self, key: str, target: Path) -> None:
        """Copy the object to the local file ``target`` (written aside, then renamed)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")
        try:
            with tmp.open("wb") as fh:
                async for chunk in self.read(key):
                    await asyncio.to_thread(fh.write, chunk)
            tmp.replace(target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Remove the object; removing an absent one is not an error."""

    @abstractmethod
    def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in no promised order."""

    async def presign(self, key: str, expires_s: float) -> str | None:
        """A URL anyone may GET the object from for ``expires_s``; None when the
        store cannot make one (a local folder)."""
        return None


# --- local folder -------------------------------------------------------------------


class LocalObjectStore(ObjectStore):
    """Objects are files under ``root``. Top-level folders in ``hidden`` (the partial
    downloads) and temporary files are not objects."""

    def __init__(self, root: Path, *, hidden: tuple[str, ...] = ()) -> None:
        self.root = root
        self.hidden = frozenset(hidden)

    @property
    def url(self) -> str:
        return str(self.root)

    def location(self, key: str) -> str:
        return str(self.path(key))

    def local_path(self, key: str) -> Path | None:
        return self.path(key)

    def path(self, key: str) -> Path:
        """The file of ``key``; anything outside the root or hidden is missing."""
        root = self.root.resolve()
        candidate = (root / key).resolve()
        if (
            not key
            or not candidate.is_relative_to(root)
            or candidate == root
            or self.hidden.intersection(candidate.relative_to(root).parts)
        ):
            raise ObjectMissing(f"no such object: {key!r}")
        return candidate

    def place(self, key: str, source: Path) -> Path:
        """Move the (complete) file ``source`` into place under ``key``: flushed to
        disk first, then renamed, so a reader sees the whole file or none."""
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        with source.open("rb") as fh:
            os.fsync(fh.fileno())
        source.replace(final)
        return final

    def _write_aside(self, key: str, data: bytes | Path) -> None:
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")
        try:
            with tmp.open("wb") as dst:
                if isinstance(data, bytes):
                    dst.write(data)
                else:
                    with data.open("rb") as src:
                        while block := src.read(1 << 20):
                            dst.write(block)
                dst.flush()
                os.fsync(dst.fileno())
            tmp.replace(final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    async def put_file(self, key: str, source: Path, *, move: bool = False) -> None:
        if move:
            await asyncio.to_thread(self.place, key, source)
        else:
            await asyncio.to_thread(self._write_aside, key, source)

    async def put_bytes(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._write_aside, key, data)

    async def stat(self, key: str) -> ObjectInfo:
        path = self.path(key)
        try:
            st = await asyncio.to_thread(path.stat)
        except FileNotFoundError:
            raise ObjectMissing(f"no such object: {key!r}") from None
        if not path.is_file():
            raise ObjectMissing(f"no such object: {key!r}")
        return ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    async def read(
        self, key: str, start: int = 0, end: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        path = self.path(key)
        try:
            fh = await asyncio.to_thread(path.open, "rb")
        except (FileNotFoundError, IsADirectoryError):
            raise ObjectMissing(f"no such object: {key!r}") from None
        try:
            await asyncio.to_thread(fh.seek, start)
            left = None if end is None else max(0, end - start)
            while left is None or left > 0:
                want = READ_CHUNK if left is None else min(READ_CHUNK, left)
                chunk = await asyncio.to_thread(fh.read, want)
                if not chunk:
                    return
                if left is not None:
                    left -= len(chunk)
                yield chunk
        finally:
            fh.close()

    async def delete(self, key: str) -> None:
        path = self.path(key)
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(path.unlink)

    def _walk(self) -> list[ObjectInfo]:
        found: list[ObjectInfo] = []
        if not self.root.is_dir():
            return found
        for folder, dirs, files in os.walk(self.root):
            here = Path(folder)
            if here == self.root:
                dirs[:] = [d for d in dirs if d not in self.hidden]
            for name in files:
                if name.endswith(TEMP_SUFFIX) or name.endswith(".part"):
                    continue
                p = here / name
                try:
                    st = p.stat()
                except FileNotFoundError:
                    continue
                key = p.relative_to(self.root).as_posix()
                found.append(ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC)))
        return found

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        for info in await asyncio.to_thread(self._walk):
            if info.key.startswith(prefix):
                yield info


# --- S3-compatible bucket -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class S3Location:
    bucket: str
    prefix: str  # no leading or trailing "/"; may be empty

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """``s3://bucket`` or ``s3://bucket/some/prefix`` (ValueError otherwise)."""
        if not url.startswith("s3://"):
            raise ValueError("must start with s3://")
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not bucket or not all(c.isalnum() or c in ".-_" for c in bucket):
            raise ValueError("needs a bucket name: s3://bucket[/prefix]")
        prefix = prefix.rstrip("/")
        if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
            raise ValueError("the prefix may not have empty, '.' or '..' parts")
        return cls(bucket, prefix)

    def child(self, name: str) -> S3Location:
        return S3Location(self.bucket, f"{self.prefix}/{name}" if self.prefix else name)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


@dataclass(frozen=True, slots=True)
class S3Credentials:
    """Endpoint, region and keys (from the usual AWS variables, read with the
    settings). None: the AWS defaults (and obstore's own lookup)."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    connect_timeout_s: float = 5.0
    timeout_s: float = 300.0


class S3ObjectStore(ObjectStore):
    def __init__(self, where: S3Location, creds: S3Credentials) -> None:
        from obstore.store import S3Store

        self.where = where
        config: dict[str, str] = {}
        if creds.endpoint_url:
            config["endpoint"] = creds.endpoint_url
        if creds.region:
            config["region"] = creds.region
        if creds.access_key_id:
            config["access_key_id"] = creds.access_key_id
        if creds.secret_access_key:
            config["secret_access_key"] = creds.secret_access_key
        http = bool(creds.endpoint_url and creds.endpoint_url.startswith("http://"))
        self._store: S3Store = S3Store(
            where.bucket,
            prefix=where.prefix or None,
            config=config,  # type: ignore[arg-type]  # a plain dict of known S3Config keys
            client_options={
                "allow_http": http,
                "connect_timeout": timedelta(seconds=creds.connect_timeout_s),
                "timeout": timedelta(seconds=creds.timeout_s),
            },
            # a couple of quick tries inside; the callers retry with backoff (stamina)
            retry_config={"max_retries": 1, "retry_timeout": timedelta(seconds=30)},
        )

    @property
    def url(self) -> str:
        return str(self.where)

    @staticmethod
    def _check_key(key: str) -> str:
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in key.split("/")):
            raise ObjectMissing(f"no such object: {key!r}")
        return key

    @staticmethod
    def _translate(exc: Exception, key: str) -> OSError:
        from obstore.exceptions import NotFoundError

        if isinstance(exc, (NotFoundError, FileNotFoundError)):
            return ObjectMissing(f"no such object: {key!r}")
        first = (str(exc).strip().splitlines() or [""])[0]
        return StoreUnavailable(f"{type(exc).__name__}: {first}"[:300])

    async def put_file(self, key: str, source: Path, *, move: bool = False) -> None:
        import obstore

        self._check_key(key)
        try:
            # multipart (5 MB parts) above 5 MB: the object appears only once complete
            await obstore.put_async(self._store, key, source)
        except Exception as exc:
            raise self._translate(exc, key) from exc

    async def put_bytes(self, key: str, data: bytes) -> None:
        import obstore

        self._check_key(key)
        try:
            await obstore.put_async(self._store, key, data)
        except Exception as exc:
            raise self._translate(exc, key) from exc

    async def stat(self, key: str) -> ObjectInfo:
        import obstore

        self._check_key(key)
        try:
            meta = await obstore.head_async(self._store, key)
        except Exception as exc:
            raise self._translate(exc, key) from exc
        return ObjectInfo(key, int(meta["size"]), meta["last_modified"], meta["e_tag"])

    async def read(
        self, key: str, start: int = 0, end: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        import obstore

        self._check_key(key)
        if end is not None and end <= start:
            await self.stat(key)  # still: a missing object is missing
            return
        try:
            if start == 0 and end is None:
                result = await obstore.get_async(self._store, key)
            elif end is None:
                result = await obstore.get_async(
                    self._store, key, options={"range": {"offset": start}}
                )
            else:
                result = await obstore.get_async(self._store, key, options={"range": (start, end)})
            stream = result.stream(min_chunk_size=READ_CHUNK)
        except Exception as exc:
            raise self._translate(exc, key) from exc
        while True:
            try:
                chunk = await stream.__anext__()
            except StopAsyncIteration:
                return
            except Exception as exc:
                raise self._translate(exc, key) from exc
            yield bytes(chunk)

    async def delete(self, key: str) -> None:
        import obstore

        self._check_key(key)
        try:
            await obstore.delete_async(self._store, key)
        except Exception as exc:
            err = self._translate(exc, key)
            if not isinstance(err, ObjectMissing):
                raise err from exc

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        import obstore

        try:
            stream = obstore.list(self._store, prefix or None)
            async for batch in stream:
                for meta in batch:
                    yield ObjectInfo(
                        meta["path"], int(meta["size"]), meta["last_modified"], meta["e_tag"]
                    )
        except Exception as exc:
            raise self._translate(exc, prefix) from exc

    async def presign(self, key: str, expires_s: float) -> str | None:
        import obstore

        self._check_key(key)
        try:
            return await obstore.sign_async(self._store, "GET", key, timedelta(seconds=expires_s))
        except Exception as exc:
            raise self._translate(exc, key) from exc


# --- copying one store into another (``orchestrator storage migrate``) --------------


@dataclass
class CopyReport:
    copied: int = 0
    skipped: int = 0
    failed: int = 0
    bytes: int = 0  # copied (or, in a dry run, that would be)
    errors: list[str] | None = None


async def copy_store(
    source: ObjectStore,
    target: ObjectStore,
    *,
    dry_run: bool = False,
    concurrency: int = 8,
    attempts: int = 4,
) -> CopyReport:
    """Copy every object of ``source`` that ``target`` lacks, or holds with another
    size; objects already there with the same size are skipped, so running it again
    copies nothing new (idempotent). Each copy is tried ``attempts`` times with
    backoff (stamina); the ones that still fail are counted and named, and the rest
    go on."""
    import stamina

    report = CopyReport(errors=[])
    present = {info.key: info.size async for info in target.list()}
    gate = asyncio.Semaphore(concurrency)

    async def one(info: ObjectInfo) -> None:
        if present.get(info.key) == info.size:
            report.skipped += 1
            return
        if dry_run:
            report.copied += 1
            report.bytes += info.size
            return
        async with gate:
            try:
                async for attempt in stamina.retry_context(
                    on=StoreUnavailable, attempts=attempts, wait_initial=0.5, wait_max=10.0
                ):
                    with attempt:
                        path = source.local_path(info.key)
                        if path is not None:
                            await target.put_file(info.key, path)
                        else:
                            await target.put_bytes(info.key, await source.read_bytes(info.key))
            except OSError as exc:  # StoreUnavailable past its tries, or a vanished file
                report.failed += 1
                assert report.errors is not None
                report.errors.append(f"{info.key}: {exc}")
                return
        report.copied += 1
        report.bytes += info.size

    await asyncio.gather(*[one(info) async for info in source.list()])
    return report
