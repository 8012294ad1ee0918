"""Webhook decisions, table-tested: the SSRF guard, URL checks, who receives what,
progress throttling, the retry schedule and the payload."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from orchestrator import errors
from orchestrator.config import Settings
from orchestrator.domain.jobs import Job, JobOutput, JobStatus
from orchestrator.domain.webhooks import (
    PROGRESS_MAX_PER_JOB,
    Target,
    UrlProblem,
    WebhookEvent,
    WebhookPolicy,
    address_forbidden,
    check_url,
    numeric_ipv4,
    parse_target,
    payload,
    progress_due,
    retry_delay,
    targets,
)


@pytest.mark.parametrize(
    ("address", "forbidden"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("10.0.0.5", True),
        ("172.16.0.1", True),
        ("172.31.255.254", True),
        ("192.168.1.1", True),
        ("169.254.169.254", True),  # cloud metadata
        ("fe80::1", True),
        ("fe80::1%eth0", True),
        ("fc00::1", True),
        ("fd12:3456::1", True),
        ("0.0.0.0", True),
        ("::", True),
        ("100.64.0.1", True),  # carrier-grade NAT
        ("224.0.0.1", True),  # multicast
        ("240.0.0.1", True),  # reserved
        ("255.255.255.255", True),
        ("::ffff:127.0.0.1", True),  # IPv4-mapped loopback
        ("::ffff:10.1.2.3", True),
        ("2002:7f00:1::", True),  # 6to4 wrapping 127.0.0.1
        ("192.0.2.10", True),  # documentation range
        ("4000::1", True),  # reserved: not allocated by IANA
        ("2606:4700:4700::1111%eth0", False),  # a zone id is dropped, then judged
        ("2606:4700:4700::1111%", False),
        ("8.8.8.8%eth0", False),
        ("not-an-ip", True),
        ("93.184.216.34", False),
        ("8.8.8.8", False),
        ("2606:4700:4700::1111", False),
        ("::ffff:93.184.216.34", False),
        ("172.32.0.1", False),  # just outside 172.16/12
    ],
)
def test_address_guard(address: str, forbidden: bool) -> None:
    assert address_forbidden(address) is forbidden


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://hooks.example.com/x", None),
        ("http://hooks.example.com:8080/x?y=1", None),
        ("https://93.184.216.34/hook", None),
        ("ftp://hooks.example.com/x", "http:// or https://"),
        ("file:///etc/passwd", "http:// or https://"),
        ("javascript:alert(1)", "http:// or https://"),
        ("hooks.example.com/x", "http:// or https://"),
        ("http:///nohost", "host"),
        ("http://exa mple.com/", "whitespace"),
        ("http://example.com:99999/", "not a valid URL"),
        ("http://127.0.0.1:8000/hook", "non-public address 127.0.0.1"),
        ("http://[::1]/hook", "non-public address ::1"),
        ("http://10.1.2.3/hook", "non-public"),
        ("http://169.254.169.254/latest/meta-data", "non-public"),
        ("http://0.0.0.0:80/", "non-public"),
        ("http://localhost:8000/", "loopback host"),
        ("http://api.localhost/", "loopback host"),
    ],
)
def test_check_url(url: str, problem: str | None) -> None:
    if problem is None:
        check_url(url, allow_private=False)
        return
    with pytest.raises(UrlProblem, match=problem):
        check_url(url, allow_private=False)


@pytest.mark.parametrize(
    ("host", "problem"),
    [
        # numeric spellings the resolver reads as a loopback or private address
        ("2130706433", "non-public address 2130706433 \\(127.0.0.1\\)"),
        ("0x7f000001", "non-public"),
        ("0177.0.0.1", "non-public"),
        ("127.1", "non-public"),
        ("10.1", "non-public"),
        ("0", "non-public"),
        ("0x0a.0x00.0x00.0x01", "non-public"),
        ("127.0.0x1", "non-public"),
        ("3232235777", "non-public"),  # 192.168.1.1
        # numeric, but no address at all
        ("256.0.0.1", "not a valid IPv4 address"),
        ("1.2.3.4.5", "not a valid IPv4 address"),
        ("08.0.0.1", "not a valid IPv4 address"),
        # IPv6 spellings of loopback
        ("[::ffff:127.0.0.1]", "non-public"),
        ("[::1]", "non-public"),
        ("[0:0:0:0:0:0:0:1]", "non-public"),
        ("[::ffff:7f00:1]", "non-public"),
        # public, however spelled; names are checked at delivery
        ("8.8.8.8", None),
        ("134744072", None),  # 8.8.8.8
        ("0x08080808", None),
        ("hooks.example.com", None),
        ("1e100.net", None),
    ],
)
def test_numeric_spellings_are_judged_as_the_address_they_mean(
    host: str, problem: str | None
) -> None:
    """Issue 14, item 6: these passed the submit check and were refused only at
    delivery, where the resolver reads them as the address they spell."""
    url = f"http://{host}:8080/hook"
    if problem is None:
        check_url(url, allow_private=False)
        return
    with pytest.raises(UrlProblem, match=problem):
        check_url(url, allow_private=False)


def test_private_targets_allowed_when_asked() -> None:
    assert check_url("http://127.0.0.1:8000/hook", allow_private=True).port == 8000
    assert parse_target("https://[::1]/x").host == "::1"
    assert parse_target("https://hooks.example.com/x").port == 443
    with pytest.raises(UrlProblem):
        check_url("ftp://127.0.0.1/", allow_private=True)


def test_targets() -> None:
    on = WebhookPolicy(enabled=True, global_url="https://all.example.com/")
    job_url = "https://job.example.com/"
    assert targets(on, WebhookEvent.STARTED, job_url, None) == [
        "https://all.example.com/",
        job_url,
    ]
    assert targets(on, WebhookEvent.STARTED, job_url, ["completed"]) == ["https://all.example.com/"]
    assert targets(on, WebhookEvent.COMPLETED, job_url, ["completed"])[-1] == job_url
    # the same URL twice gets one delivery
    assert targets(on, WebhookEvent.COMPLETED, "https://all.example.com/", None) == [
        "https://all.example.com/"
    ]
    only_job = WebhookPolicy(enabled=True)
    assert targets(only_job, WebhookEvent.PROGRESS, None, None) == []
    assert targets(only_job, WebhookEvent.PROGRESS, job_url, ["started", "progress"]) == [job_url]
    off = WebhookPolicy(enabled=False, global_url="https://all.example.com/")
    assert targets(off, WebhookEvent.COMPLETED, job_url, None) == []


def test_progress_throttle() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert progress_due(0, None, now)
    assert not progress_due(0, None, now, has_progress=False)
    assert not progress_due(1, now - timedelta(seconds=1.9), now)
    assert progress_due(1, now - timedelta(seconds=2), now)
    assert progress_due(PROGRESS_MAX_PER_JOB - 1, now - timedelta(seconds=60), now)
    assert not progress_due(PROGRESS_MAX_PER_JOB, now - timedelta(seconds=60), now)


def test_retry_delay_grows_with_jitter_and_cap() -> None:
    lo = [retry_delay(n, base_s=5, cap_s=3600, rand=lambda a, b: a) for n in range(1, 12)]
    hi = [retry_delay(n, base_s=5, cap_s=3600, rand=lambda a, b: b) for n in range(1, 12)]
    assert hi[:4] == [5, 10, 20, 40]
    assert lo[:2] == [2.5, 5]
    assert hi[-1] == 3600 and lo[-1] == 1800
    for n in range(1, 12):
        assert lo[n - 1] <= retry_delay(n, base_s=5, cap_s=3600) <= hi[n - 1]


def test_payload_is_a_job_summary() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    job = Job(
        id="j1",
        backend="flux",
        model="flux-dev",
        params={"prompt": "p", "image_prompt": "A" * 1000},
        status=JobStatus.SUCCEEDED,
        priority=0,
        outputs=[
            JobOutput(
                n=0,
                path="2026/01/01/j1-0.jpg",
                url="/api/outputs/j1/0",
                mime_type="image/jpeg",
                size_bytes=10,
                sha256="0" * 64,
            )
        ],
        deadline_at=now,
        created_at=now,
        updated_at=now,
        webhook_url="https://secret-receiver.example.com/?token=x",
    )
    body = payload(WebhookEvent.COMPLETED, job, now)
    assert body["type"] == "job.completed"
    assert body["timestamp"] == "2026-01-01T00:00:00+00:00"
    data = body["data"]
    assert isinstance(data, dict)
    assert data["status"] == "succeeded" and data["id"] == "j1"
    assert data["outputs"] == [
        {
            "n": 0,
            "path": "2026/01/01/j1-0.jpg",
            "url": "/api/outputs/j1/0",
            "mime_type": "image/jpeg",
            "size_bytes": 10,
            "sha256": "0" * 64,
            "width": None,
            "height": None,
            "duration_s": None,
        }
    ]
    for hidden in ("params", "upstream", "webhook_url", "webhook_events"):
        assert hidden not in data


def test_payload_is_plain_json() -> None:
    """Datetimes as ISO strings, enums as their values: the body is sent as JSON."""
    at = datetime(2026, 1, 1, 12, 30, tzinfo=UTC)
    job = Job(
        id="j2",
        backend="sdxl",
        model="sdxl",
        params={},
        status=JobStatus.RUNNING,
        priority=0,
        deadline_at=at,
        created_at=at,
        updated_at=at,
    )
    body = payload(WebhookEvent.STARTED, job, at)
    assert json.loads(json.dumps(body)) == body
    data = body["data"]
    assert isinstance(data, dict)
    assert data["created_at"] == "2026-01-01T12:30:00Z"
    assert type(data["status"]) is str and data["status"] == "running"


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("https://hooks.example.com/x", Target("https", "hooks.example.com", 443)),
        ("http://hooks.example.com/x", Target("http", "hooks.example.com", 80)),
        ("HTTP://Hooks.Example.com:8080", Target("http", "hooks.example.com", 8080)),
        ("https://hooks.example.com./x", Target("https", "hooks.example.com", 443)),
        ("https://[2606:4700::1]:8443/", Target("https", "2606:4700::1", 8443)),
    ],
)
def test_parse_target(url: str, target: Target) -> None:
    assert parse_target(url) == target


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://hooks.example.com/", "must be an http:// or https:// URL"),
        ("http:///x", "must include a host"),
        ("http://a b/", "must not contain whitespace"),
        ("http://example.com:99999/", "not a valid URL: Port out of range 0-65535"),
        (
            "http://localhost/",
            "targets a loopback host; set WEBHOOK_ALLOW_PRIVATE=true to allow private targets",
        ),
        (
            "http://127.0.0.1/",
            "targets the non-public address 127.0.0.1; set WEBHOOK_ALLOW_PRIVATE=true to "
            "allow private targets",
        ),
        (
            "http://2130706433/",
            "targets the non-public address 2130706433 (127.0.0.1); set "
            "WEBHOOK_ALLOW_PRIVATE=true to allow private targets",
        ),
        ("http://1.2.3.4.0/", "1.2.3.4.0 is not a valid IPv4 address"),
    ],
)
def test_url_problem_messages(url: str, message: str) -> None:
    """The field error an API client sees for webhook_url."""
    with pytest.raises(UrlProblem) as info:
        check_url(url, allow_private=False)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("1.2.3.4", "1.2.3.4"),
        ("127.0.0.1.", "127.0.0.1"),  # a trailing dot is the same host
        ("127.1", "127.0.0.1"),  # the last part fills the remaining bytes
        ("1.2.65535", "1.2.255.255"),
        ("1.16777215", "1.255.255.255"),
        ("4294967295", "255.255.255.255"),
        ("255.1", "255.0.0.1"),
        ("0xff.0xffffff", "255.255.255.255"),
        ("0x", "0.0.0.0"),  # inet_aton reads a bare 0x as 0
        ("0X7F000001", "127.0.0.1"),  # hex in any case
        ("host.10X", None),  # a last label with a letter is a name, in any case
        ("hooks.example.com", None),
        ("example.0xg1", None),  # not hex: a name
        ("1.2.3.x", None),
    ],
)
def test_numeric_ipv4(host: str, address: str | None) -> None:
    assert numeric_ipv4(host) == address


@pytest.mark.parametrize(
    "host",
    ["1.2.3.4.0", "1.2.3.256", "1.256.1", "256.1", "1.2.65536", "1.16777216", "4294967296"],
)
def test_numeric_ipv4_out_of_range(host: str) -> None:
    with pytest.raises(UrlProblem, match=f"^{host} is not a valid IPv4 address$"):
        numeric_ipv4(host)


# --- settings ------------------------------------------------------------------------------

GOOD_SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def test_webhook_settings(make_settings: Callable[..., Settings]) -> None:
    off = make_settings()
    assert off.webhooks_disabled_reason == "WEBHOOK_SECRET is not set"
    on = make_settings(webhook_secret=GOOD_SECRET, webhook_url="https://hooks.example.com/")
    assert on.webhooks_disabled_reason is None
    assert GOOD_SECRET in on.secret_values()  # redacted from logs
    shown = on.masked()["WEBHOOK_SECRET"]
    assert shown.startswith("****") and GOOD_SECRET not in shown
    assert on.masked()["WEBHOOK_MAX_AGE_S"] == "86400.0"
    # the secret without its prefix is accepted too
    make_settings(webhook_secret=GOOD_SECRET.removeprefix("whsec_"))


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"webhook_secret": "whsec_not base64!"}, "WEBHOOK_SECRET: must be whsec_"),
        ({"webhook_secret": "whsec_c2hvcnQ="}, "WEBHOOK_SECRET: too short"),
        ({"webhook_url": "ftp://hooks.example.com/"}, "WEBHOOK_URL: must be an http"),
        ({"webhook_url": "http://127.0.0.1:9000/"}, "WEBHOOK_URL: targets the non-public"),
        ({"webhook_timeout_s": 0}, "WEBHOOK_TIMEOUT_S"),
        ({"webhook_max_age_s": -1}, "WEBHOOK_MAX_AGE_S"),
    ],
)
def test_bad_webhook_settings(
    make_settings: Callable[..., Settings], overrides: dict[str, object], problem: str
) -> None:
    with pytest.raises(errors.ConfigError) as info:
        make_settings(**overrides)
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems


def test_private_webhook_url_allowed_when_asked(make_settings: Callable[..., Settings]) -> None:
    s = make_settings(webhook_url="http://127.0.0.1:9000/", webhook_allow_private=True)
    assert s.webhook_url == "http://127.0.0.1:9000/"
