"""How fast is a Tilda import? A synthetic export of N pages (default 1,000; built by
``orchestrator.testing.tilda_export.build_large_export``: a cover with a background
image, two text blocks, an h1 and a gallery per page, the shared header and footer
nested in every page, placeholders next to every image) is imported into a fresh
SQLite database in a temporary folder, then imported again (the no-op).

Run it from the repository root::

    .venv/bin/python bench/tilda_import.py              # 1,000 pages, folder and zip
    .venv/bin/python bench/tilda_import.py --pages 200  # quicker

Columns: ``parse`` reads and parses every page (and the htaccess, robots, sitemap);
``copy`` streams each used image through SHA-256 into the staging folder and moves new
content into ``DATA_DIR/assets``; ``db`` is the one transaction that writes sites, pages,
blocks, assets and links; ``total`` is the whole run as a user sees it (opening the
export, the run's bookkeeping rows included). The second row of each source is the
re-import of the same export, which must change nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from orchestrator import logs
from orchestrator.config import load_settings
from orchestrator.db.engine import open_database
from orchestrator.domain.tilda import ImportStatus
from orchestrator.testing.tilda_export import build_large_export, zip_folder
from orchestrator.tilda.service import TildaService


async def run(pages: int, root: Path) -> list[tuple[str, int, int, dict[str, float], bool]]:
    export = root / "export"
    export.mkdir()
    started = time.perf_counter()
    images = build_large_export(export, pages=pages)
    zipped = zip_folder(export, root / "export.zip", top="project9100001")
    print(
        f"built {pages} pages + header/footer, {images} images in "
        f"{time.perf_counter() - started:.1f} s (not measured)",
        file=sys.stderr,
    )
    rows = []
    for label, source in (("folder", export), ("zip", zipped)):
        data = root / f"data-{label}"
        settings = load_settings(
            root / "orchestrator.toml", {"data_dir": data, "log_level": "WARNING"}
        )
        db = await open_database(settings.db_url)
        try:
            tilda = TildaService(settings, db)
            for attempt in ("first", "again"):
                t0 = time.perf_counter()
                result = await tilda.import_path(source)
                total = time.perf_counter() - t0
                if result.status != ImportStatus.SUCCEEDED or result.report is None:
                    raise SystemExit(f"import failed: {result.error_code} {result.error_message}")
                timings = {**tilda.last_timings, "total_s": total}
                rows.append(
                    (
                        f"{label}, {attempt}",
                        result.report.pages_total,
                        result.report.assets_total,
                        timings,
                        result.report.no_change,
                    )
                )
        finally:
            await db.dispose()
    return rows


def table(rows: list[tuple[str, int, int, dict[str, float], bool]]) -> str:
    lines = [
        "| import | pages | images | parse s | copy s | db s | total s | no change |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for label, pages, images, t, same in rows:
        lines.append(
            f"| {label} | {pages} | {images} | {t.get('parse_s', 0):.2f} | "
            f"{t.get('copy_s', 0):.2f} | {t.get('db_s', 0):.2f} | {t['total_s']:.2f} | "
            f"{'yes' if same else 'no'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=1000)
    args = parser.parse_args()
    logs.configure("WARNING", "console", [])
    with tempfile.TemporaryDirectory(prefix="tilda-bench-") as tmp:
        rows = asyncio.run(run(args.pages, Path(tmp)))
    print(f"# Tilda import: {args.pages} pages, SQLite")
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
