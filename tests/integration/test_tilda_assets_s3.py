"""Imported Tilda assets with the S3 output store (moto's server on 127.0.0.1): an
import uploads its asset files to ``prefix/assets/``; a node with another DATA_DIR
(a worker building a v0 prompt) reads them from the bucket."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from tests.s3_server import ACCESS_KEY, REGION, SECRET_KEY, S3Server

from orchestrator.config import Settings
from orchestrator.db.engine import open_database
from orchestrator.domain.tilda import ImportStatus
from orchestrator.object_store import S3Credentials, S3Location, S3ObjectStore
from orchestrator.testing import tilda_export as te
from orchestrator.tilda.service import TildaService


async def test_assets_imported_on_one_node_are_read_on_another(
    make_settings: Callable[..., Settings], s3_server: S3Server, tmp_path: Path
) -> None:
    bucket = s3_server.make_bucket()
    shared = {
        "database_url": f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}",
        **s3_server.env_settings(bucket, "studio"),
    }
    api_settings = make_settings(data_dir=tmp_path / "api", **shared)
    worker_settings = make_settings(data_dir=tmp_path / "worker", **shared)
    te.build_export(tmp_path / "export")
    db = await open_database(api_settings.db_url)
    try:
        api = TildaService(api_settings, db)
        run = await api.import_path(tmp_path / "export")
        assert run.status == ImportStatus.SUCCEEDED, run
        assets = await api.list_assets(limit=100)
        assert assets
        store = S3ObjectStore(
            S3Location.parse(f"s3://{bucket}/studio/assets"),
            S3Credentials(s3_server.endpoint_url, REGION, ACCESS_KEY, SECRET_KEY),
        )
        keys = {i.key async for i in store.list()}
        assert {a.path.removeprefix("assets/") for a in assets} <= keys

        worker = TildaService(worker_settings, db)
        for asset in assets[:3]:
            got, data = await worker.asset_bytes(asset.id)
            assert got.id == asset.id
            assert hashlib.sha256(data).hexdigest() == asset.sha256
        assert (tmp_path / "worker" / "assets").is_dir()
        # a second import of the same export uploads nothing new, and still succeeds
        again = await api.import_path(tmp_path / "export")
        assert again.status == ImportStatus.SUCCEEDED
    finally:
        await db.dispose()
