"""ComfyUI workflow templates and the explicit map from each parameter to the node
input it sets (``shared/reference/comfyui.md`` §8). Values are placed into a copy of
the template's JSON, never by string substitution.

Also: checking a workflow against an instance's ``/object_info`` (which nodes and
model files it lacks).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from importlib import resources
from typing import Literal

from pydantic import BaseModel, JsonValue

from orchestrator.domain.params import Sd35Params, SdxlParams, SvdParams

Workflow = dict[str, dict[str, JsonValue]]


@dataclass(frozen=True)
class Slot:
    node: str
    input: str


@dataclass(frozen=True)
class Template:
    kind: Literal["sdxl", "sd35", "svd"]
    file: str
    # parameter field -> every node input it sets
    slots: dict[str, tuple[Slot, ...]]
    # the loader input that names the model file, and the models folder it lives in
    model_slot: Slot
    image_slot: Slot | None = None

    def load(self) -> Workflow:
        text = resources.files("orchestrator.backends.workflows").joinpath(self.file).read_text()
        doc: Workflow = json.loads(text)
        return doc


TEXT_TO_IMAGE_SLOTS = {
    "seed": (Slot("3", "seed"),),
    "steps": (Slot("3", "steps"),),
    "cfg": (Slot("3", "cfg"),),
    "sampler": (Slot("3", "sampler_name"),),
    "scheduler": (Slot("3", "scheduler"),),
    "checkpoint": (Slot("4", "ckpt_name"),),
}

TEMPLATES: dict[str, Template] = {
    "sdxl": Template(
        kind="sdxl",
        file="sdxl.json",
        slots={
            **TEXT_TO_IMAGE_SLOTS,
            "prompt": (Slot("6", "text"),),
            "negative_prompt": (Slot("7", "text"),),
            "width": (Slot("5", "width"),),
            "height": (Slot("5", "height"),),
            "batch_size": (Slot("5", "batch_size"),),
        },
        model_slot=Slot("4", "ckpt_name"),
    ),
    "sd35": Template(
        kind="sd35",
        file="sd35.json",
        slots={
            **TEXT_TO_IMAGE_SLOTS,
            "prompt": (Slot("16", "text"),),
            "negative_prompt": (Slot("40", "text"),),
            "width": (Slot("53", "width"),),
            "height": (Slot("53", "height"),),
            "batch_size": (Slot("53", "batch_size"),),
        },
        model_slot=Slot("4", "ckpt_name"),
    ),
    "svd": Template(
        kind="svd",
        file="svd.json",
        slots={
            "seed": (Slot("3", "seed"),),
            "steps": (Slot("3", "steps"),),
            "cfg": (Slot("3", "cfg"),),
            "sampler": (Slot("3", "sampler_name"),),
            "scheduler": (Slot("3", "scheduler"),),
            "checkpoint": (Slot("15", "ckpt_name"),),
            "min_cfg": (Slot("14", "min_cfg"),),
            "frames": (Slot("12", "video_frames"),),
            "fps": (Slot("12", "fps"),),
            "motion_bucket_id": (Slot("12", "motion_bucket_id"),),
            "augmentation_level": (Slot("12", "augmentation_level"),),
            "width": (Slot("12", "width"),),
            "height": (Slot("12", "height"),),
            "output_fps": (Slot("10", "fps"),),
        },
        model_slot=Slot("15", "ckpt_name"),
        image_slot=Slot("23", "image"),
    ),
}

SVD_PNG_SAVE: dict[str, JsonValue] = {
    "class_type": "SaveAnimatedPNG",
    "inputs": {
        "images": ["8", 0],
        "filename_prefix": "orchestrator/svd",
        "fps": 10.0,
        "compress_level": 4,
    },
}


def build_prompt(
    kind: str, params: BaseModel, *, seed: int, image_name: str | None = None
) -> Workflow:
    """The API-format prompt for a template job: every mapped field placed into its
    node input. ``seed`` is the resolved seed; ``image_name`` the uploaded input."""
    template = TEMPLATES[kind]
    if isinstance(params, Sd35Params):
        params = params.resolved()
    workflow = copy.deepcopy(template.load())
    values = params.model_dump(mode="json")
    values["seed"] = seed
    if isinstance(params, SvdParams) and params.output_format == "png":
        workflow["10"] = copy.deepcopy(SVD_PNG_SAVE)
    for field, slots in template.slots.items():
        value = values.get(field)
        if value is None:
            continue
        for slot in slots:
            inputs = workflow[slot.node]["inputs"]
            assert isinstance(inputs, dict)
            inputs[slot.input] = value
    if template.image_slot is not None:
        if image_name is None:
            raise ValueError(f"{kind} needs an uploaded input image")
        inputs = workflow[template.image_slot.node]["inputs"]
        assert isinstance(inputs, dict)
        inputs[template.image_slot.input] = image_name
    return workflow


def model_file(kind: str, params: BaseModel) -> str:
    if isinstance(params, Sd35Params):
        params = params.resolved()
    if isinstance(params, SdxlParams | Sd35Params | SvdParams):
        return str(params.checkpoint)
    raise TypeError(f"no model file for {kind}")


# --- checking against an instance ---------------------------------------------------------


class WorkflowReport(BaseModel):
    """What an instance lacks to run a workflow."""

    ok: bool
    missing_nodes: list[str] = []
    missing_models: list[str] = []


def combo_options(spec: JsonValue) -> list[str] | None:
    """The options of a combo input in either spelling ComfyUI uses:
    ``[[...options], {...}]`` or ``["COMBO", {"options": [...]}]``."""
    if not isinstance(spec, list) or not spec:
        return None
    head = spec[0]
    if isinstance(head, list):
        return [str(o) for o in head]
    if head == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        opts = spec[1].get("options")
        if isinstance(opts, list):
            return [str(o) for o in opts]
    return None


def check_workflow(
    workflow: Workflow, object_info: dict[str, JsonValue], *, skip_inputs: set[str] | None = None
) -> WorkflowReport:
    """Nodes the instance does not have, and combo values (model files) it does not
    list. ``skip_inputs`` names inputs whose values are set per job (e.g. ``image``)."""
    skip = skip_inputs or set()
    missing_nodes: list[str] = []
    missing_models: list[str] = []
    for node in workflow.values():
        cls = str(node.get("class_type"))
        info = object_info.get(cls)
        if not isinstance(info, dict):
            missing_nodes.append(cls)
            continue
        spec_inputs = info.get("input")
        if not isinstance(spec_inputs, dict):
            continue
        inputs = node.get("inputs")
        if not isinstance(inputs, dict):
            continue
        for section in ("required", "optional"):
            specs = spec_inputs.get(section)
            if not isinstance(specs, dict):
                continue
            for name, spec in specs.items():
                if name in skip or name not in inputs:
                    continue
                value = inputs[name]
                options = combo_options(spec)
                if options is not None and isinstance(value, str) and value not in options:
                    missing_models.append(f"{cls}.{name}={value}")
    return WorkflowReport(
        ok=not missing_nodes and not missing_models,
        missing_nodes=sorted(set(missing_nodes)),
        missing_models=sorted(set(missing_models)),
    )


def template_reports(object_info: dict[str, JsonValue]) -> dict[str, WorkflowReport]:
    """Each template with its default models, checked against ``object_info``."""
    return {
        kind: check_workflow(t.load(), object_info, skip_inputs={"image"})
        for kind, t in TEMPLATES.items()
    }


def models_in(object_info: dict[str, JsonValue]) -> set[str]:
    """Every checkpoint file the instance offers (from its loaders' combos)."""
    found: set[str] = set()
    for cls in ("CheckpointLoaderSimple", "ImageOnlyCheckpointLoader"):
        info = object_info.get(cls)
        if not isinstance(info, dict):
            continue
        spec_inputs = info.get("input")
        if not isinstance(spec_inputs, dict):
            continue
        req = spec_inputs.get("required")
        if isinstance(req, dict):
            opts = combo_options(req.get("ckpt_name"))
            if opts:
                found.update(opts)
    return found
