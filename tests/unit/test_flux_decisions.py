"""The pure decisions of the FLUX backend: error mapping, poll interpretation, retries."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import httpx2
import pytest
from pydantic import JsonValue

from orchestrator import errors
from orchestrator.backends.flux import (
    MAX_CONNECT_RETRIES,
    MAX_GET_RETRIES,
    MAX_RETRY_AFTER_S,
    FluxBackend,
    Pending,
    Ready,
    _RetryBudget,
    get_error,
    interpret_poll,
    retry_after_seconds,
    submit_error,
)
from orchestrator.domain.jobs import Job, JobStatus, UpstreamHandle

Code = errors.ErrorCode

HTML_502 = """<html>
  <head><title>502 Bad Gateway</title></head>
  <body>
    <center><h1>502 Bad Gateway</h1></center>
    <hr><center>nginx</center>
  </body>
</html>
"""

FASTAPI_422 = json.dumps(
    {
        "detail": [
            {
                "loc": ["body", "width"],
                "msg": "Input should be a multiple of 32",
                "type": "multiple_of",
            }
        ]
    }
)


# --- retry_after_seconds ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("5", 5.0),
        ("0", 0.0),
        ("0.5", 0.5),
        (" 2 ", 2.0),
        ("-3", 0.0),  # negative: clamp to now
        ("1000", MAX_RETRY_AFTER_S),  # capped
        ("abc", None),
        ("", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),  # HTTP-date form is not honoured
    ],
)
def test_retry_after_seconds(header: str | None, expected: float | None) -> None:
    assert retry_after_seconds(header) == expected


# Regression (fixed): retry_after_seconds("nan") returns float('nan') -- float() accepts "nan" and
# min/max do not clamp NaN -- which RateLimited then hands to stamina as a wait time.
@pytest.mark.parametrize("header", ["nan", "NaN"])
def test_retry_after_seconds_rejects_nan(header: str) -> None:
    value = retry_after_seconds(header)
    assert value is None or (not math.isnan(value) and 0.0 <= value <= MAX_RETRY_AFTER_S)


# --- submit_error -------------------------------------------------------------------------


def test_submit_402_is_insufficient_credits() -> None:
    exc = submit_error(402, '{"detail":"Insufficient credits"}', None)
    assert type(exc) is errors.UpstreamError
    assert exc.code is Code.INSUFFICIENT_CREDITS
    assert "Insufficient credits" in exc.detail


@pytest.mark.parametrize("status", [401, 403])
def test_submit_auth_failure(status: int) -> None:
    exc = submit_error(status, '{"detail":"Not authenticated - Invalid Authentication"}', None)
    assert type(exc) is errors.UpstreamError
    assert exc.code is Code.UPSTREAM_AUTH
    assert "Invalid Authentication" in exc.detail


def test_submit_422_names_the_field() -> None:
    exc = submit_error(422, FASTAPI_422, None)
    assert type(exc) is errors.UpstreamError
    assert exc.code is Code.INVALID_PARAMS
    assert "width" in exc.detail
    assert "multiple of 32" in exc.detail
    # "body" is the FastAPI location prefix, not a field name
    assert "body.width" not in exc.detail
    assert exc.extra["upstream_detail"] == json.loads(FASTAPI_422)["detail"]


@pytest.mark.parametrize("status", [400, 404])
def test_submit_other_client_errors_are_invalid_params(status: int) -> None:
    exc = submit_error(status, '{"detail":"Not Found"}', None)
    assert exc.code is Code.INVALID_PARAMS
    assert "Not Found" in exc.detail


@pytest.mark.parametrize(
    ("retry_after", "expected"), [("7", 7.0), (None, None), ("999", MAX_RETRY_AFTER_S)]
)
def test_submit_429_is_rate_limited(retry_after: str | None, expected: float | None) -> None:
    exc = submit_error(429, '{"detail":"Too many active tasks"}', retry_after)
    assert isinstance(exc, errors.RateLimited)
    assert isinstance(exc, errors.TransientUpstreamError)
    assert exc.code is Code.RATE_LIMITED
    assert exc.retry_after_s == expected


@pytest.mark.parametrize(
    ("status", "body"),
    [(500, '{"detail":"Internal Server Error"}'), (502, HTML_502), (503, ""), (504, "oops")],
)
def test_submit_5xx_is_not_transient(status: int, body: str) -> None:
    """A submit that may have reached BFL is never retried: it may have been billed."""
    exc = submit_error(status, body, None)
    assert type(exc) is errors.UpstreamError
    assert not isinstance(exc, errors.TransientUpstreamError)
    assert exc.code is Code.UPSTREAM_ERROR
    assert exc.extra["http_status"] == status
    assert str(status) in exc.detail


def test_submit_html_body_is_flattened_and_short() -> None:
    exc = submit_error(502, HTML_502 + "x" * 5000, None)
    assert "\n" not in exc.detail
    assert "502 Bad Gateway" in exc.detail
    assert len(exc.detail) < 600


# --- get_error ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_get_5xx_is_transient_unavailable(status: int) -> None:
    exc = get_error(status, HTML_502, None, "poll")
    assert isinstance(exc, errors.TransientUpstreamError)
    assert not isinstance(exc, errors.RateLimited)
    assert exc.code is Code.UPSTREAM_UNAVAILABLE
    assert exc.extra["http_status"] == status
    assert "poll" in exc.detail


def test_get_429_is_rate_limited() -> None:
    exc = get_error(429, "", "1", "poll")
    assert isinstance(exc, errors.RateLimited)
    assert exc.retry_after_s == 1.0


@pytest.mark.parametrize("status", [401, 403])
def test_get_auth(status: int) -> None:
    exc = get_error(status, '{"detail":"Not authenticated"}', None, "credits")
    assert type(exc) is errors.UpstreamError
    assert exc.code is Code.UPSTREAM_AUTH
    assert "credits" in exc.detail


@pytest.mark.parametrize("status", [400, 404, 422])
def test_get_other_4xx_is_upstream_error_not_transient(status: int) -> None:
    exc = get_error(status, '{"detail":"nope"}', None, "poll")
    assert type(exc) is errors.UpstreamError
    assert exc.code is Code.UPSTREAM_ERROR


# --- interpret_poll ----------------------------------------------------------------------


def _poll(status: str, **fields: JsonValue) -> dict[str, JsonValue]:
    body: dict[str, JsonValue] = {
        "id": "t-1",
        "status": status,
        "result": None,
        "progress": None,
        "details": None,
        "preview": None,
    }
    body.update(fields)
    return body


@pytest.mark.parametrize(
    ("progress", "expected"),
    [
        (0.3, 0.3),
        (None, None),
        (30, 0.3),  # percent
        (0, 0.0),
        (1, 1.0),
        (100, 1.0),
        (150, 1.0),  # clamped
        (-0.5, 0.0),  # clamped
        ("0.5", None),  # not a number
        (True, None),  # bool is not a progress
    ],
)
def test_pending(progress: JsonValue, expected: float | None) -> None:
    out = interpret_poll(_poll("Pending", progress=progress))
    assert isinstance(out, Pending)
    if expected is None:
        assert out.progress is None
    else:
        assert out.progress == pytest.approx(expected)


def test_pending_without_progress_key() -> None:
    assert interpret_poll({"id": "t", "status": "Pending"}) == Pending(None)


def test_ready_with_sample() -> None:
    result: dict[str, JsonValue] = {
        "sample": "https://delivery.eu.bfl.ai/results/x/sample.jpeg?sig=abc",
        "prompt": "a cat",
        "seed": 42,
        "start_time": 1766072345.19,
        "end_time": 1766072347.68,
        "duration": 2.49,
    }
    out = interpret_poll(_poll("Ready", result=result))
    assert isinstance(out, Ready)
    assert out.result.sample == result["sample"]
    assert out.result.seed == 42
    assert out.result.duration == pytest.approx(2.49)


@pytest.mark.parametrize("result", [None, {}, {"prompt": "a cat", "seed": 1}, "https://x"])
def test_ready_without_sample_is_bad_response(result: JsonValue) -> None:
    with pytest.raises(errors.UpstreamError) as info:
        interpret_poll(_poll("Ready", result=result))
    assert info.value.code is Code.BAD_RESPONSE
    assert not isinstance(info.value, errors.TransientUpstreamError)


@pytest.mark.parametrize(
    ("status", "stage"), [("Request Moderated", "request"), ("Content Moderated", "content")]
)
def test_moderated(status: str, stage: str) -> None:
    body = _poll(
        status, details={"Moderation Reasons": ["Sexual Content", "Derivative Works Filter"]}
    )
    with pytest.raises(errors.UpstreamError) as info:
        interpret_poll(body)
    exc = info.value
    assert type(exc) is errors.UpstreamError
    assert exc.code is Code.MODERATED
    assert exc.extra["stage"] == stage
    assert exc.extra["reasons"] == ["Sexual Content", "Derivative Works Filter"]
    assert "Sexual Content" in exc.detail
    assert "Derivative Works Filter" in exc.detail


@pytest.mark.parametrize("details", [None, {}, {"Moderation Reasons": "not a list"}])
def test_moderated_without_reasons(details: JsonValue) -> None:
    with pytest.raises(errors.UpstreamError) as info:
        interpret_poll(_poll("Content Moderated", details=details))
    assert info.value.code is Code.MODERATED
    assert info.value.extra["stage"] == "content"
    assert info.value.extra["reasons"] == []
    assert "no reason given" in info.value.detail


def test_error_is_generation_failed() -> None:
    with pytest.raises(errors.UpstreamError) as info:
        interpret_poll(_poll("Error", details={"message": "GPU fell over"}))
    assert type(info.value) is errors.UpstreamError
    assert info.value.code is Code.GENERATION_FAILED
    assert info.value.extra["upstream_details"] == {"message": "GPU fell over"}


def test_task_not_found() -> None:
    with pytest.raises(errors.UpstreamError) as info:
        interpret_poll({"id": "t", "status": "Task not found"})
    assert type(info.value) is errors.UpstreamError
    assert info.value.code is Code.TASK_NOT_FOUND


@pytest.mark.parametrize("status", ["Failed", "failed", "pending", None, 3])
def test_unknown_status_is_upstream_error(status: JsonValue) -> None:
    with pytest.raises(errors.UpstreamError) as info:
        interpret_poll({**_poll("Pending"), "status": status})
    assert type(info.value) is errors.UpstreamError
    assert info.value.code is Code.UPSTREAM_ERROR
    assert repr(status) in info.value.detail


@pytest.mark.parametrize("body", [None, [], ["Pending"], "Pending", 200, True])
def test_non_dict_body_is_transient_bad_response(body: JsonValue) -> None:
    with pytest.raises(errors.TransientUpstreamError) as info:
        interpret_poll(body)
    assert info.value.code is Code.BAD_RESPONSE


# --- _RetryBudget ----------------------------------------------------------------------------


def _transient() -> errors.TransientUpstreamError:
    return errors.TransientUpstreamError(Code.UPSTREAM_UNAVAILABLE, "503")


RETRY_TABLE: list[tuple[str, Exception, bool, bool]] = [
    # (name, exception, retried when idempotent, retried when not idempotent)
    ("connect error", httpx2.ConnectError("x"), True, True),
    ("connect timeout", httpx2.ConnectTimeout("x"), True, True),
    ("read timeout", httpx2.ReadTimeout("x"), True, False),
    ("read error", httpx2.ReadError("x"), True, False),
    ("remote protocol error", httpx2.RemoteProtocolError("x"), True, False),
    ("transient upstream", _transient(), True, False),
    ("permanent upstream", errors.UpstreamError(Code.UPSTREAM_AUTH, "403"), False, False),
    ("moderated", errors.UpstreamError(Code.MODERATED, "no"), False, False),
    ("programming error", ValueError("x"), False, False),
    ("key error", KeyError("x"), False, False),
]


@pytest.mark.parametrize(
    ("exc", "idempotent_retried", "submit_retried"),
    [row[1:] for row in RETRY_TABLE],
    ids=[row[0] for row in RETRY_TABLE],
)
def test_retry_first_failure(
    exc: Exception, idempotent_retried: bool, submit_retried: bool
) -> None:
    assert _RetryBudget(idempotent=True)(exc) is idempotent_retried
    assert _RetryBudget(idempotent=False)(exc) is submit_retried


@pytest.mark.parametrize("idempotent", [True, False])
def test_rate_limited_returns_its_retry_after(idempotent: bool) -> None:
    budget = _RetryBudget(idempotent=idempotent)
    wait = budget(errors.RateLimited("busy", 3.5))
    assert isinstance(wait, float)
    assert not isinstance(wait, bool)
    assert wait == 3.5


@pytest.mark.parametrize("idempotent", [True, False])
def test_rate_limited_without_hint_is_retried_with_backoff(idempotent: bool) -> None:
    assert _RetryBudget(idempotent=idempotent)(errors.RateLimited("busy", None)) is True


@pytest.mark.parametrize("idempotent", [True, False])
def test_rate_limited_does_not_spend_connect_budget(idempotent: bool) -> None:
    budget = _RetryBudget(idempotent=idempotent)
    for _ in range(50):
        assert budget(errors.RateLimited("busy", 1.0)) == 1.0
    assert budget.connect_failures == 0
    assert budget.other_failures == 0
    assert budget(httpx2.ConnectError("x")) is True


@pytest.mark.parametrize("idempotent", [True, False])
@pytest.mark.parametrize("exc_type", [httpx2.ConnectError, httpx2.ConnectTimeout])
def test_connect_budget_runs_out(idempotent: bool, exc_type: type[Exception]) -> None:
    budget = _RetryBudget(idempotent=idempotent)
    answers = [budget(exc_type("x")) for _ in range(MAX_CONNECT_RETRIES + 2)]
    assert answers == [True] * MAX_CONNECT_RETRIES + [False, False]


def test_connect_errors_of_both_kinds_share_one_budget() -> None:
    budget = _RetryBudget(idempotent=False)
    kinds = [httpx2.ConnectError, httpx2.ConnectTimeout]
    answers = [budget(kinds[i % 2]("x")) for i in range(MAX_CONNECT_RETRIES + 1)]
    assert answers == [True] * MAX_CONNECT_RETRIES + [False]


def test_get_budget_runs_out() -> None:
    budget = _RetryBudget(idempotent=True)
    failures: list[Exception] = [httpx2.ReadTimeout("x"), _transient()]
    answers = [budget(failures[i % 2]) for i in range(MAX_GET_RETRIES + 1)]
    assert answers == [True] * MAX_GET_RETRIES + [False]


def test_get_and_connect_budgets_are_separate() -> None:
    budget = _RetryBudget(idempotent=True)
    for _ in range(MAX_GET_RETRIES):
        assert budget(httpx2.ReadTimeout("x")) is True
    assert budget(httpx2.ReadTimeout("x")) is False
    # the connect budget is untouched
    for _ in range(MAX_CONNECT_RETRIES):
        assert budget(httpx2.ConnectError("x")) is True
    assert budget(httpx2.ConnectError("x")) is False


def test_submit_never_retries_after_it_may_have_been_sent() -> None:
    budget = _RetryBudget(idempotent=False)
    assert budget(httpx2.ReadTimeout("x")) is False
    assert budget(_transient()) is False
    assert budget(errors.UpstreamError(Code.SUBMIT_UNCERTAIN, "?")) is False
    assert budget.other_failures == 0


NOW = datetime(2026, 3, 7, tzinfo=UTC)
JOB = Job(
    id="j",
    backend="flux",
    model="flux-dev",
    params={},
    status=JobStatus.RUNNING,
    priority=0,
    deadline_at=NOW,
    created_at=NOW,
    updated_at=NOW,
)


@pytest.mark.parametrize(
    ("handle", "submit_started", "stopped", "note"),
    [
        (None, False, True, "canceled before anything was sent to BFL"),
        # the submit was in flight: it used to say "before anything was sent" too
        (None, True, False, "BFL may have accepted and billed it"),
        (UpstreamHandle(task_id="t", polling_url="http://b/r"), True, False, "may still finish"),
    ],
)
async def test_cancel_says_what_may_have_been_billed(
    handle: UpstreamHandle | None, submit_started: bool, stopped: bool, note: str
) -> None:
    async with httpx2.AsyncClient() as http:
        backend = FluxBackend(http, base_url="http://bfl.test", api_key="k")
        got = await backend.cancel(JOB, handle, submit_started=submit_started)
    assert got.stopped_upstream is stopped and note in got.note
