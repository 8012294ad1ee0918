"""Host allow-lists (``domain/hosts.py``) and who gets the BFL key: table tests."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx2
import pytest

from orchestrator.backends.flux import DEFAULT_KEY_HOSTS, DEFAULT_RESULT_HOSTS, FluxClient
from orchestrator.domain.hosts import (
    HostPattern,
    UntrustedUrl,
    check_upstream_url,
    host_allowed,
    origin,
    parse_pattern,
    parse_patterns,
)


# Parsed inside each test (not at import): a mutation run switches the code under test
# after the module is imported.
def key_hosts() -> tuple[HostPattern, ...]:
    return parse_patterns(DEFAULT_KEY_HOSTS)


def result_hosts() -> tuple[HostPattern, ...]:
    return parse_patterns(DEFAULT_RESULT_HOSTS)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://api.bfl.ai/v1/flux-dev", True),
        ("https://api.eu.bfl.ai/v1/flux-dev", True),
        ("https://api.us.bfl.ai/v1/flux-dev", True),
        ("https://api.eu2.bfl.ai/v1/get_result?id=x", True),  # a cluster host
        ("https://api.eu4.bfl.ai/v1/get_result?id=x", True),
        ("https://api.us1.bfl.ai/v1/my_finetunes", True),
        ("https://API.EU2.BFL.AI./v1/get_result", True),  # case and a trailing dot
        ("https://api.bfl.ai:443/v1/credits", True),
        ("http://api.bfl.ai/v1/credits", False),  # never in clear text
        ("http://x.bfl.ai:8080/", False),
        ("https://api.bfl.ai:8443/v1/credits", False),  # another port
        ("https://x.bfl.ai/", False),
        ("https://delivery.eu1.bfl.ai/sample.jpeg", False),  # results get no key
        ("https://api.eu.bfl.ai.evil.example/", False),
        ("https://api.eu2.evil.bfl.ai/", False),
        ("https://evilapi.bfl.ai/", False),
        ("https://api.bfl.ai.evil.example/", False),
        ("https://127.0.0.1/", False),
        ("ftp://api.bfl.ai/", False),
    ],
)
def test_default_key_hosts(url: str, allowed: bool) -> None:
    assert host_allowed(url, key_hosts()) is allowed


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://bfldeliveryprodeu4.blob.core.windows.net/results/x/sample.jpeg?sig=1", True),
        ("https://delivery.eu1.bfl.ai/x/sample.png", True),
        ("https://delivery-us.bfl.ai/x/sample.png", True),
        ("https://evil.blob.core.windows.net/x.png", False),  # anybody's Azure storage
        ("https://bfl.ai.evil.example/x.png", False),
        ("https://evilbfl.ai/x.png", False),
        ("http://delivery.eu1.bfl.ai/x.png", False),
    ],
)
def test_default_result_hosts(url: str, allowed: bool) -> None:
    assert host_allowed(url, result_hosts()) is allowed


@pytest.mark.parametrize(
    ("base", "url", "keyed"),
    [
        ("https://api.eu.bfl.ai", "https://api.eu.bfl.ai/v1/flux-dev", True),
        ("https://api.eu.bfl.ai", "https://api.eu2.bfl.ai/v1/get_result?id=1", True),
        ("https://api.us.bfl.ai", "https://api.us3.bfl.ai/v1/get_result?id=1", True),
        ("https://api.bfl.ai", "https://api.eu4.bfl.ai/v1/get_result?id=1", True),
        ("https://api.bfl.ai", "http://x.bfl.ai:8080/", False),
        ("https://api.bfl.ai", "http://api.bfl.ai/v1/get_result", False),
        ("https://api.bfl.ai", "https://api.bfl.ai:8443/v1/get_result", False),
        ("https://api.bfl.ai", "https://bfldeliveryprodeu4.blob.core.windows.net/x", False),
        # the configured origin gets the key as configured (a local fake, a proxy)
        ("http://127.0.0.1:9000", "http://127.0.0.1:9000/v1/get_result?id=1", True),
        ("http://127.0.0.1:9000", "http://127.0.0.1:9001/v1/get_result?id=1", False),
        ("http://127.0.0.1:9000", "http://localhost:9000/v1/get_result?id=1", False),
    ],
)
def test_who_gets_the_key(base: str, url: str, keyed: bool) -> None:
    client = FluxClient(httpx2.AsyncClient(), base, "secret-key")
    assert ("x-key" in client._auth(url)) is keyed


@pytest.mark.parametrize(
    ("url", "trusted"),
    [
        ("http://127.0.0.1:9000/v1/get_result?id=1", True),  # the configured origin
        ("https://api.eu2.bfl.ai/v1/get_result?id=1", False),  # allowed, guard still runs
    ],
)
def test_check_upstream_url_accepts(url: str, trusted: bool) -> None:
    got = check_upstream_url(
        url,
        patterns=key_hosts(),
        trusted_origins=[origin("http://127.0.0.1:9000")],
        what="polling_url",
        setting="FLUX_KEY_HOSTS",
    )
    assert got is trusted


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://127.0.0.1:9001/v1/get_result", "not https"),
        ("https://169.254.169.254/latest/meta-data", "not in FLUX_KEY_HOSTS"),
        ("https://internal.example/", "not in FLUX_KEY_HOSTS"),
        ("https://api.bfl.ai@evil.example/", "not a plain URL"),
        ("https://api.bfl.ai\\@evil.example/", "not a plain URL"),
        ("https://api.bfl.ai /x", "not a plain URL"),
        ("file:///etc/passwd", "not an http(s) URL"),
        ("gopher://api.bfl.ai/", "not an http(s) URL"),
        ("https://api.bfl.ai:99999/", "not an http(s) URL"),
        ("", "not an http(s) URL"),
    ],
)
def test_check_upstream_url_refuses(url: str, words: str) -> None:
    with pytest.raises(UntrustedUrl, match=words.replace("(", r"\(").replace(")", r"\)")):
        check_upstream_url(
            url,
            patterns=key_hosts(),
            trusted_origins=[origin("http://127.0.0.1:9000")],
            what="polling_url",
            setting="FLUX_KEY_HOSTS",
        )


@pytest.mark.parametrize(
    "bad", ["", "bfl", "*.ai", "api.bfl.ai:0", "api.bfl.ai:http", "api bfl.ai", "api.b_l.ai"]
)
def test_malformed_patterns_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_pattern(bad)


def test_pattern_with_a_port() -> None:
    p = parse_pattern("fake.test:8443")
    assert p.matches("fake.test", 8443) and not p.matches("fake.test", 443)


@pytest.mark.parametrize(("port", "ok"), [(1, True), (65535, True), (0, False), (65536, False)])
def test_pattern_ports(port: int, ok: bool) -> None:
    if ok:
        assert parse_pattern(f"fake.test:{port}").matches("fake.test", port)
    else:
        with pytest.raises(ValueError, match="from 1 to 65535"):
            parse_pattern(f"fake.test:{port}")


@pytest.mark.parametrize(
    ("pattern", "host", "ok"),
    [
        ("*.bfl.ai", "delivery.eu1.bfl.ai", True),
        ("*.bfl.ai", "x.bfl.ai", True),
        ("*.bfl.ai", "bfl.ai", False),
        ("*.bfl.ai", "evilbfl.ai", False),
        ("API.EU*.BFL.AI", "api.eu7.bfl.ai", True),  # patterns are case-insensitive
        ("api.eu*.bfl.ai", "api.eu.bfl.ai", True),
        ("api.eu*.bfl.ai", "api.eu2.x.bfl.ai", False),
        ("a-b.example", "a-b.example", True),
        ("a.example", "ab.example", False),  # the dot is a dot
    ],
)
def test_pattern_matching(pattern: str, host: str, ok: bool) -> None:
    assert parse_pattern(pattern).matches(host, 443) is ok


def test_messages_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"'bfl' is not a host name pattern"):
        parse_pattern("bfl")
    with pytest.raises(ValueError, match=r"'\*\.ai': '\*\.' must be followed by a domain"):
        parse_pattern("*.ai")
    with pytest.raises(UntrustedUrl, match=r"names api\.bfl\.ai:8443, which is not in X"):
        check_upstream_url(
            "https://api.bfl.ai:8443/", patterns=(), trusted_origins=[], what="u", setting="X"
        )
    with pytest.raises(UntrustedUrl, match=r"names evil\.example, which is not in X"):
        check_upstream_url(
            "https://evil.example/", patterns=(), trusted_origins=[], what="u", setting="X"
        )
    long = "https://evil.example/" + "a" * 300
    with pytest.raises(UntrustedUrl) as caught:
        check_upstream_url(
            "http" + long[5:], patterns=(), trusted_origins=[], what="u", setting="X"
        )
    assert len(str(caught.value)) < 200


def test_patterns_from_a_list_and_blanks() -> None:
    assert [p.text for p in parse_patterns(["a.example", " ", "b.example"])] == [
        "a.example",
        "b.example",
    ]
    assert [p.text for p in parse_patterns("a.example, ,b.example")] == ["a.example", "b.example"]


def test_the_port_is_after_the_last_colon() -> None:
    with pytest.raises(ValueError, match="is not a host name pattern"):
        parse_pattern("api.bfl.ai:8443:443")


@pytest.mark.parametrize(
    ("url", "want"),
    [
        ("https://API.BFL.ai./v1", ("https", "api.bfl.ai", 443)),
        ("HTTP://fake.test:8080", ("http", "fake.test", 8080)),
        ("http://fake.test", ("http", "fake.test", 80)),
        ("https:///v1/get_result", None),  # no host
        ("https://:443/", None),
        ("ftp://fake.test/", None),
        ("https://fake.test:99999/", None),
    ],
)
def test_origin(url: str, want: tuple[str, str, int] | None) -> None:
    assert origin(url) == want
    assert origin(urlsplit(url)) == want  # an already split URL too


def test_a_backslash_anywhere_is_refused() -> None:
    """Even in the path of an allowed host: parsers disagree on what it means."""
    with pytest.raises(UntrustedUrl, match="not a plain URL"):
        check_upstream_url(
            "https://api.eu2.bfl.ai/v1\\get_result",
            patterns=key_hosts(),
            trusted_origins=[],
            what="polling_url",
            setting="FLUX_KEY_HOSTS",
        )


@pytest.mark.parametrize(
    "url",
    [
        "https://api.bfl.ai/ " + "a" * 200,  # not a plain URL
        "ftp://api.bfl.ai/" + "a" * 200,  # not http(s)
        "http://api.bfl.ai/" + "a" * 200,  # not https
    ],
)
def test_messages_quote_the_first_120_characters(url: str) -> None:
    with pytest.raises(UntrustedUrl) as caught:
        check_upstream_url(
            url, patterns=key_hosts(), trusted_origins=[], what="u", setting="FLUX_KEY_HOSTS"
        )
    assert str(caught.value).endswith(repr(url[:120]))
