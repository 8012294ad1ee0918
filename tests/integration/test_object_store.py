"""The output-store contract, run against both implementations: a local folder and an
S3 bucket on moto's real S3 server (127.0.0.1). put / read (whole and ranges) / stat /
exists / delete / list, missing objects, keys that escape, and atomicity: a reader
never sees half an object."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest
from tests.s3_server import ACCESS_KEY, REGION, SECRET_KEY, S3Server, free_port

from orchestrator.object_store import (
    LocalObjectStore,
    ObjectMissing,
    ObjectStore,
    S3Credentials,
    S3Location,
    S3ObjectStore,
    StoreUnavailable,
)


def s3_store(server: S3Server, bucket: str, prefix: str = "") -> S3ObjectStore:
    where = S3Location.parse(f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}")
    creds = S3Credentials(server.endpoint_url, REGION, ACCESS_KEY, SECRET_KEY)
    return S3ObjectStore(where, creds)


@pytest.fixture(params=["local", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ObjectStore]:
    if request.param == "local":
        yield LocalObjectStore(tmp_path / "objects", hidden=(".partial",))
    else:
        server: S3Server = request.getfixturevalue("s3_server")
        yield s3_store(server, server.make_bucket(), "team/outputs")


async def test_put_bytes_then_read_stat_exists(store: ObjectStore) -> None:
    await store.put_bytes("2026/03/07/a-0.png", b"hello world")
    assert await store.read_bytes("2026/03/07/a-0.png") == b"hello world"
    info = await store.stat("2026/03/07/a-0.png")
    assert info.size == 11
    assert info.key == "2026/03/07/a-0.png"
    assert info.modified is not None
    assert await store.exists("2026/03/07/a-0.png")
    assert not await store.exists("2026/03/07/b-0.png")


async def test_put_file_keeps_or_moves_source(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 1000)
    await store.put_file("k/one.bin", src)
    assert src.exists()
    assert await store.read_bytes("k/one.bin") == b"x" * 1000
    await store.put_file("k/two.bin", src, move=True)  # the source may go (local: rename)
    assert (await store.stat("k/two.bin")).size == 1000


async def test_overwrite_replaces_whole_object(store: ObjectStore) -> None:
    await store.put_bytes("k", b"a" * 100)
    await store.put_bytes("k", b"b" * 10)
    assert await store.read_bytes("k") == b"b" * 10


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [(0, 5, b"01234"), (5, None, b"56789"), (3, 4, b"3"), (8, 100, b"89"), (4, 4, b"")],
)
async def test_read_range(store: ObjectStore, start: int, end: int | None, expected: bytes) -> None:
    await store.put_bytes("r.txt", b"0123456789")
    assert await store.read_bytes("r.txt", start, end) == expected


async def test_large_object_multipart_roundtrip_and_ranges(
    store: ObjectStore, tmp_path: Path
) -> None:
    data = os.urandom(11 * 1024 * 1024 + 17)  # > 2 parts of 5 MB on S3
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    await store.put_file("big/video.mp4", src)
    assert (await store.stat("big/video.mp4")).size == len(data)
    assert await store.read_bytes("big/video.mp4") == data
    mid = 6 * 1024 * 1024
    assert await store.read_bytes("big/video.mp4", mid - 3, mid + 5) == data[mid - 3 : mid + 5]


async def test_missing_object_errors(store: ObjectStore) -> None:
    with pytest.raises(ObjectMissing):
        await store.stat("nope/none.png")
    with pytest.raises(ObjectMissing):
        await store.read_bytes("nope/none.png")
    with pytest.raises(ObjectMissing):
        await store.read_bytes("nope/none.png", 2, 4)
    with pytest.raises(FileNotFoundError):  # ObjectMissing is a FileNotFoundError
        await store.stat("nope/none.png")
    await store.delete("nope/none.png")  # deleting what is absent is fine


@pytest.mark.parametrize("key", ["", "../escape.png", "a/../../b", "/etc/passwd"])
async def test_keys_that_escape_are_missing(store: ObjectStore, key: str) -> None:
    with pytest.raises(ObjectMissing):
        await store.stat(key)
    with pytest.raises(ObjectMissing):
        await store.read_bytes(key)


async def test_delete(store: ObjectStore) -> None:
    await store.put_bytes("d/x", b"1")
    await store.delete("d/x")
    assert not await store.exists("d/x")
    with pytest.raises(ObjectMissing):
        await store.read_bytes("d/x")


async def test_list_with_prefix(store: ObjectStore) -> None:
    for key in ("2026/01/01/a-0.png", "2026/01/01/a-1.png", "2026/02/01/b-0.mp4"):
        await store.put_bytes(key, key.encode())
    every = {i.key: i.size for i in [i async for i in store.list()]}
    assert every == {
        "2026/01/01/a-0.png": 18,
        "2026/01/01/a-1.png": 18,
        "2026/02/01/b-0.mp4": 18,
    }
    jan = sorted([i.key async for i in store.list("2026/01/")])
    assert jan == ["2026/01/01/a-0.png", "2026/01/01/a-1.png"]


async def test_list_empty_store(store: ObjectStore) -> None:
    assert [i async for i in store.list()] == []


async def test_get_file(store: ObjectStore, tmp_path: Path) -> None:
    await store.put_bytes("g/x.bin", b"payload")
    target = tmp_path / "copy" / "x.bin"
    await store.get_file("g/x.bin", target)
    assert target.read_bytes() == b"payload"
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.bin"]


async def test_reader_never_sees_half_an_object(store: ObjectStore, tmp_path: Path) -> None:
    """While a big object is being written, a reader finds it absent or whole."""
    data = os.urandom(12 * 1024 * 1024)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    seen: list[int] = []
    writing = asyncio.create_task(store.put_file("atomic/big.bin", src))
    while not writing.done():
        try:
            seen.append((await store.stat("atomic/big.bin")).size)
        except ObjectMissing:
            seen.append(-1)
        await asyncio.sleep(0.005)
    await writing
    assert set(seen) <= {-1, len(data)}
    assert (await store.stat("atomic/big.bin")).size == len(data)


async def test_local_hidden_and_temp_files_are_not_objects(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    store = LocalObjectStore(root, hidden=(".partial",))
    (root / ".partial").mkdir(parents=True)
    (root / ".partial" / "j-0-abc.part").write_bytes(b"half")
    (root / "2026").mkdir()
    (root / "2026" / ".x.png.1234abcd.tmp").write_bytes(b"half")
    await store.put_bytes("2026/x.png", b"whole")
    assert [i.key async for i in store.list()] == ["2026/x.png"]
    with pytest.raises(ObjectMissing):
        await store.stat(".partial/j-0-abc.part")


async def test_s3_presigned_url_downloads(s3_server: S3Server) -> None:
    store = s3_store(s3_server, s3_server.make_bucket(), "p")
    await store.put_bytes("2026/x.png", b"signed bytes")
    url = await store.presign("2026/x.png", 60)
    assert url is not None
    assert "/p/2026/x.png" in url
    async with httpx2.AsyncClient() as client:
        r = await client.get(url)
    assert r.status_code == 200
    assert r.content == b"signed bytes"


async def test_local_has_no_presigned_url(tmp_path: Path) -> None:
    assert await LocalObjectStore(tmp_path).presign("x", 60) is None


async def test_s3_unreachable_is_store_unavailable() -> None:
    where = S3Location.parse("s3://bucket/prefix")
    dead = f"http://127.0.0.1:{free_port()}"
    store = S3ObjectStore(where, S3Credentials(dead, REGION, ACCESS_KEY, SECRET_KEY, 1.0, 5.0))
    with pytest.raises(StoreUnavailable):
        await store.put_bytes("x", b"1")
    with pytest.raises(StoreUnavailable):
        await store.stat("x")


async def test_s3_prefixes_keep_stores_apart(s3_server: S3Server) -> None:
    bucket = s3_server.make_bucket()
    outputs, jobs = s3_store(s3_server, bucket, "t/outputs"), s3_store(s3_server, bucket, "t/jobs")
    await outputs.put_bytes("a", b"1")
    assert not await jobs.exists("a")
    assert [i.key async for i in jobs.list()] == []
    assert outputs.location("a") == f"s3://{bucket}/t/outputs/a"


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [("s3://b", "b", ""), ("s3://b/", "b", ""), ("s3://my-bucket/a/b/", "my-bucket", "a/b")],
)
def test_s3_location_parse(url: str, bucket: str, prefix: str) -> None:
    assert S3Location.parse(url) == S3Location(bucket, prefix)


@pytest.mark.parametrize("url", ["s3://", "s3:///x", "http://b/x", "s3://b/../x", "s3://b//x"])
def test_s3_location_refuses(url: str) -> None:
    with pytest.raises(ValueError):
        S3Location.parse(url)
