"""The admin web UI: server-rendered pages under ``/ui/``, static files under
``/ui/static/``; handlers call the service in-process."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles


def install(app: FastAPI) -> None:
    """Add the UI's routes, static files and HTML error pages to ``app``."""
    from orchestrator.ui import cost_pages, error_page, pages, panels, site_pages, templating

    app.include_router(pages.router)
    app.include_router(panels.router)
    app.include_router(site_pages.router)
    app.include_router(cost_pages.router)
    app.mount(templating.STATIC_PREFIX, StaticFiles(directory=templating.STATIC), name="ui-static")
    app.state.html_error_page = error_page.page
