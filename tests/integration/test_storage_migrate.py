"""``orchestrator storage migrate`` as a user runs it (a real process): a local store
made by real jobs is copied to an S3 bucket (moto's server on 127.0.0.1); a second run
copies nothing; a changed file is copied again; partial downloads and temporary files
stay behind. Then the CLI, pointed at the bucket, prints s3:// locations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.integration.test_cli import clean_environ, run
from tests.s3_server import ACCESS_KEY, REGION, SECRET_KEY, S3Server

from orchestrator.object_store import S3Credentials, S3Location, S3ObjectStore


def bucket_keys(server: S3Server, url: str) -> dict[str, int]:
    import asyncio

    store = S3ObjectStore(
        S3Location.parse(url), S3Credentials(server.endpoint_url, REGION, ACCESS_KEY, SECRET_KEY)
    )

    async def collect() -> dict[str, int]:
        return {i.key: i.size async for i in store.list()}

    return asyncio.run(collect())


@pytest.mark.slow
def test_migrate_copies_once_and_reports_counts(tmp_path: Path, s3_server: S3Server) -> None:
    data = tmp_path / "data"
    local = clean_environ(DATA_DIR=str(data), DEMO_MODE="on")
    for prompt in ("first", "second"):
        r = run(["generate", "flux", prompt, "--wait"], tmp_path, local)
        assert r.returncode == 0, r.stderr
    outputs = sorted(p for p in (data / "outputs").rglob("*") if p.is_file())
    manifests = sorted(p for p in (data / "jobs").rglob("*.json"))
    assert len(outputs) == 2 and len(manifests) == 2
    # what is not a finished output is left behind
    (data / "outputs" / ".partial").mkdir(exist_ok=True)
    (data / "outputs" / ".partial" / "job-0-abcd.part").write_bytes(b"half")
    (data / "jobs" / "x.1234abcd.tmp").write_bytes(b"half")

    bucket = s3_server.make_bucket()
    s3 = {**local, **s3_server.env(bucket, "studio")}
    first = run(["storage", "migrate", "--json"], tmp_path, s3)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["outputs"] == {
        "copied": 2,
        "skipped": 0,
        "failed": 0,
        "bytes": report["outputs"]["bytes"],
    }
    assert report["outputs"]["bytes"] == sum(p.stat().st_size for p in outputs)
    assert report["manifests"]["copied"] == 2 and report["manifests"]["failed"] == 0
    assert report["inputs"]["copied"] == 0 and report["assets"]["copied"] == 0
    in_bucket = bucket_keys(s3_server, f"s3://{bucket}/studio/outputs")
    assert in_bucket == {
        p.relative_to(data / "outputs").as_posix(): p.stat().st_size for p in outputs
    }
    assert len(bucket_keys(s3_server, f"s3://{bucket}/studio/jobs")) == 2

    again = run(["storage", "migrate", "--json"], tmp_path, s3)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["outputs"]["copied"] == 0 and report["outputs"]["skipped"] == 2
    assert report["manifests"]["copied"] == 0 and report["manifests"]["skipped"] == 2

    # a file whose size differs from the object is copied again
    manifests[0].write_text(manifests[0].read_text() + "\n")
    third = run(["storage", "migrate"], tmp_path, s3)
    assert third.returncode == 0, third.stderr
    assert "manifests: 1 copied, 1 skipped, 0 failed" in third.stdout

    # a job run against the bucket: the CLI prints where its output is
    r = run(["generate", "flux", "into the bucket", "--wait"], tmp_path, s3)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1].startswith(f"s3://{bucket}/studio/outputs/")


def test_migrate_needs_an_s3_store(tmp_path: Path) -> None:
    env = clean_environ(DATA_DIR=str(tmp_path / "data"))
    r = run(["storage", "migrate"], tmp_path, env)
    assert r.returncode == 2
    assert "OUTPUT_STORE_URL" in r.stderr


def test_migrate_copies_inputs_and_assets(tmp_path: Path, s3_server: S3Server) -> None:
    data = tmp_path / "data"
    (data / "inputs").mkdir(parents=True)
    (data / "inputs" / ("a" * 64 + ".png")).write_bytes(b"input")
    (data / "inputs" / ".x.1234abcd.tmp").write_bytes(b"half")
    (data / "assets" / "ab").mkdir(parents=True)
    (data / "assets" / "ab" / ("ab" * 32 + ".jpg")).write_bytes(b"asset")
    (data / "assets" / ".staging" / "run").mkdir(parents=True)
    (data / "assets" / ".staging" / "run" / "x.jpg").write_bytes(b"staged")
    bucket = s3_server.make_bucket()
    env = {**clean_environ(DATA_DIR=str(data)), **s3_server.env(bucket, "p")}
    r = run(["storage", "migrate", "--json"], tmp_path, env)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["inputs"]["copied"] == 1 and report["assets"]["copied"] == 1
    assert bucket_keys(s3_server, f"s3://{bucket}/p/inputs") == {"a" * 64 + ".png": 5}
    assert bucket_keys(s3_server, f"s3://{bucket}/p/assets") == {"ab/" + "ab" * 32 + ".jpg": 5}


def test_migrate_dry_run_copies_nothing(tmp_path: Path, s3_server: S3Server) -> None:
    data = tmp_path / "data"
    (data / "outputs" / "2026" / "01" / "01").mkdir(parents=True)
    (data / "outputs" / "2026" / "01" / "01" / "a-0.png").write_bytes(b"png")
    bucket = s3_server.make_bucket()
    env = {**clean_environ(DATA_DIR=str(data)), **s3_server.env(bucket)}
    r = run(["storage", "migrate", "--dry-run", "--json"], tmp_path, env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["outputs"]["copied"] == 1
    assert bucket_keys(s3_server, f"s3://{bucket}/outputs") == {}
