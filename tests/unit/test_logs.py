"""Structured logging: JSON lines, stdlib routed through structlog, secrets redacted."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any, Literal

import pytest
import structlog

from orchestrator import logs

SECRET = "sk-very-secret-1234"
ROUTED = (
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "httpx2",
    "httpcore",
    "aiosqlite",
    "sqlalchemy.engine",
    "alembic",
)


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Undo everything ``logs.configure`` changes, so other tests are unaffected."""
    root = logging.getLogger()
    root_level = root.level
    ours_before = [h for h in root.handlers if getattr(h, "_orchestrator", False)]
    named = {
        name: (lg.level, list(lg.handlers), lg.propagate)
        for name in ROUTED
        for lg in [logging.getLogger(name)]
    }
    structlog_config = structlog.get_config()
    try:
        yield
    finally:
        for h in list(root.handlers):
            if getattr(h, "_orchestrator", False) and h not in ours_before:
                root.removeHandler(h)
        for h in ours_before:
            if h not in root.handlers:
                root.addHandler(h)
        root.setLevel(root_level)
        for name, (level, handlers, propagate) in named.items():
            lg = logging.getLogger(name)
            lg.setLevel(level)
            lg.handlers[:] = handlers
            lg.propagate = propagate
        structlog.configure(**structlog_config)


def setup(level: str = "INFO", fmt: Literal["auto", "json", "console"] = "json") -> io.StringIO:
    stream = io.StringIO()
    logs.configure(level, fmt=fmt, secrets=[SECRET], stream=stream)
    return stream


def records(stream: io.StringIO) -> list[dict[str, Any]]:
    lines = [line for line in stream.getvalue().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # every line must be JSON


def by_event(stream: io.StringIO) -> dict[str, dict[str, Any]]:
    return {r["event"]: r for r in records(stream)}


def test_structlog_event_is_json_and_redacted() -> None:
    stream = setup()
    logs.get("t").info(
        "x",
        key=SECRET,
        nested={"authorization": "Bearer abc"},
        text=f"value {SECRET} inside",
        count=3,
    )
    assert SECRET not in stream.getvalue()
    (rec,) = records(stream)
    assert rec["event"] == "x"
    assert rec["level"] == "info"
    assert rec["logger"] == "t"
    assert rec["timestamp"].endswith("Z")
    assert rec["key"] == "[redacted]"
    assert rec["nested"] == {"authorization": "[redacted]"}
    assert rec["text"] == "value [redacted] inside"
    assert rec["count"] == 3


def test_stdlib_logging_is_routed_and_redacted() -> None:
    stream = setup()
    logging.getLogger("uvicorn.error").warning("client said %s", SECRET)
    assert SECRET not in stream.getvalue()
    (rec,) = records(stream)
    assert rec["event"] == "client said [redacted]"
    assert rec["level"] == "warning"
    assert rec["logger"] == "uvicorn.error"
    assert "timestamp" in rec


def test_stdlib_extra_fields_are_redacted() -> None:
    stream = setup()
    logging.getLogger("some.lib").warning("hi", extra={"api_key": "abc", "note": SECRET})
    assert SECRET not in stream.getvalue()
    (rec,) = records(stream)
    assert rec["api_key"] == "[redacted]"
    assert rec["note"] == "[redacted]"


@pytest.mark.parametrize(
    "key",
    [
        "api_key",
        "API_KEY",
        "bfl_api_key",
        "apikey",
        "x-key",
        "x_key",
        "token",
        "access_token",
        "secret",
        "client_secret",
        "authorization",
        "Authorization",
    ],
)
def test_secret_named_keys_redacted(key: str) -> None:
    stream = setup()
    logs.get("t").info("k", **{key: "plain-value", "nested": {key: "plain-value"}})
    (rec,) = records(stream)
    assert rec[key] == "[redacted]"
    assert rec["nested"][key] == "[redacted]"
    assert "plain-value" not in stream.getvalue()


@pytest.mark.parametrize("value", [None, ""])
def test_empty_secret_named_keys_left_alone(value: str | None) -> None:
    stream = setup()
    logs.get("t").info("k", token=value)
    assert records(stream)[0]["token"] == value


def test_innocent_keys_kept() -> None:
    stream = setup()
    logs.get("t").info("k", job_id="j1", model="flux-dev", progress=0.5, ok=True)
    rec = records(stream)[0]
    assert (rec["job_id"], rec["model"], rec["progress"], rec["ok"]) == (
        "j1",
        "flux-dev",
        0.5,
        True,
    )


def test_secret_inside_lists_and_objects() -> None:
    stream = setup()
    logs.get("t").info("k", items=[SECRET, {"token": "z"}], obj=ValueError(SECRET), tup=(SECRET,))
    assert SECRET not in stream.getvalue()
    rec = records(stream)[0]
    assert rec["items"] == ["[redacted]", {"token": "[redacted]"}]
    assert rec["tup"] == ["[redacted]"]


def test_secret_as_event_text() -> None:
    stream = setup()
    logs.get("t").info(f"key is {SECRET}")
    assert records(stream)[0]["event"] == "key is [redacted]"


def test_contextvars_show_up() -> None:
    stream = setup()
    with structlog.contextvars.bound_contextvars(request_id="r1"):
        logs.get("t").info("inside")
        logging.getLogger("uvicorn.access").info("stdlib inside")
    logs.get("t").info("outside")
    events = by_event(stream)
    assert events["inside"]["request_id"] == "r1"
    assert events["stdlib inside"]["request_id"] == "r1"
    assert "request_id" not in events["outside"]


def test_level_filters() -> None:
    stream = setup(level="WARNING")
    logs.get("t").info("dropped")
    logging.getLogger("uvicorn.error").info("dropped too")
    logs.get("t").warning("kept")
    assert [r["event"] for r in records(stream)] == ["kept"]


def test_reconfigure_replaces_handler() -> None:
    first = setup()
    second = setup()
    logs.get("t").info("once")
    assert first.getvalue() == ""
    assert [r["event"] for r in records(second)] == ["once"]
    ours = [h for h in logging.getLogger().handlers if isinstance(h, logs._OurHandler)]
    assert len(ours) == 1


def test_uvicorn_handlers_cleared_and_propagate() -> None:
    logging.getLogger("uvicorn.access").addHandler(logging.NullHandler())
    logging.getLogger("uvicorn.access").propagate = False
    stream = setup()
    assert logging.getLogger("uvicorn.access").handlers == []
    logging.getLogger("uvicorn.access").info("GET / 200")
    assert [r["event"] for r in records(stream)] == ["GET / 200"]


def test_console_format_redacts_too() -> None:
    stream = setup(fmt="console")
    logs.get("t").info("x", key=SECRET, authorization="Bearer abc")
    out = stream.getvalue()
    assert "x" in out
    assert SECRET not in out
    assert "Bearer abc" not in out
    assert "[redacted]" in out


def test_auto_format_is_json_when_not_a_terminal() -> None:
    stream = setup(fmt="auto")
    logs.get("t").info("hello")
    assert records(stream)[0]["event"] == "hello"


def test_exception_is_rendered() -> None:
    stream = setup()
    try:
        raise RuntimeError("kaput")
    except RuntimeError:
        logs.get("t").exception("failed")
    rec = records(stream)[0]
    assert rec["level"] == "error"
    assert "RuntimeError: kaput" in rec["exception"]


# Regression (fixed): format_exc_info (and ConsoleRenderer's own traceback rendering) runs *after*
# SecretRedactor in logs.configure, so a secret inside an exception message or
# traceback is written to the log in clear text.
@pytest.mark.parametrize("fmt", ["json", "console"])
@pytest.mark.parametrize("via", ["structlog", "stdlib"])
def test_secret_in_exception_is_redacted(fmt: Literal["json", "console"], via: str) -> None:
    stream = setup(fmt=fmt)
    try:
        raise ValueError(f"bad key {SECRET}")
    except ValueError:
        if via == "structlog":
            logs.get("t").exception("failed")
        else:
            logging.getLogger("uvicorn.error").exception("failed")
    out = stream.getvalue()
    assert "failed" in out
    assert SECRET not in out
