"""Webhooks: event types, who receives what, the payload, the retry schedule and the
SSRF guard — pure decisions, table-tested.

Deliveries follow Standard Webhooks (https://www.standardwebhooks.com): the body is
``{"type", "timestamp", "data"}`` and each request carries ``webhook-id``,
``webhook-timestamp`` and ``webhook-signature`` headers.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, JsonValue

from orchestrator.domain.jobs import Job, WebhookEventName

# What a job may subscribe to (``webhook_events``); ``None`` means all of them.
WEBHOOK_EVENT_NAMES: tuple[WebhookEventName, ...] = ("started", "progress", "completed")

# ``job.progress`` is throttled: at most one per job every PROGRESS_MIN_INTERVAL_S,
# and never more than PROGRESS_MAX_PER_JOB for one job.
PROGRESS_MIN_INTERVAL_S = 2.0
PROGRESS_MAX_PER_JOB = 20

# Job fields left out of a payload: parameters can hold whole images, the upstream
# handle is internal, and the webhook settings are the receiver's own.
_PAYLOAD_EXCLUDE = {"params", "upstream", "webhook_url", "webhook_events", "cancel_requested"}


class WebhookEvent(StrEnum):
    STARTED = "job.started"
    PROGRESS = "job.progress"
    COMPLETED = "job.completed"

    @property
    def short(self) -> WebhookEventName:
        name = self.value.removeprefix("job.")
        assert name in WEBHOOK_EVENT_NAMES
        return name


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class WebhookPolicy:
    """What the job transitions need to know to fill the outbox."""

    enabled: bool
    global_url: str | None = None
    max_age_s: float = 86_400.0


def targets(
    policy: WebhookPolicy,
    event: WebhookEvent,
    job_url: str | None,
    job_events: Sequence[str] | None,
) -> list[str]:
    """The URLs that receive ``event`` for one job: the server-wide URL (every
    event) and the job's own URL (the events it chose; ``None`` = all), each once."""
    if not policy.enabled:
        return []
    out: list[str] = []
    if policy.global_url:
        out.append(policy.global_url)
    if job_url and (job_events is None or event.short in job_events) and job_url not in out:
        out.append(job_url)
    return out


def progress_due(
    sent: int, last_at: datetime | None, now: datetime, *, has_progress: bool = True
) -> bool:
    """Whether a ``job.progress`` may be queued now, given how many were queued for
    the job already and when the last one was."""
    if not has_progress or sent >= PROGRESS_MAX_PER_JOB:
        return False
    return last_at is None or (now - last_at).total_seconds() >= PROGRESS_MIN_INTERVAL_S


def payload(event: WebhookEvent, job: Job, at: datetime) -> dict[str, JsonValue]:
    """The Standard Webhooks body: ``type``, ``timestamp`` and the job summary
    (status, progress, error code and message, outputs with their URLs…)."""
    data: dict[str, JsonValue] = job.model_dump(mode="json", exclude=_PAYLOAD_EXCLUDE)
    return {"type": event.value, "timestamp": at.isoformat(), "data": data}


def retry_delay(
    attempts: int,
    *,
    base_s: float,
    cap_s: float,
    rand: Callable[[float, float], float] = random.uniform,
) -> float:
    """Exponential backoff with jitter after ``attempts`` failed attempts (>= 1):
    ``base * 2**(attempts-1)``, capped, then scaled by a random factor in [0.5, 1]."""
    exp = min(cap_s, base_s * 2.0 ** max(attempts - 1, 0))
    return exp * rand(0.5, 1.0)


# --- the SSRF guard ---------------------------------------------------------------


def address_forbidden(address: str) -> bool:
    """True for addresses a webhook must not reach unless WEBHOOK_ALLOW_PRIVATE:
    loopback, private, link-local, carrier-grade NAT, multicast, reserved,
    unspecified — anything that is not a global unicast address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return True
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            return address_forbidden(str(mapped))
    return (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


class UrlProblem(ValueError):
    """A webhook URL that can never be used."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int

    @property
    def is_ip_literal(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


def parse_target(url: str) -> Target:
    """Check what can be checked without DNS: an absolute http(s) URL with a host
    and a valid port. Raises :class:`UrlProblem`."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlProblem(f"not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UrlProblem("must be an http:// or https:// URL")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UrlProblem("must include a host")
    if any(c.isspace() for c in url):
        raise UrlProblem("must not contain whitespace")
    return Target(scheme, host, port or (443 if scheme == "https" else 80))


def numeric_ipv4(host: str) -> str | None:
    """The IPv4 address a numeric host spelling stands for, by the C library's
    ``inet_aton`` rules (what the resolver does with it at delivery): one to four
    parts, each decimal, octal (leading ``0``) or hex (``0x``), the last part filling
    the remaining bytes — ``2130706433``, ``0x7f000001``, ``0177.0.0.1``, ``127.1`` and
    ``0`` are all addresses. None when the last label is not a number (a host name).
    Raises :class:`UrlProblem` for a numeric host that is no valid address
    (``256.0.0.1``), as the URL standard does for a host whose last label is a number."""
    labels = host.rstrip(".").split(".")
    if not labels or not _numeric(labels[-1]):
        return None
    try:
        parts = [_number(label) for label in labels]
    except ValueError:
        parts = []
    if not 1 <= len(parts) <= 4 or any(p > 255 for p in parts[:-1]):
        raise UrlProblem(f"{host} is not a valid IPv4 address")
    last_bits = 8 * (5 - len(parts))
    if parts[-1] >= 1 << last_bits:
        raise UrlProblem(f"{host} is not a valid IPv4 address")
    value = parts[-1]
    for i, part in enumerate(parts[:-1]):
        value |= part << (24 - 8 * i)
    return str(ipaddress.IPv4Address(value))


def _numeric(label: str) -> bool:
    low = label.lower()
    if low.startswith("0x"):
        return all(c in "0123456789abcdef" for c in low[2:])
    return low.isdigit()


def _number(label: str) -> int:
    low = label.lower()
    if low.startswith("0x"):
        return int(low[2:] or "0", 16)
    if len(low) > 1 and low.startswith("0"):
        return int(low, 8)
    return int(low, 10)


def check_url(url: str, *, allow_private: bool) -> Target:
    """Submit-time check: :func:`parse_target`, plus (unless ``allow_private``) no IP
    literal or obvious local name on a forbidden address. A numeric host in another
    spelling than dotted decimal (``2130706433``, ``0x7f000001``, ``127.1``) is read as
    the address the resolver would connect to (:func:`numeric_ipv4`) and judged as
    that. Host names are not looked up here: they are resolved and checked again at
    delivery time."""
    target = parse_target(url)
    if allow_private:
        return target
    host = target.host.lower()
    if host == "localhost" or host.endswith(".localhost"):
        raise UrlProblem(
            "targets a loopback host; set WEBHOOK_ALLOW_PRIVATE=true to allow private targets"
        )
    address = host if target.is_ip_literal else numeric_ipv4(host)
    if address is not None and address_forbidden(address):
        spelled = host if address == host else f"{host} ({address})"
        raise UrlProblem(
            f"targets the non-public address {spelled}; set WEBHOOK_ALLOW_PRIVATE=true to "
            "allow private targets"
        )
    return target


# --- the API's view of the outbox -----------------------------------------------------


class WebhookAttempt(BaseModel):
    at: datetime
    latency_ms: float | None = None
    status_code: int | None = Field(default=None, description="HTTP status; None: no answer.")
    error: str | None = None


class WebhookDelivery(BaseModel):
    id: str = Field(description="Also the `webhook-id` header: the same on every attempt.")
    job_id: str
    event: WebhookEvent
    url: str
    payload: dict[str, JsonValue]
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None = Field(
        default=None, description="When the next attempt is due (pending deliveries)."
    )
    expires_at: datetime = Field(description="Retries stop at this time.")
    created_at: datetime
    last_attempt_at: datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    attempt_log: list[WebhookAttempt] = Field(default_factory=list)


class WebhookDeliveryPage(BaseModel):
    items: list[WebhookDelivery]
    next_cursor: str | None = Field(default=None, description="Pass as ?cursor= for more.")
