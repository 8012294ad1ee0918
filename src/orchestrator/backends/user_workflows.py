"""User workflows: API-format ComfyUI workflows dropped into ``COMFY_WORKFLOWS_DIR``,
each with a declared parameter schema; each becomes a job kind (``backend: "workflow"``,
``params.name``).

A file ``<name>.json``::

    {
      "description": "Upscale an image 2x",
      "params": {
        "prompt": {"type": "string", "node": "6", "input": "text", "required": true},
        "seed":   {"type": "integer", "node": "3", "input": "seed", "minimum": 0},
        "image":  {"type": "image", "node": "10", "input": "image", "required": true}
      },
      "workflow": { "3": {"class_type": "KSampler", "inputs": {...}}, ... }
    }

Values are placed into the declared node inputs (never by string substitution); a
parameter may also list several targets with ``"targets": [{"node":..,"input":..}]``.
An ``image`` parameter takes base64 / ``output:<job>/<n>`` and is uploaded to the
instance that runs the job.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, create_model

from orchestrator import logs
from orchestrator.backends.comfy_workflows import Slot, Workflow

log = logs.get(__name__)
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class Target(BaseModel):
    model_config = ConfigDict(extra="forbid")
    node: str
    input: str


class ParamSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["string", "integer", "number", "boolean", "image"]
    node: str | None = None
    input: str | None = None
    targets: list[Target] = []
    required: bool = False
    default: JsonValue = None
    description: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    enum: list[JsonValue] | None = None
    max_length: int | None = None

    def slots(self) -> list[Slot]:
        out = [Slot(t.node, t.input) for t in self.targets]
        if self.node is not None and self.input is not None:
            out.insert(0, Slot(self.node, self.input))
        return out


class UserWorkflow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = ""
    description: str = ""
    params: dict[str, ParamSpec]
    workflow: dict[str, dict[str, JsonValue]]

    def check(self) -> list[str]:
        """Problems with the file itself (targets that do not exist)."""
        problems = []
        for pname, spec in self.params.items():
            if not spec.slots():
                problems.append(f"parameter {pname!r} has no node/input target")
            for slot in spec.slots():
                node = self.workflow.get(slot.node)
                if node is None:
                    problems.append(f"parameter {pname!r}: no node {slot.node!r}")
                    continue
                inputs = node.get("inputs")
                if not isinstance(inputs, dict) or slot.input not in inputs:
                    problems.append(
                        f"parameter {pname!r}: node {slot.node} has no input {slot.input!r}"
                    )
        return problems

    def params_model(self) -> type[BaseModel]:
        """A pydantic model of the declared parameters (field errors like any job)."""
        # pydantic.create_model's field definitions: (type, FieldInfo) pairs whose
        # type is chosen at run time from the workflow file, so Any by nature
        fields: dict[str, Any] = {}
        for pname, spec in self.params.items():
            py: Any
            constraints: dict[str, Any] = {}
            if spec.type == "string":
                py = str
                constraints["max_length"] = spec.max_length or 100_000
            elif spec.type == "integer":
                py = int
            elif spec.type == "number":
                py = float
            elif spec.type == "boolean":
                py = bool
            else:
                py = str
                constraints["min_length"] = 1
                constraints["max_length"] = 28_000_000
            if spec.minimum is not None and spec.type in ("integer", "number"):
                constraints["ge"] = spec.minimum
            if spec.maximum is not None and spec.type in ("integer", "number"):
                constraints["le"] = spec.maximum
            if spec.enum:
                py = Literal[tuple(spec.enum)]
                constraints = {}
            annotated = Annotated[py, Field(description=spec.description, **constraints)]
            if spec.required:
                fields[pname] = (annotated, ...)
            else:
                fields[pname] = (annotated | None, spec.default)
        model: type[BaseModel] = create_model(
            f"Workflow_{self.name}",
            __config__=ConfigDict(extra="forbid"),
            **fields,
        )
        return model

    def image_params(self) -> list[str]:
        return [n for n, s in self.params.items() if s.type == "image"]

    def build(self, values: dict[str, JsonValue]) -> Workflow:
        """The workflow with every given value placed into its targets."""
        wf: Workflow = copy.deepcopy(self.workflow)
        for pname, spec in self.params.items():
            value = values.get(pname)
            if value is None:
                continue
            for slot in spec.slots():
                inputs = wf[slot.node]["inputs"]
                assert isinstance(inputs, dict)
                inputs[slot.input] = value
        return wf


def load_user_workflows(folder: Path | None) -> tuple[dict[str, UserWorkflow], dict[str, str]]:
    """Every valid ``*.json`` in ``folder``; and the problems of the invalid ones."""
    found: dict[str, UserWorkflow] = {}
    problems: dict[str, str] = {}
    if folder is None or not folder.is_dir():
        return found, problems
    for path in sorted(folder.glob("*.json")):
        name = path.stem.lower()
        if not NAME_RE.match(name):
            problems[path.name] = "file name must be lower-case letters, digits, - or _"
            continue
        try:
            wf = UserWorkflow.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, ValidationError) as exc:
            problems[path.name] = str(exc).splitlines()[0]
            continue
        wf.name = name
        issues = wf.check()
        if issues:
            problems[path.name] = "; ".join(issues)
            continue
        found[name] = wf
    for file, why in problems.items():
        log.warning("user workflow ignored", file=file, problem=why)
    return found, problems
