"""The Generate form, built from a model's JSON Schema (the pydantic parameter
models' ``model_json_schema()``): one widget per field. Pure (table-tested)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import JsonValue

from orchestrator.domain.params import MAX_IMAGE_CHARS

Widget = Literal[
    "text", "textarea", "integer", "number", "select", "checkbox", "seed", "image", "images", "json"
]
LONG_TEXT = 1000  # strings that may be longer than this get a textarea


@dataclass(frozen=True)
class FormField:
    name: str
    label: str
    widget: Widget
    required: bool = False
    nullable: bool = False
    default: JsonValue = None
    description: str | None = None
    options: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    step: str = "any"
    min_length: int | None = None
    max_length: int | None = None

    @property
    def default_text(self) -> str:
        """The default as an input's ``value``."""
        if self.default is None or isinstance(self.default, bool):
            return ""
        if self.widget == "json":
            return json.dumps(self.default, indent=2)
        return str(self.default)


def _label(name: str) -> str:
    return name.replace("_", " ").capitalize()


def _unwrap(prop: dict[str, JsonValue]) -> tuple[dict[str, JsonValue], bool]:
    """``anyOf: [X, {type: null}]`` -> (X merged with the outer keys, nullable)."""
    any_of = prop.get("anyOf")
    if not isinstance(any_of, list):
        return prop, False
    options = [o for o in any_of if isinstance(o, dict)]
    non_null = [o for o in options if o.get("type") != "null"]
    nullable = len(non_null) < len(options)
    if len(non_null) != 1:
        return {**prop, "type": "string"}, nullable
    outer = {k: v for k, v in prop.items() if k != "anyOf"}
    return {**non_null[0], **outer}, nullable


def _num(value: JsonValue) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def field_for(name: str, prop: dict[str, JsonValue], required: bool) -> FormField | None:
    """The widget for one property; None for a fixed value (a discriminator ``const``)."""
    schema, nullable = _unwrap(prop)
    if "const" in schema:
        return None
    kind = schema.get("type")
    description = prop.get("description") or schema.get("description")
    # a form field's template context: strings, flags, lists of choices (Jinja's)
    common: dict[str, Any] = {
        "name": name,
        "label": _label(name),
        "required": required,
        "nullable": nullable,
        "default": prop.get("default", schema.get("default")),
        "description": str(description) if description else None,
    }
    enum = schema.get("enum")
    if isinstance(enum, list):
        return FormField(widget="select", options=tuple(str(v) for v in enum), **common)
    if kind == "boolean":
        return FormField(widget="checkbox", **common)
    if kind in ("integer", "number"):
        minimum = _num(schema.get("minimum"))
        if minimum is None and (excl := _num(schema.get("exclusiveMinimum"))) is not None:
            minimum = excl
        maximum = _num(schema.get("maximum"))
        if maximum is None and (excl := _num(schema.get("exclusiveMaximum"))) is not None:
            maximum = excl
        multiple = _num(schema.get("multipleOf"))
        if kind == "integer":
            step = str(int(multiple)) if multiple else "1"
        else:
            step = f"{multiple:g}" if multiple else "any"
        widget: Widget = (
            "seed" if name == "seed" else ("integer" if kind == "integer" else "number")
        )
        return FormField(
            widget=widget,
            minimum=minimum,
            maximum=maximum,
            step=step,
            **common,
        )
    if kind == "string":
        max_length = schema.get("maxLength")
        min_length = schema.get("minLength")
        max_len = int(max_length) if isinstance(max_length, int) else None
        min_len = int(min_length) if isinstance(min_length, int) else None
        if max_len is not None and max_len >= MAX_IMAGE_CHARS:
            return FormField(widget="image", **common)
        long = max_len is None or max_len > LONG_TEXT or name.endswith("prompt")
        widget = "textarea" if long and "prompt" in name else "text"
        return FormField(
            widget=widget,
            min_length=min_len,
            max_length=max_len,
            **common,
        )
    items = schema.get("items")
    if kind == "array" and isinstance(items, dict):
        item_max = items.get("maxLength")
        if isinstance(item_max, int) and item_max >= MAX_IMAGE_CHARS:
            return FormField(widget="images", **common)
    return FormField(widget="json", **common)


def model_in_params(backend: str, schema: dict[str, JsonValue]) -> bool:
    """Whether the request's ``params.model`` must carry the picked model: FLUX's
    discriminator, or a model field with several choices (v0)."""
    props = schema.get("properties")
    prop = props.get("model") if isinstance(props, dict) else None
    if backend == "flux":
        return True
    return isinstance(prop, dict) and "const" not in prop and "enum" in _unwrap(prop)[0]


def fields_for(schema: dict[str, JsonValue]) -> list[FormField]:
    """Every editable field of an object schema (but the model), in declaration
    order, with the prompt first."""
    props = schema.get("properties")
    if not isinstance(props, dict):
        return []
    required_list = schema.get("required")
    required = set(required_list) if isinstance(required_list, list) else set()
    out: list[FormField] = []
    for name, prop in props.items():
        if not isinstance(prop, dict) or name == "model":
            continue  # the model is chosen by the page's model picker
        f = field_for(name, prop, name in required)
        if f is not None:
            out.append(f)
    out.sort(key=lambda f: 0 if f.name == "prompt" else 1)
    return out
