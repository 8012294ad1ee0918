"""Rules every request model shares (``domain/params.py``): integral floats for int
fields, the aspect-ratio check, the schema's required discriminators, and SD 3.5's
per-variant defaults."""

from __future__ import annotations

import copy
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, Field, ValidationError

from orchestrator.domain.params import (
    ComfyRawParams,
    FluxDevParams,
    FluxKontextProParams,
    FluxRequest,
    FluxUltraParams,
    Sd35Params,
    SdxlParams,
    V0Params,
    V0Request,
    WorkflowParams,
    _check_aspect,
    _required,
    _wants_int,
)

# --- integral floats ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "data", "field", "value"),
    [
        # JSON Schema's "integer" includes 512.0: an int field takes it, as an int
        (FluxDevParams, {"width": 512.0}, "width", 512),
        (FluxDevParams, {"steps": 10.0}, "steps", 10),
        (FluxDevParams, {"seed": 7.0}, "seed", 7),  # an optional int
        (SdxlParams, {"prompt": "p", "batch_size": 2.0}, "batch_size", 2),
        (V0Params, {"prompt": "p", "max_completion_tokens": 100.0}, "max_completion_tokens", 100),
        (FluxRequest, {"params": {"model": "flux-dev"}, "priority": 5.0}, "priority", 5),
        # a float field keeps its float
        (FluxDevParams, {"guidance": 3.0}, "guidance", 3.0),
        (FluxRequest, {"params": {"model": "flux-dev"}, "deadline_s": 60.0}, "deadline_s", 60.0),
        (SdxlParams, {"prompt": "p", "cfg": 7.0}, "cfg", 7.0),
        # free-form JSON is left as sent
        (WorkflowParams, {"name": "w", "inputs": {"steps": 20.0}}, "inputs", {"steps": 20.0}),
    ],
)
def test_integral_floats(
    cls: type[BaseModel], data: dict[str, Any], field: str, value: Any
) -> None:
    got = getattr(cls.model_validate(data), field)
    assert got == value
    assert type(got) is type(value)
    if isinstance(value, dict):
        assert all(type(got[k]) is type(v) for k, v in value.items())


def test_integral_floats_from_json() -> None:
    params = FluxDevParams.model_validate_json('{"width": 512.0, "seed": 3.0, "guidance": 2.0}')
    assert (params.width, params.seed, params.guidance) == (512, 3, 2.0)
    assert type(params.width) is int and type(params.guidance) is float


@pytest.mark.parametrize("value", [512.5, True, "512", float("inf"), float("nan")])
def test_an_int_field_still_refuses_other_values(value: object) -> None:
    with pytest.raises(ValidationError) as info:
        FluxDevParams.model_validate({"width": value})
    assert [e["loc"] for e in info.value.errors()] == [("width",)]


def test_an_unknown_field_with_a_float_is_still_unknown() -> None:
    with pytest.raises(ValidationError) as info:
        ComfyRawParams.model_validate({"workflow": {"1": {}}, "bogus": 2.0})
    assert info.value.errors()[0]["type"] == "extra_forbidden"


@pytest.mark.parametrize(
    ("annotation", "wants"),
    [
        (int, True),
        (Annotated[int, Field(ge=0)], True),
        (int | None, True),
        (Annotated[int, Field(ge=0)] | None, True),
        (Annotated[int | None, Field(ge=0)], True),
        (float, False),
        (Annotated[float, Field(ge=0)], False),
        (Annotated[float, Field(ge=0)] | None, False),
        (int | float, False),
        (float | int | None, False),
        (str, False),
        (str | None, False),
        (bool, False),
    ],
)
def test_which_annotations_are_int_fields(annotation: object, wants: bool) -> None:
    assert _wants_int(annotation) is wants


# --- aspect ratios --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (None, None),
        ("16:9", None),
        ("21:9", None),  # the widest
        ("9:21", None),  # the tallest
        ("999:999", None),
        ("22:9", "must be between 21:9 and 9:21"),
        ("9:22", "must be between 21:9 and 9:21"),
        ("7:3", None),  # 21:9 in lowest terms
        ("3:7", None),
        ("0:5", "must look like '16:9'"),
        ("5:0", "must look like '16:9'"),
        ("0:0", "must look like '16:9'"),
        ("1234:1", "must look like '16:9'"),
        ("16/9", "must look like '16:9'"),
        ("16:9:1", "must look like '16:9'"),
    ],
)
def test_check_aspect(value: str | None, problem: str | None) -> None:
    if problem is None:
        assert _check_aspect(value) == value
        return
    with pytest.raises(ValueError) as info:
        _check_aspect(value)
    assert str(info.value) == problem


@pytest.mark.parametrize("cls", [FluxUltraParams, FluxKontextProParams])
def test_aspect_range_error_reaches_the_client(cls: type[BaseModel]) -> None:
    with pytest.raises(ValidationError) as info:
        cls.model_validate({"prompt": "p", "aspect_ratio": "9:22"})
    (err,) = info.value.errors()
    assert err["loc"] == ("aspect_ratio",)
    assert err["msg"] == "Value error, must be between 21:9 and 9:21"


# --- the schema ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "required"),
    [
        # a discriminator has a default for Python callers but is required on the wire,
        # listed first
        (FluxDevParams, ["model"]),
        (FluxKontextProParams, ["model", "prompt"]),
        (FluxRequest, ["backend", "params"]),
        (V0Request, ["backend", "params"]),
    ],
)
def test_schema_requires_the_discriminator(cls: type[BaseModel], required: list[str]) -> None:
    assert cls.model_json_schema()["required"] == required


@pytest.mark.parametrize(
    ("schema", "required"),
    [
        ({}, ["model"]),
        ({"required": ["prompt"]}, ["model", "prompt"]),
        ({"required": ["prompt", "model"]}, ["prompt", "model"]),  # never twice
    ],
)
def test_required_schema_tweak(schema: dict[str, Any], required: list[str]) -> None:
    # built here, not taken from a model: the models' tweaks are built at import time
    tweaked = copy.deepcopy(schema)  # the parameter is shared by every run of the test
    _required("model")(tweaked)
    assert tweaked["required"] == required


def test_nested_schema_requires_the_model() -> None:
    defs = FluxRequest.model_json_schema()["$defs"]
    assert defs["FluxDevParams"]["required"] == ["model"]
    assert defs["FluxKontextMaxParams"]["required"] == ["model", "prompt"]


# --- SD 3.5 variants --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "steps", "cfg", "checkpoint"),
    [
        ({"variant": "large"}, 20, 4.0, "sd3.5_large_fp8_scaled.safetensors"),
        ({"variant": "large-turbo"}, 4, 1.2, "sd3.5_large_turbo.safetensors"),
        ({"variant": "medium"}, 40, 4.5, "sd3.5_medium.safetensors"),
        # what the request says wins over the variant's defaults, 0 included
        ({"variant": "large-turbo", "steps": 9}, 9, 1.2, "sd3.5_large_turbo.safetensors"),
        ({"variant": "medium", "cfg": 0.0}, 40, 0.0, "sd3.5_medium.safetensors"),
        ({"variant": "large", "cfg": 7.5}, 20, 7.5, "sd3.5_large_fp8_scaled.safetensors"),
        ({"variant": "medium", "checkpoint": "mine.safetensors"}, 40, 4.5, "mine.safetensors"),
    ],
)
def test_sd35_resolved(given: dict[str, Any], steps: int, cfg: float, checkpoint: str) -> None:
    params = Sd35Params.model_validate({"prompt": "p", **given}).resolved()
    assert (params.steps, params.cfg, params.checkpoint) == (steps, cfg, checkpoint)
    assert params.variant == given["variant"]
