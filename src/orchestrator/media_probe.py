"""Width, height and duration of a video file, read from its container headers.

Two containers, the ones ComfyUI's video nodes write: MP4 (ISO BMFF: ``moov/mvhd``
timescale and duration, the ``tkhd`` width and height of the track whose ``hdlr`` says
``vide``) and WebM (Matroska/EBML: ``Segment/Info`` TimecodeScale and Duration,
``Segment/Tracks/TrackEntry/Video`` PixelWidth and PixelHeight). Nothing is decoded.

The file may be hostile or cut short, so the reader is strict and bounded: it follows
a fixed path through the container (no generic recursion), seeks over everything else
(``mdat``, clusters) instead of reading it, reads at most `MAX_READ` bytes and visits
at most `MAX_ELEMENTS` boxes or elements. Any inconsistency (an element larger than
its parent or the file, a bad size field, a zero timescale) gives ``None`` for what it
touches, never an exception: a video whose headers do not parse is stored all the same,
without those fields. Only an ``OSError`` reading the file itself is raised.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

# Bounds on the work done for one file.
MAX_READ = 4 << 20  # bytes read in all (headers and the few small boxes parsed)
MAX_ELEMENTS = 10_000  # boxes / elements visited in all
MAX_MASTER = 1 << 20  # a Matroska Info or Tracks element larger than this is refused
MAX_DIMENSION = 65_535
MAX_SECONDS = 1e6  # longer (11.5 days) is a broken or hostile header, not a generated video


@dataclass(frozen=True)
class VideoInfo:
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None


class _Malformed(Exception):
    """The container does not parse (or would take more than the bounds allow)."""


class _Reader:
    """Reads and seeks within ``[0, size)``, counting bytes and elements."""

    def __init__(self, fh: BinaryIO, size: int) -> None:
        self.fh = fh
        self.size = size
        self.read_total = 0
        self.elements = 0

    def read_at(self, offset: int, n: int) -> bytes:
        if n < 0 or offset < 0 or offset + n > self.size:
            raise _Malformed("read past the end")
        self.read_total += n
        if self.read_total > MAX_READ:
            raise _Malformed("read budget exhausted")
        self.fh.seek(offset)
        data = self.fh.read(n)
        if len(data) != n:
            raise _Malformed("short read")
        return data

    def count(self) -> None:
        self.elements += 1
        if self.elements > MAX_ELEMENTS:
            raise _Malformed("too many elements")


def probe_video(path: Path, mime_type: str) -> VideoInfo | None:
    """What the headers of ``path`` (``video/mp4`` or ``video/webm``) say, or None."""
    with path.open("rb") as fh:
        return probe_stream(fh, path.stat().st_size, mime_type)


def probe_stream(fh: BinaryIO, size: int, mime_type: str) -> VideoInfo | None:
    reader = _Reader(fh, size)
    try:
        if mime_type == "video/mp4":
            return _probe_mp4(reader)
        if mime_type == "video/webm":
            return _probe_webm(reader)
    except (_Malformed, struct.error, ValueError, OverflowError):
        return None
    return None


def _seconds(value: float) -> float | None:
    """A duration worth recording: positive once rounded to milliseconds, and not absurd."""
    if not math.isfinite(value) or not 0 < round(value, 3) <= MAX_SECONDS:
        return None
    return round(value, 3)


def _dimension(value: int) -> int | None:
    return value if 0 < value <= MAX_DIMENSION else None


# --------------------------------------------------------------------------------------------
# MP4 (ISO/IEC 14496-12)
# --------------------------------------------------------------------------------------------


def _boxes(r: _Reader, start: int, end: int, top: bool = False) -> list[tuple[bytes, int, int]]:
    """The boxes in ``[start, end)``: (type, body start, body end). Sizes must nest."""
    found: list[tuple[bytes, int, int]] = []
    pos = start
    while pos < end:
        r.count()
        if end - pos < 8:
            raise _Malformed("trailing bytes smaller than a box header")
        size, kind = struct.unpack(">I4s", r.read_at(pos, 8))
        header = 8
        if size == 1:
            if end - pos < 16:
                raise _Malformed("truncated largesize")
            (size,) = struct.unpack(">Q", r.read_at(pos + 8, 8))
            header = 16
        elif size == 0:
            if not top:
                raise _Malformed("a size-0 box inside another box")
            size = end - pos  # "extends to the end of the file"
        if size < header or pos + size > end:
            raise _Malformed(f"box {kind!r} of {size} bytes does not fit")
        found.append((kind, pos + header, pos + size))
        pos += size
    return found


def _probe_mp4(r: _Reader) -> VideoInfo | None:
    top = _boxes(r, 0, r.size, top=True)
    if not top or top[0][0] != b"ftyp":
        return None
    moov = [(s, e) for kind, s, e in top if kind == b"moov"]
    if len(moov) != 1:
        return None
    duration_s: float | None = None
    width = height = None
    for kind, start, end in _boxes(r, *moov[0]):
        if kind == b"mvhd" and duration_s is None:
            duration_s = _mvhd_seconds(r, start, end)
        elif kind == b"trak" and width is None:
            size = _video_track_size(r, start, end)
            if size is not None:
                width, height = size
    if width is None and duration_s is None:
        return None
    return VideoInfo(width, height, duration_s)


def _mvhd_seconds(r: _Reader, start: int, end: int) -> float | None:
    if end - start < 20:
        raise _Malformed("mvhd too short")
    version = r.read_at(start, 1)[0]
    if version == 1:
        if end - start < 32:
            raise _Malformed("mvhd too short")
        timescale, duration = struct.unpack(">IQ", r.read_at(start + 20, 12))
        unknown = 0xFFFF_FFFF_FFFF_FFFF
    elif version == 0:
        timescale, duration = struct.unpack(">II", r.read_at(start + 12, 8))
        unknown = 0xFFFF_FFFF
    else:
        return None
    if timescale == 0 or duration in (0, unknown):
        return None  # no timescale, or a fragmented / live file with no total
    return _seconds(duration / timescale)


def _video_track_size(r: _Reader, start: int, end: int) -> tuple[int, int] | None:
    """(width, height) of a ``trak`` if its handler is ``vide``, else None."""
    size: tuple[int, int] | None = None
    handler = None
    for kind, s, e in _boxes(r, start, end):
        if kind == b"tkhd":
            version = r.read_at(s, 1)[0]
            offset = {0: 76, 1: 88}.get(version)
            if offset is None or s + offset + 8 > e:
                raise _Malformed("bad tkhd")
            w, h = struct.unpack(">II", r.read_at(s + offset, 8))  # 16.16 fixed point
            size = (w >> 16, h >> 16)
        elif kind == b"mdia":
            for kind2, s2, e2 in _boxes(r, s, e):
                if kind2 == b"hdlr":
                    if s2 + 12 > e2:
                        raise _Malformed("bad hdlr")
                    handler = r.read_at(s2 + 8, 4)
    if handler != b"vide" or size is None:
        return None
    w, h = _dimension(size[0]), _dimension(size[1])
    return (w, h) if w is not None and h is not None else None


# --------------------------------------------------------------------------------------------
# WebM / Matroska (RFC 8794 EBML, RFC 9559 Matroska)
# --------------------------------------------------------------------------------------------

_EBML = 0x1A45DFA3
_DOCTYPE = 0x4282
_SEGMENT = 0x18538067
_INFO = 0x1549A966
_TIMESCALE = 0x2AD7B1
_DURATION = 0x4489
_TRACKS = 0x1654AE6B
_TRACK_ENTRY = 0xAE
_TRACK_TYPE = 0x83
_VIDEO = 0xE0
_PIXEL_WIDTH = 0xB0
_PIXEL_HEIGHT = 0xBA
_CLUSTER = 0x1F43B675


def _vint(data: bytes, pos: int, *, keep_marker: bool) -> tuple[int, int, bool]:
    """An EBML variable-size integer at ``pos``: (value, length, all value bits set)."""
    if pos >= len(data):
        raise _Malformed("truncated vint")
    first = data[pos]
    if first == 0:
        raise _Malformed("vint longer than 8 bytes")
    length = 9 - first.bit_length()
    if keep_marker and length > 4:
        raise _Malformed("element id longer than 4 bytes")
    if pos + length > len(data):
        raise _Malformed("truncated vint")
    raw = int.from_bytes(data[pos : pos + length], "big")
    value_bits = 7 * length
    value = raw & ((1 << value_bits) - 1)
    return (raw if keep_marker else value), length, value == (1 << value_bits) - 1


def _element_header(r: _Reader, pos: int, end: int) -> tuple[int, int, int | None]:
    """(id, data start, data size or None for "unknown") of the element at ``pos``."""
    r.count()
    head = r.read_at(pos, min(12, end - pos))
    eid, id_len, _ = _vint(head, 0, keep_marker=True)
    size, size_len, unknown = _vint(head, id_len, keep_marker=False)
    return eid, pos + id_len + size_len, None if unknown else size


def _children(data: bytes) -> list[tuple[int, bytes]]:
    """The child elements of a master element held in memory: (id, payload)."""
    found: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        if len(found) >= MAX_ELEMENTS:
            raise _Malformed("too many elements")
        eid, id_len, _ = _vint(data, pos, keep_marker=True)
        size, size_len, unknown = _vint(data, pos + id_len, keep_marker=False)
        start = pos + id_len + size_len
        if unknown or start + size > len(data):
            raise _Malformed("child element does not fit")
        found.append((eid, data[start : start + size]))
        pos = start + size
    return found


def _uint(payload: bytes) -> int:
    if len(payload) > 8:
        raise _Malformed("integer longer than 8 bytes")
    return int.from_bytes(payload, "big")


def _probe_webm(r: _Reader) -> VideoInfo | None:
    eid, start, size = _element_header(r, 0, r.size)
    if eid != _EBML or size is None or size > 4096 or start + size > r.size:
        return None
    header = dict(_children(r.read_at(start, size)))
    if header.get(_DOCTYPE, b"").rstrip(b"\0") not in (b"webm", b"matroska"):
        return None
    pos = start + size
    eid, seg_start, seg_size = _element_header(r, pos, r.size)
    if eid != _SEGMENT:
        return None
    seg_end = r.size if seg_size is None else seg_start + seg_size
    if seg_end > r.size:
        raise _Malformed("segment larger than the file")
    info: bytes | None = None
    tracks: bytes | None = None
    pos = seg_start
    while pos < seg_end and (info is None or tracks is None):
        eid, data_start, data_size = _element_header(r, pos, seg_end)
        if data_size is None:
            # only a cluster may have an unknown size (a live stream); nothing we need
            # can follow it without reading it, so stop here
            if eid == _CLUSTER:
                break
            raise _Malformed("unknown-size element")
        data_end = data_start + data_size
        if data_end > seg_end:
            raise _Malformed("element larger than its segment")
        if eid in (_INFO, _TRACKS):
            if data_size > MAX_MASTER:
                raise _Malformed("header element too large")
            payload = r.read_at(data_start, data_size)
            if eid == _INFO and info is None:
                info = payload
            elif eid == _TRACKS and tracks is None:
                tracks = payload
        pos = data_end
    duration_s = _webm_seconds(info) if info is not None else None
    size_wh = _webm_video_size(tracks) if tracks is not None else None
    if size_wh is None and duration_s is None:
        return None
    width, height = size_wh if size_wh is not None else (None, None)
    return VideoInfo(width, height, duration_s)


def _webm_seconds(info: bytes) -> float | None:
    timescale = 1_000_000  # nanoseconds per tick, Matroska's default
    duration: float | None = None
    for eid, payload in _children(info):
        if eid == _TIMESCALE:
            timescale = _uint(payload)
        elif eid == _DURATION:
            if len(payload) == 4:
                (duration,) = struct.unpack(">f", payload)
            elif len(payload) == 8:
                (duration,) = struct.unpack(">d", payload)
            else:
                return None
    if duration is None or timescale == 0:
        return None
    return _seconds(duration * timescale / 1e9)


def _webm_video_size(tracks: bytes) -> tuple[int, int] | None:
    for eid, entry in _children(tracks):
        if eid != _TRACK_ENTRY:
            continue
        fields = dict(_children(entry))
        if _uint(fields.get(_TRACK_TYPE, b"")) != 1 or _VIDEO not in fields:
            continue
        video = dict(_children(fields[_VIDEO]))
        width = _dimension(_uint(video.get(_PIXEL_WIDTH, b"")))
        height = _dimension(_uint(video.get(_PIXEL_HEIGHT, b"")))
        if width is not None and height is not None:
            return width, height
    return None
