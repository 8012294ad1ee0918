"""Structured logging: structlog for our code, stdlib logging (uvicorn, alembic,
SQLAlchemy) routed through the same processors. JSON lines by default, a readable
console format when stderr is a terminal. Secrets are redacted from every event."""

from __future__ import annotations

import logging
import logging.config
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

SECRET_KEY_PARTS = (
    "api_key",
    "apikey",
    "x-key",
    "x_key",
    "token",
    "secret",
    "authorization",
    "password",
    "cookie",
)
REDACTED = "[redacted]"
# Secrets recognisable by their shape: Orchestrator's API tokens (orch_…) and UI
# session cookies (orchs_…), and whatever follows "Bearer" in a header.
SECRET_PATTERNS = (
    re.compile(r"\borchs?_[A-Za-z0-9_-]{8,}"),
    re.compile(r"(?i)(?<=bearer )\s*[^\s\"',;]+"),
)


class SecretRedactor:
    """Removes known secret values and anything shaped like an API token, session
    cookie or bearer credential anywhere in an event, and masks keys whose name says
    they hold a secret."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = [s for s in secrets if s and len(s) >= 4]

    def _scrub(self, value: object) -> object:
        if isinstance(value, str):
            for s in self.secrets:
                if s in value:
                    value = value.replace(s, REDACTED)
            for pattern in SECRET_PATTERNS:
                value = pattern.sub(REDACTED, value)
            return value
        if isinstance(value, dict):
            return {k: self._scrub_item(str(k), v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._scrub(v) for v in value]
        if isinstance(value, int | float | bool) or value is None:
            return value
        text = str(value)
        scrubbed = self._scrub(text)
        return scrubbed if scrubbed != text else value

    def _scrub_item(self, key: str, value: object) -> object:
        lowered = key.lower()
        if any(part in lowered for part in SECRET_KEY_PARTS) and value not in (None, ""):
            return REDACTED
        return self._scrub(value)

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> EventDict:
        out: MutableMapping[str, object] = {}
        for k, v in event_dict.items():
            out[k] = self._scrub_item(k, v) if k != "event" else self._scrub(v)
        return dict(out)


class _OurHandler(logging.StreamHandler[TextIO]):
    """The handler :func:`configure` installs (and replaces when called again)."""


def _drop_color_message(logger: WrappedLogger, name: str, event_dict: EventDict) -> EventDict:
    """uvicorn adds an ANSI-coloured copy of its messages; JSON lines don't need it."""
    event_dict.pop("color_message", None)
    return event_dict


def configure(
    level: str = "INFO",
    fmt: Literal["auto", "json", "console"] = "auto",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> None:
    """Set up structlog and route stdlib logging through it. Safe to call again
    (tests and the CLI reconfigure)."""
    out = stream if stream is not None else sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    redactor = SecretRedactor(secrets)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.StackInfoRenderer(),
        structlog.stdlib.ExtraAdder(),
    ]
    renderer: Processor = (
        structlog.dev.ConsoleRenderer(colors=out.isatty())
        if use_console
        else structlog.processors.JSONRenderer()
    )
    # Tracebacks are rendered to text *before* redaction, so a secret inside an
    # exception message is removed too.
    final: list[Processor] = [
        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
        _drop_color_message,
        structlog.processors.format_exc_info,
        redactor,
        renderer,
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=final,
    )
    handler = _OurHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, _OurHandler):
            root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    for noisy in ("httpx2", "httpcore", "aiosqlite", "sqlalchemy.engine", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    logging.getLogger("alembic").setLevel(logging.WARNING)

    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def get(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
