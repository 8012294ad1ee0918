"""The OpenAPI document says what the handlers refuse, and the handlers take what it
allows (issue 14, item 8): the gaps schemathesis found, one test each. The fuzzing
itself, with every conformance check on, is test_hostile."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import pytest

from orchestrator.api.app import create_app
from orchestrator.config import Settings
from orchestrator.testing.serve import serve_in_thread


@pytest.fixture
def served(make_settings: Callable[..., Settings]) -> Iterator[tuple[httpx2.Client, Settings]]:
    settings = make_settings(demo_mode="on", worker_enabled=False)
    with (
        serve_in_thread(create_app(settings), lifespan="on") as app,
        httpx2.Client(base_url=app.base_url, timeout=30) as http,
    ):
        yield http, settings


@pytest.fixture
def doc(served: tuple[httpx2.Client, Settings]) -> dict[str, Any]:
    http, _ = served
    document: dict[str, Any] = http.get("/openapi.json").json()
    return document


def _param(doc: dict[str, Any], path: str, method: str, name: str) -> dict[str, Any]:
    for p in doc["paths"][path][method]["parameters"]:
        if p["name"] == name:
            schema: dict[str, Any] = p["schema"]
            return schema
    raise AssertionError(f"{method} {path} has no parameter {name}")


def _schema(doc: dict[str, Any], name: str) -> dict[str, Any]:
    schema: dict[str, Any] = doc["components"]["schemas"][name]
    return schema


def _nullable(prop: dict[str, Any]) -> dict[str, Any]:
    """The non-null branch of ``anyOf: [X, null]`` (or the property itself)."""
    for branch in prop.get("anyOf", [prop]):
        if branch.get("type") != "null":
            return branch
    raise AssertionError(prop)


def test_daily_limit_false_is_not_a_number(served: tuple[httpx2.Client, Settings]) -> None:
    http, _ = served
    token = http.post("/api/tokens", json={"name": "t", "scope": "generate"}).json()["token"]
    for bad in (False, True, "5"):
        r = http.put(f"/api/budgets/tokens/{token['id']}", json={"daily_limit": bad})
        assert r.status_code == 422, (bad, r.text)
    ok = http.put(f"/api/budgets/tokens/{token['id']}", json={"daily_limit": 5})
    assert ok.status_code == 200, ok.text


def test_idempotency_key_is_one_to_255_characters(
    doc: dict[str, Any], served: tuple[httpx2.Client, Settings]
) -> None:
    for path in ("/api/generate", "/api/flux/generate", "/api/comfy/prompt"):
        schema = _nullable(_param(doc, path, "post", "Idempotency-Key"))
        assert (schema.get("minLength"), schema.get("maxLength")) == (1, 255), (path, schema)
    http, _ = served
    body = {"backend": "flux", "params": {"model": "flux-dev", "prompt": "a fox"}}
    r = http.post("/api/generate", json=body, headers={"Idempotency-Key": ""})
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"


def test_aspect_ratio_and_webhook_url_say_their_syntax(doc: dict[str, Any]) -> None:
    ultra = _schema(doc, "FluxUltraParams")["properties"]["aspect_ratio"]
    assert ultra["pattern"] and "21:9" in ultra["description"]
    kontext = _nullable(_schema(doc, "FluxKontextProParams")["properties"]["aspect_ratio"])
    assert kontext["pattern"] == ultra["pattern"]
    webhook = _nullable(_schema(doc, "FluxRequest")["properties"]["webhook_url"])
    assert webhook["pattern"].startswith("^[Hh][Tt][Tt][Pp]")


@pytest.mark.parametrize(
    ("field", "value"),
    [("aspect_ratio", ""), ("aspect_ratio", "016:9"), ("webhook_url", "0")],
)
def test_what_the_schema_refuses_is_refused(
    served: tuple[httpx2.Client, Settings], field: str, value: str
) -> None:
    http, _ = served
    params: dict[str, Any] = {"model": "flux-pro-1.1-ultra", "prompt": "a fox"}
    body: dict[str, Any] = {"backend": "flux", "params": params}
    (params if field == "aspect_ratio" else body)[field] = value
    r = http.post("/api/generate", json=body)
    assert r.status_code == 422, r.text


def test_cursor_and_since_say_their_format(doc: dict[str, Any]) -> None:
    for path in ("/api/jobs", "/api/webhooks/deliveries"):
        cursor = _nullable(_param(doc, path, "get", "cursor"))
        assert cursor["pattern"] == "^[A-Za-z0-9_-]+$", (path, cursor)
    since = _nullable(_param(doc, "/api/costs", "get", "since"))
    assert since.get("format") == "date"


def test_an_integral_float_is_an_integer(served: tuple[httpx2.Client, Settings]) -> None:
    """JSON Schema's "integer" includes 768.0; a bool or a string is still refused."""
    http, _ = served
    params = {"model": "flux-dev", "prompt": "a fox", "width": 768.0, "steps": 4.0}
    r = http.post("/api/generate", json={"backend": "flux", "params": params})
    assert r.status_code == 202, r.text
    assert r.json()["params"]["width"] == 768
    for bad in (768.5, True, "768"):
        params["width"] = bad
        r = http.post("/api/generate", json={"backend": "flux", "params": params})
        assert r.status_code == 422, (bad, r.text)


def test_seeds_stay_exact_in_json(doc: dict[str, Any]) -> None:
    """A seed above 2**53 - 1 is not one number in JSON clients: 2**63 - 1 and
    9223372036854775999 parse to the same float."""
    for name in ("FluxDevParams", "SdxlParams"):
        seed = _nullable(_schema(doc, name)["properties"]["seed"])
        assert seed["maximum"] == 2**53 - 1, (name, seed)


def test_a_token_name_the_schema_allows_is_one_the_handler_takes(
    served: tuple[httpx2.Client, Settings], doc: dict[str, Any]
) -> None:
    """The handler strips a name and refuses it when nothing is left; the schema's
    pattern allowed a name of only spaces such as U+00A0, so a schema-valid request got
    a 422 (found by schemathesis once auth was on in test_hostile)."""
    http, _ = served
    pattern = re.compile(_schema(doc, "TokenCreate")["properties"]["name"]["pattern"])
    for blank in ("\u00a0", " ", " \u3000 ", "\x85", "\u2028"):
        assert not pattern.search(blank), repr(blank)
        r = http.post("/api/tokens", json={"name": blank, "scope": "read"})
        assert r.status_code == 422, (repr(blank), r.text)
    for fine in ("a", " a\u00a0b ", "Ünïcode ✓", "x" * 64):
        assert pattern.search(fine), repr(fine)
        r = http.post("/api/tokens", json={"name": fine, "scope": "read"})
        assert r.status_code == 201, (repr(fine), r.text)


def test_a_comfy_node_name_cannot_be_a_dot_segment(
    served: tuple[httpx2.Client, Settings], doc: dict[str, Any]
) -> None:
    """``node=..`` matched the schema's pattern and went upstream as ``/object_info/..``,
    which the URL resolves to ``/``: ComfyUI's 404 came back as an undocumented 502."""
    http, _ = served
    pattern = re.compile(_nullable(_param(doc, "/api/comfy/object_info", "get", "node"))["pattern"])
    for bad in (".", "..", "..."):
        assert not pattern.search(bad), bad
        r = http.get("/api/comfy/object_info", params={"node": bad})
        assert r.status_code == 422, (bad, r.text)
    for fine in ("KSampler", "CLIP Text Encode", "v1.5", ".x"):
        assert pattern.search(fine), fine
    # The route asks ComfyUI: an instance that fails or cannot be reached is a 502.
    responses = doc["paths"]["/api/comfy/object_info"]["get"]["responses"]
    assert "application/problem+json" in responses["502"]["content"]


def test_a_tilda_upload_takes_only_the_file_field(
    served: tuple[httpx2.Client, Settings], doc: dict[str, Any]
) -> None:
    """The multipart schema allowed any extra field; the handler took up to 10 and
    refused more with a 400, so a schema-valid upload was refused. Now the schema says
    ``file`` is the only field, and the handler refuses any other with a 422."""
    http, _ = served
    body = doc["paths"]["/api/tilda/import"]["post"]["requestBody"]["content"]
    assert body["multipart/form-data"]["schema"]["additionalProperties"] is False
    r = http.post(
        "/api/tilda/import",
        files={"file": ("project1.zip", b"PK\x05\x06" + b"\0" * 18, "application/zip")},
        data={"other": "x"},
    )
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert ["body", "other"] in [e["loc"] for e in r.json()["errors"]]
