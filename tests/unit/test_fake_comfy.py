"""The fake ComfyUI in-process (httpx2.ASGITransport): HTTP contract, validation, execution, files.

Expected bodies are copied from the captures of a real ComfyUI 0.3.64
(shared/reference/comfyui-captures/*.json) so the tests do not depend on that folder.
"""

from __future__ import annotations

import asyncio
import io
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from PIL import Image

from orchestrator.testing.fake_comfy import DEFAULT_MODELS, FakeComfy, FakeComfyConfig

FAST = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 16711680},
    },
    "2": {
        "class_type": "SaveImage",
        "inputs": {"images": ["1", 0], "filename_prefix": "probe_fast"},
    },
}

# --- captured object_info entries (basic.json) ------------------------------------------------

CAPTURED_OBJECT_INFO: dict[str, Any] = {
    "EmptyImage": {
        "input": {
            "required": {
                "width": ["INT", {"default": 512, "min": 1, "max": 16384, "step": 1}],
                "height": ["INT", {"default": 512, "min": 1, "max": 16384, "step": 1}],
                "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}],
                "color": [
                    "INT",
                    {"default": 0, "min": 0, "max": 16777215, "step": 1, "display": "color"},
                ],
            }
        },
        "input_order": {"required": ["width", "height", "batch_size", "color"]},
        "output": ["IMAGE"],
        "output_is_list": [False],
        "output_name": ["IMAGE"],
        "name": "EmptyImage",
        "display_name": "EmptyImage",
        "description": "",
        "python_module": "nodes",
        "category": "image",
        "output_node": False,
    },
    "SaveImage": {
        "input": {
            "required": {
                "images": ["IMAGE", {"tooltip": "The images to save."}],
                "filename_prefix": [
                    "STRING",
                    {
                        "default": "ComfyUI",
                        "tooltip": "The prefix for the file to save. This may include formatting "
                        "information such as %date:yyyy-MM-dd% or %Empty Latent Image.width% to "
                        "include values from nodes.",
                    },
                ],
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        },
        "input_order": {
            "required": ["images", "filename_prefix"],
            "hidden": ["prompt", "extra_pnginfo"],
        },
        "output": [],
        "output_is_list": [],
        "output_name": [],
        "name": "SaveImage",
        "display_name": "Save Image",
        "description": "Saves the input images to your ComfyUI output directory.",
        "python_module": "nodes",
        "category": "image",
        "output_node": True,
    },
    "SaveAnimatedWEBP": {
        "input": {
            "required": {
                "images": ["IMAGE"],
                "filename_prefix": ["STRING", {"default": "ComfyUI"}],
                "fps": ["FLOAT", {"default": 6.0, "min": 0.01, "max": 1000.0, "step": 0.01}],
                "lossless": ["BOOLEAN", {"default": True}],
                "quality": ["INT", {"default": 80, "min": 0, "max": 100}],
                "method": [["default", "fastest", "slowest"]],
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        },
        "input_order": {
            "required": ["images", "filename_prefix", "fps", "lossless", "quality", "method"],
            "hidden": ["prompt", "extra_pnginfo"],
        },
        "output": [],
        "output_is_list": [],
        "output_name": [],
        "name": "SaveAnimatedWEBP",
        "display_name": "SaveAnimatedWEBP",
        "description": "",
        "python_module": "comfy_extras.nodes_images",
        "category": "image/animation",
        "output_node": True,
    },
    "SaveImageWebsocket": {
        "input": {"required": {"images": ["IMAGE"]}},
        "input_order": {"required": ["images"]},
        "output": [],
        "output_is_list": [],
        "output_name": [],
        "name": "SaveImageWebsocket",
        "display_name": "SaveImageWebsocket",
        "description": "",
        "python_module": "custom_nodes.websocket_image_save",
        "category": "api/image",
        "output_node": True,
    },
}

REQUIRED_NODES = [
    "CheckpointLoaderSimple",
    "ImageOnlyCheckpointLoader",
    "TripleCLIPLoader",
    "CLIPTextEncode",
    "EmptyLatentImage",
    "EmptySD3LatentImage",
    "KSampler",
    "KSamplerAdvanced",
    "VAEDecode",
    "SaveImage",
    "PreviewImage",
    "LoadImage",
    "SVD_img2vid_Conditioning",
    "VideoLinearCFGGuidance",
    "SaveAnimatedWEBP",
    "SaveAnimatedPNG",
    "EmptyImage",
    "ImageBlur",
    "ImageSharpen",
    "ImageScale",
    "ImageInvert",
    "ImageBatch",
    "SaveImageWebsocket",
    "ModelSamplingSD3",
]

# --- the 400 bodies of errors.json, with requests that produce them ---------------------------

KEYERROR_TRACEBACK = [
    '  File "ComfyUI/execution.py", line 1010, in validate_prompt\n'
    "    m = await validate_inputs(prompt_id, prompt, o, validated)\n"
    "        ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n",
    '  File "ComfyUI/execution.py", line 788, in validate_inputs\n'
    "    o_class_type = prompt[o_id]['class_type']\n"
    "                   ~~~~~~^^^^^^\n",
]


def _pf(node_errors: dict[str, Any], details: str = "") -> dict[str, Any]:
    return {
        "error": {
            "type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation",
            "details": details,
            "extra_info": {},
        },
        "node_errors": node_errors,
    }


def _save(source: str = "1") -> dict[str, Any]:
    return {"class_type": "SaveImage", "inputs": {"images": [source, 0], "filename_prefix": "x"}}


def _empty_image(**inputs: Any) -> dict[str, Any]:
    base = {"width": 64, "height": 64, "batch_size": 1, "color": 0}
    base.update(inputs)
    return {"class_type": "EmptyImage", "inputs": {k: v for k, v in base.items() if v is not None}}


def _sd_graph(ckpt: str, *, size: int = 64, steps: int = 3, text: str = "a cat") -> dict[str, Any]:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": size, "height": size, "batch_size": 1},
        },
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["1", 1]}},
        "4": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "seed": 42,
                "steps": steps,
                "cfg": 4.0,
                "sampler_name": "euler",
                "scheduler": "sgm_uniform",
                "positive": ["3", 0],
                "negative": ["3", 0],
                "latent_image": ["2", 0],
                "denoise": 1,
            },
        },
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "sd"}},
    }


ERROR_CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "unknown_class": (
        {"prompt": {"1": {"class_type": "NoSuchNode", "inputs": {}}}},
        {
            "error": {
                "type": "invalid_prompt",
                "message": "Cannot execute because node NoSuchNode does not exist.",
                "details": "Node ID '#1'",
                "extra_info": {},
            },
            "node_errors": {},
        },
    ),
    "missing_class_type": (
        {"prompt": {"1": {"inputs": {}}}},
        {
            "error": {
                "type": "invalid_prompt",
                "message": "Cannot execute because a node is missing the class_type property.",
                "details": "Node ID '#1'",
                "extra_info": {},
            },
            "node_errors": {},
        },
    ),
    "no_outputs": (
        {"prompt": {"1": _empty_image()}},
        {
            "error": {
                "type": "prompt_no_outputs",
                "message": "Prompt has no outputs",
                "details": "",
                "extra_info": {},
            },
            "node_errors": {},
        },
    ),
    "bad_value": (
        {"prompt": {"1": _empty_image(width=0), "2": _save()}},
        _pf(
            {
                "1": {
                    "errors": [
                        {
                            "type": "value_smaller_than_min",
                            "message": "Value 0 smaller than min of 1",
                            "details": "width",
                            "extra_info": {
                                "input_name": "width",
                                "input_config": [
                                    "INT",
                                    {"default": 512, "min": 1, "max": 16384, "step": 1},
                                ],
                                "received_value": 0,
                            },
                        }
                    ],
                    "dependent_outputs": ["2"],
                    "class_type": "EmptyImage",
                }
            }
        ),
    ),
    "missing_input": (
        {"prompt": {"1": _empty_image(width=None), "2": _save()}},
        _pf(
            {
                "1": {
                    "errors": [
                        {
                            "type": "required_input_missing",
                            "message": "Required input is missing",
                            "details": "width",
                            "extra_info": {"input_name": "width"},
                        }
                    ],
                    "dependent_outputs": ["2"],
                    "class_type": "EmptyImage",
                }
            }
        ),
    ),
    "bad_combo": (
        {
            "prompt": {
                "1": {"class_type": "LoadImage", "inputs": {"image": "does_not_exist.png"}},
                "2": _save(),
            }
        },
        _pf(
            {
                "1": {
                    "errors": [
                        {
                            "type": "custom_validation_failed",
                            "message": "Custom validation failed for node",
                            "details": "image - Invalid image file: does_not_exist.png",
                            "extra_info": {"input_name": "image"},
                        }
                    ],
                    "dependent_outputs": ["2"],
                    "class_type": "LoadImage",
                }
            }
        ),
    ),
    "bad_link": (
        {"prompt": {"1": _empty_image(), "2": _save("9")}},
        _pf(
            {
                "2": {
                    "errors": [
                        {
                            "type": "exception_during_validation",
                            "message": "Exception when validating node",
                            "details": "'9'",
                            "extra_info": {
                                "exception_type": "KeyError",
                                "traceback": KEYERROR_TRACEBACK,
                            },
                        }
                    ],
                    "dependent_outputs": ["2"],
                    "class_type": "SaveImage",
                }
            },
            "Exception when validating node: '9'",
        ),
    ),
    "wrong_type_link": (
        {
            "prompt": {
                "1": {
                    "class_type": "EmptyLatentImage",
                    "inputs": {"width": 64, "height": 64, "batch_size": 1},
                },
                "2": _save(),
            }
        },
        _pf(
            {
                "2": {
                    "errors": [
                        {
                            "type": "return_type_mismatch",
                            "message": "Return type mismatch between linked nodes",
                            "details": "images, received_type(LATENT) mismatch input_type(IMAGE)",
                            "extra_info": {
                                "input_name": "images",
                                "input_config": ["IMAGE", {"tooltip": "The images to save."}],
                                "received_type": "LATENT",
                                "linked_node": ["1", 0],
                            },
                        }
                    ],
                    "dependent_outputs": ["2"],
                    "class_type": "SaveImage",
                }
            },
            "Return type mismatch between linked nodes: images, received_type(LATENT) mismatch "
            "input_type(IMAGE)",
        ),
    ),
    "missing_ckpt": (
        {"prompt": _sd_graph("sd_xl_base_1.0.safetensors")},
        _pf(
            {
                "1": {
                    "errors": [
                        {
                            "type": "value_not_in_list",
                            "message": "Value not in list",
                            "details": "ckpt_name: 'sd_xl_base_1.0.safetensors' not in []",
                            "extra_info": {
                                "input_name": "ckpt_name",
                                "input_config": [
                                    [],
                                    {"tooltip": "The name of the checkpoint (model) to load."},
                                ],
                                "received_value": "sd_xl_base_1.0.safetensors",
                            },
                        }
                    ],
                    "dependent_outputs": ["6"],
                    "class_type": "CheckpointLoaderSimple",
                }
            }
        ),
    ),
    "no_prompt_key": (
        {"client_id": "x"},
        {
            "error": {
                "type": "no_prompt",
                "message": "No prompt provided",
                "details": "No prompt provided",
                "extra_info": {},
            },
            "node_errors": {},
        },
    ),
}


# --- fixtures and helpers -------------------------------------------------------------------


def make_config(tmp_path: Path, **overrides: Any) -> FakeComfyConfig:
    base: dict[str, Any] = {
        "base_dir": tmp_path / "comfy",
        "node_delay_s": 0.001,
        "step_delay_s": 0,
    }
    base.update(overrides)
    return FakeComfyConfig(**base)


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[FakeComfy]:
    async with FakeComfy(make_config(tmp_path)) as fake:
        yield fake


@pytest.fixture
async def client(fake: FakeComfy) -> AsyncIterator[httpx2.AsyncClient]:
    transport = httpx2.ASGITransport(app=fake.app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://comfy") as c:
        yield c


async def wait_for(predicate: Any, limit_s: float = 5.0) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


async def submit(client: httpx2.AsyncClient, prompt: dict[str, Any], **body: Any) -> str:
    response = await client.post("/prompt", json={"prompt": prompt, **body})
    assert response.status_code == 200, response.text
    prompt_id: str = response.json()["prompt_id"]
    return prompt_id


async def history(client: httpx2.AsyncClient, prompt_id: str, limit_s: float = 5.0) -> Any:
    deadline = time.monotonic() + limit_s
    while True:
        body = (await client.get(f"/history/{prompt_id}")).json()
        if body:
            return body[prompt_id]
        if time.monotonic() > deadline:
            raise AssertionError(f"{prompt_id} never reached the history")
        await asyncio.sleep(0.005)


async def run(client: httpx2.AsyncClient, prompt: dict[str, Any], **body: Any) -> Any:
    return await history(client, await submit(client, prompt, **body))


# --- plain endpoints ------------------------------------------------------------------------


async def test_basic_endpoints(client: httpx2.AsyncClient) -> None:
    stats = (await client.get("/system_stats")).json()
    assert stats["system"]["comfyui_version"] == "0.3.64"
    assert [d["type"] for d in stats["devices"]] == ["cpu"]
    assert set(stats["devices"][0]) == {
        "name",
        "type",
        "index",
        "vram_total",
        "vram_free",
        "torch_vram_total",
        "torch_vram_free",
    }
    features = await client.get("/features")
    assert features.headers["content-type"] == "application/json; charset=utf-8"
    assert features.json() == {"supports_preview_metadata": True, "max_upload_size": 104857600}
    assert (await client.get("/prompt")).json() == {"exec_info": {"queue_remaining": 0}}
    assert (await client.get("/api/queue")).json() == {"queue_running": [], "queue_pending": []}
    models = (await client.get("/models")).json()
    assert models[:5] == ["checkpoints", "configs", "loras", "vae", "text_encoders"]
    ckpts = (await client.get("/api/models/checkpoints")).json()
    assert ckpts == sorted(DEFAULT_MODELS["checkpoints"])
    assert (await client.get("/models/loras")).json() == []
    assert (await client.get("/models/nope")).status_code == 404
    assert (await client.get("/embeddings")).json() == []
    free = await client.post("/free", json={"unload_models": True, "free_memory": True})
    assert (free.status_code, free.content, "content-type" in free.headers) == (200, b"", False)


async def test_object_info_matches_the_capture(client: httpx2.AsyncClient) -> None:
    for name, expected in CAPTURED_OBJECT_INFO.items():
        assert (await client.get(f"/object_info/{name}")).json() == {name: expected}
    assert (await client.get("/object_info/NoSuchNode")).json() == {}
    everything = (await client.get("/object_info")).json()
    assert set(REQUIRED_NODES) <= set(everything)
    keys = {
        "input",
        "input_order",
        "output",
        "output_is_list",
        "output_name",
        "name",
        "display_name",
        "description",
        "python_module",
        "category",
        "output_node",
    }
    for info in everything.values():
        assert keys <= set(info)
        assert len(info["output"]) == len(info["output_is_list"]) == len(info["output_name"])
    ckpt = everything["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"]
    assert ckpt[0] == sorted(DEFAULT_MODELS["checkpoints"])
    clip = everything["TripleCLIPLoader"]["input"]["required"]["clip_name3"]
    assert clip == [
        "COMBO",
        {"multiselect": False, "options": sorted(DEFAULT_MODELS["text_encoders"])},
    ]
    assert everything["KSampler"]["input"]["required"]["seed"][1]["control_after_generate"]
    assert "uni_pc_bh2" in everything["KSampler"]["input"]["required"]["sampler_name"][0]
    assert everything["LoadImage"]["input"]["required"]["image"] == [
        ["example.png"],
        {"image_upload": True},
    ]
    svd = everything["SVD_img2vid_Conditioning"]
    assert svd["output"] == ["CONDITIONING", "CONDITIONING", "LATENT"]
    assert svd["output_name"] == ["positive", "negative", "latent"]


# --- POST /prompt -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
async def test_400_bodies_match_the_capture(tmp_path: Path, case: str) -> None:
    body, expected = ERROR_CASES[case]
    models = {"checkpoints": []} if case == "missing_ckpt" else dict(DEFAULT_MODELS)
    async with FakeComfy(make_config(tmp_path, models=models)) as fake:
        transport = httpx2.ASGITransport(app=fake.app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://comfy") as client:
            response = await client.post("/prompt", json=body)
            assert response.status_code == 400
            assert response.headers["content-type"] == "application/json; charset=utf-8"
            assert response.json() == expected
            assert fake.submitted == []
            assert (await client.get("/queue")).json()["queue_pending"] == []


async def test_malformed_json_is_aiohttps_500(client: httpx2.AsyncClient) -> None:
    for path in ("/prompt", "/api/prompt", "/queue", "/history"):
        response = await client.post(path, content=b"{not json")
        assert response.status_code == 500
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        assert response.text == "500 Internal Server Error\n\nServer got itself in trouble"


async def test_missing_model_is_value_not_in_list(client: httpx2.AsyncClient) -> None:
    response = await client.post("/prompt", json={"prompt": _sd_graph("nope.safetensors")})
    assert response.status_code == 400
    error = response.json()["node_errors"]["1"]["errors"][0]
    listing = str(sorted(DEFAULT_MODELS["checkpoints"]))
    assert error["type"] == "value_not_in_list"
    assert error["details"] == f"ckpt_name: 'nope.safetensors' not in {listing}"
    prompt = _sd_graph("sd3.5_large.safetensors")
    prompt["7"] = {
        "class_type": "TripleCLIPLoader",
        "inputs": {"clip_name1": "clip_l.safetensors", "clip_name2": "x", "clip_name3": "y"},
    }
    prompt["3"]["inputs"]["clip"] = ["7", 0]
    response = await client.post("/prompt", json={"prompt": prompt})
    assert list(response.json()["node_errors"]) == ["7"]
    errors = response.json()["node_errors"]["7"]["errors"]
    assert [e["details"].split(":")[0] for e in errors] == ["clip_name2", "clip_name3"]
    assert errors[0]["extra_info"]["input_config"][0] == "COMBO"


async def test_partial_validity_runs_only_the_valid_output(client: httpx2.AsyncClient) -> None:
    prompt = _sd_graph("svd_missing.safetensors")
    prompt["7"] = _empty_image()
    prompt["8"] = {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}}
    response = await client.post("/prompt", json={"prompt": prompt})
    assert response.status_code == 200
    body = response.json()
    assert body["node_errors"]["1"]["dependent_outputs"] == ["6"]
    assert body["node_errors"]["1"]["class_type"] == "CheckpointLoaderSimple"
    entry = await history(client, body["prompt_id"])
    assert entry["prompt"][4] == ["8"]
    assert list(entry["outputs"]) == ["8"]
    assert entry["status"]["status_str"] == "success"


async def test_numbering_ids_and_duplicates(client: httpx2.AsyncClient, fake: FakeComfy) -> None:
    bad = await client.post("/prompt", json={"prompt": {"1": _empty_image()}})
    assert bad.status_code == 400
    first = await client.post("/prompt", json={"prompt": FAST, "prompt_id": "client-chosen-1"})
    assert first.json() == {"prompt_id": "client-chosen-1", "number": 1, "node_errors": {}}
    await history(client, "client-chosen-1")
    again = dict(FAST, **{"1": _empty_image(color=5)})
    dup = await client.post("/prompt", json={"prompt": again, "prompt_id": "client-chosen-1"})
    assert dup.json()["number"] == 2
    await wait_for(lambda: fake.queue_ids == [])
    entry = await history(client, "client-chosen-1")
    assert entry["prompt"][0] == 2
    assert entry["outputs"]["2"]["images"][0]["filename"] == "probe_fast_00002_.png"
    explicit = await client.post("/prompt", json={"prompt": FAST, "number": 5})
    assert explicit.json()["number"] == 5.0
    assert '"number": 5.0' in explicit.text
    front = await client.post("/prompt", json={"prompt": FAST, "front": True})
    assert front.json()["number"] == -3
    assert fake.submitted[:2] == ["client-chosen-1", "client-chosen-1"]
    await wait_for(lambda: fake.queue_ids == [])
    assert fake.history_ids[0] == "client-chosen-1"


async def test_history_shape_and_queries(client: httpx2.AsyncClient, fake: FakeComfy) -> None:
    ids = []
    for color in range(3):
        prompt = dict(FAST, **{"1": _empty_image(color=color)})
        ids.append(await submit(client, prompt, client_id="c1", extra_data={"extra_pnginfo": {}}))
    entry = await history(client, ids[-1])
    await wait_for(lambda: len(fake.history_ids) == 3)
    assert set(entry) == {"prompt", "outputs", "status", "meta"}
    assert entry["prompt"][3] == {"extra_pnginfo": {}, "client_id": "c1"}
    assert entry["meta"] == {
        "2": {"node_id": "2", "display_node": "2", "parent_node": None, "real_node_id": "2"}
    }
    assert [m[0] for m in entry["status"]["messages"]] == [
        "execution_start",
        "execution_cached",
        "execution_success",
    ]
    assert list((await client.get("/history?max_items=1")).json()) == ids[-1:]
    assert list((await client.get("/history?max_items=1&offset=0")).json()) == ids[:1]
    assert list((await client.get("/history")).json()) == ids
    assert (await client.get("/history/does-not-exist")).json() == {}
    deleted = await client.post("/history", json={"delete": [ids[0]]})
    assert (deleted.status_code, deleted.content) == (200, b"")
    assert (await client.get(f"/history/{ids[0]}")).json() == {}
    await client.post("/api/history", json={"clear": True})
    assert (await client.get("/history")).json() == {}


# --- execution ----------------------------------------------------------------------------------


async def test_outputs_files_and_animation(client: httpx2.AsyncClient, fake: FakeComfy) -> None:
    prompt = {
        "1": _empty_image(width=32, height=32, batch_size=3, color=255),
        "2": _empty_image(width=48, height=48, batch_size=3, color=16711680),
        "3": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["2", 0]}},
        "4": {
            "class_type": "SaveAnimatedWEBP",
            "inputs": {
                "images": ["3", 0],
                "filename_prefix": "probe_anim",
                "fps": 6.0,
                "lossless": False,
                "quality": 80,
                "method": "default",
            },
        },
        "5": {
            "class_type": "SaveAnimatedPNG",
            "inputs": {
                "images": ["3", 0],
                "filename_prefix": "probe_anim",
                "fps": 6.0,
                "compress_level": 4,
            },
        },
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
        "7": {
            "class_type": "SaveImage",
            "inputs": {"images": ["2", 0], "filename_prefix": "sub/x"},
        },
    }
    entry = await run(client, prompt, extra_data={"extra_pnginfo": {"workflow": {"id": 1}}})
    assert entry["status"]["status_str"] == "success"
    outputs = entry["outputs"]
    assert entry["prompt"][4] == ["7", "6", "5", "4"]
    # The output nodes run in ExecutionList order; the PNG got the lower counter.
    assert outputs["5"] == {
        "images": [{"filename": "probe_anim_00001_.png", "subfolder": "", "type": "output"}],
        "animated": [True],
    }
    assert outputs["4"] == {
        "images": [{"filename": "probe_anim_00002_.webp", "subfolder": "", "type": "output"}],
        "animated": [True],
    }
    previews = outputs["6"]["images"]
    assert len(previews) == 3
    assert all(re.fullmatch(r"ComfyUI_temp_[a-z]{5}_0000\d_\.png", p["filename"]) for p in previews)
    assert {p["type"] for p in previews} == {"temp"}
    assert [i["filename"] for i in outputs["7"]["images"]] == [
        "x_00001_.png",
        "x_00002_.png",
        "x_00003_.png",
    ]
    assert outputs["7"]["images"][0]["subfolder"] == "sub"

    with Image.open(fake.output_dir / "probe_anim_00002_.webp") as webp:
        assert getattr(webp, "is_animated", False) and webp.size == (32, 32)
        assert getattr(webp, "n_frames", 1) == 2  # PIL merges identical frames, as captured
    with Image.open(fake.output_dir / "probe_anim_00001_.png") as apng:
        assert getattr(apng, "is_animated", False)
    with Image.open(fake.output_dir / "sub" / "x_00001_.png") as png:
        assert png.size == (48, 48)
        assert png.getpixel((0, 0)) == (255, 0, 0)
        text = png.text  # type: ignore[attr-defined]
        assert '"filename_prefix": "sub/x"' in text["prompt"]
        assert text["workflow"] == '{"id": 1}'
    view = await client.get(
        "/view", params={"filename": previews[0]["filename"], "type": "temp", "subfolder": ""}
    )
    assert view.status_code == 200
    assert view.headers["content-type"] == "image/png"

    single = {
        "1": _empty_image(),
        "2": {
            "class_type": "SaveAnimatedWEBP",
            "inputs": {
                "images": ["1", 0],
                "filename_prefix": "one",
                "fps": 1.0,
                "lossless": True,
                "quality": 80,
                "method": "fastest",
            },
        },
    }
    assert (await run(client, single))["outputs"]["2"]["animated"] == [False]


async def test_model_workflows_render_at_the_tracked_size(
    client: httpx2.AsyncClient, fake: FakeComfy
) -> None:
    entry = await run(client, _sd_graph("sd3.5_large_fp8_scaled.safetensors", size=96, text="fox"))
    image = entry["outputs"]["6"]["images"][0]
    assert image["filename"] == "sd_00001_.png"
    with Image.open(fake.output_dir / image["filename"]) as png:
        assert png.size == (96, 96)

    upload = Image.linear_gradient("L").rotate(90).resize((40, 30)).convert("RGB")
    buffer = io.BytesIO()
    upload.save(buffer, format="PNG")
    files = {"image": ("mountains.png", buffer.getvalue(), "image/png")}
    assert (await client.post("/upload/image", files=files)).status_code == 200
    svd = {
        "15": {
            "class_type": "ImageOnlyCheckpointLoader",
            "inputs": {"ckpt_name": "svd.safetensors"},
        },
        "23": {"class_type": "LoadImage", "inputs": {"image": "mountains.png"}},
        "14": {
            "class_type": "VideoLinearCFGGuidance",
            "inputs": {"model": ["15", 0], "min_cfg": 1},
        },
        "12": {
            "class_type": "SVD_img2vid_Conditioning",
            "inputs": {
                "clip_vision": ["15", 1],
                "init_image": ["23", 0],
                "vae": ["15", 2],
                "width": 64,
                "height": 32,
                "video_frames": 5,
                "motion_bucket_id": 127,
                "fps": 6,
                "augmentation_level": 0,
            },
        },
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["14", 0],
                "seed": 1,
                "steps": 2,
                "cfg": 2.5,
                "sampler_name": "euler",
                "scheduler": "karras",
                "positive": ["12", 0],
                "negative": ["12", 1],
                "latent_image": ["12", 2],
                "denoise": 1,
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["15", 2]}},
        "10": {
            "class_type": "SaveAnimatedWEBP",
            "inputs": {
                "images": ["8", 0],
                "filename_prefix": "ComfyUI",
                "fps": 10.0,
                "lossless": False,
                "quality": 85,
                "method": "default",
            },
        },
    }
    entry = await run(client, svd)
    assert entry["prompt"][2]["3"]["inputs"]["denoise"] == 1.0  # validation converted the FLOAT
    video = entry["outputs"]["10"]
    assert video["animated"] == [True]
    with Image.open(fake.output_dir / video["images"][0]["filename"]) as webp:
        assert webp.size == (64, 32)
        assert getattr(webp, "n_frames", 1) == 5


async def test_runtime_errors(tmp_path: Path) -> None:
    config = make_config(tmp_path, broken_models={"sd3.5_large.safetensors"})
    async with FakeComfy(config) as fake:
        transport = httpx2.ASGITransport(app=fake.app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://comfy") as client:
            huge = {"1": _empty_image(width=16384, height=16384, batch_size=4096), "2": _save()}
            entry = await run(client, huge, client_id="c")
            assert entry["outputs"] == {}
            assert entry["meta"] == {}
            status = entry["status"]
            assert (status["status_str"], status["completed"]) == ("error", False)
            event, data = status["messages"][-1]
            assert event == "execution_error"
            assert list(data) == [
                "prompt_id",
                "node_id",
                "node_type",
                "executed",
                "exception_message",
                "exception_type",
                "traceback",
                "current_inputs",
                "current_outputs",
                "timestamp",
            ]
            assert (data["node_id"], data["node_type"], data["executed"]) == ("1", "EmptyImage", [])
            assert "4398046511104 bytes" in data["exception_message"]
            assert data["exception_type"] == "RuntimeError"
            assert data["current_inputs"] == {
                "width": [16384],
                "height": [16384],
                "batch_size": [4096],
                "color": [0],
            }
            assert data["current_outputs"] == ["2", "1"]
            assert all(line.startswith("  File ") for line in data["traceback"])

            broken = await run(client, _sd_graph("sd3.5_large.safetensors"))
            event, data = broken["status"]["messages"][-1]
            assert event == "execution_error"
            assert data["node_type"] == "CheckpointLoaderSimple"
            assert data["exception_type"] == "safetensors._safetensors_rust.SafetensorError"
            assert (
                data["exception_message"] == "Error while deserializing header: header too small\n"
            )


async def test_identical_rerun_is_fully_cached(client: httpx2.AsyncClient, fake: FakeComfy) -> None:
    first = await run(client, FAST)
    second = await run(client, FAST)
    assert second["outputs"] == first["outputs"]
    assert second["status"]["messages"][1][1]["nodes"] == ["1", "2"]
    assert sorted(p.name for p in fake.output_dir.iterdir()) == ["probe_fast_00001_.png"]
    changed = await run(client, dict(FAST, **{"1": _empty_image(color=1)}))
    assert changed["status"]["messages"][1][1]["nodes"] == []
    assert changed["outputs"]["2"]["images"][0]["filename"] == "probe_fast_00002_.png"


# --- queue, interrupt, faults -------------------------------------------------------------------


async def test_queue_delete_and_interrupt(client: httpx2.AsyncClient, fake: FakeComfy) -> None:
    fake.hang_next_node("SaveImage")
    a = await submit(client, FAST)
    await wait_for(lambda: bool(fake.hung))
    assert fake.hung[0].prompt_id == a and fake.hung[0].node_id == "2"
    b = await submit(client, dict(FAST, **{"1": _empty_image(color=2)}))
    c = await submit(client, dict(FAST, **{"1": _empty_image(color=3)}))
    queue = (await client.get("/queue")).json()
    assert [item[1] for item in queue["queue_running"]] == [a]
    assert [item[1] for item in queue["queue_pending"]] == [b, c]
    assert queue["queue_running"][0][3] == {}
    assert queue["queue_running"][0][4] == ["2"]
    deleted = await client.post("/queue", json={"delete": [b, "unknown"]})
    assert (deleted.status_code, deleted.content) == (200, b"")
    assert fake.queue_ids == [a, c]
    # Interrupting a pending prompt is a no-op; a targeted interrupt of A lands at the hang.
    await client.post("/interrupt", json={"prompt_id": c})
    await asyncio.sleep(0.05)
    assert fake.hung
    await client.post("/interrupt", json={"prompt_id": a})
    entry_a = await history(client, a)
    assert entry_a["status"]["status_str"] == "error"
    assert entry_a["status"]["messages"][-1][0] == "execution_interrupted"
    assert entry_a["status"]["messages"][-1][1]["executed"] == ["1"]
    assert (await history(client, c))["status"]["status_str"] == "success"
    assert (await client.get(f"/history/{b}")).json() == {}
    # An interrupt while idle does not poison the next prompt.
    await client.post("/interrupt")
    assert (await run(client, dict(FAST, **{"1": _empty_image(color=4)})))["status"]["completed"]


async def test_queue_clear_keeps_the_running_prompt(
    client: httpx2.AsyncClient, fake: FakeComfy
) -> None:
    fake.hang_next_node()
    a = await submit(client, FAST)
    await wait_for(lambda: bool(fake.hung))
    await submit(client, dict(FAST, **{"1": _empty_image(color=2)}))
    await client.post("/queue", json={"clear": True})
    assert fake.queue_ids == [a]
    fake.release()
    assert (await history(client, a))["status"]["completed"]


async def test_restart_forgets_everything_but_files(
    client: httpx2.AsyncClient, fake: FakeComfy
) -> None:
    done = await run(client, FAST)
    assert done["outputs"]["2"]["images"][0]["filename"] == "probe_fast_00001_.png"
    fake.hang_next_node()
    running = await submit(client, dict(FAST, **{"1": _empty_image(color=9)}))
    await wait_for(lambda: bool(fake.hung))
    pending = await submit(client, dict(FAST, **{"1": _empty_image(color=10)}))
    fake.restart()
    assert (await client.get("/history")).json() == {}
    assert (await client.get("/queue")).json() == {"queue_running": [], "queue_pending": []}
    await asyncio.sleep(0.05)
    assert fake.history_ids == []
    assert running in fake.submitted and pending in fake.submitted
    again = await client.post("/prompt", json={"prompt": FAST})
    assert again.json()["number"] == 0
    entry = await history(client, again.json()["prompt_id"])
    # The cache is gone too; the counter continues from the files on disk.
    assert entry["status"]["messages"][1][1]["nodes"] == []
    assert entry["outputs"]["2"]["images"][0]["filename"] == "probe_fast_00002_.png"


async def test_silently_delete(client: httpx2.AsyncClient, fake: FakeComfy) -> None:
    fake.hang_next_node()
    a = await submit(client, FAST)
    await wait_for(lambda: bool(fake.hung))
    b = await submit(client, dict(FAST, **{"1": _empty_image(color=2)}))
    assert fake.silently_delete(b)
    assert fake.silently_delete(a)
    assert not fake.silently_delete("nope")
    await wait_for(lambda: fake.queue_ids == [])
    await asyncio.sleep(0.05)
    assert fake.history_ids == []
    done = await run(client, dict(FAST, **{"1": _empty_image(color=3)}))
    assert done["status"]["completed"]
    assert fake.silently_delete(fake.history_ids[0])
    assert fake.history_ids == []


async def test_prompt_http_faults(client: httpx2.AsyncClient, fake: FakeComfy) -> None:
    fake.fail_next_prompt_http()
    response = await client.post("/prompt", json={"prompt": FAST})
    assert (response.status_code, response.text) == (
        500,
        "500 Internal Server Error\n\nServer got itself in trouble",
    )
    assert fake.submitted == []
    fake.fail_next_prompt_http(503, {"error": "busy"})
    response = await client.post("/api/prompt", json={"prompt": FAST})
    assert (response.status_code, response.json()) == (503, {"error": "busy"})
    fake.fail_next_prompt_http(drop=True, process=True)
    with pytest.raises(httpx2.RemoteProtocolError):
        await client.post("/prompt", json={"prompt": FAST, "prompt_id": "lost-answer"})
    assert fake.submitted == ["lost-answer"]
    assert (await history(client, "lost-answer"))["status"]["completed"]


async def test_refuse_in_process(client: httpx2.AsyncClient, fake: FakeComfy) -> None:
    fake.refuse()
    with pytest.raises(httpx2.RemoteProtocolError):
        await client.get("/queue")
    assert (await client.get("/_fake/state")).json()["refusing"] is True
    fake.refuse(mode="503")
    assert (await client.get("/queue")).status_code == 503
    fake.refuse(False)
    assert (await client.get("/queue")).status_code == 200
    fake.restart(down_s=0.2)
    with pytest.raises(httpx2.RemoteProtocolError):
        await client.get("/system_stats")
    await asyncio.sleep(0.25)
    assert (await client.get("/system_stats")).status_code == 200


async def test_admin_endpoints(client: httpx2.AsyncClient, fake: FakeComfy) -> None:
    assert (await client.post("/_fake/hang", json={"class_type": "SaveImage"})).json() == {
        "ok": True
    }
    a = await submit(client, FAST)
    await wait_for(lambda: bool(fake.hung))
    state = (await client.get("/_fake/state")).json()
    assert state["hung"] == [{"prompt_id": a, "node_id": "2", "class_type": "SaveImage"}]
    assert state["queue_ids"] == [a] and state["running_id"] == a
    await client.post("/_fake/release")
    await history(client, a)
    bad = await client.post("/_fake/restart", json={"down_s": -1})
    assert bad.status_code == 422
    await client.post("/_fake/config", json={"models": {"checkpoints": ["only.safetensors"]}})
    assert (await client.get("/models/checkpoints")).json() == ["only.safetensors"]
    await client.post("/_fake/fail_next_prompt", json={"status": 502, "body": "bad gateway"})
    assert (await client.post("/prompt", json={"prompt": FAST})).status_code == 502
    deleted = await client.post("/_fake/silently_delete", json={"prompt_id": a})
    assert deleted.json() == {"ok": True, "found": True}
    await client.post("/_fake/refuse", json={"on": True, "mode": "503"})
    assert (await client.get("/prompt")).status_code == 503
    await client.post("/_fake/reset_faults")
    assert (await client.get("/prompt")).status_code == 200
    assert (await client.get("/_fake/nope")).status_code == 404


# --- upload and /view -----------------------------------------------------------------------------


def _png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_upload_semantics(client: httpx2.AsyncClient, fake: FakeComfy) -> None:
    red, blue = _png((255, 0, 0)), _png((0, 0, 255))

    async def upload(data: bytes, **fields: str) -> httpx2.Response:
        files = {"image": ("probe_in.png", data, "image/png")}
        return await client.post("/upload/image", files=files, data=fields)

    first = await upload(red)
    assert first.json() == {"name": "probe_in.png", "subfolder": "", "type": "input"}
    assert (await upload(red)).json()["name"] == "probe_in.png"
    assert (await upload(blue)).json()["name"] == "probe_in (1).png"
    assert (await upload(blue)).json()["name"] == "probe_in (1).png"
    assert (await upload(blue, overwrite="true")).json()["name"] == "probe_in.png"
    temp = await upload(red, type="temp", subfolder="clientx")
    assert temp.json() == {"name": "probe_in.png", "subfolder": "clientx", "type": "temp"}
    assert (fake.temp_dir / "clientx" / "probe_in.png").read_bytes() == red
    empty = await client.post("/upload/image", data={"type": "input"})
    assert (empty.status_code, empty.content) == (400, b"")
    escape = await upload(red, subfolder="../../x")
    assert escape.status_code == 400
    assert (await upload(red, type="weird")).status_code == 500
    assert [u.duplicate for u in fake.uploads] == [False, True, False, True, False, False]

    info = (await client.get("/object_info/LoadImage")).json()
    assert info["LoadImage"]["input"]["required"]["image"][0] == [
        "example.png",
        "probe_in (1).png",
        "probe_in.png",
    ]
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "probe_in (1).png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}},
    }
    entry = await run(client, prompt)
    with Image.open(fake.output_dir / entry["outputs"]["3"]["images"][0]["filename"]) as img:
        assert img.getpixel((0, 0)) == (255, 255, 0)  # the blue upload, inverted


async def test_view_semantics(client: httpx2.AsyncClient, fake: FakeComfy) -> None:
    entry = await run(client, FAST)
    name = entry["outputs"]["2"]["images"][0]["filename"]
    view = await client.get("/view", params={"filename": name, "subfolder": "", "type": "output"})
    assert view.status_code == 200
    assert view.headers["content-type"] == "image/png"
    assert view.headers["content-disposition"] == f'filename="{name}"'
    assert view.headers["accept-ranges"] == "bytes"
    assert {"etag", "last-modified"} <= set(view.headers)
    assert view.content == (fake.output_dir / name).read_bytes()
    assert (await client.get("/api/view", params={"filename": name})).status_code == 200
    preview = await client.get("/view", params={"filename": name, "preview": "webp;50"})
    assert preview.headers["content-type"] == "image/webp"
    assert "etag" not in preview.headers
    rgb = await client.get("/view", params={"filename": name, "channel": "rgb"})
    assert rgb.headers["content-type"] == "image/png"
    annotated = await client.get("/view", params={"filename": f"{name} [output]", "type": "bogus"})
    assert annotated.status_code == 200

    async def status(**params: str) -> tuple[int, bytes]:
        response = await client.get("/view", params=params)
        return response.status_code, response.content

    assert await status(filename="nope.png", type="output") == (404, b"")
    assert await status() == (404, b"")
    assert (await status(filename="../secret.png"))[0] == 400
    assert (await status(filename="/etc/passwd"))[0] == 400
    assert (await status(filename=name, subfolder="../input"))[0] == 403
    assert (await status(filename=name, subfolder="/etc"))[0] == 403
    assert (await status(filename=name, type="models"))[0] == 400


async def test_folder_overrides_and_cleanup(tmp_path: Path) -> None:
    fake = FakeComfy(FakeComfyConfig(output_dir=tmp_path / "out", node_delay_s=0))
    try:
        assert fake.output_dir == (tmp_path / "out").resolve()
        base = fake.input_dir.parent
        assert fake.temp_dir.parent == base != tmp_path
        assert (fake.input_dir / "example.png").is_file()
        transport = httpx2.ASGITransport(app=fake.app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://comfy") as client:
            entry = await run(client, FAST)
        assert (tmp_path / "out" / entry["outputs"]["2"]["images"][0]["filename"]).is_file()
    finally:
        await fake.aclose()
        fake.cleanup()
    assert not base.exists()
    assert (tmp_path / "out").is_dir()


# --- video nodes (comfy_extras.nodes_video; outputs as captured in video.json) ---------------

# The capture's workflow D: two flat colours, 12 frames, saved as WEBP, APNG, MP4 and WEBM.
VIDEO_PROMPT: dict[str, Any] = {
    "1": _empty_image(width=128, height=128, batch_size=6, color=3931),
    "2": _empty_image(width=128, height=128, batch_size=6, color=16711680),
    "3": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["2", 0]}},
    "4": {
        "class_type": "SaveAnimatedWEBP",
        "inputs": {
            "images": ["3", 0],
            "filename_prefix": "probe_anim",
            "fps": 6.0,
            "lossless": False,
            "quality": 80,
            "method": "default",
        },
    },
    "5": {
        "class_type": "SaveAnimatedPNG",
        "inputs": {
            "images": ["3", 0],
            "filename_prefix": "probe_anim",
            "fps": 6.0,
            "compress_level": 4,
        },
    },
    "6": {"class_type": "CreateVideo", "inputs": {"images": ["3", 0], "fps": 12.0}},
    "7": {
        "class_type": "SaveVideo",
        "inputs": {
            "video": ["6", 0],
            "filename_prefix": "video/probe",
            "format": "auto",
            "codec": "auto",
        },
    },
    "8": {
        "class_type": "SaveWEBM",
        "inputs": {
            "images": ["3", 0],
            "filename_prefix": "probe_webm",
            "codec": "vp9",
            "fps": 12.0,
            "crf": 32.0,
        },
    },
}


async def test_video_outputs_match_the_capture_and_decode(
    client: httpx2.AsyncClient, fake: FakeComfy
) -> None:
    import av

    entry = await run(client, VIDEO_PROMPT, extra_data={"extra_pnginfo": {"note": "probe"}})
    assert entry["status"]["status_str"] == "success"
    assert entry["prompt"][4] == ["8", "7", "5", "4"]  # as captured
    outputs = entry["outputs"]
    assert outputs["7"] == {
        "images": [{"filename": "probe_00001_.mp4", "subfolder": "video", "type": "output"}],
        "animated": [True],
    }
    assert outputs["8"] == {
        "images": [{"filename": "probe_webm_00001_.webm", "subfolder": "", "type": "output"}],
        "animated": [True],
    }
    for path, codec in (
        (fake.output_dir / "video" / "probe_00001_.mp4", "h264"),
        (fake.output_dir / "probe_webm_00001_.webm", "vp9"),
    ):
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == codec
            assert stream.average_rate == 12
            decoded = list(container.decode(stream))
            assert len(decoded) == 12  # every frame, none merged (unlike PIL's WEBP)
            assert (decoded[0].width, decoded[0].height) == (128, 128)
            first = decoded[0].to_image().getpixel((64, 64))
            last = decoded[-1].to_image().getpixel((64, 64))
            assert isinstance(first, tuple) and isinstance(last, tuple)
            assert first[2] > 60 > first[0] and last[0] > 200  # 3931 (0x000f5b), then red
            tags = {k.lower(): v for k, v in container.metadata.items()}  # WebM: upper case
            assert '"class_type": "SaveVideo"' in tags["prompt"]
            assert tags["note"] == '"probe"'
    for name, subfolder, mime in (
        ("probe_00001_.mp4", "video", "video/mp4"),
        ("probe_webm_00001_.webm", "", "video/webm"),
    ):
        view = await client.get("/view", params={"filename": name, "subfolder": subfolder})
        assert (view.status_code, view.headers["content-type"]) == (200, mime)

    av1 = {
        "1": _empty_image(width=64, height=64, batch_size=3, color=255),
        "2": {
            "class_type": "SaveWEBM",
            "inputs": {
                "images": ["1", 0],
                "filename_prefix": "av1",
                "codec": "av1",
                "fps": 24.0,
                "crf": 40.0,
            },
        },
    }
    assert (await run(client, av1))["outputs"]["2"]["animated"] == [True]
    with av.open(str(fake.output_dir / "av1_00001_.webm")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.pix_fmt == "yuv420p10le"
        assert len(list(container.decode(stream))) == 3


async def test_video_object_info_is_0_3_64s_v3_schema(client: httpx2.AsyncClient) -> None:
    info = (await client.get("/object_info/SaveVideo")).json()["SaveVideo"]
    assert info["input"]["required"]["video"] == ["VIDEO", {"tooltip": "The video to save."}]
    assert info["input"]["required"]["format"][1]["options"] == ["auto", "mp4"]
    assert info["input"]["required"]["codec"][1]["options"] == ["auto", "h264"]
    assert info["input"]["hidden"] == {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    assert (info["output"], info["output_node"], info["category"]) == ([], True, "image/video")
    assert info["python_module"] == "comfy_extras.nodes_video"
    create = (await client.get("/object_info/CreateVideo")).json()["CreateVideo"]
    assert create["input_order"] == {"required": ["images", "fps"], "optional": ["audio"]}
    assert create["input"]["required"]["fps"] == [
        "FLOAT",
        {"default": 30.0, "min": 1.0, "max": 120.0, "step": 1.0},
    ]
    assert (create["output"], create["output_name"]) == (["VIDEO"], ["VIDEO"])
    webm = (await client.get("/object_info/SaveWEBM")).json()["SaveWEBM"]
    assert webm["input"]["required"]["codec"] == [
        "COMBO",
        {"multiselect": False, "options": ["vp9", "av1"]},
    ]
    assert webm["experimental"] is True and info["experimental"] is False

    bad = {**VIDEO_PROMPT, "6": {"class_type": "CreateVideo", "inputs": {"images": ["3", 0]}}}
    body = (await client.post("/prompt", json={"prompt": bad})).json()
    assert body["node_errors"]["6"]["errors"][0]["type"] == "required_input_missing"
    wrong = {**VIDEO_PROMPT, "7": {**VIDEO_PROMPT["7"], "inputs": {**VIDEO_PROMPT["7"]["inputs"]}}}
    wrong["7"]["inputs"]["video"] = ["3", 0]  # an IMAGE where a VIDEO goes
    body = (await client.post("/prompt", json={"prompt": wrong})).json()
    assert body["node_errors"]["7"]["errors"][0]["type"] == "return_type_mismatch"


async def test_without_pyav_the_video_nodes_are_absent(
    client: httpx2.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.testing import fake_comfy

    monkeypatch.setattr(fake_comfy, "video_nodes_available", lambda: False)
    assert (await client.get("/object_info/SaveVideo")).json() == {}
    response = await client.post("/prompt", json={"prompt": VIDEO_PROMPT})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "Cannot execute because node CreateVideo does not exist."
    )


def test_importing_the_fake_does_not_import_pyav() -> None:
    """Demo mode imports the fake in production installs, where PyAV is absent."""
    import subprocess
    import sys

    code = "import sys, orchestrator.testing.fake_comfy; print('av' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"


async def test_odd_sized_mp4_fails_in_the_encoder_like_comfyui(
    client: httpx2.AsyncClient,
) -> None:
    """libx264 refuses yuv420p at an odd width, in ComfyUI as in the fake (same PyAV call)."""
    prompt = {
        "1": _empty_image(width=65, height=49, batch_size=2, color=0),
        "2": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": 8.0}},
        "3": {
            "class_type": "SaveVideo",
            "inputs": {
                "video": ["2", 0],
                "filename_prefix": "odd",
                "format": "mp4",
                "codec": "h264",
            },
        },
    }
    entry = await run(client, prompt)
    assert entry["status"]["status_str"] == "error"
    event, data = entry["status"]["messages"][-1]
    assert event == "execution_error"
    assert (data["node_id"], data["node_type"]) == ("3", "SaveVideo")
    assert data["exception_type"] == "av.error.ExternalError"
