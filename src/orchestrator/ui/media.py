"""How the UI shows things: the kind of an output, ages, sizes, a job's prompt.
Pure functions (table-tested)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from orchestrator.domain.jobs import Job

MediaKind = Literal["image", "video", "text", "file"]
TEXT_MIMES = frozenset(
    {"application/json", "application/javascript", "application/typescript", "application/xml"}
)
TEXT_SUFFIXES = frozenset(
    {".tsx", ".ts", ".jsx", ".js", ".md", ".txt", ".json", ".css", ".html", ".py", ".xml"}
)


def kind(mime_type: str, path: str = "") -> MediaKind:
    """Which player shows an output: images (also animated WEBP/GIF/PNG), video,
    text/code (``text/*``, JSON, or a known source suffix), else a download."""
    mime = mime_type.split(";", 1)[0].strip().lower()
    if mime.startswith("image/"):
        return "image"
    if mime.startswith("video/"):
        return "video"
    if mime.startswith("text/") or mime in TEXT_MIMES:
        return "text"
    suffix = path[path.rfind(".") :].lower() if "." in path.rsplit("/", 1)[-1] else ""
    if suffix in TEXT_SUFFIXES:
        return "text"
    return "file"


def age(at: datetime | None, now: datetime | None = None) -> str:
    """``"12 s"``, ``"4 min"``, ``"3 h"``, ``"2 d"``: how long ago ``at`` was."""
    if at is None:
        return ""
    seconds = max(0, int(((now or datetime.now(UTC)) - at).total_seconds()))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"


def when(at: datetime | None) -> str:
    """A timestamp to the second, in UTC."""
    return "" if at is None else at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def pct(progress: float | None) -> int:
    """Progress 0..1 as a whole percentage (0 when unknown)."""
    if progress is None:
        return 0
    return round(min(max(progress, 0.0), 1.0) * 100)


def human_size(n: int | None) -> str:
    if n is None:
        return ""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"  # pragma: no cover - the loop always returns


def prompt_of(job: Job) -> str:
    """The job's prompt (a user workflow's ``prompt`` input too), or ``""``."""
    prompt = job.params.get("prompt")
    if isinstance(prompt, str):
        return prompt
    inputs = job.params.get("inputs")
    if isinstance(inputs, dict) and isinstance(inputs.get("prompt"), str):
        return str(inputs["prompt"])
    return ""
