"""The baseline of ``bench/get_job.py``: a minimal FastAPI app that reads one SQLite row.

One route, ``GET /items/{item_id}``, written the way FastAPI's own SQL tutorial writes one:
a plain ``def`` endpoint (FastAPI runs it in its thread pool) with a connection per thread,
one ``SELECT`` by primary key, the row's JSON document parsed and returned as a dict (FastAPI
serializes it). No authentication, no middleware. The bench stores the job document that
Orchestrator returns in that row, so both servers send the same bytes.

Served by uvicorn with the settings ``orchestrator serve`` uses (one process, default loop
and HTTP implementation, no access log, lifespan on)::

    .venv/bin/python bench/minimal_app.py --db items.sqlite3 --port 8123
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import threading
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException

SCHEMA = "CREATE TABLE IF NOT EXISTS items (id TEXT PRIMARY KEY, body TEXT NOT NULL)"


def create_app(db_path: str) -> FastAPI:
    app = FastAPI(title="minimal")
    local = threading.local()

    def conn() -> sqlite3.Connection:
        c: sqlite3.Connection | None = getattr(local, "conn", None)
        if c is None:
            c = local.conn = sqlite3.connect(db_path, check_same_thread=False)
        return c

    @app.get("/items/{item_id}")
    def get_item(item_id: str) -> dict[str, Any]:
        row = conn().execute("SELECT body FROM items WHERE id = ?", (item_id,)).fetchone()
        if row is None:
            raise HTTPException(status_code=404, detail="no such item")
        doc: dict[str, Any] = json.loads(row[0])
        return doc

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", required=True, help="SQLite file with the items table")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    config = uvicorn.Config(
        create_app(args.db),
        host="127.0.0.1",
        port=args.port,
        log_config=None,
        lifespan="on",
        access_log=False,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
