"""Per-backend parameter models and the one request shape every entry point uses.

``GenerateRequest`` is a discriminated union on ``backend``; for FLUX, ``params`` is
itself a discriminated union on ``model`` (the BFL endpoint), each with BFL's own
fields, ranges and defaults (``shared/reference/bfl.md`` §3). Invalid values are
refused here, with field paths, before anything is sent or paid for.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

from orchestrator.domain.jobs import WebhookEventName
from orchestrator.domain.webhooks import WEBHOOK_EVENT_NAMES, parse_target

# A base64 image of up to ~20 MB, or an http(s) URL where BFL accepts one.
MAX_IMAGE_CHARS = 28_000_000
ImageInput = Annotated[str, Field(min_length=1, max_length=MAX_IMAGE_CHARS)]
Dimension = Annotated[int, Field(ge=256, le=1440, multiple_of=32)]
# Up to 2**53 - 1: every JSON client (JavaScript's numbers, float parsers) reads it
# exactly; above it, 9223372036854775999 and 2**63 - 1 are the same float.
Seed = Annotated[int, Field(ge=0, le=2**53 - 1)]
Prompt = Annotated[str, Field(max_length=10_000)]
ASPECT_RE = re.compile(r"^(\d{1,3}):(\d{1,3})$")
# What the schema says of an aspect ratio (W:H, no zero, no leading zero); the range
# (between 21:9 and 9:21) is checked by _check_aspect, beyond what JSON Schema can say.
ASPECT_PATTERN = r"^[1-9][0-9]{0,2}:[1-9][0-9]{0,2}$"
# An http(s) URL with a host name or IP literal, an optional port (1-65535) and no
# whitespace: the syntax parse_target accepts, so the schema and the handler agree.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PORT = r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
_H = "[0-9A-Fa-f]{1,4}"
_IPV6 = (  # the RFC 4291 text forms, without an embedded IPv4 address
    rf"(?:(?:{_H}:){{7}}{_H}|(?:{_H}:){{1,7}}:|(?:{_H}:){{1,6}}:{_H}"
    rf"|(?:{_H}:){{1,5}}(?::{_H}){{1,2}}|(?:{_H}:){{1,4}}(?::{_H}){{1,3}}"
    rf"|(?:{_H}:){{1,3}}(?::{_H}){{1,4}}|(?:{_H}:){{1,2}}(?::{_H}){{1,5}}"
    rf"|{_H}:(?::{_H}){{1,6}}|:(?:(?::{_H}){{1,7}}|:))"
)
WEBHOOK_URL_PATTERN = (
    rf"^[Hh][Tt][Tt][Pp][Ss]?://(?:{_LABEL}(?:\.{_LABEL})*|\[{_IPV6}\])"
    rf"(?::{_PORT})?(?:[/?#][!-~]*)?$"
)


def _check_aspect(value: str | None) -> str | None:
    if value is None:
        return None
    m = ASPECT_RE.fullmatch(value)
    if not m or int(m[1]) == 0 or int(m[2]) == 0:
        raise ValueError("must look like '16:9'")
    ratio = int(m[1]) / int(m[2])
    if not (9 / 21 - 1e-9 <= ratio <= 21 / 9 + 1e-9):
        raise ValueError("must be between 21:9 and 9:21")
    return value


def _wants_int(annotation: object) -> bool:
    """An int field (or an optional one), not one that also takes floats."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if annotation is int:
        return True
    args = [
        typing.get_args(a)[0] if typing.get_origin(a) is typing.Annotated else a
        for a in typing.get_args(annotation)
    ]
    return int in args and float not in args


def _integral_floats(cls: type[BaseModel], data: object) -> object:
    """JSON Schema's "integer" includes 256.0; the strict models took only 256. An
    integral float for an int field becomes the int (a bool or a string still fails)."""
    if not isinstance(data, dict):
        return data
    fixed = dict(data)
    for name, value in data.items():
        if isinstance(value, float) and value.is_integer():
            field = cls.model_fields.get(name) if isinstance(name, str) else None
            if field is not None and _wants_int(field.annotation):
                fixed[name] = int(value)
    return fixed


def _required(*names: str) -> Callable[[dict[str, JsonValue]], None]:
    """JSON Schema tweak: a discriminator field has a default for Python callers but
    must be sent over the wire, so the schema says it is required."""

    def extra(schema: dict[str, JsonValue]) -> None:
        required = schema.setdefault("required", [])
        assert isinstance(required, list)
        for name in names:
            if name not in required:
                required.insert(0, name)

    return extra


class _FluxBase(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_required("model"))
    _integral = model_validator(mode="before")(_integral_floats)

    prompt: Prompt = Field(default="", description="What to generate.")
    seed: Seed | None = Field(default=None, description="Fixed seed; random when absent.")
    prompt_upsampling: bool = Field(default=False, description="Let BFL expand the prompt.")
    safety_tolerance: Annotated[int, Field(ge=0, le=6)] = Field(
        default=2, description="0 is strictest, 6 most permissive."
    )
    output_format: Literal["jpeg", "png"] = Field(default="jpeg")

    def upstream_body(self) -> dict[str, object]:
        """The JSON BFL receives: every field but ``model``, ``None`` values left out."""
        return self.model_dump(mode="json", exclude={"model"}, exclude_none=True)


class _Sized(_FluxBase):
    width: Dimension = Field(default=1024, description="Multiple of 32, 256 to 1440.")
    height: Dimension = Field(default=768, description="Multiple of 32, 256 to 1440.")
    image_prompt: ImageInput | None = Field(
        default=None,
        description="Base64 image for FLUX Redux image prompting, or asset:<id> (an imported "
        "Tilda image).",
    )


class FluxPro11Params(_Sized):
    model: Literal["flux-pro-1.1"] = "flux-pro-1.1"


class FluxProParams(_Sized):
    model: Literal["flux-pro"] = "flux-pro"
    steps: Annotated[int, Field(ge=1, le=50)] = 40
    guidance: Annotated[float, Field(ge=1.5, le=5)] = 2.5
    interval: Annotated[float, Field(ge=1, le=4)] = 2


class FluxDevParams(_Sized):
    model: Literal["flux-dev"] = "flux-dev"
    steps: Annotated[int, Field(ge=1, le=50)] = 28
    guidance: Annotated[float, Field(ge=1.5, le=5)] = 3


class FluxUltraParams(_FluxBase):
    model: Literal["flux-pro-1.1-ultra"] = "flux-pro-1.1-ultra"
    aspect_ratio: str = Field(
        default="16:9", pattern=ASPECT_PATTERN, description="W:H between 21:9 and 9:21."
    )
    raw: bool = Field(default=False, description="Less processed, more natural look.")
    image_prompt: ImageInput | None = None
    image_prompt_strength: Annotated[float, Field(ge=0, le=1)] = 0.1

    _aspect = field_validator("aspect_ratio")(_check_aspect)


class _KontextBase(_FluxBase):
    prompt: Annotated[str, Field(min_length=1, max_length=10_000)] = Field(
        description="The edit or generation instruction (required)."
    )
    input_image: ImageInput | None = Field(
        default=None, description="Base64, URL, or asset:<id> (an imported Tilda image)."
    )
    input_image_2: ImageInput | None = None
    input_image_3: ImageInput | None = None
    input_image_4: ImageInput | None = None
    aspect_ratio: Annotated[str, Field(pattern=ASPECT_PATTERN)] | None = Field(
        default=None, description="W:H between 21:9 and 9:21."
    )
    output_format: Literal["jpeg", "png"] = Field(default="png")

    _aspect = field_validator("aspect_ratio")(_check_aspect)


class FluxKontextProParams(_KontextBase):
    model: Literal["flux-kontext-pro"] = "flux-kontext-pro"


class FluxKontextMaxParams(_KontextBase):
    model: Literal["flux-kontext-max"] = "flux-kontext-max"


FluxParams = Annotated[
    FluxPro11Params
    | FluxUltraParams
    | FluxProParams
    | FluxDevParams
    | FluxKontextProParams
    | FluxKontextMaxParams,
    Field(discriminator="model"),
]

FLUX_MODELS: dict[str, type[_FluxBase]] = {
    "flux-pro-1.1": FluxPro11Params,
    "flux-pro-1.1-ultra": FluxUltraParams,
    "flux-pro": FluxProParams,
    "flux-dev": FluxDevParams,
    "flux-kontext-pro": FluxKontextProParams,
    "flux-kontext-max": FluxKontextMaxParams,
}

# Credits per image from BFL's price list (1 credit = $0.01); the submit response's
# ``cost`` wins when BFL sends one.
FLUX_LIST_PRICE: dict[str, float] = {
    "flux-pro-1.1": 4,
    "flux-pro-1.1-ultra": 6,
    "flux-pro": 5,
    "flux-dev": 2.5,
    "flux-kontext-pro": 4,
    "flux-kontext-max": 8,
}


class _RequestBase(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_required("backend"))
    _integral = model_validator(mode="before")(_integral_floats)

    priority: Annotated[int, Field(ge=-1000, le=1000)] = Field(
        default=0, description="Higher runs first; ties run oldest first."
    )
    deadline_s: Annotated[float, Field(gt=0, le=86_400)] | None = Field(
        default=None,
        description="Seconds from submission until the job fails with "
        "deadline_exceeded. Default: the backend's.",
    )
    webhook_url: (
        Annotated[str, Field(min_length=1, max_length=2048, pattern=WEBHOOK_URL_PATTERN)] | None
    ) = Field(
        default=None,
        description="An http(s) URL that receives this job's events as signed Standard "
        "Webhooks (needs WEBHOOK_SECRET on the server).",
    )
    webhook_events: Annotated[list[WebhookEventName], Field(min_length=1, max_length=3)] | None = (
        Field(
            default=None,
            description="Which events webhook_url receives: started, progress, completed. "
            "Default: all of them.",
        )
    )

    @field_validator("webhook_url")
    @classmethod
    def _check_webhook_url(cls, v: str | None) -> str | None:
        if v is not None:
            parse_target(v)  # a UrlProblem is a ValueError: a field error
        return v

    @field_validator("webhook_events")
    @classmethod
    def _unique_events(cls, v: list[WebhookEventName] | None) -> list[WebhookEventName] | None:
        return None if v is None else sorted(set(v), key=WEBHOOK_EVENT_NAMES.index)


class FluxRequest(_RequestBase):
    backend: Literal["flux"] = "flux"
    params: FluxParams

    @property
    def model(self) -> str:
        return self.params.model


class FluxResult(BaseModel):
    """Parsed ``result`` of a Ready BFL task."""

    model_config = ConfigDict(extra="allow")

    sample: str
    prompt: str | None = None
    seed: int | None = None
    start_time: float | None = None
    end_time: float | None = None
    duration: float | None = None


# --- ComfyUI workflows ------------------------------------------------------------------

Sampler = Literal[
    "euler",
    "euler_ancestral",
    "heun",
    "heunpp2",
    "dpm_2",
    "dpm_2_ancestral",
    "lms",
    "dpm_fast",
    "dpm_adaptive",
    "dpmpp_2s_ancestral",
    "dpmpp_sde",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "dpmpp_3m_sde",
    "ddpm",
    "lcm",
    "ipndm",
    "deis",
    "ddim",
    "uni_pc",
    "uni_pc_bh2",
]
Scheduler = Literal[
    "normal",
    "karras",
    "exponential",
    "sgm_uniform",
    "simple",
    "ddim_uniform",
    "beta",
    "linear_quadratic",
    "kl_optimal",
]
# ComfyUI takes up to 2**64 - 1; the API stops at 2**53 - 1, like Seed (exact in JSON)
ComfySeed = Annotated[int, Field(ge=0, le=2**53 - 1)]
# An image input: base64 (optionally a data: URL), or "output:<job id>/<n>" to reuse an
# output of an earlier job. Stored inputs are referenced as "input:<sha256>.<ext>".
InputImage = Annotated[str, Field(min_length=1, max_length=MAX_IMAGE_CHARS)]
Checkpoint = Annotated[str, Field(min_length=1, max_length=255)]


class _ComfyBase(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    _integral = model_validator(mode="before")(_integral_floats)

    seed: ComfySeed | None = Field(default=None, description="Fixed seed; random when absent.")
    sampler: Sampler = "euler"
    scheduler: Scheduler = "normal"


class _TextToImage(_ComfyBase):
    prompt: Annotated[str, Field(min_length=1, max_length=10_000)]
    negative_prompt: Annotated[str, Field(max_length=10_000)] = ""
    width: Annotated[int, Field(ge=64, le=4096, multiple_of=8)] = 1024
    height: Annotated[int, Field(ge=64, le=4096, multiple_of=8)] = 1024
    batch_size: Annotated[int, Field(ge=1, le=16)] = 1


class SdxlParams(_TextToImage):
    model: Literal["sdxl"] = "sdxl"
    negative_prompt: Annotated[str, Field(max_length=10_000)] = "text, watermark"
    steps: Annotated[int, Field(ge=1, le=150)] = 25
    cfg: Annotated[float, Field(ge=0, le=30)] = 8.0
    checkpoint: Annotated[str, Field(min_length=1, max_length=255)] = "sd_xl_base_1.0.safetensors"


SD35_DEFAULTS: dict[str, dict[str, object]] = {
    "large": {"checkpoint": "sd3.5_large_fp8_scaled.safetensors", "steps": 20, "cfg": 4.0},
    "large-turbo": {"checkpoint": "sd3.5_large_turbo.safetensors", "steps": 4, "cfg": 1.2},
    "medium": {"checkpoint": "sd3.5_medium.safetensors", "steps": 40, "cfg": 4.5},
}


class Sd35Params(_TextToImage):
    model: Literal["sd35"] = "sd35"
    variant: Literal["large", "large-turbo", "medium"] = "large"
    width: Annotated[int, Field(ge=64, le=4096, multiple_of=16)] = 1024
    height: Annotated[int, Field(ge=64, le=4096, multiple_of=16)] = 1024
    steps: Annotated[int, Field(ge=1, le=150)] | None = Field(
        default=None, description="Default per variant: large 20, large-turbo 4, medium 40."
    )
    cfg: Annotated[float, Field(ge=0, le=30)] | None = Field(
        default=None, description="Default per variant: large 4.0, large-turbo 1.2, medium 4.5."
    )
    scheduler: Scheduler = "sgm_uniform"
    checkpoint: Checkpoint | None = Field(
        default=None, description="Default per variant (an all-in-one checkpoint)."
    )

    def resolved(self) -> Sd35Params:
        """The parameters with the variant's defaults filled in."""
        d = SD35_DEFAULTS[self.variant]
        return self.model_copy(
            update={
                "steps": self.steps if self.steps is not None else d["steps"],
                "cfg": self.cfg if self.cfg is not None else d["cfg"],
                "checkpoint": self.checkpoint or d["checkpoint"],
            }
        )


class SvdParams(_ComfyBase):
    model: Literal["svd"] = "svd"
    init_image: InputImage = Field(
        description="The first frame (base64, output:<job>/<n>, or asset:<id>)."
    )
    frames: Annotated[int, Field(ge=1, le=128)] = 14
    fps: Annotated[int, Field(ge=1, le=60)] = 6
    motion_bucket_id: Annotated[int, Field(ge=1, le=1023)] = 127
    augmentation_level: Annotated[float, Field(ge=0, le=10)] = 0.0
    width: Annotated[int, Field(ge=64, le=2048, multiple_of=8)] = 1024
    height: Annotated[int, Field(ge=64, le=2048, multiple_of=8)] = 576
    steps: Annotated[int, Field(ge=1, le=150)] = 20
    cfg: Annotated[float, Field(ge=0, le=30)] = 2.5
    min_cfg: Annotated[float, Field(ge=0, le=30)] = 1.0
    scheduler: Scheduler = "karras"
    checkpoint: Checkpoint = "svd.safetensors"
    output_format: Literal["webp", "png"] = Field(
        default="webp", description="Animated WEBP or animated PNG."
    )
    output_fps: Annotated[float, Field(gt=0, le=60)] = 10.0


class ComfyRawParams(BaseModel):
    """A raw API-format workflow, run as given (outputs are whatever it saves)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    _integral = model_validator(mode="before")(_integral_floats)

    model: Literal["raw"] = "raw"
    workflow: dict[str, dict[str, JsonValue]] = Field(
        description="API-format prompt: {node_id: {class_type, inputs}}.", min_length=1
    )


class WorkflowParams(BaseModel):
    """A user workflow from COMFY_WORKFLOWS_DIR, with its declared parameters."""

    model_config = ConfigDict(extra="forbid", strict=True)
    _integral = model_validator(mode="before")(_integral_floats)

    model: Literal["workflow"] = "workflow"
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
    inputs: dict[str, JsonValue] = Field(
        default_factory=dict, description="Values of the workflow's declared parameters."
    )


class SdxlRequest(_RequestBase):
    backend: Literal["sdxl"] = "sdxl"
    params: SdxlParams

    @property
    def model(self) -> str:
        return self.params.model


class Sd35Request(_RequestBase):
    backend: Literal["sd35"] = "sd35"
    params: Sd35Params

    @property
    def model(self) -> str:
        return self.params.variant


class SvdRequest(_RequestBase):
    backend: Literal["svd"] = "svd"
    params: SvdParams

    @property
    def model(self) -> str:
        return self.params.model


class ComfyRequest(_RequestBase):
    backend: Literal["comfy"] = "comfy"
    params: ComfyRawParams

    @property
    def model(self) -> str:
        return self.params.model


class WorkflowRequest(_RequestBase):
    backend: Literal["workflow"] = "workflow"
    params: WorkflowParams

    @property
    def model(self) -> str:
        return self.params.name


# --- v0 (page code generation) -------------------------------------------------------

V0_MODELS: tuple[str, ...] = ("v0-1.5-md", "v0-1.5-lg")


class V0Params(BaseModel):
    """A v0 code-generation job: a prompt, optionally an imported site page (its texts
    and a few of its images) as context, and image inputs."""

    model_config = ConfigDict(extra="forbid", strict=True)
    _integral = model_validator(mode="before")(_integral_floats)

    model: Literal["v0-1.5-md", "v0-1.5-lg"] = Field(
        default="v0-1.5-md", description="v0-1.5-md (everyday), v0-1.5-lg (harder pages)."
    )
    prompt: Annotated[str, Field(min_length=1, max_length=20_000)] = Field(
        description="What to build."
    )
    system: Annotated[str, Field(max_length=20_000)] | None = Field(
        default=None, description="Extra system instructions, after the built-in ones."
    )
    site_page_id: Annotated[str, Field(min_length=1, max_length=128)] | None = Field(
        default=None, description="An imported Tilda page whose texts and images are context."
    )
    page_images: Annotated[int, Field(ge=0, le=8)] = Field(
        default=4, description="How many of the page's images to send (0 to 8)."
    )
    images: Annotated[list[InputImage], Field(max_length=8)] = Field(
        default_factory=list,
        description="Image inputs: base64 or data: URLs, output:<job>/<n>, asset:<id>.",
    )
    output_format: Literal["tsx", "md"] = Field(
        default="tsx",
        description="tsx: one page component (the code of the answer's code block); "
        "md: the whole answer as Markdown.",
    )
    max_completion_tokens: Annotated[int, Field(ge=1, le=128_000)] | None = Field(
        default=None, description="Upper bound on the answer's length, tokens."
    )


class V0Request(_RequestBase):
    backend: Literal["v0"] = "v0"
    params: V0Params

    @property
    def model(self) -> str:
        return self.params.model


GenerateRequest = Annotated[
    FluxRequest
    | SdxlRequest
    | Sd35Request
    | SvdRequest
    | ComfyRequest
    | WorkflowRequest
    | V0Request,
    Field(discriminator="backend"),
]
AnyRequest = (
    FluxRequest
    | SdxlRequest
    | Sd35Request
    | SvdRequest
    | ComfyRequest
    | WorkflowRequest
    | V0Request
)
BackendName = Literal["flux", "sdxl", "sd35", "svd", "comfy", "workflow", "v0"]
BACKENDS: tuple[str, ...] = ("flux", "sdxl", "sd35", "svd", "comfy", "workflow", "v0")
COMFY_BACKENDS: tuple[str, ...] = ("sdxl", "sd35", "svd", "comfy", "workflow")
PARAMS_BY_BACKEND: dict[str, type[BaseModel]] = {
    "sdxl": SdxlParams,
    "sd35": Sd35Params,
    "svd": SvdParams,
    "comfy": ComfyRawParams,
    "workflow": WorkflowParams,
    "v0": V0Params,
}
