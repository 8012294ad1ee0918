"""FLUX parameter models: BFL's defaults and ranges, unknown fields, the unions."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from orchestrator.domain.params import (
    FLUX_MODELS,
    FluxDevParams,
    FluxKontextMaxParams,
    FluxKontextProParams,
    FluxParams,
    FluxPro11Params,
    FluxProParams,
    FluxRequest,
    FluxUltraParams,
)

ADAPTER: TypeAdapter[Any] = TypeAdapter(FluxParams)

SIZED = [FluxPro11Params, FluxProParams, FluxDevParams]
KONTEXT = [FluxKontextProParams, FluxKontextMaxParams]
ALL_MODELS = [*SIZED, FluxUltraParams, *KONTEXT]


def make(cls: type[Any], **fields: Any) -> Any:
    """An instance with the minimum required fields (kontext needs a prompt)."""
    if cls in KONTEXT:
        fields.setdefault("prompt", "make it blue")
    return cls(**fields)


def locs(exc: ValidationError) -> list[tuple[int | str, ...]]:
    return [tuple(e["loc"]) for e in exc.errors()]


# --- defaults ------------------------------------------------------------------------------

COMMON_DEFAULTS = {"seed": None, "prompt_upsampling": False, "safety_tolerance": 2}

DEFAULTS: list[tuple[type[Any], dict[str, Any]]] = [
    (
        FluxPro11Params,
        {
            "model": "flux-pro-1.1",
            "prompt": "",
            "width": 1024,
            "height": 768,
            "image_prompt": None,
            "output_format": "jpeg",
        },
    ),
    (
        FluxProParams,
        {
            "model": "flux-pro",
            "prompt": "",
            "width": 1024,
            "height": 768,
            "steps": 40,
            "guidance": 2.5,
            "interval": 2,
            "image_prompt": None,
            "output_format": "jpeg",
        },
    ),
    (
        FluxDevParams,
        {
            "model": "flux-dev",
            "prompt": "",
            "width": 1024,
            "height": 768,
            "steps": 28,
            "guidance": 3,
            "image_prompt": None,
            "output_format": "jpeg",
        },
    ),
    (
        FluxUltraParams,
        {
            "model": "flux-pro-1.1-ultra",
            "prompt": "",
            "aspect_ratio": "16:9",
            "raw": False,
            "image_prompt": None,
            "image_prompt_strength": 0.1,
            "output_format": "jpeg",
        },
    ),
    (
        FluxKontextProParams,
        {
            "model": "flux-kontext-pro",
            "prompt": "make it blue",
            "input_image": None,
            "input_image_2": None,
            "input_image_3": None,
            "input_image_4": None,
            "aspect_ratio": None,
            "output_format": "png",
        },
    ),
    (
        FluxKontextMaxParams,
        {
            "model": "flux-kontext-max",
            "prompt": "make it blue",
            "input_image": None,
            "input_image_2": None,
            "input_image_3": None,
            "input_image_4": None,
            "aspect_ratio": None,
            "output_format": "png",
        },
    ),
]


@pytest.mark.parametrize(("cls", "expected"), DEFAULTS, ids=[c.__name__ for c, _ in DEFAULTS])
def test_defaults(cls: type[Any], expected: dict[str, Any]) -> None:
    assert make(cls).model_dump() == {**COMMON_DEFAULTS, **expected}


def test_flux_models_registry_matches_literals() -> None:
    assert {make(cls).model: cls for cls in ALL_MODELS} == FLUX_MODELS


# --- ranges ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", SIZED)
@pytest.mark.parametrize("field", ["width", "height"])
@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (256, True),
        (1440, True),
        (1024, True),
        (288, True),
        (224, False),
        (1472, False),
        (1000, False),
        (255, False),
        (1441, False),
        (0, False),
        (-256, False),
    ],
)
def test_dimensions(cls: type[Any], field: str, value: int, ok: bool) -> None:
    if ok:
        assert getattr(make(cls, **{field: value}), field) == value
    else:
        with pytest.raises(ValidationError) as info:
            make(cls, **{field: value})
        assert locs(info.value) == [(field,)]


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(
    cls=st.sampled_from(SIZED),
    field=st.sampled_from(["width", "height"]),
    value=st.integers(min_value=-64, max_value=3000),
)
def test_dimension_property(cls: type[Any], field: str, value: int) -> None:
    valid = value % 32 == 0 and 256 <= value <= 1440
    try:
        params = cls(**{field: value})
    except ValidationError as exc:
        assert not valid, f"{value} should be accepted"
        assert locs(exc) == [(field,)]
    else:
        assert valid, f"{value} should be refused"
        assert getattr(params, field) == value


RANGE_CASES: list[tuple[type[Any], str, Any, bool]] = [
    # (model, field, value, valid)
    (FluxProParams, "steps", 1, True),
    (FluxProParams, "steps", 50, True),
    (FluxProParams, "steps", 0, False),
    (FluxProParams, "steps", 51, False),
    (FluxProParams, "guidance", 1.5, True),
    (FluxProParams, "guidance", 5, True),
    (FluxProParams, "guidance", 1.4, False),
    (FluxProParams, "guidance", 5.01, False),
    (FluxProParams, "interval", 1, True),
    (FluxProParams, "interval", 4, True),
    (FluxProParams, "interval", 0.9, False),
    (FluxProParams, "interval", 4.5, False),
    (FluxDevParams, "steps", 1, True),
    (FluxDevParams, "steps", 50, True),
    (FluxDevParams, "steps", 0, False),
    (FluxDevParams, "steps", 51, False),
    (FluxDevParams, "guidance", 1.5, True),
    (FluxDevParams, "guidance", 5, True),
    (FluxDevParams, "guidance", 1, False),
    (FluxDevParams, "guidance", 6, False),
    (FluxUltraParams, "image_prompt_strength", 0, True),
    (FluxUltraParams, "image_prompt_strength", 1, True),
    (FluxUltraParams, "image_prompt_strength", -0.1, False),
    (FluxUltraParams, "image_prompt_strength", 1.1, False),
    (FluxPro11Params, "seed", 0, True),
    (FluxPro11Params, "seed", 2**53 - 1, True),
    (FluxPro11Params, "seed", -1, False),
    (FluxPro11Params, "seed", 2**53, False),
    (FluxPro11Params, "prompt", "x" * 10_000, True),
    (FluxPro11Params, "prompt", "x" * 10_001, False),
    (FluxPro11Params, "output_format", "png", True),
    (FluxPro11Params, "output_format", "webp", False),
    (FluxKontextProParams, "output_format", "jpeg", True),
    (FluxKontextProParams, "output_format", "gif", False),
]


@pytest.mark.parametrize(
    ("cls", "field", "value", "ok"),
    RANGE_CASES,
    ids=[f"{c.__name__}-{f}-{str(v)[:12]}" for c, f, v, _ in RANGE_CASES],
)
def test_ranges(cls: type[Any], field: str, value: Any, ok: bool) -> None:
    if ok:
        assert getattr(make(cls, **{field: value}), field) == value
    else:
        with pytest.raises(ValidationError) as info:
            make(cls, **{field: value})
        assert locs(info.value) == [(field,)]


@pytest.mark.parametrize("cls", ALL_MODELS)
@pytest.mark.parametrize(("value", "ok"), [(0, True), (6, True), (-1, False), (7, False)])
def test_safety_tolerance(cls: type[Any], value: int, ok: bool) -> None:
    if ok:
        assert make(cls, safety_tolerance=value).safety_tolerance == value
    else:
        with pytest.raises(ValidationError) as info:
            make(cls, safety_tolerance=value)
        assert locs(info.value) == [("safety_tolerance",)]


@pytest.mark.parametrize("cls", [FluxUltraParams, *KONTEXT])
@pytest.mark.parametrize("ratio", ["16:9", "9:21", "21:9", "1:1", "4:3", "9:16"])
def test_aspect_ratio_valid(cls: type[Any], ratio: str) -> None:
    assert make(cls, aspect_ratio=ratio).aspect_ratio == ratio


@pytest.mark.parametrize("cls", [FluxUltraParams, *KONTEXT])
@pytest.mark.parametrize("ratio", ["22:9", "1:3", "abc", "0:5", "5:0", "16/9", "16:9 ", ""])
def test_aspect_ratio_invalid(cls: type[Any], ratio: str) -> None:
    with pytest.raises(ValidationError) as info:
        make(cls, aspect_ratio=ratio)
    assert locs(info.value) == [("aspect_ratio",)]


@pytest.mark.parametrize("cls", KONTEXT)
def test_kontext_prompt_required(cls: type[Any]) -> None:
    with pytest.raises(ValidationError) as info:
        cls()
    assert info.value.errors()[0]["type"] == "missing"
    assert locs(info.value) == [("prompt",)]
    with pytest.raises(ValidationError) as info:
        cls(prompt="")
    assert locs(info.value) == [("prompt",)]


@pytest.mark.parametrize("cls", [FluxPro11Params, FluxProParams, FluxDevParams, FluxUltraParams])
def test_prompt_optional_elsewhere(cls: type[Any]) -> None:
    assert cls().prompt == ""


# --- unknown fields ------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL_MODELS)
def test_unknown_field_rejected(cls: type[Any]) -> None:
    with pytest.raises(ValidationError) as info:
        make(cls, bogus=1)
    assert info.value.errors()[0]["type"] == "extra_forbidden"
    assert locs(info.value) == [("bogus",)]


@pytest.mark.parametrize(
    ("cls", "field"),
    [
        (FluxPro11Params, "steps"),  # only flux-pro / flux-dev have steps
        (FluxDevParams, "interval"),  # only flux-pro has interval
        (FluxUltraParams, "width"),  # ultra takes an aspect ratio instead
        (FluxPro11Params, "aspect_ratio"),
        (FluxKontextProParams, "width"),
    ],
)
def test_field_of_another_model_rejected(cls: type[Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        make(cls, **{field: 512})
    assert locs(info.value) == [(field,)]


def test_unknown_field_path_through_request() -> None:
    with pytest.raises(ValidationError) as info:
        FluxRequest.model_validate(
            {"backend": "flux", "params": {"model": "flux-dev", "prompt": "x", "bogus": 1}}
        )
    (err,) = info.value.errors()
    assert err["type"] == "extra_forbidden"
    assert err["loc"][0] == "params"
    assert err["loc"][-1] == "bogus"


def test_unknown_top_level_field_rejected() -> None:
    with pytest.raises(ValidationError) as info:
        FluxRequest.model_validate(
            {"backend": "flux", "params": {"model": "flux-dev"}, "webhook": "x"}
        )
    assert locs(info.value) == [("webhook",)]


# --- the discriminated union -------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL_MODELS)
def test_union_picks_model_class(cls: type[Any]) -> None:
    model = make(cls).model
    parsed = ADAPTER.validate_python({"model": model, "prompt": "hello"})
    assert type(parsed) is cls
    assert parsed.model == model


def test_union_missing_model() -> None:
    with pytest.raises(ValidationError) as info:
        ADAPTER.validate_python({"prompt": "x"})
    assert info.value.errors()[0]["type"] == "union_tag_not_found"


def test_union_unknown_model() -> None:
    with pytest.raises(ValidationError) as info:
        ADAPTER.validate_python({"model": "flux-9000", "prompt": "x"})
    assert info.value.errors()[0]["type"] == "union_tag_invalid"


def test_union_validates_only_the_chosen_member() -> None:
    # steps is valid for flux-dev but not flux-pro-1.1: the error is for the tagged model
    assert ADAPTER.validate_python({"model": "flux-dev", "steps": 10}).steps == 10
    with pytest.raises(ValidationError) as info:
        ADAPTER.validate_python({"model": "flux-pro-1.1", "steps": 10})
    assert locs(info.value) == [("flux-pro-1.1", "steps")]


def test_union_from_json() -> None:
    parsed = ADAPTER.validate_json('{"model":"flux-pro-1.1-ultra","aspect_ratio":"21:9"}')
    assert isinstance(parsed, FluxUltraParams)
    assert parsed.aspect_ratio == "21:9"


# --- request shape and the upstream body ----------------------------------------------------


def test_flux_request_shape() -> None:
    req = FluxRequest.model_validate(
        {"backend": "flux", "params": {"model": "flux-kontext-max", "prompt": "p"}}
    )
    assert req.backend == "flux"
    assert req.model == "flux-kontext-max"
    assert isinstance(req.params, FluxKontextMaxParams)
    assert req.priority == 0
    assert req.deadline_s is None
    dumped = req.model_dump(mode="json")
    assert set(dumped) == {
        "backend",
        "params",
        "priority",
        "deadline_s",
        "webhook_url",
        "webhook_events",
    }
    assert dumped["params"]["model"] == "flux-kontext-max"


def test_flux_request_backend_defaults_and_is_checked() -> None:
    assert FluxRequest.model_validate({"params": {"model": "flux-dev"}}).backend == "flux"
    with pytest.raises(ValidationError) as info:
        FluxRequest.model_validate({"backend": "comfy", "params": {"model": "flux-dev"}})
    assert locs(info.value) == [("backend",)]


def test_flux_request_requires_params() -> None:
    with pytest.raises(ValidationError) as info:
        FluxRequest.model_validate({"backend": "flux"})
    assert locs(info.value) == [("params",)]


@pytest.mark.parametrize(
    ("priority", "deadline_s", "bad"),
    [
        (1001, None, "priority"),
        (-1001, None, "priority"),
        (0, 0, "deadline_s"),
        (0, 86_401, "deadline_s"),
    ],
)
def test_flux_request_bounds(priority: int, deadline_s: float | None, bad: str) -> None:
    with pytest.raises(ValidationError) as info:
        FluxRequest.model_validate(
            {"params": {"model": "flux-dev"}, "priority": priority, "deadline_s": deadline_s}
        )
    assert locs(info.value) == [(bad,)]


def test_upstream_body_sized() -> None:
    body = FluxDevParams(prompt="a cat", width=512).upstream_body()
    assert body == {
        "prompt": "a cat",
        "prompt_upsampling": False,
        "safety_tolerance": 2,
        "output_format": "jpeg",
        "width": 512,
        "height": 768,
        "steps": 28,
        "guidance": 3,
    }


@pytest.mark.parametrize("cls", ALL_MODELS)
def test_upstream_body_never_has_model_or_none(cls: type[Any]) -> None:
    body = make(cls).upstream_body()
    assert "model" not in body
    assert None not in body.values()
    assert "seed" not in body


def test_upstream_body_keeps_set_optional_values() -> None:
    body = FluxKontextProParams(
        prompt="p", seed=7, input_image="aGVsbG8=", aspect_ratio="1:1"
    ).upstream_body()
    assert body["seed"] == 7
    assert body["input_image"] == "aGVsbG8="
    assert body["aspect_ratio"] == "1:1"
    assert body["output_format"] == "png"
    assert "input_image_2" not in body
    assert "model" not in body


def test_upstream_body_from_request() -> None:
    req = FluxRequest.model_validate(
        {"backend": "flux", "params": {"model": "flux-pro-1.1-ultra", "prompt": "x", "raw": True}}
    )
    body = req.params.upstream_body()
    assert body["raw"] is True
    assert body["aspect_ratio"] == "16:9"
    assert "model" not in body
    assert "width" not in body


# Regression (fixed): params.ASPECT_RE ends in "$", which also matches before a newline, and
# _check_aspect uses re.match, so "16:9\n" validates and is sent to BFL as-is
# (use re.fullmatch or "\Z").
@pytest.mark.parametrize("cls", [FluxUltraParams, *KONTEXT])
def test_aspect_ratio_trailing_newline_rejected(cls: type[Any]) -> None:
    with pytest.raises(ValidationError) as info:
        make(cls, aspect_ratio="16:9\n")
    assert locs(info.value) == [("aspect_ratio",)]
