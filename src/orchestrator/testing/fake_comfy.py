"""A contract-faithful fake of the ComfyUI 0.3.64 HTTP + WebSocket API.

Follows shared/reference/comfyui.md and the raw captures beside it. Serve ``fake.app`` with
`orchestrator.testing.serve` (the WebSocket needs a real server), or drive the HTTP side in-process
through ``httpx2.ASGITransport(app=fake.app)`` (then call ``await fake.aclose()`` at the end, or use
``async with FakeComfy(...) as fake``, because without a lifespan the queue worker is started lazily
on the first request).

What it speaks (every route also under ``/api``):

* ``GET /system_stats /features /prompt /queue /history[/{id}] /object_info[/{class}] /models[/{f}]
  /embeddings /view``; ``POST /prompt /queue /interrupt /free /history /upload/image``;
  ``WS /ws?clientId=``.
* ``POST /prompt`` validates like ``execution.validate_prompt`` (the 400 bodies of section 3,
  partial validity with a 200 that still carries ``node_errors``, the counter advancing on rejected
  prompts, client-chosen and duplicate prompt ids, ``number``/``front``). Any exception in a
  handler, e.g. malformed JSON, gives aiohttp's ``500 text/plain`` "Server got itself in trouble".
* One worker task runs the queue (lowest number first) and "executes" the graph with ComfyUI's
  ``ExecutionList`` ordering and classic cache: an identical re-run is fully cached, a re-run that
  changes one input re-executes only what depends on it. It tracks small tensor stand-ins through
  links (IMAGE = size and frame count with lazily rendered Pillow frames, LATENT = size and batch,
  both in pixels) and writes real files: PNG for ``SaveImage`` / ``PreviewImage`` (type temp),
  animated WEBP / APNG for ``SaveAnimatedWEBP`` / ``SaveAnimatedPNG``, with ComfyUI's
  ``{prefix}_{counter:05}_`` names and directory-scanned counters.
* Video nodes (``comfy_extras.nodes_video``): ``CreateVideo`` (IMAGE + fps, optional AUDIO ->
  VIDEO), ``SaveVideo`` (an H.264 ``yuv420p`` MP4, ``format`` auto/mp4, ``codec`` auto/h264) and
  ``SaveWEBM`` (VP9 ``yuv420p`` or AV1 ``yuv420p10le`` through libsvtav1, ``crf``), encoded with
  PyAV like ComfyUI does, so the files are real and decodable with every frame at the given fps.
  From the capture (``video.json``): the history/``executed`` output
  ``{"images":[{"filename":"probe_00001_.mp4","subfolder":"video","type":"output"}],"animated":[true]}``
  and the ``/view`` content types. From 0.3.64's source (``comfy_extras/nodes_video.py``,
  ``comfy_api`` ``VideoFromComponents.save_to`` and the V3 ``io`` schema), not captured: the
  ``/object_info`` entries (V3 spelling: every input is ``[type, {...}]``, combos as ``COMBO``),
  the encoder settings (rate ``Fraction(round(fps * 1000), 1000)``, ``movflags
  use_metadata_tags``, the prompt and ``extra_pnginfo`` as JSON container tags). PyAV (``av``)
  is a development dependency only: without it these three nodes are absent, as they are from a
  ComfyUI whose ``nodes_video`` module failed to import, and ``av`` is imported only when a
  video is written (demo mode's start-up does not pay for it).
* WebSocket events are emitted in the captured order (``execution_start``, ``execution_cached``,
  ``progress_state``, ``executing``, ``progress``, binary previews, ``executed``,
  ``execution_success`` / ``execution_error`` / ``execution_interrupted``, ``status``,
  ``executing{node:null}``) and routed like the server: prompt events only to the socket whose
  clientId is the prompt's ``client_id``; ``status`` to everyone; ``progress_state``, ``progress``
  and previews to the prompt's client, or to *every* socket when the prompt has no ``client_id``
  (that is what ``send_sync(..., sid=None)`` does).

Faithful oddities kept on purpose (see the report of the session that wrote this):

* Reusing a clientId replaces the registered socket, and when the *old* socket later closes its
  handler unregisters the clientId, so the newer socket silently stops receiving anything
  (``FakeComfyConfig.stale_close_unregisters``, default True as in 0.3.64).
* ``SaveAnimatedWEBP`` of a single frame reports ``"animated": [false]``.
* ``POST /upload/image`` with an unknown ``type`` is a 500 (an ``UnboundLocalError`` upstream).
* A restart resets the prompt ``number`` counter to 0 and wipes the temp folder.

Fault injection (methods, thread-safe, and ``/_fake/*`` admin endpoints that are never refused):

* `FakeComfy.drop_sockets`: every open WebSocket is closed by dropping the TCP connection without a
  close frame; a ``websockets`` client sees ``ConnectionClosedError`` (code 1006, ``rcvd is None``).
* `FakeComfy.hang_next_node` / `FakeComfy.release`: the next matching node blocks right after its
  ``executing`` event until released; an interrupt (or a restart) still ends it.
* `FakeComfy.restart`: history, queue, cache and counter are forgotten, the running prompt is
  abandoned without one more event, every socket is dropped as above; output/input files persist.
  With ``down_s`` the server then refuses for that long, like a real restart (6-7 s).
* `FakeComfy.refuse`: mode ``"drop"`` (default): every HTTP request gets its connection closed
  without a response (``httpx2.RemoteProtocolError`` "Server disconnected without sending a
  response", a ``TransportError`` like ``ConnectError``) and every WebSocket is accepted and then
  dropped at once (``ConnectionClosedError`` on the first ``recv``). Mode ``"503"``: a plain-text
  503 from a proxy in front of a dead ComfyUI, and the WebSocket handshake is rejected with 503
  (``websockets.exceptions.InvalidStatus``). A listening socket cannot be made to refuse TCP
  connections from inside the app, so there is no "connection refused" mode.
* `FakeComfy.fail_next_prompt_http`: the next ``POST /prompt`` gets a canned status/body or a
  dropped connection, optionally after really queueing the prompt (``process=True``: the
  "accepted, but the answer was lost" case).
* `FakeComfy.silently_delete`: the prompt vanishes from the queue, the running slot and the
  history with no event at all (a lost job).

Under uvicorn a dropped HTTP connection is made by returning a non-None value from the ASGI app
(uvicorn then closes the socket without writing and logs an ERROR line). Under any other server
(e.g. ``httpx2.ASGITransport``) the app raises ``httpx2.RemoteProtocolError`` itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import heapq
import importlib.util
import io
import json
import logging
import mimetypes
import os
import random
import shutil
import struct
import tempfile
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar, cast

import httpx2
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageOps, ImageSequence
from PIL.PngImagePlugin import PngInfo
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from orchestrator.testing.dropped import DROPPED, served_by_uvicorn
from orchestrator.testing.images import render_image

if TYPE_CHECKING:
    import av

__all__ = [
    "COMFYUI_VERSION",
    "DEFAULT_MODELS",
    "ConfigBody",
    "DeleteBody",
    "FailPromptBody",
    "FakeComfy",
    "FakeComfyConfig",
    "HangBody",
    "HungNode",
    "PromptFault",
    "RefuseBody",
    "RefuseMode",
    "RestartBody",
    "Upload",
    "encode_mp4",
    "encode_webm",
    "video_nodes_available",
]

_log = logging.getLogger(__name__)

COMFYUI_VERSION: Final = "0.3.64"
RefuseMode = Literal["drop", "503"]

DEFAULT_MODELS: Final[dict[str, list[str]]] = {
    "checkpoints": [
        "sd_xl_base_1.0.safetensors",
        "sd_xl_refiner_1.0.safetensors",
        "sd3.5_large_fp8_scaled.safetensors",
        "sd3.5_large.safetensors",
        "sd3.5_large_turbo.safetensors",
        "sd3.5_medium.safetensors",
        "svd.safetensors",
        "svd_xt.safetensors",
    ],
    "text_encoders": ["clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"],
}


def _words(text: str) -> list[str]:
    return text.split()


_MODEL_FOLDERS: Final = tuple(
    _words(
        "checkpoints configs loras vae text_encoders diffusion_models clip_vision "
        "style_models embeddings diffusers vae_approx controlnet gligen upscale_models "
        "custom_nodes hypernetworks photomaker classifiers model_patches audio_encoders"
    )
)

MAX_RESOLUTION: Final = 16384
_MAX_UPLOAD: Final = 100 * 1024 * 1024
_SERVER_ERROR: Final = "500 Internal Server Error\n\nServer got itself in trouble"
_JSON_TYPE: Final = "application/json; charset=utf-8"
_HANG_POLL_S: Final = 0.005
_PREVIEW_LETTERS: Final = "abcdefghijklmnopqrstupvxyz"  # sic, as in nodes.PreviewImage

_SAMPLERS: Final = _words(
    "euler euler_cfg_pp euler_ancestral euler_ancestral_cfg_pp heun heunpp2 dpm_2 "
    "dpm_2_ancestral lms dpm_fast dpm_adaptive dpmpp_2s_ancestral "
    "dpmpp_2s_ancestral_cfg_pp dpmpp_sde dpmpp_sde_gpu dpmpp_2m dpmpp_2m_cfg_pp "
    "dpmpp_2m_sde dpmpp_2m_sde_gpu dpmpp_2m_sde_heun dpmpp_2m_sde_heun_gpu dpmpp_3m_sde "
    "dpmpp_3m_sde_gpu ddpm lcm ipndm ipndm_v deis res_multistep res_multistep_cfg_pp "
    "res_multistep_ancestral res_multistep_ancestral_cfg_pp gradient_estimation "
    "gradient_estimation_cfg_pp er_sde seeds_2 seeds_3 sa_solver sa_solver_pece ddim "
    "uni_pc uni_pc_bh2"
)
_SCHEDULERS: Final = _words(
    "simple sgm_uniform karras exponential ddim_uniform beta normal linear_quadratic kl_optimal"
)
_CLIP_TYPES: Final = _words(
    "stable_diffusion stable_cascade sd3 stable_audio mochi ltxv pixart cosmos lumina2 "
    "wan hidream chroma ace omnigen2 qwen_image hunyuan_image"
)
_DUAL_CLIP_TYPES: Final = ["sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image"]

_SYSTEM: Final[dict[str, Any]] = {
    "os": "posix",
    "ram_total": 25276510208,
    "ram_free": 23816224768,
    "comfyui_version": COMFYUI_VERSION,
    "required_frontend_version": "1.27.10",
    "installed_templates_version": "0.1.95",
    "required_templates_version": "0.1.95",
    "python_version": "3.11.7 (main, May  9 2026, 07:35:25) [GCC 12.2.0]",
    "pytorch_version": "2.14.1+cu130",
    "embedded_python": False,
    "argv": [
        "main.py",
        "--cpu",
        "--listen",
        "127.0.0.1",
        "--port",
        "8188",
        "--disable-auto-launch",
        "--disable-api-nodes",
    ],
}

# The frames ComfyUI reports for errors raised inside a node (execution.py, 0.3.64).
_TB_EXECUTE: Final = (
    '  File "ComfyUI/execution.py", line 496, in execute\n'
    "    output_data, output_ui, has_subgraph, has_pending_tasks = await get_output_data("
    "prompt_id, unique_id, obj, input_data_all, execution_block_cb=execution_block_cb, "
    "pre_execute_cb=pre_execute_cb, hidden_inputs=hidden_inputs)\n",
    '  File "ComfyUI/execution.py", line 315, in get_output_data\n'
    "    return_values = await _async_map_node_over_list(prompt_id, unique_id, obj, "
    "input_data_all, obj.FUNCTION, allow_interrupt=True, execution_block_cb=execution_block_cb, "
    "pre_execute_cb=pre_execute_cb, hidden_inputs=hidden_inputs)\n",
    '  File "ComfyUI/execution.py", line 289, in _async_map_node_over_list\n'
    "    await process_inputs(input_dict, i)\n",
    '  File "ComfyUI/execution.py", line 277, in process_inputs\n'
    "    result = f(**inputs)\n             ^^^^^^^^^^^\n",
)
_TB_EMPTY_IMAGE: Final = (
    '  File "ComfyUI/nodes.py", line 1877, in generate\n'
    "    r = torch.full([batch_size, height, width, 1], ((color >> 16) & 0xFF) / 0xFF)\n",
)
_TB_LOADER: Final = (
    '  File "ComfyUI/nodes.py", line 587, in load_checkpoint\n'
    "    out = comfy.sd.load_checkpoint_guess_config(ckpt_path, output_vae=True, "
    'output_clip=True, embedding_directory=folder_paths.get_folder_paths("embeddings"))\n',
    '  File "ComfyUI/comfy/sd.py", line 1043, in load_checkpoint_guess_config\n'
    "    sd, metadata = comfy.utils.load_torch_file(ckpt_path, return_metadata=True)\n",
    '  File "ComfyUI/comfy/utils.py", line 69, in load_torch_file\n'
    '    with safetensors.safe_open(ckpt, framework="pt", device=device.type) as f:\n',
)
_TB_VALIDATE_KEYERROR: Final = (
    '  File "ComfyUI/execution.py", line 1010, in validate_prompt\n'
    "    m = await validate_inputs(prompt_id, prompt, o, validated)\n"
    "        ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n",
    '  File "ComfyUI/execution.py", line 788, in validate_inputs\n'
    "    o_class_type = prompt[o_id]['class_type']\n"
    "                   ~~~~~~^^^^^^\n",
)


# --------------------------------------------------------------------------------------------
# Configuration and public records
# --------------------------------------------------------------------------------------------


def _default_models() -> dict[str, list[str]]:
    return {folder: list(files) for folder, files in DEFAULT_MODELS.items()}


@dataclass
class FakeComfyConfig:
    """Behaviour of a `FakeComfy`. It may be changed at any time (also via ``/_fake/config``).

    * `models`: model folder -> file names. ``checkpoints`` feeds the ``ckpt_name`` combos,
      ``text_encoders`` the CLIP loaders; a name missing here is a 400 ``value_not_in_list``.
    * `broken_models`: files that "exist" but fail to load (``SafetensorError`` at run time).
    * `base_dir`: where ``output/``, ``input/`` and ``temp/`` live, like ``--base-directory``
      (a new temporary folder if None, removed by `FakeComfy.cleanup` or when the fake is
      garbage-collected). `output_dir`, `input_dir` and `temp_dir` override one folder each,
      like ``--output-directory`` etc. The temp folder is wiped by `FakeComfy.restart`.
    * `node_delay_s` per executed node (`node_delays` overrides it per class_type) and
      `step_delay_s` per sampler step / SaveImageWebsocket frame.
    * `memory_limit_bytes`: an IMAGE bigger than this (float32) fails like a CPU allocation.
    * `sampler_previews`: send JPEG latent previews on sampler steps (``--preview-method auto``).
    * `stale_close_unregisters`: the 0.3.64 clientId-reuse race (see the module docstring).
    * `refuse_mode`: what `FakeComfy.refuse` and a restart's downtime do.
    """

    models: dict[str, list[str]] = field(default_factory=_default_models)
    broken_models: set[str] = field(default_factory=set)
    base_dir: Path | None = None
    output_dir: Path | None = None
    input_dir: Path | None = None
    temp_dir: Path | None = None
    node_delay_s: float = 0.01
    step_delay_s: float = 0.005
    node_delays: dict[str, float] = field(default_factory=dict)
    memory_limit_bytes: int = 16 * 1024**3
    max_upload_size: int = _MAX_UPLOAD
    label: str | None = "SIMULATED"
    sampler_previews: bool = False
    stale_close_unregisters: bool = True
    refuse_mode: RefuseMode = "drop"
    max_history: int = 10000
    example_input: bool = True


@dataclass(frozen=True)
class Upload:
    """One ``POST /upload/image`` that succeeded (`duplicate`: same bytes, nothing written)."""

    name: str
    subfolder: str
    type: str
    size: int
    duplicate: bool


@dataclass(frozen=True)
class HungNode:
    """A node currently held by `FakeComfy.hang_next_node`."""

    prompt_id: str
    node_id: str
    class_type: str


@dataclass(frozen=True)
class PromptFault:
    """What the next ``POST /prompt`` gets; see `FakeComfy.fail_next_prompt_http`."""

    status: int = 500
    body: bytes | None = None
    content_type: str = "text/plain; charset=utf-8"
    process: bool = False
    drop: bool = False


# --------------------------------------------------------------------------------------------
# Node catalogue (object_info)
# --------------------------------------------------------------------------------------------

_InputSpec = tuple[Any, ...]


@dataclass(frozen=True)
class _Spec:
    name: str
    display_name: str
    category: str
    required: dict[str, _InputSpec]
    optional: dict[str, _InputSpec] = field(default_factory=dict)
    hidden: dict[str, str] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()
    output_names: tuple[str, ...] | None = None
    output_tooltips: tuple[str, ...] | None = None
    output_node: bool = False
    description: str = ""
    python_module: str = "nodes"
    validate_args: tuple[str, ...] = ()
    v3: bool = False
    experimental: bool = False

    def input_order(self) -> list[tuple[str, str, _InputSpec]]:
        return [("required", k, v) for k, v in self.required.items()] + [
            ("optional", k, v) for k, v in self.optional.items()
        ]

    def info(self) -> dict[str, Any]:
        inputs: dict[str, Any] = {"required": {k: list(v) for k, v in self.required.items()}}
        order: dict[str, list[str]] = {"required": list(self.required)}
        if self.optional:
            inputs["optional"] = {k: list(v) for k, v in self.optional.items()}
            order["optional"] = list(self.optional)
        if self.hidden:
            inputs["hidden"] = dict(self.hidden)
            order["hidden"] = list(self.hidden)
        info: dict[str, Any] = {
            "input": inputs,
            "input_order": order,
            "output": list(self.outputs),
            "output_is_list": [False] * len(self.outputs),
            "output_name": list(self.output_names or self.outputs),
            "name": self.name,
            "display_name": self.display_name,
            "description": self.description,
            "python_module": self.python_module,
            "category": self.category,
            "output_node": self.output_node,
        }
        if self.output_tooltips:
            info["output_tooltips"] = list(self.output_tooltips)
        if self.v3:
            info.update({"deprecated": False, "experimental": self.experimental, "api_node": False})
        return info


_HIDDEN_SAVE: Final = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
_SEED_MAX: Final = 0xFFFFFFFFFFFFFFFF


def _combo_v3(options: list[str]) -> _InputSpec:
    return ("COMBO", {"multiselect": False, "options": options})


def _build_catalogue(ckpts: list[str], encoders: list[str], images: list[str]) -> dict[str, _Spec]:
    """The node classes the fake knows, with inputs shaped like ComfyUI 0.3.64's object_info."""
    res = {"min": 16, "max": MAX_RESOLUTION, "step": 8}
    image_in: _InputSpec = ("IMAGE",)
    ksampler_common: dict[str, _InputSpec] = {
        "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
        "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
        "sampler_name": (list(_SAMPLERS),),
        "scheduler": (list(_SCHEDULERS),),
        "positive": ("CONDITIONING",),
        "negative": ("CONDITIONING",),
        "latent_image": ("LATENT",),
    }
    specs = [
        _Spec(
            "CheckpointLoaderSimple",
            "Load Checkpoint",
            "loaders",
            {
                "ckpt_name": (
                    list(ckpts),
                    {"tooltip": "The name of the checkpoint (model) to load."},
                )
            },
            outputs=("MODEL", "CLIP", "VAE"),
            output_tooltips=(
                "The model used for denoising latents.",
                "The CLIP model used for encoding text prompts.",
                "The VAE model used for encoding and decoding images to and from latent space.",
            ),
            description="Loads a diffusion model checkpoint, diffusion models are used to "
            "denoise latents.",
        ),
        _Spec(
            "ImageOnlyCheckpointLoader",
            "Image Only Checkpoint Loader (img2vid model)",
            "loaders/video_models",
            {"ckpt_name": (list(ckpts),)},
            outputs=("MODEL", "CLIP_VISION", "VAE"),
            python_module="comfy_extras.nodes_video_model",
        ),
        _Spec(
            "TripleCLIPLoader",
            "TripleCLIPLoader",
            "advanced/loaders",
            {
                "clip_name1": _combo_v3(list(encoders)),
                "clip_name2": _combo_v3(list(encoders)),
                "clip_name3": _combo_v3(list(encoders)),
            },
            outputs=("CLIP",),
            description="[Recipes]\n\nsd3: clip-l, clip-g, t5",
            python_module="comfy_extras.nodes_sd3",
            v3=True,
        ),
        _Spec(
            "CLIPLoader",
            "Load CLIP",
            "advanced/loaders",
            {"clip_name": (list(encoders),), "type": (list(_CLIP_TYPES),)},
            optional={"device": (["default", "cpu"], {"advanced": True})},
            outputs=("CLIP",),
            description="[Recipes]\n\nstable_diffusion: clip-l\nsd3: t5 xxl/ clip-g / clip-l",
        ),
        _Spec(
            "DualCLIPLoader",
            "DualCLIPLoader",
            "advanced/loaders",
            {
                "clip_name1": (list(encoders),),
                "clip_name2": (list(encoders),),
                "type": (list(_DUAL_CLIP_TYPES),),
            },
            optional={"device": (["default", "cpu"], {"advanced": True})},
            outputs=("CLIP",),
            description="[Recipes]\n\nsdxl: clip-l, clip-g\nsd3: clip-l, clip-g / clip-l, t5",
        ),
        _Spec(
            "CLIPTextEncode",
            "CLIP Text Encode (Prompt)",
            "conditioning",
            {
                "text": (
                    "STRING",
                    {
                        "multiline": True,
                        "dynamicPrompts": True,
                        "tooltip": "The text to be encoded.",
                    },
                ),
                "clip": ("CLIP", {"tooltip": "The CLIP model used for encoding the text."}),
            },
            outputs=("CONDITIONING",),
            output_tooltips=(
                "A conditioning containing the embedded text used to guide the diffusion model.",
            ),
            description="Encodes a text prompt using a CLIP model into an embedding that can be "
            "used to guide the diffusion model towards generating specific images.",
        ),
        _Spec(
            "EmptyLatentImage",
            "Empty Latent Image",
            "latent",
            {
                "width": (
                    "INT",
                    {"default": 512, **res, "tooltip": "The width of the latent images in pixels."},
                ),
                "height": (
                    "INT",
                    {
                        "default": 512,
                        **res,
                        "tooltip": "The height of the latent images in pixels.",
                    },
                ),
                "batch_size": (
                    "INT",
                    {
                        "default": 1,
                        "min": 1,
                        "max": 4096,
                        "tooltip": "The number of latent images in the batch.",
                    },
                ),
            },
            outputs=("LATENT",),
            output_tooltips=("The empty latent image batch.",),
            description="Create a new batch of empty latent images to be denoised via sampling.",
        ),
        _Spec(
            "EmptySD3LatentImage",
            "EmptySD3LatentImage",
            "latent/sd3",
            {
                "width": ("INT", {"default": 1024, "min": 16, "max": MAX_RESOLUTION, "step": 16}),
                "height": ("INT", {"default": 1024, "min": 16, "max": MAX_RESOLUTION, "step": 16}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096}),
            },
            outputs=("LATENT",),
            python_module="comfy_extras.nodes_sd3",
        ),
        _Spec(
            "KSampler",
            "KSampler",
            "sampling",
            {
                "model": ("MODEL", {"tooltip": "The model used for denoising the input latent."}),
                "seed": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": _SEED_MAX,
                        "control_after_generate": True,
                        "tooltip": "The random seed used for creating the noise.",
                    },
                ),
                **ksampler_common,
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
            },
            outputs=("LATENT",),
            output_tooltips=("The denoised latent.",),
            description="Uses the provided model, positive and negative conditioning to denoise "
            "the latent image.",
        ),
        _Spec(
            "KSamplerAdvanced",
            "KSampler (Advanced)",
            "sampling",
            {
                "model": ("MODEL",),
                "add_noise": (["enable", "disable"],),
                "noise_seed": (
                    "INT",
                    {"default": 0, "min": 0, "max": _SEED_MAX, "control_after_generate": True},
                ),
                **ksampler_common,
                "start_at_step": ("INT", {"default": 0, "min": 0, "max": 10000}),
                "end_at_step": ("INT", {"default": 10000, "min": 0, "max": 10000}),
                "return_with_leftover_noise": (["disable", "enable"],),
            },
            outputs=("LATENT",),
        ),
        _Spec(
            "ModelSamplingSD3",
            "ModelSamplingSD3",
            "advanced/model",
            {
                "model": ("MODEL",),
                "shift": ("FLOAT", {"default": 3.0, "min": 0.0, "max": 100.0, "step": 0.01}),
            },
            outputs=("MODEL",),
            python_module="comfy_extras.nodes_model_advanced",
        ),
        _Spec(
            "VAEDecode",
            "VAE Decode",
            "latent",
            {
                "samples": ("LATENT", {"tooltip": "The latent to be decoded."}),
                "vae": ("VAE", {"tooltip": "The VAE model used for decoding the latent."}),
            },
            outputs=("IMAGE",),
            output_tooltips=("The decoded image.",),
            description="Decodes latent images back into pixel space images.",
        ),
        _Spec(
            "SaveImage",
            "Save Image",
            "image",
            {
                "images": ("IMAGE", {"tooltip": "The images to save."}),
                "filename_prefix": (
                    "STRING",
                    {
                        "default": "ComfyUI",
                        "tooltip": "The prefix for the file to save. This may include formatting "
                        "information such as %date:yyyy-MM-dd% or %Empty Latent Image.width% to "
                        "include values from nodes.",
                    },
                ),
            },
            hidden=dict(_HIDDEN_SAVE),
            output_node=True,
            description="Saves the input images to your ComfyUI output directory.",
        ),
        _Spec(
            "PreviewImage",
            "Preview Image",
            "image",
            {"images": image_in},
            hidden=dict(_HIDDEN_SAVE),
            output_node=True,
            description="Saves the input images to your ComfyUI output directory.",
        ),
        _Spec(
            "LoadImage",
            "Load Image",
            "image",
            {"image": (list(images), {"image_upload": True})},
            outputs=("IMAGE", "MASK"),
            validate_args=("image",),
        ),
        _Spec(
            "SVD_img2vid_Conditioning",
            "SVD_img2vid_Conditioning",
            "conditioning/video_models",
            {
                "clip_vision": ("CLIP_VISION",),
                "init_image": image_in,
                "vae": ("VAE",),
                "width": ("INT", {"default": 1024, **res}),
                "height": ("INT", {"default": 576, **res}),
                "video_frames": ("INT", {"default": 14, "min": 1, "max": 4096}),
                "motion_bucket_id": ("INT", {"default": 127, "min": 1, "max": 1023}),
                "fps": ("INT", {"default": 6, "min": 1, "max": 1024}),
                "augmentation_level": (
                    "FLOAT",
                    {"default": 0.0, "min": 0.0, "max": 10.0, "step": 0.01},
                ),
            },
            outputs=("CONDITIONING", "CONDITIONING", "LATENT"),
            output_names=("positive", "negative", "latent"),
            python_module="comfy_extras.nodes_video_model",
        ),
        _Spec(
            "VideoLinearCFGGuidance",
            "VideoLinearCFGGuidance",
            "sampling/video_models",
            {
                "model": ("MODEL",),
                "min_cfg": (
                    "FLOAT",
                    {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.5, "round": 0.01},
                ),
            },
            outputs=("MODEL",),
            python_module="comfy_extras.nodes_video_model",
        ),
        _Spec(
            "SaveAnimatedWEBP",
            "SaveAnimatedWEBP",
            "image/animation",
            {
                "images": image_in,
                "filename_prefix": ("STRING", {"default": "ComfyUI"}),
                "fps": ("FLOAT", {"default": 6.0, "min": 0.01, "max": 1000.0, "step": 0.01}),
                "lossless": ("BOOLEAN", {"default": True}),
                "quality": ("INT", {"default": 80, "min": 0, "max": 100}),
                "method": (["default", "fastest", "slowest"],),
            },
            hidden=dict(_HIDDEN_SAVE),
            output_node=True,
            python_module="comfy_extras.nodes_images",
        ),
        _Spec(
            "SaveAnimatedPNG",
            "SaveAnimatedPNG",
            "image/animation",
            {
                "images": image_in,
                "filename_prefix": ("STRING", {"default": "ComfyUI"}),
                "fps": ("FLOAT", {"default": 6.0, "min": 0.01, "max": 1000.0, "step": 0.01}),
                "compress_level": ("INT", {"default": 4, "min": 0, "max": 9}),
            },
            hidden=dict(_HIDDEN_SAVE),
            output_node=True,
            python_module="comfy_extras.nodes_images",
        ),
        _Spec(
            "EmptyImage",
            "EmptyImage",
            "image",
            {
                "width": ("INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}),
                "height": ("INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096}),
                "color": (
                    "INT",
                    {"default": 0, "min": 0, "max": 0xFFFFFF, "step": 1, "display": "color"},
                ),
            },
            outputs=("IMAGE",),
        ),
        _Spec(
            "ImageBlur",
            "Image Blur",
            "image/postprocessing",
            {
                "image": image_in,
                "blur_radius": ("INT", {"default": 1, "min": 1, "max": 31, "step": 1}),
                "sigma": ("FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.1}),
            },
            outputs=("IMAGE",),
            python_module="comfy_extras.nodes_post_processing",
        ),
        _Spec(
            "ImageSharpen",
            "Image Sharpen",
            "image/postprocessing",
            {
                "image": image_in,
                "sharpen_radius": ("INT", {"default": 1, "min": 1, "max": 31, "step": 1}),
                "sigma": ("FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.01}),
                "alpha": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 5.0, "step": 0.01}),
            },
            outputs=("IMAGE",),
            python_module="comfy_extras.nodes_post_processing",
        ),
        _Spec(
            "ImageScale",
            "Upscale Image",
            "image/upscaling",
            {
                "image": image_in,
                "upscale_method": (["nearest-exact", "bilinear", "area", "bicubic", "lanczos"],),
                "width": ("INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 1}),
                "height": ("INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 1}),
                "crop": (["disabled", "center"],),
            },
            outputs=("IMAGE",),
        ),
        _Spec("ImageInvert", "Invert Image", "image", {"image": image_in}, outputs=("IMAGE",)),
        _Spec(
            "ImageBatch",
            "Batch Images",
            "image",
            {"image1": image_in, "image2": image_in},
            outputs=("IMAGE",),
        ),
        _Spec(
            "SaveImageWebsocket",
            "SaveImageWebsocket",
            "api/image",
            {"images": image_in},
            output_node=True,
            python_module="custom_nodes.websocket_image_save",
        ),
    ]
    if video_nodes_available():
        specs.extend(_video_specs())
    return {spec.name: spec for spec in specs}


def _video_specs() -> list[_Spec]:
    """comfy_extras.nodes_video of 0.3.64 (V3 nodes), from its source: see the module doc."""
    module = "comfy_extras.nodes_video"
    prefix_tip = (
        "The prefix for the file to save. This may include formatting information such as "
        "%date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes."
    )
    crf_tip = (
        "Higher crf means lower quality with a smaller file size, lower crf means higher "
        "quality higher filesize."
    )
    return [
        _Spec(
            "SaveWEBM",
            "SaveWEBM",
            "image/video",
            {
                "images": ("IMAGE", {}),
                "filename_prefix": ("STRING", {"default": "ComfyUI", "multiline": False}),
                "codec": _combo_v3(["vp9", "av1"]),
                "fps": ("FLOAT", {"default": 24.0, "min": 0.01, "max": 1000.0, "step": 0.01}),
                "crf": (
                    "FLOAT",
                    {"tooltip": crf_tip, "default": 32.0, "min": 0, "max": 63.0, "step": 1},
                ),
            },
            hidden=dict(_HIDDEN_SAVE),
            output_node=True,
            python_module=module,
            v3=True,
            experimental=True,
        ),
        _Spec(
            "SaveVideo",
            "Save Video",
            "image/video",
            {
                "video": ("VIDEO", {"tooltip": "The video to save."}),
                "filename_prefix": (
                    "STRING",
                    {"tooltip": prefix_tip, "default": "video/ComfyUI", "multiline": False},
                ),
                "format": (
                    "COMBO",
                    {
                        "tooltip": "The format to save the video as.",
                        "default": "auto",
                        "multiselect": False,
                        "options": ["auto", "mp4"],
                    },
                ),
                "codec": (
                    "COMBO",
                    {
                        "tooltip": "The codec to use for the video.",
                        "default": "auto",
                        "multiselect": False,
                        "options": ["auto", "h264"],
                    },
                ),
            },
            hidden=dict(_HIDDEN_SAVE),
            output_node=True,
            description="Saves the input images to your ComfyUI output directory.",
            python_module=module,
            v3=True,
        ),
        _Spec(
            "CreateVideo",
            "Create Video",
            "image/video",
            {
                "images": ("IMAGE", {"tooltip": "The images to create a video from."}),
                "fps": ("FLOAT", {"default": 30.0, "min": 1.0, "max": 120.0, "step": 1.0}),
            },
            optional={"audio": ("AUDIO", {"tooltip": "The audio to add to the video."})},
            outputs=("VIDEO",),
            description="Create a video from images.",
            python_module=module,
            v3=True,
        ),
    ]


@functools.cache
def video_nodes_available() -> bool:
    """Whether PyAV is installed (looked up, not imported), so the video nodes exist."""
    return importlib.util.find_spec("av") is not None


def encode_mp4(
    frames: list[Image.Image], fps: float, path: Path, metadata: Mapping[str, object] | None
) -> None:
    """``VideoFromComponents.save_to`` of 0.3.64: H.264, yuv420p, MP4 with metadata tags."""
    import av  # a development dependency: see the module doc

    with av.open(str(path), mode="w", options={"movflags": "use_metadata_tags"}) as output:
        for key, value in (metadata or {}).items():
            output.metadata[key] = json.dumps(value)
        stream = output.add_stream("h264", rate=Fraction(round(fps * 1000), 1000))
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv420p"
        for image in frames:
            frame = _rgb_frame(image).reformat(format="yuv420p")
            output.mux(stream.encode(frame))
        output.mux(stream.encode(None))


def _rgb_frame(image: Image.Image) -> av.VideoFrame:
    """An ``rgb24`` frame, like ``VideoFrame.from_ndarray(..., format="rgb24")`` in ComfyUI."""
    import av

    rgba = image.convert("RGBA")  # PyAV's from_bytes takes rgba, not rgb24
    frame = av.VideoFrame.from_bytes(rgba.tobytes(), rgba.width, rgba.height, format="rgba")
    return frame.reformat(format="rgb24")


def encode_webm(
    frames: list[Image.Image],
    fps: float,
    path: Path,
    codec: str,
    crf: float,
    metadata: Mapping[str, object] | None,
) -> None:
    """``SaveWEBM.execute`` of 0.3.64: VP9 (yuv420p) or AV1 (svt-av1, yuv420p10le)."""
    import av

    with av.open(str(path), mode="w") as container:
        for key, value in (metadata or {}).items():
            container.metadata[key] = json.dumps(value)
        rate = Fraction(round(fps * 1000), 1000)
        if codec == "av1":
            stream = container.add_stream("libsvtav1", rate=rate)
        else:
            stream = container.add_stream("libvpx-vp9", rate=rate)
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv420p10le" if codec == "av1" else "yuv420p"
        stream.bit_rate = 0
        stream.options = {"crf": str(crf)}
        if codec == "av1":
            stream.options["preset"] = "6"
        for image in frames:
            for packet in stream.encode(_rgb_frame(image)):
                container.mux(packet)
        container.mux(stream.encode())


# --------------------------------------------------------------------------------------------
# Values flowing through links
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Handle:
    """MODEL, CLIP, VAE or CLIP_VISION."""

    kind: str
    source: str
    patches: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"<{self.kind} {self.source}{''.join(' +' + p for p in self.patches)}>"


@dataclass(frozen=True)
class _Cond:
    text: str

    def __str__(self) -> str:
        return f"[[<CONDITIONING {self.text[:40]!r}>]]"


@dataclass(frozen=True)
class _Mask:
    width: int
    height: int
    count: int

    def __str__(self) -> str:
        return f"<MASK {self.count}x{self.height}x{self.width}>"


@dataclass(frozen=True, eq=False)
class _Images:
    """An IMAGE batch: size, frame count and a (cached) renderer of frame i."""

    width: int
    height: int
    count: int
    render: Callable[[int], Image.Image]

    def frame(self, index: int) -> Image.Image:
        return self.render(index).copy()

    def __str__(self) -> str:
        return f"<IMAGE {self.count}x{self.height}x{self.width}x3>"


@dataclass(frozen=True, eq=False)
class _Video:
    """A VIDEO from CreateVideo (``VideoFromComponents``): frames and frame rate."""

    images: _Images
    fps: float

    def __str__(self) -> str:
        return "<comfy_api.latest._input_impl.video_types.VideoFromComponents object>"


@dataclass(frozen=True)
class _Latent:
    """A LATENT batch, in pixels; `init` is the conditioning image of an SVD latent."""

    width: int
    height: int
    batch: int
    text: str = ""
    seed: int = 0
    sampled: bool = False
    init: _Images | None = None

    def __str__(self) -> str:
        return f"{{'samples': <LATENT {self.batch}x4x{self.height // 8}x{self.width // 8}>}}"


def _images(width: int, height: int, count: int, render: Callable[[int], Image.Image]) -> _Images:
    return _Images(width, height, count, functools.lru_cache(maxsize=4)(render))


@functools.lru_cache(maxsize=8)
def _rendered(text: str, width: int, height: int, seed: int, label: str | None) -> Image.Image:
    data = render_image(text, width, height, "png", seed, label)
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


def _check_alloc(nbytes: int, limit: int) -> None:
    if nbytes > limit:
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
            f"memory: you tried to allocate {nbytes} bytes. Error code 12 (Cannot allocate memory)"
        )


_T = TypeVar("_T")


def _need(value: object, cls: type[_T], attribute: str) -> _T:
    if not isinstance(value, cls):
        raise AttributeError(f"'{type(value).__name__}' object has no attribute '{attribute}'")
    return value


_RESAMPLE: Final = {
    "nearest-exact": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "area": Image.Resampling.BOX,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def _upscale(img: Image.Image, width: int, height: int, method: str, crop: str) -> Image.Image:
    """comfy.utils.common_upscale on one frame."""
    if crop == "center":
        old_w, old_h = img.size
        old_aspect = old_w / old_h
        new_aspect = width / height
        x = y = 0
        if old_aspect > new_aspect:
            x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
        elif old_aspect < new_aspect:
            y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
        img = img.crop((x, y, old_w - x, old_h - y))
    return img.resize((width, height), _RESAMPLE.get(method, Image.Resampling.BILINEAR))


# --------------------------------------------------------------------------------------------
# Execution machinery
# --------------------------------------------------------------------------------------------


class _Interrupted(Exception):
    """comfy.model_management.InterruptProcessingException."""


class _Abandoned(Exception):
    """The run was forgotten by a restart or silently_delete: stop without another event."""


class _SafetensorError(Exception):
    comfy_type = "safetensors._safetensors_rust.SafetensorError"


class _NodeFailure(Exception):
    def __init__(
        self,
        node_id: str,
        exception_type: str,
        message: str,
        traceback: list[str],
        current_inputs: dict[str, Any],
    ) -> None:
        super().__init__(message)
        self.node_id = node_id
        self.exception_type = exception_type
        self.message = message
        self.traceback = traceback
        self.current_inputs = current_inputs


def _is_link(value: object) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int | float)
        and not isinstance(value[1], bool)
    )


def _type_name(exc: BaseException) -> str:
    comfy_type = getattr(exc, "comfy_type", None)
    if isinstance(comfy_type, str):
        return comfy_type
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _format_input(value: object) -> object:
    if value is None or isinstance(value, int | float | bool | str):
        return value
    return str(value)


def _types_match(received: object, expected: object) -> bool:
    """execution.validate_node_input."""
    if received == expected:
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    got = {t.strip() for t in received.split(",")}
    want = {t.strip() for t in expected.split(",")}
    if "*" in got or "*" in want:
        return True
    return len(got & want) > 0


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class _Item:
    """A queue entry: [number, prompt_id, prompt, extra_data, outputs_to_execute]."""

    number: int | float
    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    outputs: list[str]
    seq: int

    def as_list(self) -> list[Any]:
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]

    def __lt__(self, other: _Item) -> bool:
        return (self.number, self.prompt_id, self.seq) < (other.number, other.prompt_id, other.seq)


@dataclass
class _Progress:
    state: str
    value: int | float
    max: int | float


@dataclass(eq=False)
class _Run:
    item: _Item
    slot: int
    client_id: str | None
    messages: list[list[Any]] = field(default_factory=list)
    progress: dict[str, _Progress] = field(default_factory=dict)
    abandoned: bool = False

    @property
    def prompt_id(self) -> str:
        return self.item.prompt_id


@dataclass(frozen=True)
class _CacheEntry:
    outputs: tuple[object, ...]
    ui: dict[str, Any] | None


@dataclass
class _Hang:
    info: HungNode
    released: bool = False


@dataclass(frozen=True)
class _Arm:
    class_type: str | None


@dataclass(eq=False)
class _Ctx:
    run: _Run
    node_id: str
    class_type: str


_Result = tuple[tuple[object, ...], dict[str, Any] | None]
_Executor = Callable[[_Ctx, dict[str, Any]], Awaitable[_Result]]


class _ExecList:
    """comfy_execution.graph.ExecutionList: staging order and ux_friendly_pick_node."""

    def __init__(
        self,
        prompt: dict[str, Any],
        is_cached: Callable[[str], bool],
        is_output: Callable[[str], bool],
    ) -> None:
        self.prompt = prompt
        self.is_cached = is_cached
        self.is_output = is_output
        self.pending: dict[str, None] = {}
        self.block_count: dict[str, int] = {}
        self.blocking: dict[str, dict[str, set[int | float]]] = {}

    def add_node(self, node_id: str) -> None:
        stack = [node_id]
        links: list[tuple[str, int | float, str]] = []
        while stack:
            current = stack.pop()
            if current in self.pending:
                continue
            self.pending[current] = None
            self.block_count[current] = 0
            self.blocking[current] = {}
            for value in self.prompt[current].get("inputs", {}).values():
                if _is_link(value):
                    source = value[0]
                    if not self.is_cached(source):
                        stack.append(source)
                    links.append((source, value[1], current))
        for source, socket, target in links:
            if self.is_cached(source):
                continue
            self.add_node(source)
            if target not in self.blocking[source]:
                self.blocking[source][target] = set()
                self.block_count[target] += 1
            self.blocking[source][target].add(socket)

    def empty(self) -> bool:
        return not self.pending

    def stage(self) -> str | None:
        ready = [n for n in self.pending if self.block_count[n] == 0]
        if not ready:
            return None
        for node in ready:
            if self.is_output(node):
                return node
        for node in ready:
            if any(self.is_output(b) for b in self.blocking[node]):
                return node
        for node in ready:
            for blocked in self.blocking[node]:
                if any(self.is_output(b) for b in self.blocking[blocked]):
                    return node
        return ready[0]

    def complete(self, node_id: str) -> None:
        del self.pending[node_id]
        for blocked in self.blocking.pop(node_id):
            self.block_count[blocked] -= 1

    def first_pending(self) -> str:
        return next(iter(self.pending))


@dataclass(eq=False)
class _Client:
    """One open WebSocket."""

    sid: str
    queue: asyncio.Queue[str | bytes | None] = field(default_factory=asyncio.Queue)
    supports_metadata: bool = False
    dropped: bool = False

    def push(self, item: str | bytes) -> None:
        if not self.dropped:
            self.queue.put_nowait(item)

    def drop(self) -> None:
        if self.dropped:
            return
        self.dropped = True
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)


def _event(event: str, data: Mapping[str, Any]) -> str:
    return json.dumps({"type": event, "data": data})


def _json(obj: object, status: int = 200) -> Response:
    return Response(json.dumps(obj), status_code=status, media_type=_JSON_TYPE)


def _empty(status: int = 200) -> Response:
    return Response(status_code=status)


def _server_error() -> Response:
    return PlainTextResponse(_SERVER_ERROR, status_code=500, headers={"Connection": "close"})


# --------------------------------------------------------------------------------------------
# The ASGI app wrapper: refusal, prompt faults, lazy worker start
# --------------------------------------------------------------------------------------------


@dataclass
class _Captured:
    status: int = 500
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
        elif message["type"] == "http.response.body":
            self.body.extend(message.get("body", b""))


class _FakeComfyApp(Starlette):
    fake: FakeComfy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await super().__call__(scope, receive, send)
            return
        fake = self.fake
        fake._ensure_worker()
        path: str = scope["path"]
        if not path.startswith("/_fake"):
            mode = fake._refusal()
            if mode is not None:
                if scope["type"] == "websocket":
                    await _refuse_ws(mode, receive, send)
                    return
                if mode == "drop":
                    self._raise_unless_uvicorn(send)
                    return cast(None, DROPPED)
                await PlainTextResponse("503 Service Unavailable", 503)(scope, receive, send)
                return
            fault = None
            if scope["type"] == "http" and scope["method"] == "POST":
                fault = fake._take_prompt_fault() if path in ("/prompt", "/api/prompt") else None
            if fault is not None:
                if fault.process:
                    await super().__call__(scope, receive, _Captured().send)
                if fault.drop:
                    self._raise_unless_uvicorn(send)
                    return cast(None, DROPPED)
                response = Response(fault.body or b"", fault.status, media_type=fault.content_type)
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    @staticmethod
    def _raise_unless_uvicorn(send: Send) -> None:
        """uvicorn closes the socket, writing nothing, when an app returns a value; any other
        server gets the error a client would see."""
        if served_by_uvicorn(send):
            return
        raise httpx2.RemoteProtocolError(
            "Server disconnected without sending a response. (fake-comfy: dropped connection)"
        )


async def _refuse_ws(mode: RefuseMode, receive: Receive, send: Send) -> None:
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    if mode == "503":
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 503,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": b"503 Service Unavailable"})
        return
    # Accept, then return at once: uvicorn closes the TCP connection without a close frame.
    await send({"type": "websocket.accept"})


# --------------------------------------------------------------------------------------------
# Admin request bodies
# --------------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HangBody(_Strict):
    """Body of ``POST /_fake/hang``."""

    class_type: str | None = None


class RestartBody(_Strict):
    """Body of ``POST /_fake/restart``."""

    down_s: float = Field(default=0.0, ge=0)


class RefuseBody(_Strict):
    """Body of ``POST /_fake/refuse``."""

    on: bool = True
    mode: RefuseMode | None = None


class FailPromptBody(_Strict):
    """Body of ``POST /_fake/fail_next_prompt``."""

    status: int = Field(default=500, ge=100, le=599)
    body: Any = None
    process: bool = False
    drop: bool = False
    count: int = Field(default=1, ge=1)


class DeleteBody(_Strict):
    """Body of ``POST /_fake/silently_delete``."""

    prompt_id: str


class ConfigBody(_Strict):
    """Body of ``POST /_fake/config``; omitted fields are left alone."""

    models: dict[str, list[str]] | None = None
    broken_models: list[str] | None = None
    node_delay_s: float | None = Field(default=None, ge=0)
    step_delay_s: float | None = Field(default=None, ge=0)
    node_delays: dict[str, float] | None = None
    memory_limit_bytes: int | None = Field(default=None, ge=0)
    sampler_previews: bool | None = None
    stale_close_unregisters: bool | None = None
    refuse_mode: RefuseMode | None = None
    label: str | None = None


# --------------------------------------------------------------------------------------------
# The fake
# --------------------------------------------------------------------------------------------


class FakeComfy:
    """An in-memory ComfyUI. All state is guarded by one lock, so tests may inspect it (and
    inject faults) from another thread while the app is served in `serve_in_thread`."""

    def __init__(self, config: FakeComfyConfig | None = None) -> None:
        self.config = config if config is not None else FakeComfyConfig()
        self._lock = threading.RLock()
        cfg = self.config
        base = cfg.base_dir
        self._cleanup: weakref.finalize[Any, Any] | None = None
        if base is None and None in (cfg.output_dir, cfg.input_dir, cfg.temp_dir):
            base = Path(tempfile.mkdtemp(prefix="fake-comfy-"))
            self._cleanup = weakref.finalize(self, shutil.rmtree, base, ignore_errors=True)
        self._dirs: dict[str, Path] = {
            kind: (override or cast(Path, base) / kind).resolve()
            for kind, override in (
                ("output", cfg.output_dir),
                ("input", cfg.input_dir),
                ("temp", cfg.temp_dir),
            )
        }
        for path in self._dirs.values():
            path.mkdir(parents=True, exist_ok=True)
        if self.config.example_input and not (self._dirs["input"] / "example.png").exists():
            (self._dirs["input"] / "example.png").write_bytes(
                render_image("example", 64, 64, "png", 0, None)
            )
        # Server state (forgotten by restart()).
        self._number = 0
        self._seq = 0
        self._slot = 0
        self._queue: list[_Item] = []
        self._running: dict[int, _Item] = {}
        self._history: dict[str, dict[str, Any]] = {}
        self._cache: dict[str, _CacheEntry] = {}
        self._client_id: str | None = None
        self._last_node_id: str | None = None
        self._interrupt = False
        self._current: _Run | None = None
        # Sockets.
        self._sockets: dict[str, _Client] = {}
        self._live: set[_Client] = set()
        # Records and faults (kept across restarts).
        self._submitted: list[str] = []
        self._uploads: list[Upload] = []
        self._free_calls = 0
        self._refusing = False
        self._refuse_mode: RefuseMode | None = None
        self._down_until = 0.0
        self._prompt_faults: deque[PromptFault] = deque()
        self._arms: list[_Arm] = []
        self._hangs: list[_Hang] = []
        # Loop-bound machinery.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: asyncio.Task[None] | None = None
        self._current_task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._executors = self._make_executors()
        self._app = self._build_app()

    # -- public state -------------------------------------------------------------------------

    @property
    def app(self) -> Starlette:
        """The ASGI (Starlette) app, fault injection included."""
        return self._app

    @property
    def output_dir(self) -> Path:
        return self._dirs["output"]

    @property
    def input_dir(self) -> Path:
        return self._dirs["input"]

    @property
    def temp_dir(self) -> Path:
        return self._dirs["temp"]

    @property
    def submitted(self) -> list[str]:
        """Prompt ids of accepted (200) ``POST /prompt`` requests, in order (duplicates kept)."""
        with self._lock:
            return list(self._submitted)

    @property
    def history_ids(self) -> list[str]:
        """Ids in ``/history``, oldest first."""
        with self._lock:
            return list(self._history)

    @property
    def queue_ids(self) -> list[str]:
        """The running prompt (if any) then the pending ones in the order they will run."""
        with self._lock:
            running = [item.prompt_id for item in self._running.values()]
            return running + [item.prompt_id for item in sorted(self._queue)]

    @property
    def running_id(self) -> str | None:
        with self._lock:
            return next((item.prompt_id for item in self._running.values()), None)

    @property
    def uploads(self) -> list[Upload]:
        """Successful uploads, oldest first."""
        with self._lock:
            return list(self._uploads)

    @property
    def hung(self) -> list[HungNode]:
        """Nodes currently blocked by `hang_next_node`."""
        with self._lock:
            return [hang.info for hang in self._hangs if not hang.released]

    @property
    def socket_ids(self) -> list[str]:
        """clientIds that currently receive events."""
        with self._lock:
            return list(self._sockets)

    @property
    def free_calls(self) -> int:
        with self._lock:
            return self._free_calls

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        """A deep copy of one history entry (None if absent)."""
        with self._lock:
            entry = self._history.get(prompt_id)
            return json.loads(json.dumps(entry)) if entry is not None else None

    def state(self) -> dict[str, Any]:
        """A JSON-friendly snapshot (also ``GET /_fake/state``)."""
        with self._lock:
            return {
                "submitted": list(self._submitted),
                "history_ids": list(self._history),
                "queue_ids": self.queue_ids,
                "running_id": self.running_id,
                "uploads": [vars(u) for u in self._uploads],
                "hung": [vars(h) for h in self.hung],
                "sockets": list(self._sockets),
                "refusing": self._refusal() is not None,
                "number": self._number,
                "free_calls": self._free_calls,
                "pending_prompt_faults": len(self._prompt_faults),
                "armed_hangs": [arm.class_type for arm in self._arms],
            }

    # -- fault injection ----------------------------------------------------------------------

    def drop_sockets(self) -> None:
        """Close every WebSocket abruptly (TCP close, no close frame: code 1006 client-side)."""
        self._in_loop(self._drop_all)

    def hang_next_node(self, class_type: str | None = None) -> None:
        """Make the next executing node (of `class_type`, or any) block after its ``executing``
        event until `release`; an interrupt or a restart still ends it. Arms accumulate."""
        with self._lock:
            self._arms.append(_Arm(class_type))

    def release(self) -> None:
        """Let every currently hung node continue (armed hangs stay armed)."""
        with self._lock:
            for hang in self._hangs:
                hang.released = True

    def restart(self, down_s: float = 0.0) -> None:
        """Simulate a server restart: history, queue, cache and counter are forgotten, the
        running prompt is abandoned without another event, sockets are dropped, the temp folder
        is wiped; output and input files (and so the file counters) persist. For `down_s` seconds
        afterwards every request is refused (`config.refuse_mode`)."""
        with self._lock:
            self._abandon_current()
            self._queue.clear()
            self._running.clear()
            self._history.clear()
            self._cache.clear()
            self._number = 0
            self._client_id = None
            self._last_node_id = None
            self._interrupt = False
            for hang in self._hangs:
                hang.released = True
            self._down_until = time.monotonic() + down_s if down_s > 0 else 0.0
            temp = self._dirs["temp"]
            shutil.rmtree(temp, ignore_errors=True)
            temp.mkdir(parents=True, exist_ok=True)
        self._in_loop(self._after_restart)

    def refuse(self, on: bool = True, *, mode: RefuseMode | None = None) -> None:
        """Refuse every request and WebSocket (except ``/_fake/*``); see the module docstring."""
        with self._lock:
            self._refusing = on
            self._refuse_mode = mode
            if not on:
                self._down_until = 0.0

    def fail_next_prompt_http(
        self,
        status: int = 500,
        body: str | bytes | Mapping[str, Any] | list[Any] | None = None,
        *,
        process: bool = False,
        drop: bool = False,
        count: int = 1,
    ) -> None:
        """The next `count` ``POST /prompt`` requests get `status` + `body` (default: aiohttp's
        500 text for a 500, else empty), or a dropped connection with `drop`. With `process` the
        prompt is really validated and queued first, only the answer is replaced."""
        if not 100 <= status <= 599 or count < 1:
            raise ValueError("status must be an HTTP status and count >= 1")
        content_type = "text/plain; charset=utf-8"
        data: bytes | None
        if body is None:
            data = _SERVER_ERROR.encode() if status == 500 else None
        elif isinstance(body, bytes | str):
            data = body.encode() if isinstance(body, str) else body
            if data.lstrip()[:1] in (b"{", b"["):
                content_type = _JSON_TYPE
        else:
            data = json.dumps(body).encode()
            content_type = _JSON_TYPE
        fault = PromptFault(status, data, content_type, process, drop)
        with self._lock:
            self._prompt_faults.extend([fault] * count)

    def silently_delete(self, prompt_id: str) -> bool:
        """Make a prompt vanish without any event: from the pending queue, from the running slot
        (abandoned: no more events, no history) and from the history. True if it was found."""
        found = False
        with self._lock:
            kept = [item for item in self._queue if item.prompt_id != prompt_id]
            if len(kept) != len(self._queue):
                found = True
                self._queue = kept
                heapq.heapify(self._queue)
            if self._current is not None and self._current.prompt_id == prompt_id:
                found = True
                self._abandon_current()
                self._last_node_id = None
            if self._history.pop(prompt_id, None) is not None:
                found = True
        self._in_loop(self._cancel_current_task)
        return found

    def reset_faults(self) -> None:
        """Stop refusing, forget queued prompt faults and armed hangs, release hung nodes."""
        with self._lock:
            self._refusing = False
            self._refuse_mode = None
            self._down_until = 0.0
            self._prompt_faults.clear()
            self._arms.clear()
            for hang in self._hangs:
                hang.released = True

    def update_config(self, update: ConfigBody) -> None:
        """Apply a partial configuration change (what ``POST /_fake/config`` does)."""
        with self._lock:
            cfg = self.config
            if update.models is not None:
                cfg.models = {k: list(v) for k, v in update.models.items()}
            if update.broken_models is not None:
                cfg.broken_models = set(update.broken_models)
            if update.node_delay_s is not None:
                cfg.node_delay_s = update.node_delay_s
            if update.step_delay_s is not None:
                cfg.step_delay_s = update.step_delay_s
            if update.node_delays is not None:
                cfg.node_delays = dict(update.node_delays)
            if update.memory_limit_bytes is not None:
                cfg.memory_limit_bytes = update.memory_limit_bytes
            if update.sampler_previews is not None:
                cfg.sampler_previews = update.sampler_previews
            if update.stale_close_unregisters is not None:
                cfg.stale_close_unregisters = update.stale_close_unregisters
            if update.refuse_mode is not None:
                cfg.refuse_mode = update.refuse_mode
            if update.label is not None:
                cfg.label = update.label or None

    # -- lifecycle ----------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop the queue worker (the lifespan does this when served)."""
        worker, self._worker = self._worker, None
        current, self._current_task = self._current_task, None
        for task in (current, worker):
            if task is not None and not task.done():
                task.cancel()
        for task in (current, worker):
            if task is not None and task.get_loop() is asyncio.get_running_loop():
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        with self._lock:
            clients = list(self._live)
        for client in clients:
            client.drop()

    async def __aenter__(self) -> FakeComfy:
        self._ensure_worker()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def cleanup(self) -> None:
        """Remove the temporary base folder if the fake created one (no ``base_dir``)."""
        if self._cleanup is not None:
            self._cleanup()

    # -- loop plumbing ------------------------------------------------------------------------

    def _ensure_worker(self) -> None:
        loop = asyncio.get_running_loop()
        if self._worker is not None and not self._worker.done() and self._loop is loop:
            return
        self._loop = loop
        self._wake = asyncio.Event()
        self._worker = loop.create_task(self._worker_main(), name="fake-comfy-worker")

    def _in_loop(self, fn: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            fn()
            return
        with contextlib.suppress(RuntimeError):  # the loop stopped meanwhile
            loop.call_soon_threadsafe(fn)

    def _notify(self) -> None:
        wake = self._wake
        if wake is not None:
            self._in_loop(wake.set)

    def _drop_all(self) -> None:
        with self._lock:
            clients = list(self._live)
        for client in clients:
            client.drop()

    def _cancel_current_task(self) -> None:
        task = self._current_task
        run = self._current
        if task is not None and not task.done() and (run is None or run.abandoned):
            task.cancel()

    def _after_restart(self) -> None:
        self._cancel_current_task()
        self._drop_all()

    def _abandon_current(self) -> None:
        """Lock held."""
        run = self._current
        if run is not None:
            run.abandoned = True
            self._running.pop(run.slot, None)
        for hang in self._hangs:
            hang.released = True

    def _refusal(self) -> RefuseMode | None:
        with self._lock:
            if self._refusing:
                return self._refuse_mode or self.config.refuse_mode
            if self._down_until and time.monotonic() < self._down_until:
                return self.config.refuse_mode
            return None

    def _take_prompt_fault(self) -> PromptFault | None:
        with self._lock:
            return self._prompt_faults.popleft() if self._prompt_faults else None

    # -- sending ------------------------------------------------------------------------------

    def _queue_info(self) -> dict[str, Any]:
        with self._lock:
            return {"exec_info": {"queue_remaining": len(self._queue) + len(self._running)}}

    def _targets(self, sid: str | None) -> list[_Client]:
        with self._lock:
            if sid is None:
                return list(self._sockets.values())
            client = self._sockets.get(sid)
            return [client] if client is not None else []

    def _send(self, event: str, data: Mapping[str, Any], sid: str | None) -> None:
        text = _event(event, data)
        for client in self._targets(sid):
            client.push(text)

    def _broadcast_status(self) -> None:
        self._send("status", {"status": self._queue_info()}, None)

    def _alive(self, run: _Run) -> None:
        with self._lock:
            if run.abandoned:
                raise _Abandoned

    def _emit(self, run: _Run, event: str, data: Mapping[str, Any]) -> None:
        """A prompt event for the prompt's client (all sockets when it has none)."""
        self._alive(run)
        self._send(event, data, run.client_id)

    def _message(
        self, run: _Run, event: str, data: dict[str, Any], broadcast: bool = False
    ) -> None:
        """PromptExecutor.add_message: recorded for history, sent to the client if any."""
        self._alive(run)
        data = {**data, "timestamp": _now_ms()}
        run.messages.append([event, data])
        if run.client_id is not None or broadcast:
            self._send(event, data, run.client_id)

    def _send_progress_state(self, run: _Run) -> None:
        pid = run.prompt_id
        nodes = {
            node_id: {
                "value": st.value,
                "max": st.max,
                "state": st.state,
                "node_id": node_id,
                "prompt_id": pid,
                "display_node_id": node_id,
                "parent_node_id": None,
                "real_node_id": node_id,
            }
            for node_id, st in run.progress.items()
        }
        self._emit(run, "progress_state", {"prompt_id": pid, "nodes": nodes})

    def _supports_metadata(self, sid: str | None) -> bool:
        if sid is None:
            return False
        with self._lock:
            client = self._sockets.get(sid)
            return client is not None and client.supports_metadata

    async def _tick(
        self, ctx: _Ctx, value: int, total: int, preview: tuple[str, bytes] | None = None
    ) -> None:
        """The progress hook: interrupt check, progress_state, previews and progress."""
        run = ctx.run
        self._check_interrupt(run)
        progress = run.progress[ctx.node_id]
        progress.value, progress.max = value, total
        self._send_progress_state(run)
        sid = run.client_id
        metadata = preview is not None and self._supports_metadata(sid)
        if preview is not None and metadata:
            fmt, data = preview
            meta = json.dumps(
                {
                    "node_id": ctx.node_id,
                    "prompt_id": run.prompt_id,
                    "display_node_id": ctx.node_id,
                    "parent_node_id": None,
                    "real_node_id": ctx.node_id,
                    "image_type": "image/png" if fmt == "PNG" else "image/jpeg",
                }
            ).encode()
            self._push_bytes(run, struct.pack(">II", 4, len(meta)) + meta + data)
        progress_data = {"value": value, "max": total, "prompt_id": run.prompt_id}
        self._emit(run, "progress", {**progress_data, "node": ctx.node_id})
        if preview is not None and not metadata:
            fmt, data = preview
            self._push_bytes(run, struct.pack(">II", 1, 2 if fmt == "PNG" else 1) + data)

    def _push_bytes(self, run: _Run, payload: bytes) -> None:
        self._alive(run)
        for client in self._targets(run.client_id):
            client.push(payload)

    # -- worker -------------------------------------------------------------------------------

    async def _worker_main(self) -> None:
        while True:
            run = await self._dequeue()
            task = asyncio.create_task(self._execute(run), name=f"fake-comfy-{run.prompt_id}")
            self._current_task = task
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
            except Exception:  # pragma: no cover - a bug in the fake; keep serving
                _log.exception("fake-comfy: prompt %s crashed", run.prompt_id)
                with self._lock:
                    self._running.pop(run.slot, None)
            finally:
                self._current_task = None
                with self._lock:
                    if self._current is run:
                        self._current = None

    async def _dequeue(self) -> _Run:
        wake = self._wake
        assert wake is not None
        while True:
            wake.clear()
            with self._lock:
                if self._queue:
                    item = heapq.heappop(self._queue)
                    slot = self._slot
                    self._slot += 1
                    self._running[slot] = item
                    client_id = item.extra_data.get("client_id")
                    run = _Run(item, slot, client_id if isinstance(client_id, str) else None)
                    self._current = run
                    break
            await wake.wait()
        self._broadcast_status()
        return run

    def _check_interrupt(self, run: _Run) -> None:
        """comfy.model_management.throw_exception_if_processing_interrupted (lock taken)."""
        with self._lock:
            if run.abandoned:
                raise _Abandoned
            if self._interrupt:
                self._interrupt = False
                raise _Interrupted

    async def _execute(self, run: _Run) -> None:
        try:
            await self._execute_prompt(run)
        except _Abandoned:
            return

    async def _execute_prompt(self, run: _Run) -> None:
        item = run.item
        prompt = item.prompt
        pid = item.prompt_id
        with self._lock:
            self._interrupt = False
            self._client_id = run.client_id
        self._message(run, "execution_start", {"prompt_id": pid})
        catalogue = self._catalogue()
        signatures = await asyncio.to_thread(self._signatures, prompt)
        with self._lock:
            live = set(signatures.values())
            for key in [k for k in self._cache if k not in live]:
                del self._cache[key]
            cached = {n: self._cache[s] for n, s in signatures.items() if s in self._cache}
        self._message(run, "execution_cached", {"nodes": list(cached), "prompt_id": pid})

        def is_output(node_id: str) -> bool:
            spec = catalogue.get(str(prompt[node_id].get("class_type")))
            return spec is not None and spec.output_node

        plan = _ExecList(prompt, lambda n: n in cached, is_output)
        for output in item.outputs:
            plan.add_node(output)
        results: dict[str, tuple[object, ...]] = {n: e.outputs for n, e in cached.items()}
        ui_outputs: dict[str, dict[str, Any]] = {}
        executed: list[str] = []
        error: _NodeFailure | None = None
        interrupted: str | None = None
        while not plan.empty():
            node_id = plan.stage()
            if node_id is None:
                blamed = plan.first_pending()
                error = _NodeFailure(
                    blamed, "graph.DependencyCycleError", "Dependency cycle detected", [], {}
                )
                break
            entry = cached.get(node_id)
            if entry is not None:
                if run.client_id is not None:
                    self._emit(
                        run,
                        "executed",
                        {
                            "node": node_id,
                            "display_node": node_id,
                            "output": entry.ui,
                            "prompt_id": pid,
                        },
                    )
                if entry.ui is not None:
                    ui_outputs[node_id] = entry.ui
                progress = run.progress.setdefault(node_id, _Progress("pending", 0, 1))
                progress.state, progress.value = "finished", progress.max
                self._send_progress_state(run)
            else:
                try:
                    ui = await self._run_node(run, node_id, catalogue, signatures, results)
                except _Interrupted:
                    interrupted = node_id
                    break
                except _NodeFailure as failure:
                    error = failure
                    break
                if ui is not None:
                    ui_outputs[node_id] = ui
                executed.append(node_id)
            plan.complete(node_id)

        done = list(reversed(executed))
        if interrupted is not None:
            self._message(
                run,
                "execution_interrupted",
                {
                    "prompt_id": pid,
                    "node_id": interrupted,
                    "node_type": prompt[interrupted]["class_type"],
                    "executed": done,
                },
                broadcast=True,
            )
        elif error is not None:
            self._message(
                run,
                "execution_error",
                {
                    "prompt_id": pid,
                    "node_id": error.node_id,
                    "node_type": prompt[error.node_id]["class_type"],
                    "executed": done,
                    "exception_message": error.message,
                    "exception_type": error.exception_type,
                    "traceback": error.traceback,
                    "current_inputs": error.current_inputs,
                    "current_outputs": list(reversed(list(prompt))),
                },
            )
        else:
            self._message(run, "execution_success", {"prompt_id": pid})
        success = interrupted is None and error is None
        meta = {
            node_id: {
                "node_id": node_id,
                "display_node": node_id,
                "parent_node": None,
                "real_node_id": node_id,
            }
            for node_id in ui_outputs
        }
        with self._lock:
            if run.abandoned:
                raise _Abandoned
            self._last_node_id = None
            self._running.pop(run.slot, None)
            while len(self._history) > self.config.max_history:
                self._history.pop(next(iter(self._history)))
            self._history[pid] = {
                "prompt": item.as_list(),
                "outputs": ui_outputs,
                "status": {
                    "status_str": "success" if success else "error",
                    "completed": success,
                    "messages": run.messages,
                },
                "meta": meta,
            }
        self._broadcast_status()
        if run.client_id is not None:
            self._send("executing", {"node": None, "prompt_id": pid}, run.client_id)

    async def _run_node(
        self,
        run: _Run,
        node_id: str,
        catalogue: dict[str, _Spec],
        signatures: dict[str, str],
        results: dict[str, tuple[object, ...]],
    ) -> dict[str, Any] | None:
        node = run.item.prompt[node_id]
        class_type = str(node["class_type"])
        spec = catalogue[class_type]
        run.progress[node_id] = _Progress("running", 0.0, 1.0)
        self._send_progress_state(run)
        inputs: dict[str, Any] = {}
        for _category, name, _ in spec.input_order():
            if name not in node["inputs"]:
                continue
            value = node["inputs"][name]
            if _is_link(value):
                source = results.get(value[0])
                index = int(value[1])
                if source is None or not 0 <= index < len(source):
                    continue
                value = source[index]
            inputs[name] = value
        if run.client_id is not None:
            with self._lock:
                self._last_node_id = node_id
            self._emit(
                run,
                "executing",
                {"node": node_id, "display_node": node_id, "prompt_id": run.prompt_id},
            )
        await self._maybe_hang(run, node_id, class_type)
        self._check_interrupt(run)
        delay = self.config.node_delays.get(class_type, self.config.node_delay_s)
        if delay > 0:
            await asyncio.sleep(delay)
        ctx = _Ctx(run, node_id, class_type)
        try:
            outputs, ui = await self._executors[class_type](ctx, inputs)
        except (_Interrupted, _Abandoned, _NodeFailure):
            raise
        except Exception as exc:
            tail: tuple[str, ...] = _TB_EMPTY_IMAGE if class_type == "EmptyImage" else ()
            if isinstance(exc, _SafetensorError):
                tail = _TB_LOADER
            elif not tail:
                tail = (f'  File "ComfyUI/nodes.py", line 1, in {class_type}\n',)
            raise _NodeFailure(
                node_id,
                _type_name(exc),
                f"{exc}\n",
                [*_TB_EXECUTE, *tail],
                {k: [_format_input(v)] for k, v in inputs.items()},
            ) from exc
        if ui:
            if run.client_id is not None:
                self._emit(
                    run,
                    "executed",
                    {
                        "node": node_id,
                        "display_node": node_id,
                        "output": ui,
                        "prompt_id": run.prompt_id,
                    },
                )
        else:
            ui = None
        results[node_id] = outputs
        with self._lock:
            if not run.abandoned:
                self._cache[signatures[node_id]] = _CacheEntry(outputs, ui)
        progress = run.progress[node_id]
        progress.state, progress.value = "finished", progress.max
        self._send_progress_state(run)
        return ui

    async def _maybe_hang(self, run: _Run, node_id: str, class_type: str) -> None:
        with self._lock:
            arm = next(
                (a for a in self._arms if a.class_type is None or a.class_type == class_type), None
            )
            if arm is None:
                return
            self._arms.remove(arm)
            hang = _Hang(HungNode(run.prompt_id, node_id, class_type))
            self._hangs.append(hang)
        try:
            while True:
                self._check_interrupt(run)
                with self._lock:
                    if hang.released:
                        return
                await asyncio.sleep(_HANG_POLL_S)
        finally:
            with self._lock:
                self._hangs.remove(hang)

    # -- caching ------------------------------------------------------------------------------

    def _is_changed(self, class_type: object, inputs: Mapping[str, Any]) -> str | None:
        if class_type == "SaveImageWebsocket":
            return uuid.uuid4().hex  # IS_CHANGED returns time.time(): never cached
        if class_type == "LoadImage":
            image = inputs.get("image")
            if isinstance(image, str):
                path = self._annotated_path(image, "input")
                if path.is_file():
                    return hashlib.sha256(path.read_bytes()).hexdigest()
            return "missing"
        return None

    def _signatures(self, prompt: dict[str, Any]) -> dict[str, str]:
        """The classic cache's input signature of every node (class, IS_CHANGED, inputs with
        links replaced by their source's signature)."""
        memo: dict[str, str] = {}

        def sig(node_id: str, visiting: frozenset[str]) -> str:
            if node_id in memo:
                return memo[node_id]
            node = prompt.get(node_id)
            if not isinstance(node, dict) or node_id in visiting:
                return f"<missing {node_id}>"
            inputs = node.get("inputs")
            if not isinstance(inputs, dict):
                inputs = {}
            class_type = node.get("class_type")
            parts: list[Any] = [class_type, self._is_changed(class_type, inputs)]
            for key in sorted(inputs):
                value = inputs[key]
                if _is_link(value):
                    parts.append([key, "link", sig(value[0], visiting | {node_id}), value[1]])
                else:
                    parts.append([key, "value", value])
            blob = json.dumps(parts, sort_keys=True, default=repr).encode()
            memo[node_id] = hashlib.sha256(blob).hexdigest()
            return memo[node_id]

        return {node_id: sig(node_id, frozenset()) for node_id in prompt}

    # -- validation (execution.validate_prompt) -----------------------------------------------

    def _catalogue(self) -> dict[str, _Spec]:
        with self._lock:
            models = self.config.models
            ckpts = sorted(models.get("checkpoints", []))
            encoders = sorted(models.get("text_encoders", []))
        return _build_catalogue(ckpts, encoders, self._input_images())

    def _input_images(self) -> list[str]:
        folder = self._dirs["input"]
        names = [p.name for p in folder.iterdir() if p.is_file()]
        return sorted(n for n in names if (mimetypes.guess_type(n)[0] or "").startswith("image/"))

    def _validate_prompt(
        self, prompt: object, partial: object
    ) -> tuple[bool, dict[str, Any] | None, list[str], dict[str, Any]]:
        if not isinstance(prompt, dict):
            raise TypeError(f"prompt must be a dict, not {type(prompt).__name__}")
        catalogue = self._catalogue()
        outputs: list[str] = []
        for node_id, node in prompt.items():
            if not isinstance(node, dict):
                raise TypeError(f"node {node_id!r} must be a dict")
            if "class_type" not in node:
                return (
                    False,
                    {
                        "type": "invalid_prompt",
                        "message": "Cannot execute because a node is missing the class_type "
                        "property.",
                        "details": f"Node ID '#{node_id}'",
                        "extra_info": {},
                    },
                    [],
                    {},
                )
            class_type = node["class_type"]
            spec = catalogue.get(class_type) if isinstance(class_type, str) else None
            if spec is None:
                return (
                    False,
                    {
                        "type": "invalid_prompt",
                        "message": f"Cannot execute because node {class_type} does not exist.",
                        "details": f"Node ID '#{node_id}'",
                        "extra_info": {},
                    },
                    [],
                    {},
                )
            if spec.output_node and (
                partial is None or (isinstance(partial, list) and node_id in partial)
            ):
                outputs.append(node_id)
        if not outputs:
            error = {
                "type": "prompt_no_outputs",
                "message": "Prompt has no outputs",
                "details": "",
                "extra_info": {},
            }
            return False, error, [], {}

        good: list[str] = []
        failed: list[tuple[str, list[dict[str, Any]]]] = []
        node_errors: dict[str, Any] = {}
        validated: dict[str, tuple[bool, list[dict[str, Any]]]] = {}
        for output in reversed(outputs):
            try:
                valid, reasons = self._validate_inputs(prompt, output, validated, catalogue, set())
            except Exception as exc:
                valid = False
                trace = list(_TB_VALIDATE_KEYERROR) if isinstance(exc, KeyError) else []
                reasons = [
                    {
                        "type": "exception_during_validation",
                        "message": "Exception when validating node",
                        "details": str(exc),
                        "extra_info": {"exception_type": _type_name(exc), "traceback": trace},
                    }
                ]
                validated[output] = (False, reasons)
            if valid:
                good.append(output)
                continue
            failed.append((output, reasons))
            for node_id, (ok, node_reasons) in validated.items():
                if ok or not node_reasons:
                    continue
                if node_id not in node_errors:
                    node_errors[node_id] = {
                        "errors": node_reasons,
                        "dependent_outputs": [],
                        "class_type": prompt[node_id]["class_type"],
                    }
                node_errors[node_id]["dependent_outputs"].append(output)
        if not good:
            details = "\n".join(
                f"{reason['message']}: {reason['details']}"
                for _, reasons in failed
                for reason in reasons
            )
            error = {
                "type": "prompt_outputs_failed_validation",
                "message": "Prompt outputs failed validation",
                "details": details,
                "extra_info": {},
            }
            return False, error, [], node_errors
        return True, None, good, node_errors

    def _validate_inputs(
        self,
        prompt: dict[str, Any],
        node_id: Any,
        validated: dict[str, tuple[bool, list[dict[str, Any]]]],
        catalogue: dict[str, _Spec],
        visiting: set[str],
    ) -> tuple[bool, list[dict[str, Any]]]:
        if node_id in validated:
            return validated[node_id]
        if node_id in visiting:
            raise RecursionError("maximum recursion depth exceeded while calling a Python object")
        node = prompt[node_id]
        inputs = node["inputs"]
        spec = catalogue[node["class_type"]]
        errors: list[dict[str, Any]] = []
        valid = True
        for category, name, declared in spec.input_order():
            input_type = declared[0]
            extra: dict[str, Any] = declared[1] if len(declared) > 1 else {}
            info = [input_type, extra]
            if name not in inputs:
                if category == "required":
                    errors.append(
                        {
                            "type": "required_input_missing",
                            "message": "Required input is missing",
                            "details": name,
                            "extra_info": {"input_name": name},
                        }
                    )
                continue
            value = inputs[name]
            if isinstance(value, list):
                if len(value) != 2:
                    errors.append(
                        {
                            "type": "bad_linked_input",
                            "message": "Bad linked input, must be a length-2 list of "
                            "[node_id, slot_index]",
                            "details": name,
                            "extra_info": {
                                "input_name": name,
                                "input_config": info,
                                "received_value": value,
                            },
                        }
                    )
                    continue
                source_id = value[0]
                source_class = prompt[source_id]["class_type"]
                received = catalogue[source_class].outputs[value[1]]
                if not _types_match(received, input_type):
                    errors.append(
                        {
                            "type": "return_type_mismatch",
                            "message": "Return type mismatch between linked nodes",
                            "details": f"{name}, received_type({received}) mismatch "
                            f"input_type({input_type})",
                            "extra_info": {
                                "input_name": name,
                                "input_config": info,
                                "received_type": received,
                                "linked_node": value,
                            },
                        }
                    )
                    continue
                try:
                    inner = self._validate_inputs(
                        prompt, source_id, validated, catalogue, visiting | {node_id}
                    )
                    if inner[0] is False:
                        valid = False
                except Exception as exc:
                    valid = False
                    validated[source_id] = (
                        False,
                        [
                            {
                                "type": "exception_during_inner_validation",
                                "message": "Exception when validating inner node",
                                "details": str(exc),
                                "extra_info": {
                                    "input_name": name,
                                    "input_config": info,
                                    "exception_message": str(exc),
                                    "exception_type": _type_name(exc),
                                    "traceback": [],
                                    "linked_node": value,
                                },
                            }
                        ],
                    )
                continue
            if isinstance(value, dict) and "__value__" in value:
                value = value["__value__"]
                inputs[name] = value
            try:
                if input_type == "INT":
                    value = int(value)
                elif input_type == "FLOAT":
                    value = float(value)
                elif input_type == "STRING":
                    value = str(value)
                elif input_type == "BOOLEAN":
                    value = bool(value)
                if input_type in ("INT", "FLOAT", "STRING", "BOOLEAN"):
                    inputs[name] = value
            except Exception as exc:
                errors.append(
                    {
                        "type": "invalid_input_type",
                        "message": f"Failed to convert an input value to a {input_type} value",
                        "details": f"{name}, {value}, {exc}",
                        "extra_info": {
                            "input_name": name,
                            "input_config": info,
                            "received_value": value,
                            "exception_message": str(exc),
                        },
                    }
                )
                continue
            if name in spec.validate_args:
                continue
            if "min" in extra and value < extra["min"]:
                errors.append(
                    {
                        "type": "value_smaller_than_min",
                        "message": f"Value {value} smaller than min of {extra['min']}",
                        "details": name,
                        "extra_info": {
                            "input_name": name,
                            "input_config": info,
                            "received_value": value,
                        },
                    }
                )
                continue
            if "max" in extra and value > extra["max"]:
                errors.append(
                    {
                        "type": "value_bigger_than_max",
                        "message": f"Value {value} bigger than max of {extra['max']}",
                        "details": name,
                        "extra_info": {
                            "input_name": name,
                            "input_config": info,
                            "received_value": value,
                        },
                    }
                )
                continue
            if isinstance(input_type, list) or input_type == "COMBO":
                options = extra.get("options", []) if input_type == "COMBO" else input_type
                if value not in options:
                    config: list[Any] | None = info
                    listing = str(options)
                    if len(options) > 20:
                        listing = f"(list of length {len(options)})"
                        config = None
                    errors.append(
                        {
                            "type": "value_not_in_list",
                            "message": "Value not in list",
                            "details": f"{name}: '{value}' not in {listing}",
                            "extra_info": {
                                "input_name": name,
                                "input_config": config,
                                "received_value": value,
                            },
                        }
                    )
                    continue
        if spec.name == "LoadImage" and isinstance(inputs.get("image"), str):
            image = inputs["image"]
            if not self._annotated_path(image, "input").exists():
                errors.append(
                    {
                        "type": "custom_validation_failed",
                        "message": "Custom validation failed for node",
                        "details": f"image - Invalid image file: {image}",
                        "extra_info": {"input_name": "image"},
                    }
                )
        result = (False, errors) if errors or not valid else (True, [])
        validated[node_id] = result
        return result

    # -- files --------------------------------------------------------------------------------

    def _annotated(self, name: str) -> tuple[str, Path | None]:
        for kind in ("output", "input", "temp"):
            suffix = f" [{kind}]"
            if name.endswith(suffix):
                return name[: -len(suffix)], self._dirs[kind]
        return name, None

    def _annotated_path(self, name: str, default: str) -> Path:
        filename, folder = self._annotated(name)
        return (folder or self._dirs[default]) / filename

    @staticmethod
    def _save_path(
        prefix: str, output_dir: Path, width: int, height: int
    ) -> tuple[Path, str, int, str]:
        """folder_paths.get_save_image_path: (folder, filename, counter, subfolder)."""
        if "%" in prefix:
            now = time.localtime()
            for key, value in (
                ("%width%", width),
                ("%height%", height),
                ("%year%", now.tm_year),
                ("%month%", f"{now.tm_mon:02}"),
                ("%day%", f"{now.tm_mday:02}"),
                ("%hour%", f"{now.tm_hour:02}"),
                ("%minute%", f"{now.tm_min:02}"),
                ("%second%", f"{now.tm_sec:02}"),
            ):
                prefix = prefix.replace(key, str(value))
        normalized = os.path.normpath(prefix)
        subfolder, _, filename = normalized.rpartition("/")
        if not subfolder and normalized.startswith("/"):
            subfolder = "/"
        root = str(output_dir)
        folder = (output_dir / subfolder).resolve()
        common = os.path.commonpath((root, str(folder)))
        if common != root:
            raise Exception(  # the very exception ComfyUI raises
                "**** ERROR: Saving image outside the output folder is not allowed."
                f"\n full_output_folder: {folder}"
                f"\n         output_dir: {root}"
                f"\n         commonpath: {common}"
            )
        folder.mkdir(parents=True, exist_ok=True)
        prefix_len = len(filename)
        numbers: list[int] = []
        for entry in folder.iterdir():
            name = entry.name
            head = name[: prefix_len + 1]
            if os.path.normcase(head[:-1]) != os.path.normcase(filename) or head[-1:] != "_":
                continue
            try:
                numbers.append(int(name[prefix_len + 1 :].split("_")[0]))
            except ValueError:
                numbers.append(0)
        counter = max(numbers) + 1 if numbers else 1
        return folder, filename, counter, subfolder

    def _png_metadata(self, run: _Run) -> PngInfo:
        info = PngInfo()
        info.add_text("prompt", json.dumps(run.item.prompt))
        extra = run.item.extra_data.get("extra_pnginfo")
        if isinstance(extra, dict):
            for key, value in extra.items():
                info.add_text(str(key), json.dumps(value))
        return info

    # -- node executors -----------------------------------------------------------------------

    def _make_executors(self) -> dict[str, _Executor]:
        return {
            "CheckpointLoaderSimple": self._x_checkpoint,
            "ImageOnlyCheckpointLoader": self._x_image_only_checkpoint,
            "TripleCLIPLoader": self._x_clip_loader,
            "CLIPLoader": self._x_clip_loader,
            "DualCLIPLoader": self._x_clip_loader,
            "CLIPTextEncode": self._x_clip_text_encode,
            "EmptyLatentImage": self._x_empty_latent,
            "EmptySD3LatentImage": self._x_empty_latent,
            "KSampler": self._x_ksampler,
            "KSamplerAdvanced": self._x_ksampler_advanced,
            "ModelSamplingSD3": self._x_model_patch,
            "VideoLinearCFGGuidance": self._x_model_patch,
            "VAEDecode": self._x_vae_decode,
            "SaveImage": self._x_save_image,
            "PreviewImage": self._x_preview_image,
            "LoadImage": self._x_load_image,
            "SVD_img2vid_Conditioning": self._x_svd_conditioning,
            "SaveAnimatedWEBP": self._x_save_webp,
            "SaveAnimatedPNG": self._x_save_apng,
            "EmptyImage": self._x_empty_image,
            "ImageBlur": self._x_image_blur,
            "ImageSharpen": self._x_image_sharpen,
            "ImageScale": self._x_image_scale,
            "ImageInvert": self._x_image_invert,
            "ImageBatch": self._x_image_batch,
            "SaveImageWebsocket": self._x_save_websocket,
            "CreateVideo": self._x_create_video,
            "SaveVideo": self._x_save_video,
            "SaveWEBM": self._x_save_webm,
        }

    def _load_model(self, folder: str, name: object) -> str:
        with self._lock:
            available = set(self.config.models.get(folder, []))
            broken = name in self.config.broken_models
        if not isinstance(name, str) or name not in available:
            raise FileNotFoundError(f"Model in folder '{folder}' with filename '{name}' not found.")
        if broken:
            raise _SafetensorError("Error while deserializing header: header too small")
        return name

    def _limit(self) -> int:
        return self.config.memory_limit_bytes

    async def _x_checkpoint(self, ctx: _Ctx, i: dict[str, Any]) -> _Result:
        name = self._load_model("checkpoints", i.get("ckpt_name"))
        return (_Handle("MODEL", name), _Handle("CLIP", name), _Handle("VAE", name)), None

    async def _x_image_only_checkpoint(self, ctx: _Ctx, i: dict[str, Any]) -> _Result:
        name = self._load_model("checkpoints", i.get("ckpt_name"))
        return (_Handle("MODEL", name), _Handle("CLIP_VISION", name), _Handle("VAE", name)), None

    async def _x_clip_loader(self, ctx: _Ctx, i: dict[str, Any]) -> _Result:
        keys = [k for k in ("clip_name", "clip_name1", "clip_name2", "clip_name3") if k in i]
        names = [self._load_model("text_encoders", i[k]) for k in keys]
        return (_Handle("CLIP", "+".join(names)),), None

    async def _x_clip_text_encode(self, ctx: _Ctx, i: dict[str, Any]) -> _Result:
        clip = i.get("clip")
        if not isinstance(clip, _Handle) or clip.kind != "CLIP":
            raise RuntimeError(
                "ERROR: clip input is invalid: None\n\nIf the clip is from a checkpoint loader "
                "node your checkpoint does not contain a valid clip or text encoder model."
            )
        return (_Cond(str(i.get("text", ""))),), None

    async def _x_empty_latent(self, ctx: _Ctx, i: dict[str, Any]) -> _Result:
        return (_Latent(int(i["width"]), int(i["height"]), int(i.get("batch_size", 1))),), None

    async def _x_model_patch(self, ctx: _Ctx, i: dict[str, Any]) -> _Result:
        model = _need(i.get("model"), _Handle, "clone")
        patch = ctx.class_type
        return (replace(model, patches=(*model.patches, patch)),), None

    async def _sample(self, ctx: _Ctx, total: int, text: str, seed: int, latent: _Latent) -> None:
        previews = self.config.sampler_previews
        width, height = max(8, latent.width // 8), max(8, latent.height // 8)
        for step in range(1, total + 1):
            delay = self.config.step_delay_s
            if delay > 0:
                await asyncio.sleep(delay)
            preview: tuple[str, bytes] | None = None
            if previews:
                data = await asyncio.to_thread(
                    render_image, text, width, height, "jpeg", seed + step, None
                )
                preview = ("JPEG", data)
            await self._tick(ctx, step, total, preview)

    async def _x_ksampler(self, ctx: _Ctx, i: dict[str, Any]) -> _Result:
        _need(i.get("model"), _Handle, "model_options")
        positive = _need(i.get("positive"), _Cond, "copy")
        _need(i.get("negative"), _Cond, "copy")
        latent = _need(i.get("latent_image"), _Latent, "copy")
        seed = int(i["seed"])
        steps = int(i["steps"])
        text = positive.text or latent.text
        await self._sample(ctx, steps, text, seed, latent)
        return (replace(latent, text=text, seed=seed, sampled=True),), None

    async def _x_ksampler_advanced(self, ctx: _Ctx, i: dict[str, Any]) -> _Result:
        _need(i.get("model"), _Handle, "model_options")
        positive = _need(i.get("positive"), _Cond, "copy")
        _need(i.get("negative"), _Cond, "copy")
        latent = _need(i.get("latent_image"), _Latent, "copy")
        steps = int(i["steps"])
        start, end = int(i["start_at_step"]), int(i["end_at_step"])
        total = max(0, min(end, steps) - start)
        add_noise = i.get("add_noise") == "enable"
        seed = int(i["noise_seed"]) if add_noise or not latent.sampled else latent.seed
        text = positive.text or latent.text
        await self._sample(ctx, total, text, seed, latent)
        return (replace(latent, text=text, seed=seed, sampled=True),), None

    async def _x_svd_conditioning(self, ctx: _Ctx, i: dict[str, Any]) -> _Result:
        _need(i.get("clip_vision"), _Handle, "encode_image")
        _need(i.get("vae"), _Handle, "encode")
        init = _need(i.get("init_image"), _Images, "movedim")
        width, height, frames = int(i["width"]), int(i["height"]), int(i["video_frames"])
        latent = _Latent(width, height, frames, init=init)
        return (_Cond(""), _Cond(""), latent), None

    async def _x_vae_decode(self, ctx: _Ctx, i: dict[str, Any]) -> _Result:
        _need(i.get("vae"), _Handle, "decode")
        latent = _need(i.get("samples"), _Latent, "__getitem__")
        width, height, count = latent.width, latent.height, latent.batch
        _check_alloc(width * height * count * 3 * 4, self._limit())
        label = self.config.label
        init = latent.init
        if init is not None:
            source = init

            @functools.lru_cache(maxsize=1)
            def base() -> Image.Image:
                return _upscale(source.frame(0), width, height, "bilinear", "center")

            step = max(1, width // max(1, count * 4))
            marker = max(2, min(width, height) // 16)

            def video(index: int) -> Image.Image:
                frame = ImageChops.offset(base(), index * step, 0)
                x = (index * marker * 2) % max(1, width - marker)
                ImageDraw.Draw(frame).rectangle((x, 0, x + marker, marker), fill=(255, 255, 255))
                return frame

            return (_images(width, height, count, video),), None
        if latent.sampled:
            text, seed = latent.text, latent.seed

            def sampled(index: int) -> Image.Image:
                return _rendered(text, width, height, seed + index, label).copy()

            return (_images(width, height, count, sampled),), None

        def blank(index: int) -> Image.Image:
            return Image.new("RGB", (width, height), (107, 100, 92))

        return (_images(width, height, count, blank),), None

    async def _x_empty_image(self, ctx: _Ctx, i: dict[str, Any]) -> _Result:
        width, height = int(i["width"]), int(i["height"])
        batch, color = int(i["batch_size"]), int(i["color"])
        _check_alloc(batch * height * width * 4, self._limit())
        rgb = ((color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF)

        def flat(index: int) -> Image.Image:
            return Image.new("RGB", (width, height), rgb)

        return (_images(width, height, batch, flat),), None

    async def _x_load_image(self, ctx: _Ctx, i: dict[str, Any]) -> _Result:
        path = self._annotated_path(str(i["image"]), "input")

        def load() -> tuple[list[Image.Image], bool]:
            frames: list[Image.Image] = []
            has_alpha = False
            with Image.open(path) as img:
                for page in ImageSequence.Iterator(img):
                    frame = ImageOps.exif_transpose(page) or page
                    if frames and frame.size != frames[0].size:
                        continue
                    has_alpha = has_alpha or "A" in frame.getbands()
                    frames.append(frame.convert("RGB"))
            return frames, has_alpha

        frames, _ = await asyncio.to_thread(load)
        width, height = frames[0].size
        _check_alloc(width * height * len(frames) * 3 * 4, self._limit())
        images = _images(width, height, len(frames), lambda index: frames[index])
        return (images, _Mask(width, height, len(frames))), None

    async def _x_image_invert(self, ctx: _Ctx, i: dict[str, Any]) -> _Result:
        src = _need(i.get("image"), _Images, "shape")
        return (
            _images(src.width, src.height, src.count, lambda k: ImageOps.invert(src.frame(k))),
        ), None

    async def _x_image_blur(self, ctx: _Ctx, i: dict[str, Any]) -> _Result:
        src = _need(i.get("image"), _Images, "shape")
        radius, sigma = int(i["blur_radius"]), float(i["sigma"])
        blur = ImageFilter.GaussianBlur(radius=min(float(radius), sigma * 2))
        return (
            _images(src.width, src.height, src.count, lambda k: src.frame(k).filter(blur)),
        ), None

    async def _x_image_sharpen(self, ctx: _Ctx, i: dict[str, Any]) -> _Result:
        src = _need(i.get("image"), _Images, "shape")
        sharpen = ImageFilter.UnsharpMask(
            radius=int(i["sharpen_radius"]), percent=int(float(i["alpha"]) * 100), threshold=0
        )
        return (
            _images(src.width, src.height, src.count, lambda k: src.frame(k).filter(sharpen)),
        ), None

    async def _x_image_scale(self, ctx: _Ctx, i: dict[str, Any]) -> _Result:
        src = _need(i.get("image"), _Images, "movedim")
        width, height = int(i["width"]), int(i["height"])
        if width == 0 and height == 0:
            return (src,), None
        if width == 0:
            width = max(1, round(src.width * height / src.height))
        elif height == 0:
            height = max(1, round(src.height * width / src.width))
        _check_alloc(width * height * src.count * 3 * 4, self._limit())
        method, crop = str(i["upscale_method"]), str(i["crop"])
        w, h = width, height
        return (
            _images(w, h, src.count, lambda k: _upscale(src.frame(k), w, h, method, crop)),
        ), None

    async def _x_image_batch(self, ctx: _Ctx, i: dict[str, Any]) -> _Result:
        first = _need(i.get("image1"), _Images, "shape")
        second = _need(i.get("image2"), _Images, "shape")
        width, height = first.width, first.height
        count = first.count + second.count
        _check_alloc(width * height * count * 3 * 4, self._limit())

        def frame(index: int) -> Image.Image:
            if index < first.count:
                return first.frame(index)
            img = second.frame(index - first.count)
            if img.size != (width, height):
                img = _upscale(img, width, height, "bilinear", "center")
            return img

        return (_images(width, height, count, frame),), None

    async def _save_pngs(
        self, ctx: _Ctx, images: _Images, prefix: str, kind: str, compress: int
    ) -> list[dict[str, Any]]:
        folder_dir = self._dirs[kind]
        metadata = self._png_metadata(ctx.run)

        def save() -> list[dict[str, Any]]:
            folder, filename, counter, subfolder = self._save_path(
                prefix, folder_dir, images.width, images.height
            )
            results: list[dict[str, Any]] = []
            for index in range(images.count):
                name = f"{filename.replace('%batch_num%', str(index))}_{counter:05}_.png"
                images.frame(index).save(folder / name, pnginfo=metadata, compress_level=compress)
                results.append({"filename": name, "subfolder": subfolder, "type": kind})
                counter += 1
            return results

        return await asyncio.to_thread(save)

    async def _x_save_image(self, ctx: _Ctx, i: dict[str, Any]) -> _Result:
        images = _need(i.get("images"), _Images, "shape")
        prefix = str(i.get("filename_prefix", "ComfyUI"))
        return (), {"images": await self._save_pngs(ctx, images, prefix, "output", 4)}

    async def _x_preview_image(self, ctx: _Ctx, i: dict[str, Any]) -> _Result:
        images = _need(i.get("images"), _Images, "shape")
        suffix = "".join(random.choice(_PREVIEW_LETTERS) for _ in range(5))
        prefix = f"ComfyUI_temp_{suffix}"
        return (), {"images": await self._save_pngs(ctx, images, prefix, "temp", 1)}

    async def _x_save_webp(self, ctx: _Ctx, i: dict[str, Any]) -> _Result:
        images = _need(i.get("images"), _Images, "shape")
        prefix = str(i.get("filename_prefix", "ComfyUI"))
        fps, lossless, quality = float(i["fps"]), bool(i["lossless"]), int(i["quality"])
        run = ctx.run
        out_dir = self._dirs["output"]

        def save() -> list[dict[str, Any]]:
            folder, filename, counter, subfolder = self._save_path(
                prefix, out_dir, images.width, images.height
            )
            frames = [images.frame(k) for k in range(images.count)]
            exif = frames[0].getexif()
            exif[0x0110] = f"prompt:{json.dumps(run.item.prompt)}"
            extra = run.item.extra_data.get("extra_pnginfo")
            if isinstance(extra, dict):
                tag = 0x010F
                for key, value in extra.items():
                    exif[tag] = f"{key}:{json.dumps(value)}"
                    tag -= 1
            name = f"{filename}_{counter:05}_.webp"
            frames[0].save(
                folder / name,
                format="WEBP",
                save_all=True,
                duration=int(1000.0 / fps),
                append_images=frames[1:],
                exif=exif,
                lossless=lossless,
                quality=quality,
                method=0,  # the fake always encodes fast; ComfyUI maps "default" to 4
            )
            return [{"filename": name, "subfolder": subfolder, "type": "output"}]

        results = await asyncio.to_thread(save)
        return (), {"images": results, "animated": [images.count != 1]}

    async def _x_save_apng(self, ctx: _Ctx, i: dict[str, Any]) -> _Result:
        images = _need(i.get("images"), _Images, "shape")
        prefix = str(i.get("filename_prefix", "ComfyUI"))
        fps, compress = float(i["fps"]), int(i["compress_level"])
        run = ctx.run
        out_dir = self._dirs["output"]

        def save() -> list[dict[str, Any]]:
            folder, filename, counter, subfolder = self._save_path(
                prefix, out_dir, images.width, images.height
            )
            frames = [images.frame(k) for k in range(images.count)]
            info = PngInfo()
            info.add(b"comf", b"prompt\0" + json.dumps(run.item.prompt).encode(), after_idat=True)
            name = f"{filename}_{counter:05}_.png"
            frames[0].save(
                folder / name,
                format="PNG",
                pnginfo=info,
                compress_level=compress,
                save_all=True,
                duration=int(1000.0 / fps),
                append_images=frames[1:],
            )
            return [{"filename": name, "subfolder": subfolder, "type": "output"}]

        results = await asyncio.to_thread(save)
        return (), {"images": results, "animated": [True]}

    def _video_metadata(self, run: _Run) -> dict[str, object]:
        """SaveVideo's container tags: ``extra_pnginfo``'s keys, then ``prompt``."""
        metadata: dict[str, object] = {}
        extra = run.item.extra_data.get("extra_pnginfo")
        if isinstance(extra, dict):
            metadata.update(extra)
        metadata["prompt"] = run.item.prompt
        return metadata

    async def _x_create_video(self, ctx: _Ctx, i: dict[str, Any]) -> _Result:
        images = _need(i.get("images"), _Images, "shape")
        return (_Video(images, float(i["fps"])),), None

    async def _x_save_video(self, ctx: _Ctx, i: dict[str, Any]) -> _Result:
        video = _need(i.get("video"), _Video, "get_dimensions")
        prefix = str(i.get("filename_prefix", "video/ComfyUI"))
        images, out_dir = video.images, self._dirs["output"]
        metadata = self._video_metadata(ctx.run)

        def save() -> list[dict[str, Any]]:
            folder, filename, counter, subfolder = self._save_path(
                prefix, out_dir, images.width, images.height
            )
            name = f"{filename}_{counter:05}_.mp4"  # format auto and mp4 both give .mp4
            frames = [images.frame(k) for k in range(images.count)]
            encode_mp4(frames, video.fps, folder / name, metadata)
            return [{"filename": name, "subfolder": subfolder, "type": "output"}]

        return (), {"images": await asyncio.to_thread(save), "animated": [True]}

    async def _x_save_webm(self, ctx: _Ctx, i: dict[str, Any]) -> _Result:
        images = _need(i.get("images"), _Images, "shape")
        prefix = str(i.get("filename_prefix", "ComfyUI"))
        codec, fps, crf = str(i["codec"]), float(i["fps"]), float(i["crf"])
        out_dir = self._dirs["output"]
        run = ctx.run
        metadata: dict[str, object] = {"prompt": run.item.prompt}
        extra = run.item.extra_data.get("extra_pnginfo")
        if isinstance(extra, dict):
            metadata.update(extra)

        def save() -> list[dict[str, Any]]:
            folder, filename, counter, subfolder = self._save_path(
                prefix, out_dir, images.width, images.height
            )
            name = f"{filename}_{counter:05}_.webm"
            frames = [images.frame(k) for k in range(images.count)]
            encode_webm(frames, fps, folder / name, codec, crf, metadata)
            return [{"filename": name, "subfolder": subfolder, "type": "output"}]

        return (), {"images": await asyncio.to_thread(save), "animated": [True]}

    async def _x_save_websocket(self, ctx: _Ctx, i: dict[str, Any]) -> _Result:
        images = _need(i.get("images"), _Images, "shape")
        total = images.count

        def encode(index: int) -> bytes:
            out = io.BytesIO()
            images.frame(index).save(out, format="PNG", compress_level=1)
            return out.getvalue()

        for index in range(total):
            delay = self.config.step_delay_s
            if delay > 0:
                await asyncio.sleep(delay)
            data = await asyncio.to_thread(encode, index)
            await self._tick(ctx, index, total, ("PNG", data))
        return (), None

    # -- HTTP handlers ------------------------------------------------------------------------

    async def _system_stats(self, request: Request) -> Response:
        ram = _SYSTEM["ram_total"]
        free = _SYSTEM["ram_free"]
        device = {
            "name": "cpu",
            "type": "cpu",
            "index": None,
            "vram_total": ram,
            "vram_free": free,
            "torch_vram_total": ram,
            "torch_vram_free": free,
        }
        return _json({"system": dict(_SYSTEM), "devices": [device]})

    async def _features(self, request: Request) -> Response:
        return _json(self._server_features())

    def _server_features(self) -> dict[str, Any]:
        return {"supports_preview_metadata": True, "max_upload_size": self.config.max_upload_size}

    async def _get_prompt(self, request: Request) -> Response:
        return _json(self._queue_info())

    async def _get_queue(self, request: Request) -> Response:
        with self._lock:
            running = [item.as_list() for item in self._running.values()]
            pending = [item.as_list() for item in self._queue]
            body = json.dumps({"queue_running": running, "queue_pending": pending})
        return Response(body, media_type=_JSON_TYPE)

    async def _post_prompt(self, request: Request) -> Response:
        data = json.loads(await request.body())
        if not isinstance(data, dict | list | str):
            raise TypeError(f"argument of type '{type(data).__name__}' is not iterable")
        with self._lock:
            number: int | float
            if "number" in data and isinstance(data, dict):
                number = float(data["number"])
            else:
                number = self._number
                if isinstance(data, dict) and data.get("front"):
                    number = -number
                self._number += 1
        if not isinstance(data, dict) or "prompt" not in data:
            error = {
                "type": "no_prompt",
                "message": "No prompt provided",
                "details": "No prompt provided",
                "extra_info": {},
            }
            return _json({"error": error, "node_errors": {}}, 400)
        prompt = data["prompt"]
        prompt_id = str(data.get("prompt_id", uuid.uuid4()))
        valid, error_body, outputs, node_errors = self._validate_prompt(
            prompt, data.get("partial_execution_targets")
        )
        extra = data.get("extra_data", {})
        if not isinstance(extra, dict):
            raise TypeError("extra_data must be an object")
        if "client_id" in data:
            extra["client_id"] = data["client_id"]
        if not valid:
            return _json({"error": error_body, "node_errors": node_errors}, 400)
        with self._lock:
            self._seq += 1
            heapq.heappush(self._queue, _Item(number, prompt_id, prompt, extra, outputs, self._seq))
            self._submitted.append(prompt_id)
        self._broadcast_status()
        self._notify()
        return _json({"prompt_id": prompt_id, "number": number, "node_errors": node_errors})

    async def _post_queue(self, request: Request) -> Response:
        data = json.loads(await request.body())
        if data.get("clear"):
            with self._lock:
                self._queue.clear()
            self._broadcast_status()
        if "delete" in data:
            for prompt_id in data["delete"]:
                with self._lock:
                    index = next(
                        (k for k, item in enumerate(self._queue) if item.prompt_id == prompt_id),
                        None,
                    )
                    if index is not None:
                        self._queue.pop(index)
                        heapq.heapify(self._queue)
                if index is not None:
                    self._broadcast_status()
        return _empty()

    async def _post_interrupt(self, request: Request) -> Response:
        try:
            data = json.loads(await request.body())
        except ValueError:
            data = {}
        prompt_id = data.get("prompt_id")
        with self._lock:
            if prompt_id:
                if any(item.prompt_id == prompt_id for item in self._running.values()):
                    self._interrupt = True
                else:
                    _log.info("Prompt %s is not currently running, skipping interrupt", prompt_id)
            else:
                self._interrupt = True
        return _empty()

    async def _post_free(self, request: Request) -> Response:
        data = json.loads(await request.body())
        if not isinstance(data, dict):
            raise TypeError(f"'{type(data).__name__}' object has no attribute 'get'")
        with self._lock:
            self._free_calls += 1
        return _empty()

    async def _get_history(self, request: Request) -> Response:
        query = request.query_params
        max_items = int(query["max_items"]) if "max_items" in query else None
        offset = int(query["offset"]) if "offset" in query else -1
        with self._lock:
            out: dict[str, Any] = {}
            if offset < 0 and max_items is not None:
                offset = len(self._history) - max_items
            for index, key in enumerate(self._history):
                if index >= offset:
                    out[key] = self._history[key]
                    if max_items is not None and len(out) >= max_items:
                        break
            body = json.dumps(out)
        return Response(body, media_type=_JSON_TYPE)

    async def _get_history_item(self, request: Request) -> Response:
        prompt_id = request.path_params["prompt_id"]
        with self._lock:
            entry = self._history.get(prompt_id)
            body = json.dumps({prompt_id: entry} if entry is not None else {})
        return Response(body, media_type=_JSON_TYPE)

    async def _post_history(self, request: Request) -> Response:
        data = json.loads(await request.body())
        with self._lock:
            if data.get("clear"):
                self._history.clear()
            if "delete" in data:
                for prompt_id in data["delete"]:
                    self._history.pop(prompt_id, None)
        return _empty()

    async def _object_info(self, request: Request) -> Response:
        return _json({name: spec.info() for name, spec in self._catalogue().items()})

    async def _object_info_node(self, request: Request) -> Response:
        name = request.path_params["node_class"]
        spec = self._catalogue().get(name)
        return _json({name: spec.info()} if spec is not None else {})

    async def _models(self, request: Request) -> Response:
        with self._lock:
            extra = [k for k in self.config.models if k not in _MODEL_FOLDERS]
        return _json([*_MODEL_FOLDERS, *extra])

    async def _models_folder(self, request: Request) -> Response:
        folder = request.path_params["folder"]
        with self._lock:
            known = folder in _MODEL_FOLDERS or folder in self.config.models
            files = sorted(self.config.models.get(folder, []))
        if not known:
            return _empty(404)
        return _json(files)

    async def _embeddings(self, request: Request) -> Response:
        with self._lock:
            files = self.config.models.get("embeddings", [])
        return _json([str(Path(name).with_suffix("")) for name in files])

    def _view_target(self, name: str, kind: str, subfolder: str | None) -> Path | int:
        """The file ``/view`` serves, or the error status (400 / 403 / 404)."""
        filename, folder = self._annotated(name)
        if not filename:
            return 400
        if filename[0] == "/" or ".." in filename:
            return 400
        if folder is None:
            if kind not in self._dirs:
                return 400
            folder = self._dirs[kind]
        root = str(folder)
        if subfolder is not None:
            full = (folder / subfolder).resolve()
            if os.path.commonpath((str(full), root)) != root:
                return 403
            folder = full
        path = folder / Path(filename).name
        return path if path.is_file() else 404

    async def _view(self, request: Request) -> Response:
        query = request.query_params
        if "filename" not in query:
            return _empty(404)
        target = self._view_target(
            query["filename"], query.get("type", "output"), query.get("subfolder")
        )
        if isinstance(target, int):
            return _empty(target)
        path = target
        filename = path.name
        disposition = {"Content-Disposition": f'filename="{filename}"'}
        if "preview" in query:
            parts = query["preview"].split(";")
            fmt = parts[0]
            if fmt not in ("webp", "jpeg") or "a" in query.get("channel", ""):
                fmt = "webp"
            quality = int(parts[-1]) if parts[-1].isdigit() else 90
            rgb = fmt == "jpeg" or query.get("channel", "") == "rgb"
            data = await asyncio.to_thread(_reencode, path, fmt, quality, rgb)
            return Response(data, media_type=f"image/{fmt}", headers=disposition)
        channel = query.get("channel", "rgba")
        if channel in ("rgb", "a"):
            data = await asyncio.to_thread(_channel_png, path, channel)
            return Response(data, media_type="image/png", headers=disposition)
        stat = path.stat()
        media_type = (
            mimetypes.guess_type(filename)[0]
            or {".webm": "video/webm", ".webp": "image/webp"}.get(path.suffix.lower())
            or "application/octet-stream"
        )
        headers = {**disposition, "etag": f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'}
        return FileResponse(path, media_type=media_type, headers=headers, stat_result=stat)

    async def _upload_image(self, request: Request) -> Response:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.config.max_upload_size:
            return PlainTextResponse(
                f"Maximum request body size {self.config.max_upload_size} exceeded, "
                f"actual body size {length}",
                status_code=413,
            )
        try:
            form_cm = request.form()
            form = await form_cm
        except Exception:
            return _empty(400)
        try:
            image = form.get("image")
            if not isinstance(image, UploadFile):
                return _empty(400)
            filename = image.filename
            if not filename:
                return _empty(400)
            data = await image.read()
            kind_field = form.get("type")
            kind = kind_field if isinstance(kind_field, str) else None
            if kind is None:
                kind = "input"
            if kind not in self._dirs:
                raise UnboundLocalError(
                    "cannot access local variable 'type_dir' where it is not associated with a "
                    "value"
                )
            sub_field = form.get("subfolder", "")
            subfolder = sub_field if isinstance(sub_field, str) else ""
            overwrite = form.get("overwrite") in ("true", "1")
            stored = await asyncio.to_thread(
                _store_upload, self._dirs[kind], subfolder, filename, data, overwrite
            )
            if stored is None:
                return _empty(400)
            name, duplicate_flag = stored
            with self._lock:
                self._uploads.append(Upload(name, subfolder, kind, len(data), duplicate_flag))
            return _json({"name": name, "subfolder": subfolder, "type": kind})
        finally:
            await form.close()

    # -- WebSocket ----------------------------------------------------------------------------

    async def _websocket(self, websocket: WebSocket) -> None:
        await websocket.accept()
        sid = websocket.query_params.get("clientId", "") or uuid.uuid4().hex
        client = _Client(sid)
        with self._lock:
            self._sockets.pop(sid, None)
            self._sockets[sid] = client
            self._live.add(client)
            reconnect = self._last_node_id if self._client_id == sid else None
        client.push(_event("status", {"status": self._queue_info(), "sid": sid}))
        if reconnect is not None:
            client.push(_event("executing", {"node": reconnect}))
        sender = asyncio.create_task(self._ws_sender(websocket, client))
        receiver = asyncio.create_task(self._ws_receiver(websocket, client))
        try:
            await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sender, receiver):
                task.cancel()
            await asyncio.gather(sender, receiver, return_exceptions=True)
            with self._lock:
                self._live.discard(client)
                if self.config.stale_close_unregisters or self._sockets.get(sid) is client:
                    self._sockets.pop(sid, None)
        # Returning without a close frame: uvicorn drops the TCP connection (a dropped socket),
        # or finishes the close handshake the client started.

    async def _ws_sender(self, websocket: WebSocket, client: _Client) -> None:
        with contextlib.suppress(Exception):
            while True:
                item = await client.queue.get()
                if item is None:
                    return
                if isinstance(item, str):
                    await websocket.send_text(item)
                else:
                    await websocket.send_bytes(item)

    async def _ws_receiver(self, websocket: WebSocket, client: _Client) -> None:
        first = True
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                continue
            try:
                data = json.loads(text)
            except ValueError:
                continue
            if not isinstance(data, dict):
                continue
            if first and data.get("type") == "feature_flags":
                flags = data.get("data", {})
                client.supports_metadata = isinstance(flags, dict) and bool(
                    flags.get("supports_preview_metadata")
                )
                client.push(_event("feature_flags", self._server_features()))
            first = False

    # -- admin --------------------------------------------------------------------------------

    async def _admin(self, request: Request) -> Response:
        action = request.path_params["action"]
        if request.method == "GET":
            if action == "state":
                return _json(self.state())
            return _json({"detail": "Not Found"}, 404)
        raw = await request.body()
        try:
            payload = json.loads(raw) if raw.strip() else {}
            if action == "drop_sockets":
                self.drop_sockets()
            elif action == "hang":
                self.hang_next_node(HangBody.model_validate(payload).class_type)
            elif action == "release":
                self.release()
            elif action == "restart":
                self.restart(RestartBody.model_validate(payload).down_s)
            elif action == "refuse":
                body = RefuseBody.model_validate(payload)
                self.refuse(body.on, mode=body.mode)
            elif action == "fail_next_prompt":
                fail = FailPromptBody.model_validate(payload)
                self.fail_next_prompt_http(
                    fail.status, fail.body, process=fail.process, drop=fail.drop, count=fail.count
                )
            elif action == "silently_delete":
                found = self.silently_delete(DeleteBody.model_validate(payload).prompt_id)
                return _json({"ok": True, "found": found})
            elif action == "reset_faults":
                self.reset_faults()
            elif action == "config":
                self.update_config(ConfigBody.model_validate(payload))
            else:
                return _json({"detail": "Not Found"}, 404)
        except ValidationError as exc:
            return _json({"detail": json.loads(exc.json())}, 422)
        except ValueError as exc:
            return _json({"detail": str(exc)}, 422)
        return _json({"ok": True})

    # -- app ----------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self._ensure_worker()
        try:
            yield
        finally:
            await self.aclose()

    def _build_app(self) -> Starlette:
        def guarded(
            handler: Callable[[Request], Awaitable[Response]],
        ) -> Callable[[Request], Awaitable[Response]]:
            async def endpoint(request: Request) -> Response:
                try:
                    return await handler(request)
                except Exception:
                    _log.info(
                        "fake-comfy: %s %s failed", request.method, request.url.path, exc_info=True
                    )
                    return _server_error()

            return endpoint

        table: list[tuple[str, str, Callable[[Request], Awaitable[Response]]]] = [
            ("GET", "/system_stats", self._system_stats),
            ("GET", "/features", self._features),
            ("GET", "/prompt", self._get_prompt),
            ("POST", "/prompt", self._post_prompt),
            ("GET", "/queue", self._get_queue),
            ("POST", "/queue", self._post_queue),
            ("POST", "/interrupt", self._post_interrupt),
            ("POST", "/free", self._post_free),
            ("GET", "/history", self._get_history),
            ("POST", "/history", self._post_history),
            ("GET", "/history/{prompt_id}", self._get_history_item),
            ("GET", "/object_info", self._object_info),
            ("GET", "/object_info/{node_class}", self._object_info_node),
            ("GET", "/models", self._models),
            ("GET", "/models/{folder}", self._models_folder),
            ("GET", "/embeddings", self._embeddings),
            ("GET", "/view", self._view),
            ("POST", "/upload/image", self._upload_image),
        ]
        routes: list[BaseRoute] = []
        for prefix in ("", "/api"):
            for method, path, handler in table:
                routes.append(Route(prefix + path, guarded(handler), methods=[method]))
            routes.append(WebSocketRoute(prefix + "/ws", self._websocket))
        routes.append(Route("/_fake/{action}", self._admin, methods=["GET", "POST"]))
        app = _FakeComfyApp(routes=routes, lifespan=self._lifespan)
        app.fake = self
        return app


# --------------------------------------------------------------------------------------------
# File helpers (run in threads)
# --------------------------------------------------------------------------------------------


def _store_upload(
    upload_dir: Path, subfolder: str, filename: str, data: bytes, overwrite: bool
) -> tuple[str, bool] | None:
    """server.image_upload: (stored name, duplicate) with the " (1)" renaming; None when the
    target escapes the upload folder."""
    root = str(upload_dir)
    folder = upload_dir / os.path.normpath(subfolder)
    if os.path.commonpath((root, str((folder / filename).resolve()))) != root:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    stem, ext = Path(filename).stem, Path(filename).suffix
    duplicate = False
    if not overwrite:
        counter = 1
        digest = hashlib.sha256(data).hexdigest()
        while path.exists():
            if hashlib.sha256(path.read_bytes()).hexdigest() == digest:
                duplicate = True
                break
            filename = f"{stem} ({counter}){ext}"
            path = folder / filename
            counter += 1
    if not duplicate:
        path.write_bytes(data)
    return filename, duplicate


def _reencode(path: Path, fmt: str, quality: int, rgb: bool) -> bytes:
    with Image.open(path) as img:
        out_img = img.convert("RGB") if rgb else img.copy()
    out = io.BytesIO()
    out_img.save(out, format=fmt.upper(), quality=quality)
    return out.getvalue()


def _channel_png(path: Path, channel: str) -> bytes:
    with Image.open(path) as img:
        if channel == "rgb":
            result = img.convert("RGB")
        else:
            alpha = img.getchannel("A") if img.mode == "RGBA" else Image.new("L", img.size, 255)
            result = Image.new("RGBA", img.size)
            result.putalpha(alpha)
    out = io.BytesIO()
    result.save(out, format="PNG")
    return out.getvalue()
