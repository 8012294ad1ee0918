"""media_probe: width, height and duration of MP4 and WebM from their headers, on real
files encoded by PyAV (as ComfyUI's SaveVideo / SaveWEBM write them) and on truncated,
garbage and hostile ones, which give None (or drop the field they spoil) and never raise,
hang or read more than the bounds allow."""

from __future__ import annotations

import io
import random
import struct
from pathlib import Path

import av
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from orchestrator import media_probe
from orchestrator.media_probe import VideoInfo, probe_stream, probe_video
from orchestrator.testing.fake_comfy import encode_mp4, encode_webm


def frames(width: int, height: int, count: int) -> list[Image.Image]:
    return [Image.new("RGB", (width, height), (i * 20 % 256, 40, 200)) for i in range(count)]


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("videos")
    encode_mp4(frames(128, 96, 12), 12.0, folder / "a.mp4", {"prompt": {"1": {}}})
    encode_mp4(frames(320, 240, 10), 8.0, folder / "b.mp4", None)
    encode_webm(frames(128, 96, 12), 12.0, folder / "a.webm", "vp9", 32.0, {"prompt": {}})
    encode_webm(frames(64, 64, 6), 24.0, folder / "b.webm", "av1", 40.0, None)
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def probe(data: bytes, mime: str) -> VideoInfo | None:
    return probe_stream(io.BytesIO(data), len(data), mime)


@pytest.mark.parametrize(
    ("name", "mime", "expected"),
    [
        ("a.mp4", "video/mp4", VideoInfo(128, 96, 1.0)),
        ("b.mp4", "video/mp4", VideoInfo(320, 240, 1.25)),
        ("a.webm", "video/webm", VideoInfo(128, 96, 1.0)),
        ("b.webm", "video/webm", VideoInfo(64, 64, 0.25)),
    ],
)
def test_real_files(
    videos: dict[str, bytes], tmp_path: Path, name: str, mime: str, expected: VideoInfo
) -> None:
    data = videos[name]
    assert probe(data, mime) == expected
    path = tmp_path / name
    path.write_bytes(data)
    assert probe_video(path, mime) == expected
    with av.open(str(path)) as container:  # and the encoder agrees
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (
            expected.width,
            expected.height,
        )


def test_wrong_container_or_mime_is_none(videos: dict[str, bytes]) -> None:
    assert probe(videos["a.mp4"], "video/webm") is None
    assert probe(videos["a.webm"], "video/mp4") is None
    assert probe(videos["a.mp4"], "image/png") is None
    assert probe(b"", "video/mp4") is None
    assert probe(b"", "video/webm") is None


@pytest.mark.parametrize(("name", "mime"), [("a.mp4", "video/mp4"), ("a.webm", "video/webm")])
def test_every_truncation_is_none(videos: dict[str, bytes], name: str, mime: str) -> None:
    data = videos[name]
    for cut in range(len(data)):
        assert probe(data[:cut], mime) is None, cut


@pytest.mark.parametrize(("name", "mime"), [("a.mp4", "video/mp4"), ("a.webm", "video/webm")])
def test_corrupted_bytes_never_raise(videos: dict[str, bytes], name: str, mime: str) -> None:
    data = videos[name]
    rng = random.Random(16)
    for _ in range(1500):
        spoiled = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            spoiled[rng.randrange(len(spoiled))] = rng.randrange(256)
        info = probe(bytes(spoiled), mime)
        assert info is None or isinstance(info, VideoInfo)
        if info is not None:
            assert info.width is None or 0 < info.width <= 65_535
            assert info.duration_s is None or 0 < info.duration_s <= 1e6


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048), st.sampled_from(["video/mp4", "video/webm"]))
def test_garbage_never_raises(tail: bytes, mime: str) -> None:
    head = FTYP if mime == "video/mp4" else b"\x1a\x45\xdf\xa3"
    info = probe(head + tail, mime)  # the property: no exception
    assert info is None or isinstance(info, VideoInfo)


# --- hand-made MP4 boxes ---------------------------------------------------------------------


def box(kind: bytes, body: bytes = b"") -> bytes:
    return struct.pack(">I", 8 + len(body)) + kind + body


def mvhd(timescale: int, duration: int, version: int = 0) -> bytes:
    if version == 1:
        body = struct.pack(">B3xQQIQ", 1, 0, 0, timescale, duration)
    else:
        body = struct.pack(">B3xIIII", 0, 0, 0, timescale, duration)
    return box(b"mvhd", body + bytes(80))


def tkhd(width: int, height: int) -> bytes:
    return box(b"tkhd", bytes(76) + struct.pack(">II", width << 16, height << 16))


def trak(handler: bytes, width: int, height: int) -> bytes:
    hdlr = box(b"hdlr", bytes(8) + handler + bytes(13))
    return box(b"trak", tkhd(width, height) + box(b"mdia", hdlr))


FTYP = box(b"ftyp", b"isom\x00\x00\x02\x00")


def mp4(*moov_children: bytes, mdat: bytes = box(b"mdat", b"x" * 64)) -> bytes:
    return FTYP + mdat + box(b"moov", b"".join(moov_children))


def test_handmade_mp4_and_the_audio_track_is_skipped() -> None:
    data = mp4(mvhd(600, 1500), trak(b"soun", 0, 0), trak(b"vide", 1024, 576))
    assert probe(data, "video/mp4") == VideoInfo(1024, 576, 2.5)
    v1 = mp4(mvhd(90_000, 270_000, version=1), trak(b"vide", 8, 8))
    assert probe(v1, "video/mp4") == VideoInfo(8, 8, 3.0)


def test_zero_timescale_or_unknown_duration_drops_only_the_duration() -> None:
    cases = (mvhd(0, 1500), mvhd(1000, 0), mvhd(1000, 0xFFFF_FFFF), mvhd(1, 0xFFFF_FFFE))
    for header in (*cases, mvhd(10_000, 4), mvhd(1, 1 << 62, version=1)):
        assert probe(mp4(header, trak(b"vide", 64, 48)), "video/mp4") == VideoInfo(64, 48, None)


def test_no_video_track_and_no_moov() -> None:
    assert probe(mp4(mvhd(1000, 1000), trak(b"soun", 0, 0)), "video/mp4") == VideoInfo(
        None, None, 1.0
    )
    assert probe(FTYP + box(b"mdat", b"x"), "video/mp4") is None
    assert probe(mp4(trak(b"vide", 0, 48)), "video/mp4") is None  # a zero width
    two = FTYP + box(b"moov", trak(b"vide", 8, 8)) + box(b"moov", trak(b"vide", 9, 9))
    assert probe(two, "video/mp4") is None


@pytest.mark.parametrize(
    "hostile",
    [
        # a box declaring 4 GiB, a 64-bit box declaring 2^63 bytes, both past the file
        FTYP + struct.pack(">I", 0xFFFF_FFFF) + b"mdat" + b"x" * 32,
        FTYP + struct.pack(">I", 1) + b"mdat" + struct.pack(">Q", 1 << 63) + b"x" * 32,
        FTYP + struct.pack(">I", 1) + b"moov" + struct.pack(">Q", 3),  # largesize < header
        FTYP + struct.pack(">I", 4) + b"moov",  # size smaller than its own header
        # a child larger than its parent; a size-0 box inside moov
        FTYP + box(b"moov", struct.pack(">I", 4096) + b"trak" + bytes(16)),
        FTYP + box(b"moov", struct.pack(">I", 0) + b"trak" + bytes(16)),
        FTYP + box(b"moov", mvhd(1000, 1000)[:12]),  # a cut mvhd
        FTYP + box(b"moov", box(b"trak", box(b"tkhd", bytes(20)))),  # a cut tkhd
        FTYP + box(b"moov", b"\x00\x00\x00"),  # trailing bytes
        box(b"moov", mvhd(1000, 1000)),  # no ftyp first
    ],
)
def test_hostile_mp4_is_none(hostile: bytes) -> None:
    assert probe(hostile, "video/mp4") is None


def test_deep_nesting_is_not_followed() -> None:
    """Only moov/trak/mdia is descended, never a box of any type inside itself: 100,000
    traks (or mdias) nested in each other cost a few box headers, not a recursion."""
    depth = 100_000
    for kind in (b"trak", b"mdia", b"moov"):
        nested = b"".join(struct.pack(">I4s", 8 * (depth - i), kind) for i in range(depth))
        data = FTYP + box(b"moov", mvhd(1000, 2000) + nested)
        fh = CountingIO(data)
        assert probe_stream(fh, len(data), "video/mp4") == VideoInfo(None, None, 2.0)
        assert fh.bytes_read < 1024


class CountingIO(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size: int | None = -1, /) -> bytes:
        data = super().read(size)
        self.bytes_read += len(data)
        return data


def test_many_boxes_hit_the_element_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(media_probe, "MAX_ELEMENTS", 1000)
    data = mp4(*[box(b"free") for _ in range(5000)], mvhd(1000, 1000), trak(b"vide", 8, 8))
    fh = CountingIO(data)
    assert probe_stream(fh, len(data), "video/mp4") is None
    assert fh.bytes_read < 1000 * 16


def test_huge_mdat_is_skipped_not_read() -> None:
    """An mdat the size of the file is seeked over: the bytes read are the headers."""
    data = mp4(mvhd(1000, 4000), trak(b"vide", 640, 360), mdat=box(b"mdat", bytes(4 << 20)))
    fh = CountingIO(data)
    assert probe_stream(fh, len(data), "video/mp4") == VideoInfo(640, 360, 4.0)
    assert fh.bytes_read < 1024


# --- hand-made EBML ---------------------------------------------------------------------------


def size_vint(n: int) -> bytes:
    return bytes([0x01]) + n.to_bytes(7, "big")  # the 8-byte form: any size fits


def element(eid: int, body: bytes) -> bytes:
    return eid.to_bytes((eid.bit_length() + 7) // 8, "big") + size_vint(len(body)) + body


EBML_HEAD = element(0x1A45DFA3, element(0x4282, b"webm"))


def webm(info: bytes, tracks: bytes, segment_size: bytes | None = None) -> bytes:
    body = element(0x1549A966, info) + element(0x1654AE6B, tracks)
    size = segment_size if segment_size is not None else size_vint(len(body))
    return EBML_HEAD + bytes.fromhex("18538067") + size + body


def video_track(width: int, height: int) -> bytes:
    video = element(0xB0, width.to_bytes(2, "big")) + element(0xBA, height.to_bytes(2, "big"))
    return element(0xAE, element(0x83, b"\x01") + element(0xE0, video))


def audio_track() -> bytes:
    return element(0xAE, element(0x83, b"\x02"))


def test_handmade_webm() -> None:
    info = element(0x2AD7B1, (1_000_000).to_bytes(3, "big")) + element(
        0x4489, struct.pack(">d", 2500.0)
    )
    data = webm(info, audio_track() + video_track(720, 480))
    assert probe(data, "video/webm") == VideoInfo(720, 480, 2.5)
    float32 = element(0x4489, struct.pack(">f", 1500.0))  # TimecodeScale defaults to 1 ms
    assert probe(webm(float32, video_track(8, 8)), "video/webm") == VideoInfo(8, 8, 1.5)
    unknown = webm(float32, video_track(8, 8), segment_size=b"\x01\xff\xff\xff\xff\xff\xff\xff")
    assert probe(unknown, "video/webm") == VideoInfo(8, 8, 1.5)


def test_zero_timecode_scale_drops_only_the_duration() -> None:
    info = element(0x2AD7B1, b"\x00") + element(0x4489, struct.pack(">d", 2500.0))
    assert probe(webm(info, video_track(16, 16)), "video/webm") == VideoInfo(16, 16, None)
    nan = element(0x4489, struct.pack(">d", float("nan")))
    assert probe(webm(nan, video_track(16, 16)), "video/webm") == VideoInfo(16, 16, None)


@pytest.mark.parametrize(
    "hostile",
    [
        # a segment declaring 2^56 - 2 bytes
        EBML_HEAD + bytes.fromhex("18538067") + b"\x01\xff\xff\xff\xff\xff\xff\xfe" + b"x" * 40,
        # an Info element declaring more than its segment, or more than MAX_MASTER
        EBML_HEAD
        + bytes.fromhex("18538067")
        + size_vint(12)
        + bytes.fromhex("1549a966")
        + size_vint(1 << 40),
        webm(element(0x4489, bytes(2 << 20)), b""),
        # a child larger than its parent inside Tracks; an integer of 9 bytes
        webm(b"", bytes.fromhex("ae") + size_vint(999) + b"\x83\x81\x01"),
        webm(b"", element(0xAE, element(0x83, bytes(9)))),
        # a vint with no marker bit; an id longer than 4 bytes
        EBML_HEAD + b"\x00" * 16,
        EBML_HEAD + b"\x08\x00\x00\x00\x00\x01" + b"\x81\x00",
        # an unknown-size element that is not a cluster
        EBML_HEAD
        + bytes.fromhex("18538067")
        + size_vint(20)
        + bytes.fromhex("1549a966ff")
        + bytes(15),
        # not webm/matroska; an EBML header larger than 4 KiB
        element(0x1A45DFA3, element(0x4282, b"other")) + webm(b"", video_track(8, 8))[11:],
        element(0x1A45DFA3, bytes(5000)),
    ],
)
def test_hostile_webm_is_none(hostile: bytes) -> None:
    assert probe(hostile, "video/webm") is None


def test_nested_unknown_sizes_and_many_elements(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(media_probe, "MAX_ELEMENTS", 1000)
    voids = b"".join(element(0xEC, b"") for _ in range(5000))  # Void elements before Info
    info = element(0x4489, struct.pack(">d", 1000.0))
    body = voids + element(0x1549A966, info) + element(0x1654AE6B, video_track(8, 8))
    data = EBML_HEAD + bytes.fromhex("18538067") + size_vint(len(body)) + body
    fh = CountingIO(data)
    assert probe_stream(fh, len(data), "video/webm") is None
    assert fh.bytes_read < 1000 * 16
    # a live stream: an unknown-size cluster after the headers ends the walk cleanly
    cluster = bytes.fromhex("1f43b675") + b"\x01\xff\xff\xff\xff\xff\xff\xff" + b"x" * 100
    body = element(0x1549A966, info) + cluster
    live = EBML_HEAD + bytes.fromhex("18538067") + b"\x01\xff\xff\xff\xff\xff\xff\xff" + body
    assert probe(live, "video/webm") == VideoInfo(None, None, 1.0)
