"""Who may do what: scopes, job ownership, the route table, credentials parsing,
the loopback rule, and redaction of tokens from logs."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.datastructures import Headers

from orchestrator import errors
from orchestrator.api import auth as api_auth
from orchestrator.auth_service import hash_secret, new_secret
from orchestrator.config import is_loopback, load_settings
from orchestrator.domain import auth
from orchestrator.domain.auth import Action, Principal, Scope
from orchestrator.logs import SecretRedactor
from orchestrator.ui import csrf
from orchestrator.ui.login import safe_next

READ = Principal(token_id="r", name="reader", scope=Scope.READ, via="token")
GEN = Principal(token_id="g", name="maker", scope=Scope.GENERATE, via="token")
GEN2 = Principal(token_id="g2", name="other maker", scope=Scope.GENERATE, via="session")
ADMIN = Principal(token_id="a", name="boss", scope=Scope.ADMIN, via="token")


@pytest.mark.parametrize(
    ("have", "need", "ok"),
    [
        (Scope.READ, Scope.READ, True),
        (Scope.READ, Scope.GENERATE, False),
        (Scope.READ, Scope.ADMIN, False),
        (Scope.GENERATE, Scope.READ, True),
        (Scope.GENERATE, Scope.GENERATE, True),
        (Scope.GENERATE, Scope.ADMIN, False),
        (Scope.ADMIN, Scope.READ, True),
        (Scope.ADMIN, Scope.GENERATE, True),
        (Scope.ADMIN, Scope.ADMIN, True),
    ],
)
def test_scope_order(have: Scope, need: Scope, ok: bool) -> None:
    assert have.allows(need) is ok


@pytest.mark.parametrize(
    ("who", "action", "owner", "ok"),
    [
        # read sees, and nothing else
        (READ, Action.VIEW, None, True),
        (READ, Action.SUBMIT, None, False),
        (READ, Action.CANCEL_JOB, "r", False),
        (READ, Action.RETRY_JOB, "r", False),
        (READ, Action.MANAGE_TOKENS, None, False),
        # generate submits, and cancels or retries only its own jobs
        (GEN, Action.VIEW, None, True),
        (GEN, Action.SUBMIT, None, True),
        (GEN, Action.SUBMIT_RAW_WORKFLOW, None, False),
        (GEN, Action.CANCEL_JOB, "g", True),
        (GEN, Action.CANCEL_JOB, "g2", False),
        (GEN, Action.CANCEL_JOB, None, False),  # the local owner's job
        (GEN, Action.RETRY_JOB, "g", True),
        (GEN, Action.RETRY_JOB, "a", False),
        (GEN2, Action.CANCEL_JOB, "g", False),
        (GEN, Action.MANAGE_TOKENS, None, False),
        (GEN, Action.MANAGE_WEBHOOKS, None, False),
        (GEN, Action.IGNITE, None, False),
        # admin manages everything
        (ADMIN, Action.SUBMIT_RAW_WORKFLOW, None, True),
        (ADMIN, Action.CANCEL_JOB, "g", True),
        (ADMIN, Action.CANCEL_JOB, None, True),
        (ADMIN, Action.RETRY_JOB, "g2", True),
        (ADMIN, Action.MANAGE_TOKENS, None, True),
        (ADMIN, Action.MANAGE_WEBHOOKS, None, True),
        (ADMIN, Action.IGNITE, None, True),
        # the CLI / stdio MCP owner, and auth switched off on loopback
        (auth.LOCAL, Action.CANCEL_JOB, "g", True),
        (auth.LOCAL, Action.MANAGE_TOKENS, None, True),
        (auth.AUTH_DISABLED, Action.RETRY_JOB, "g", True),
    ],
)
def test_who_may_do_what(who: Principal, action: Action, owner: str | None, ok: bool) -> None:
    assert auth.allowed(who, action, owner) is ok
    if ok:
        auth.require(who, action, owner)
    else:
        with pytest.raises(errors.Forbidden):
            auth.require(who, action, owner)


def test_every_action_has_a_scope() -> None:
    assert set(auth.REQUIRED) == set(Action)


@pytest.mark.parametrize(
    ("backend", "action"),
    [
        ("flux", Action.SUBMIT),
        ("sdxl", Action.SUBMIT),
        ("svd", Action.SUBMIT),
        ("workflow", Action.SUBMIT),
        ("comfy", Action.SUBMIT_RAW_WORKFLOW),
    ],
)
def test_raw_workflows_are_admin_only(backend: str, action: Action) -> None:
    assert auth.submit_action(backend) is action


def test_forbidden_says_why() -> None:
    with pytest.raises(errors.Forbidden) as scope_err:
        auth.require(READ, Action.SUBMIT)
    assert "generate scope" in scope_err.value.detail
    with pytest.raises(errors.Forbidden) as owner_err:
        auth.require(GEN, Action.CANCEL_JOB, "someone-else")
    assert "only the jobs it created" in owner_err.value.detail


@pytest.mark.parametrize(
    ("who", "action", "owner", "detail", "needed"),
    [
        (
            READ,
            Action.SUBMIT_RAW_WORKFLOW,
            None,
            "submit raw workflow needs the admin scope; this token (reader) has read",
            "admin",
        ),
        (
            GEN,
            Action.MANAGE_TOKENS,
            None,
            "manage tokens needs the admin scope; this token (maker) has generate",
            "admin",
        ),
        (
            GEN,
            Action.CANCEL_JOB,
            "g2",
            "a generate token can cancel only the jobs it created; "
            "this job belongs to another token",
            "generate",
        ),
        (
            GEN2,
            Action.RETRY_JOB,
            None,
            "a generate token can retry only the jobs it created; "
            "this job belongs to another token",
            "generate",
        ),
    ],
)
def test_forbidden_detail_and_fields(
    who: Principal, action: Action, owner: str | None, detail: str, needed: str
) -> None:
    """The 403's detail names the action in words (or the verb, for someone else's
    job) and its extra fields carry the scope needed and the scope held."""
    with pytest.raises(errors.Forbidden) as info:
        auth.require(who, action, owner)
    assert info.value.detail == detail
    assert info.value.extra == {"needed": needed, "scope": who.scope.value}


@pytest.mark.parametrize(
    ("method", "path", "need"),
    [
        ("GET", "/healthz", api_auth.PUBLIC),
        ("HEAD", "/readyz", api_auth.PUBLIC),
        ("GET", "/ui/login", api_auth.PUBLIC),
        ("POST", "/ui/login", api_auth.PUBLIC),
        ("GET", "/ui/static/app.css", api_auth.PUBLIC),
        ("GET", "/ui/static/js/app.js", api_auth.PUBLIC),
        ("POST", "/ui/static/app.css", Scope.ADMIN),  # no such rule: fail closed
        ("POST", "/healthz", Scope.ADMIN),
        ("GET", "/metrics", Scope.READ),
        ("GET", "/api/jobs/abc/events", Scope.READ),
        ("GET", "/api/outputs/abc/0", Scope.READ),
        ("POST", "/mcp", Scope.READ),
        ("GET", "/ui/", Scope.READ),
        ("GET", "/ui/jobs/abc", Scope.READ),
        ("POST", "/ui/logout", Scope.READ),
        ("POST", "/api/generate", Scope.GENERATE),
        ("POST", "/api/jobs/abc/cancel", Scope.GENERATE),
        ("POST", "/api/jobs/abc/retry", Scope.GENERATE),
        ("POST", "/api/comfy/prompt", Scope.ADMIN),
        ("POST", "/api/system/ignite", Scope.ADMIN),
        ("POST", "/api/webhooks/deliveries/d1/replay", Scope.ADMIN),
        ("GET", "/api/tokens", Scope.ADMIN),
        ("POST", "/api/tokens", Scope.ADMIN),
        ("DELETE", "/api/tokens/t1", Scope.ADMIN),
        ("GET", "/api/not-a-route", Scope.ADMIN),  # no rule: fail closed
        ("GET", "/api/tokens/", Scope.ADMIN),
        ("PUT", "/api/not-a-route", Scope.ADMIN),
        ("HEAD", "/mcp/", Scope.ADMIN),
        ("DELETE", "/api/jobs/abc", Scope.ADMIN),
    ],
)
def test_route_table(method: str, path: str, need: api_auth.Requirement) -> None:
    assert api_auth.decide(method, path) == need


def test_public_routes_are_few() -> None:
    public = sorted(r.template for r in api_auth.RULES if r.need == api_auth.PUBLIC)
    assert public == ["/healthz", "/readyz", "/ui/login", "/ui/static/{path:path}"]


@pytest.mark.parametrize(
    ("path", "root_path", "expected"),
    [
        ("/api/tokens", "", "/api/tokens"),
        ("/orch/api/tokens", "/orch", "/api/tokens"),
        ("/orch", "/orch", "/"),
        ("/orchestra/api", "/orch", "/orchestra/api"),
        ("/api/tokens", "/orch", "/api/tokens"),
    ],
)
def test_rules_see_the_path_the_router_sees(path: str, root_path: str, expected: str) -> None:
    assert api_auth.route_path({"type": "http", "path": path, "root_path": root_path}) == expected


@pytest.mark.parametrize(
    ("headers", "cross"),
    [
        ({"host": "127.0.0.1:8000"}, False),  # curl, scripts
        ({"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:8000"}, False),
        ({"host": "127.0.0.1:8000", "origin": "http://evil.example"}, True),
        ({"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:9999"}, True),
        ({"host": "127.0.0.1:8000", "origin": "null"}, True),
        ({"host": "127.0.0.1:8000", "sec-fetch-site": "cross-site"}, True),
        ({"host": "127.0.0.1:8000", "sec-fetch-site": "same-origin"}, False),
        ({"host": "127.0.0.1:8000", "sec-fetch-site": "none"}, False),  # typed, bookmarked
        # another port of this host, a sibling subdomain: same site, another origin
        ({"host": "127.0.0.1:8000", "sec-fetch-site": "same-site"}, True),
        ({"host": "a.example.com", "origin": "https://b.example.com"}, True),
        # no Origin: the Referer says where the page was
        ({"host": "127.0.0.1:8000", "referer": "http://127.0.0.1:8000/ui/jobs"}, False),
        ({"host": "127.0.0.1:8000", "referer": "http://127.0.0.1:9999/evil"}, True),
        ({"host": "127.0.0.1:8000", "origin": "http://[::1"}, True),  # unparsable
    ],
)
def test_cross_origin_requests(headers: dict[str, str], cross: bool) -> None:
    assert csrf.foreign(Headers(headers), "http") is cross


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("Bearer orch_abc", "orch_abc"),
        ("bearer   orch_abc  ", "orch_abc"),
        ("Basic dXNlcjpwYXNz", False),
        ("Bearer", False),
        ("Bearer ", False),
        ("orch_abc", False),
    ],
)
def test_bearer_parsing(header: str | None, expected: str | bool | None) -> None:
    headers = Headers({} if header is None else {"authorization": header})
    assert api_auth.bearer_of(headers) == expected


@pytest.mark.parametrize(
    ("method", "path", "accept", "page"),
    [
        ("GET", "/ui/jobs", "text/html,application/xhtml+xml", True),
        ("GET", "/ui/", "text/html", True),
        ("GET", "/docs", "text/html", True),
        ("GET", "/ui/jobs", "application/json", False),
        ("GET", "/api/jobs", "text/html", False),
        ("GET", "/ui/static/app.css", "text/html", False),
        ("POST", "/ui/jobs/x/rerun", "text/html", False),
    ],
)
def test_login_page_only_for_page_navigation(
    method: str, path: str, accept: str, page: bool
) -> None:
    assert api_auth.wants_login_page(method, path, Headers({"accept": accept})) is page


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "/ui/"),
        ("/ui/jobs?status=failed", "/ui/jobs?status=failed"),
        ("//evil.example/x", "/ui/"),
        ("https://evil.example/", "/ui/"),
        ("/\\evil.example", "/ui/"),
        ("/ui/\r\nSet-Cookie: x=y", "/ui/"),
        (5, "/ui/"),
    ],
)
def test_login_redirects_stay_on_this_server(value: object, expected: str) -> None:
    assert safe_next(value) == expected


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("example.com", False),
    ],
)
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_auth_can_be_off_only_on_loopback(tmp_path: Path) -> None:
    config = tmp_path / "orchestrator.toml"
    ok = load_settings(config, {"auth_disabled": True, "host": "::1"}, check_dirs=False)
    assert ok.auth_disabled
    assert not load_settings(config, {"host": "0.0.0.0"}, check_dirs=False).auth_disabled
    with pytest.raises(errors.ConfigError) as exc:
        load_settings(config, {"auth_disabled": True, "host": "0.0.0.0"}, check_dirs=False)
    assert exc.value.problems[0].startswith("AUTH_DISABLED:")
    assert "0.0.0.0" in exc.value.problems[0]


def test_tokens_are_random_prefixed_and_hashed() -> None:
    a, b = new_secret(), new_secret()
    assert a != b and a.startswith("orch_") and len(a) >= 40
    assert hash_secret(a) != a and len(hash_secret(a)) == 64
    assert new_secret("orchs_").startswith("orchs_")


def test_redactor_removes_tokens_wherever_they_are() -> None:
    token, session = new_secret(), new_secret("orchs_")
    event = {
        "event": f"failed with Authorization: Bearer {token}",
        "headers": {"Authorization": f"Bearer {token}", "cookie": f"orch_session={session}"},
        "args": [f"token={token}", ("x", session)],
        "error": ValueError(f"bad {token}"),
        "note": "bearer abc.def-ghi",
    }
    out = repr(SecretRedactor()(None, "info", event))
    assert token not in out and session not in out and "abc.def-ghi" not in out
    assert "orchestrator" in repr(SecretRedactor()(None, "info", {"event": "orchestrator_x"}))
