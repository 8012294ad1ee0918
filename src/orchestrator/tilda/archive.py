"""Safe reading of a Tilda export given as a folder or a zip.

Nothing is ever extracted by entry name: the importer reads entries through
:class:`ExportSource` and stores images by content hash, so an entry name cannot
choose where anything is written. Every entry is still checked up front, and the
whole archive is refused (:class:`errors.InvalidExport`, naming the problem and the
entry) when it holds:

* a ``..`` component, an absolute path, a drive letter or a NUL (``unsafe_archive``);
* a symbolic link, in the zip or in the folder (``unsafe_archive``);
* a name that is not valid UTF-8 (``unsafe_archive``);
* more files, or more uncompressed bytes, than the limits (``archive_too_large``);
* an entry of ``ratio_min_bytes`` or more compressed more than ``max_ratio`` times, or
  entries that together are (a zip bomb of many small entries), ``unsafe_archive``;
* a corrupt or truncated archive, an encrypted or unsupported entry, or an entry that
  decompresses to more than it declared (``corrupt_archive``).
"""

from __future__ import annotations

import os
import re
import stat
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from orchestrator import errors
from orchestrator.errors import ErrorCode

CHUNK = 1024 * 1024
UTF8_FLAG = 0x800
DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class Limits:
    max_total_bytes: int = 2048 * 1024 * 1024
    max_files: int = 50_000
    max_ratio: float = 200.0
    ratio_min_bytes: int = 1024 * 1024  # small entries may compress extremely well


def unsafe(detail: str, **extra: str) -> errors.InvalidExport:
    return errors.InvalidExport(ErrorCode.UNSAFE_ARCHIVE, detail, **extra)


def corrupt(detail: str, **extra: str) -> errors.InvalidExport:
    return errors.InvalidExport(ErrorCode.CORRUPT_ARCHIVE, detail, **extra)


def too_large(detail: str) -> errors.InvalidExport:
    return errors.InvalidExport(ErrorCode.ARCHIVE_TOO_LARGE, detail)


def check_name(name: str) -> str:
    """An entry name as a clean relative POSIX path, or :func:`unsafe`."""
    if "\x00" in name:
        raise unsafe(f"entry name contains a NUL character: {name!r}", entry=name)
    posix = name.replace("\\", "/")
    if posix.startswith("/") or DRIVE.match(posix):
        raise unsafe(f"entry has an absolute path: {name!r}", entry=name)
    parts = [p for p in posix.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise unsafe(f"entry path escapes the export with '..': {name!r}", entry=name)
    return "/".join(parts)


def export_root(names: list[str]) -> str:
    """The folder inside the archive that holds the export: none, or one top folder
    (Tilda zips hold ``project<ID>/``)."""
    if any("/" not in n and n.lower().endswith(".html") for n in names):
        return ""
    tops = {n.split("/", 1)[0] for n in names if "/" in n}
    files_at_root = [n for n in names if "/" not in n]
    if len(tops) == 1 and not files_at_root:
        return next(iter(tops)) + "/"
    return ""


class ExportSource:
    """Read-only access to the files of an export, by path relative to its root."""

    label: str

    def names(self) -> list[str]:
        raise NotImplementedError

    def size(self, name: str) -> int:
        raise NotImplementedError

    def chunks(self, name: str) -> Iterator[bytes]:
        """The entry's content, in chunks of at most 1 MiB."""
        raise NotImplementedError

    def read_bytes(self, name: str) -> bytes:
        return b"".join(self.chunks(name))

    def read_text(self, name: str) -> str:
        return self.read_bytes(name).decode("utf-8", errors="replace")

    def close(self) -> None:
        return None

    def __enter__(self) -> ExportSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FolderSource(ExportSource):
    def __init__(self, root: Path, limits: Limits) -> None:
        self.label = root.name
        self._files: dict[str, tuple[Path, int]] = {}
        entries = _walk_folder(root, limits)
        prefix = export_root([rel for rel, _p, _s in entries])
        for rel, path, size in entries:
            if rel.startswith(prefix):
                self._files[rel[len(prefix) :]] = (path, size)

    def names(self) -> list[str]:
        return list(self._files)

    def size(self, name: str) -> int:
        return self._files[name][1]

    def chunks(self, name: str) -> Iterator[bytes]:
        path, _size = self._files[name]
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk


def _walk_folder(root: Path, limits: Limits) -> list[tuple[str, Path, int]]:
    out: list[tuple[str, Path, int]] = []
    total = 0
    stack = [(root, "")]
    while stack:
        folder, rel_base = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise corrupt(f"cannot read folder {rel_base or '.'}: {exc.strerror}") from None
        for entry in entries:
            rel = f"{rel_base}{entry.name}"
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                shown = rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                raise unsafe(f"file name is not valid UTF-8: {shown!r}", entry=shown) from None
            if entry.is_symlink():
                raise unsafe(f"the export contains a symbolic link: {rel}", entry=rel)
            if entry.is_dir(follow_symlinks=False):
                stack.append((Path(entry.path), rel + "/"))
                continue
            if not entry.is_file(follow_symlinks=False):
                raise unsafe(f"the export contains a special file: {rel}", entry=rel)
            size = entry.stat(follow_symlinks=False).st_size
            total += size
            out.append((rel, Path(entry.path), size))
            if len(out) > limits.max_files:
                raise too_large(f"the export holds more than {limits.max_files} files")
            if total > limits.max_total_bytes:
                raise too_large(f"the export is larger than {limits.max_total_bytes} bytes")
    return out


class ZipSource(ExportSource):
    def __init__(self, path: Path, limits: Limits) -> None:
        self.label = path.name
        try:
            self._zip = zipfile.ZipFile(path)
        except UnicodeDecodeError:
            raise unsafe(f"{path.name}: an entry name is not valid UTF-8") from None
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise corrupt(f"{path.name} is not a readable zip archive: {exc}") from None
        try:
            self._infos = self._check(limits)
        except BaseException:
            self._zip.close()
            raise

    def _check(self, limits: Limits) -> dict[str, zipfile.ZipInfo]:
        infos = self._zip.infolist()
        if len(infos) > limits.max_files:
            raise too_large(f"the archive holds {len(infos)} entries (limit {limits.max_files})")
        checked: list[tuple[str, zipfile.ZipInfo]] = []
        total = packed = 0
        for info in infos:
            name = _utf8_name(info)
            clean = check_name(name)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise unsafe(f"entry is a symbolic link: {name}", entry=name)
            if info.is_dir() or not clean:
                continue
            if info.flag_bits & 0x1:
                raise corrupt(f"entry {name} is encrypted", entry=name)
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise corrupt(f"entry {name} uses an unsupported compression", entry=name)
            total += info.file_size
            if total > limits.max_total_bytes:
                raise too_large(f"the archive expands to more than {limits.max_total_bytes} bytes")
            packed += info.compress_size
            if _bomb(info.file_size, info.compress_size, limits):
                raise unsafe(
                    f"entry {name} is compressed {info.file_size // max(info.compress_size, 1)}"
                    f" times (limit {limits.max_ratio:g}): a zip bomb",
                    entry=name,
                )
            checked.append((clean, info))
        if _bomb(total, packed, limits):
            raise unsafe(
                f"the archive's entries are compressed {total // max(packed, 1)} times in all"
                f" (limit {limits.max_ratio:g}): a zip bomb"
            )
        prefix = export_root([c for c, _i in checked])
        return {c[len(prefix) :]: i for c, i in checked if c.startswith(prefix)}

    def names(self) -> list[str]:
        return list(self._infos)

    def size(self, name: str) -> int:
        return self._infos[name].file_size

    def chunks(self, name: str) -> Iterator[bytes]:
        """Refuses an entry that decompresses to more than it declared; zipfile
        checks the CRC at the end."""
        info = self._infos[name]
        left = info.file_size
        try:
            with self._zip.open(info) as f:
                while chunk := f.read(CHUNK):
                    left -= len(chunk)
                    if left < 0:
                        raise unsafe(
                            f"entry {name} decompresses to more than it declares (a zip bomb)",
                            entry=name,
                        )
                    yield chunk
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as exc:
            raise corrupt(f"entry {name} is corrupt or truncated: {exc}", entry=name) from None

    def close(self) -> None:
        self._zip.close()


def _bomb(size: int, compressed: int, limits: Limits) -> bool:
    """An entry, or the whole archive, of at least ``ratio_min_bytes`` that expands
    more than ``max_ratio`` times."""
    return size >= limits.ratio_min_bytes and size > limits.max_ratio * max(compressed, 1)


def _utf8_name(info: zipfile.ZipInfo) -> str:
    name = info.filename
    if info.flag_bits & UTF8_FLAG or name.isascii():
        return name
    try:  # UTF-8 bytes without the UTF-8 flag were decoded as cp437 by zipfile
        return name.encode("cp437").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        shown = name.encode("cp437", "replace").decode("utf-8", "replace")
        raise unsafe(f"entry name is not valid UTF-8: {shown!r}", entry=shown) from None


def open_export(path: Path, limits: Limits) -> ExportSource:
    """Open an export folder or zip for reading (checked as described above)."""
    if path.is_symlink():
        raise unsafe(f"{path.name} is a symbolic link")
    if path.is_dir():
        return FolderSource(path, limits)
    if not path.is_file():
        raise errors.InvalidRequest(f"no export folder or zip at {path.name}")
    return ZipSource(path, limits)
