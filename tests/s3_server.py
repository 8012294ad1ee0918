"""A real S3 API on 127.0.0.1: moto's standalone server, run as its own process (so
its imports and warnings stay out of the test process). Session-scoped; it is
stopped at the end of the session, and dies with the test process in any case (it
reads its stdin and a closed pipe ends it)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx2
import pytest

ACCESS_KEY = "testing-access-key"
SECRET_KEY = "testing-secret-key"
REGION = "us-east-1"

# moto.server, run with the parent's death in mind: when the pipe on stdin closes
# (the test process is gone, even after kill -9), the server exits.
_LAUNCH = """
import os, sys, threading
def watch():
    sys.stdin.read()
    os._exit(0)
threading.Thread(target=watch, daemon=True).start()
from moto.server import main
main(sys.argv[1:])
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str

    def make_bucket(self, name: str | None = None) -> str:
        """A new empty bucket (a plain PUT: moto accepts any signature)."""
        bucket = name or f"b-{uuid.uuid4().hex[:12]}"
        r = httpx2.put(f"{self.endpoint_url}/{bucket}", timeout=10)
        r.raise_for_status()
        return bucket

    def env_settings(self, bucket: str, prefix: str = "") -> dict[str, object]:
        """The same as :meth:`env`, as setting names (for ``make_settings``)."""
        return {k.lower(): v for k, v in self.env(bucket, prefix).items()}

    def env(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """The variables that point an Orchestrator process at ``bucket``."""
        url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        return {
            "OUTPUT_STORE_URL": url,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": REGION,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        }


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", _LAUNCH, "-H", "127.0.0.1", "-p", str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        give_up = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {proc.returncode}")
            try:
                httpx2.get(f"{url}/moto-api/", timeout=1)
                break
            except httpx2.TransportError:
                if time.monotonic() > give_up:
                    raise
                time.sleep(0.1)
        yield S3Server(url)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdin is not None:
            proc.stdin.close()
