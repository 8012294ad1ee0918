"""Requests to URLs somebody else chose: the address guard against SSRF.

Webhook targets (chosen by API users) and the URLs upstreams hand us (BFL's
``polling_url`` and ``result.sample``, Tilda's ``images[].from``) go through the same
guard: the host name is resolved here, every address it resolves to must be public
unless the operator allowed private ones (``WEBHOOK_ALLOW_PRIVATE``,
``UPSTREAM_ALLOW_PRIVATE``), and the request is sent to the address that was checked
(the ``Host`` header and the TLS server name keep the original name), so a second DNS
answer cannot send it elsewhere. Redirects are followed only by :func:`guarded_stream`,
which checks every hop again.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import urljoin

import httpx2

from orchestrator.domain.webhooks import UrlProblem, address_forbidden, parse_target

Resolver = Callable[[str, int], Awaitable[list[str]]]
REDIRECTS = frozenset({301, 302, 303, 307, 308})


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (the event loop's ``getaddrinfo``)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class Refused(Exception):
    """The URL may never be used (SSRF guard, invalid URL, a redirect loop)."""


@dataclass(frozen=True)
class Route:
    """Where a request goes: the URL (its host replaced by the checked address) and
    the header and TLS name that keep the original host."""

    url: httpx2.URL
    headers: dict[str, str]
    extensions: dict[str, str]

    @classmethod
    def direct(cls, url: str) -> Route:
        return cls(httpx2.URL(url), {}, {})


@dataclass(frozen=True)
class AddressGuard:
    """``allow_private``: the operator's setting (named by ``setting`` in messages)."""

    allow_private: bool
    setting: str
    resolver: Resolver = field(default=system_resolver)

    async def route(self, url: str) -> Route:
        """Checks the URL and, unless private targets are allowed, every address its
        host resolves to; pins the request to a checked address. Raises
        :class:`Refused`, or ``OSError`` when the name does not resolve."""
        try:
            target = parse_target(url)
            parsed = httpx2.URL(url)
        except UrlProblem as exc:
            raise Refused(str(exc)) from None
        except (httpx2.InvalidURL, ValueError) as exc:
            raise Refused(f"not a valid URL: {exc}") from None
        if target.is_ip_literal:
            if not self.allow_private and address_forbidden(target.host):
                raise Refused(f"{target.host} is not a public address ({self.setting})")
            return Route(parsed, {}, {})
        addresses = await self.resolver(target.host, target.port)
        if not addresses:
            raise OSError(f"{target.host} did not resolve")
        if not self.allow_private:
            bad = [a for a in addresses if address_forbidden(a)]
            if bad:
                raise Refused(
                    f"{target.host} resolves to the non-public address {bad[0]} ({self.setting})"
                )
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        return Route(
            parsed.copy_with(host=addresses[0]),
            {"host": parsed.netloc.decode("ascii").rpartition("@")[2]},
            extensions,
        )


@asynccontextmanager
async def guarded_stream(
    http: httpx2.AsyncClient,
    url: str,
    *,
    guard: AddressGuard,
    trusted: Callable[[str], bool],
    headers: Callable[[str], Mapping[str, str]] = lambda _url: {},
    max_redirects: int = 3,
) -> AsyncIterator[httpx2.Response]:
    """GET ``url`` as a stream. ``trusted(url)`` judges each hop before it is sent:
    True for an origin the operator configured (sent as is), False for one that must
    pass the address guard, or it raises to refuse it. ``headers(url)`` gives each
    hop's headers (so a key never follows a redirect to a host that may not see it)."""
    for _hop in range(max_redirects + 1):
        route = Route.direct(url) if trusted(url) else await guard.route(url)
        async with http.stream(
            "GET",
            route.url,
            headers={**headers(url), **route.headers},
            extensions=route.extensions,
            follow_redirects=False,
        ) as resp:
            location = resp.headers.get("location")
            if resp.status_code in REDIRECTS and location:
                url = urljoin(url, location)
                continue
            yield resp
            return
    raise Refused(f"more than {max_redirects} redirects")
