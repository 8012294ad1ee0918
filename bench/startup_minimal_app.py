"""The start-up baseline for ``bench/startup.py``: the smallest FastAPI app with a ``/healthz``
route, served by uvicorn the way ``orchestrator serve`` serves Orchestrator (one process, no
access log, lifespan on).

    .venv/bin/python bench/startup_minimal_app.py --port 8123
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI

app = FastAPI()


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
