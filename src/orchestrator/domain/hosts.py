"""Which hosts an upstream URL may name: allow-lists of host patterns (pure, table-tested).

A pattern is a host name, optionally with a port (``api.bfl.ai``, ``fake.test:8443``):

* a label may hold ``*``, which matches letters, digits and ``-`` within that label
  (``api.eu*.bfl.ai`` matches ``api.eu.bfl.ai`` and ``api.eu2.bfl.ai``, not
  ``api.eu.evil.bfl.ai``);
* a leading ``*.`` matches one or more whole labels (``*.bfl.ai`` matches
  ``delivery.eu1.bfl.ai``, not ``bfl.ai`` itself nor ``evilbfl.ai``);
* without a port, only the scheme's default port matches (443 for https): a key that
  may go to ``https://api.bfl.ai`` does not go to ``https://api.bfl.ai:8443``.

:func:`check_upstream_url` is the one decision every URL an upstream hands us goes
through: https on an allowed host, or the exact origin the operator configured.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

_LABEL = re.compile(r"^[a-z0-9*-]+$")
DEFAULT_PORTS = {"http": 80, "https": 443}


class UntrustedUrl(ValueError):
    """An upstream named a URL we must not follow (wrong scheme, host or port)."""


@dataclass(frozen=True)
class HostPattern:
    text: str
    regex: re.Pattern[str]
    port: int | None

    def matches(self, host: str, port: int) -> bool:
        """``host`` as :func:`origin` gives it (lower case, no trailing dot)."""
        wanted = self.port if self.port is not None else 443
        return port == wanted and self.regex.fullmatch(host) is not None


def parse_pattern(text: str) -> HostPattern:
    """One pattern (see the module's documentation); ValueError when malformed."""
    raw = text.strip().lower()
    host, port = raw, None
    if ":" in raw:
        host, _, port_text = raw.rpartition(":")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
        port = int(port_text)
    labels = host.split(".")
    if len(labels) < 2 or any(not _LABEL.match(label) for label in labels):
        raise ValueError(f"{text!r} is not a host name pattern such as api.eu*.bfl.ai")
    parts = []
    if labels[0] == "*":
        parts.append(r"(?:[a-z0-9-]+\.)+")
        labels = labels[1:]
        if len(labels) < 2:
            raise ValueError(f"{text!r}: '*.' must be followed by a domain of two labels or more")
    body = r"\.".join(re.escape(label).replace(r"\*", "[a-z0-9-]*") for label in labels)
    return HostPattern(text.strip(), re.compile("".join(parts) + body), port)


def parse_patterns(text: str | Iterable[str]) -> tuple[HostPattern, ...]:
    """Comma-separated patterns (or a list of them); empty items are skipped."""
    items = text.split(",") if isinstance(text, str) else list(text)
    return tuple(parse_pattern(item) for item in items if item.strip())


def origin(url: str | SplitResult) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) URL, the port made explicit; None otherwise."""
    try:
        parts = urlsplit(url) if isinstance(url, str) else url
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower().rstrip(".")
    if scheme not in DEFAULT_PORTS or not host:
        return None
    return scheme, host, port or DEFAULT_PORTS[scheme]


def host_allowed(url: str, patterns: Sequence[HostPattern]) -> bool:
    """True for an https URL whose host and port match one of ``patterns``."""
    o = origin(url)
    if o is None or o[0] != "https":
        return False
    return any(p.matches(o[1], o[2]) for p in patterns)


def check_upstream_url(
    url: str,
    *,
    patterns: Sequence[HostPattern],
    trusted_origins: Iterable[tuple[str, str, int] | None],
    what: str,
    setting: str,
) -> bool:
    """Whether ``url`` (handed over by an upstream) may be followed: True when it is on
    an origin the operator configured (then no address check is needed either), False
    when it is https on an allowed host (it must still pass the address guard); raises
    :class:`UntrustedUrl` otherwise."""
    if any(c.isspace() or c == "\\" for c in url) or "@" in urlsplit(url).netloc:
        # no user info, no backslash: URL parsers disagree on those, and the host we
        # judge here must be the host the HTTP client connects to
        raise UntrustedUrl(f"{what} is not a plain URL: {url[:120]!r}")
    o = origin(url)
    if o is None:
        raise UntrustedUrl(f"{what} is not an http(s) URL: {url[:120]!r}")
    if o in set(trusted_origins):
        return True
    if o[0] != "https":
        raise UntrustedUrl(f"{what} is not https ({setting} allows https only): {url[:120]!r}")
    if not any(p.matches(o[1], o[2]) for p in patterns):
        shown = o[1] if o[2] == 443 else f"{o[1]}:{o[2]}"
        raise UntrustedUrl(f"{what} names {shown}, which is not in {setting}")
    return False
