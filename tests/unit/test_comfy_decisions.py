"""Pure ComfyUI decisions, fed with the real captures in shared/reference."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator.backends import comfy
from orchestrator.backends.comfy import execution_error, output_files, prompt_error, read_history
from orchestrator.backends.comfy_workflows import (
    TEMPLATES,
    build_prompt,
    check_workflow,
    combo_options,
    models_in,
)
from orchestrator.domain.params import Sd35Params, SdxlParams, SvdParams
from orchestrator.errors import ErrorCode

# Copies of the captures in shared/reference/comfyui-captures/ (a real ComfyUI
# server's answers), kept in the repo so these tests always run: a missing file fails.
CAPTURES = Path(__file__).resolve().parents[1] / "fixtures" / "comfyui-captures"


def capture(name: str) -> Any:
    return json.loads((CAPTURES / name).read_text())


@pytest.mark.parametrize(
    ("case", "code", "needle"),
    [
        ("unknown_class", ErrorCode.INVALID_WORKFLOW, "NoSuchNode"),
        ("missing_class_type", ErrorCode.INVALID_WORKFLOW, "class_type"),
        ("no_outputs", ErrorCode.INVALID_WORKFLOW, "no outputs"),
        ("bad_value", ErrorCode.INVALID_WORKFLOW, "smaller than min"),
        ("missing_input", ErrorCode.INVALID_WORKFLOW, "Required input is missing"),
        ("bad_combo", ErrorCode.INVALID_WORKFLOW, "does_not_exist.png"),
        ("bad_link", ErrorCode.INVALID_WORKFLOW, "Exception when validating"),
        ("wrong_type_link", ErrorCode.INVALID_WORKFLOW, "mismatch"),
        ("missing_ckpt", ErrorCode.MISSING_MODEL, "sd_xl_base_1.0.safetensors"),
        ("no_prompt_key", ErrorCode.INVALID_WORKFLOW, "No prompt provided"),
    ],
)
def test_prompt_errors_from_captures(case: str, code: ErrorCode, needle: str) -> None:
    resp = capture("errors.json")[case]
    err = prompt_error(resp["status"], resp["json"])
    assert err.code == code
    assert needle.lower() in err.detail.lower()


def test_partial_node_errors_on_200_name_each_node() -> None:
    body = {
        "prompt_id": "x",
        "number": 3,
        "node_errors": {
            "26": {
                "errors": [
                    {
                        "type": "value_not_in_list",
                        "message": "Value not in list",
                        "details": "ckpt_name: 'svd_xt.safetensors' not in []",
                    }
                ],
                "dependent_outputs": ["26"],
                "class_type": "ImageOnlyCheckpointLoader",
            }
        },
    }
    err = prompt_error(200, body)
    assert err.code == ErrorCode.MISSING_MODEL and "svd_xt" in err.detail
    assert err.extra["node_errors"] == body["node_errors"]


def test_read_history_success_and_error() -> None:
    success = capture("success.json")["history"]["json"]
    entry = next(iter(success.values()))
    outcome = read_history(entry)
    assert outcome.status == "success" and outcome.error is None
    assert [json.loads(f.ref)["filename"] for f in outcome.files] == ["probe_fast_00001_.png"]
    assert outcome.files[0].mime_type == "image/png"
    failed = capture("errors.json")["runtime_error_history"]["json"]
    bad = read_history(next(iter(failed.values())))
    assert bad.status == "error" and bad.error is not None
    assert bad.error.code == ErrorCode.EXECUTION_ERROR and "EmptyImage" in bad.error.detail


def test_read_history_interrupted() -> None:
    entry = {
        "outputs": {},
        "status": {
            "status_str": "error",
            "completed": False,
            "messages": [
                ["execution_start", {"prompt_id": "a"}],
                ["execution_interrupted", {"prompt_id": "a", "node_id": "3"}],
            ],
        },
    }
    outcome = read_history(entry)
    assert outcome.status == "interrupted" and outcome.error is not None
    assert outcome.error.code == ErrorCode.INTERRUPTED


def test_videos_are_listed_under_images() -> None:
    outputs = {
        "7": {
            "images": [{"filename": "probe_00001_.mp4", "subfolder": "video", "type": "output"}],
            "animated": [True],
        },
        "3": {"images": [{"filename": "t.png", "subfolder": "", "type": "temp"}]},
    }
    files = output_files(outputs)
    assert [json.loads(f.ref) for f in files] == [
        {"filename": "probe_00001_.mp4", "subfolder": "video", "type": "output"}
    ]
    assert files[0].mime_type == "video/mp4"
    only_temp = output_files({"3": outputs["3"]})
    assert json.loads(only_temp[0].ref)["type"] == "temp"


def test_build_prompt_places_every_field() -> None:
    p = SdxlParams(
        prompt="a cat",
        negative_prompt="blurry",
        steps=30,
        cfg=6.5,
        width=832,
        height=1216,
        batch_size=2,
        sampler="dpmpp_2m",
        scheduler="karras",
        checkpoint="mine.safetensors",
    )
    wf = build_prompt("sdxl", p, seed=42)
    assert wf["6"]["inputs"]["text"] == "a cat"  # type: ignore[index]
    assert wf["7"]["inputs"]["text"] == "blurry"  # type: ignore[index]
    ks = wf["3"]["inputs"]
    assert isinstance(ks, dict)
    assert (ks["seed"], ks["steps"], ks["cfg"], ks["sampler_name"], ks["scheduler"]) == (
        42,
        30,
        6.5,
        "dpmpp_2m",
        "karras",
    )
    assert wf["5"]["inputs"] == {"width": 832, "height": 1216, "batch_size": 2}
    assert wf["4"]["inputs"] == {"ckpt_name": "mine.safetensors"}
    # the template file itself is untouched
    assert TEMPLATES["sdxl"].load()["6"]["inputs"]["text"] == ""  # type: ignore[index]


def test_build_prompt_sd35_variant_defaults_and_svd() -> None:
    turbo = build_prompt("sd35", Sd35Params(prompt="x", variant="large-turbo"), seed=1)
    ks = turbo["3"]["inputs"]
    assert isinstance(ks, dict) and ks["steps"] == 4 and ks["cfg"] == 1.2
    assert turbo["4"]["inputs"] == {"ckpt_name": "sd3.5_large_turbo.safetensors"}
    svd = build_prompt(
        "svd",
        SvdParams(init_image="input:" + "a" * 64 + ".png", frames=25, output_format="png"),
        seed=7,
        image_name="orchestrator_x.png",
    )
    assert svd["23"]["inputs"] == {"image": "orchestrator_x.png"}
    cond = svd["12"]["inputs"]
    assert isinstance(cond, dict) and cond["video_frames"] == 25
    assert svd["10"]["class_type"] == "SaveAnimatedPNG"
    with pytest.raises(ValueError, match="input image"):
        build_prompt("svd", SvdParams(init_image="input:" + "a" * 64 + ".png"), seed=1)


def test_templates_match_the_reference_graphs() -> None:
    """Our templates use the node classes and input names of the official examples."""
    ref = capture("api_workflows/sd3.5_simple_example.api.json")
    ours = TEMPLATES["sd35"].load()
    for node_id, node in ref.items():
        assert ours[node_id]["class_type"] == node["class_type"]
        assert set(ours[node_id]["inputs"]) == set(node["inputs"])  # type: ignore[arg-type]
    svd_ref = capture("api_workflows/image_to_video.api.json")
    svd = TEMPLATES["svd"].load()
    for node_id in ("3", "8", "12", "14", "15", "23"):
        assert svd[node_id]["class_type"] == svd_ref[node_id]["class_type"]
        assert set(svd[node_id]["inputs"]) == set(svd_ref[node_id]["inputs"])  # type: ignore[arg-type]


def test_check_workflow_and_combos() -> None:
    object_info: dict[str, Any] = {
        "CheckpointLoaderSimple": {
            "input": {"required": {"ckpt_name": [["a.safetensors", "b.safetensors"], {}]}}
        },
        "ImageOnlyCheckpointLoader": {
            "input": {"required": {"ckpt_name": ["COMBO", {"options": ["svd.safetensors"]}]}}
        },
        "SaveImage": {"input": {"required": {"images": ["IMAGE"]}}},
    }
    assert combo_options(["COMBO", {"options": ["x"]}]) == ["x"]
    assert combo_options([["y"], {}]) == ["y"]
    assert combo_options(["INT", {"min": 1}]) is None
    assert models_in(object_info) == {"a.safetensors", "b.safetensors", "svd.safetensors"}
    wf = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "c.safetensors"}},
        "2": {"class_type": "NoSuchNode", "inputs": {}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}},
    }
    report = check_workflow(wf, object_info)  # type: ignore[arg-type]
    assert not report.ok
    assert report.missing_nodes == ["NoSuchNode"]
    assert report.missing_models == ["CheckpointLoaderSimple.ckpt_name=c.safetensors"]


# --- error messages name the node, its class and the input (issue 16, defect 5) -------------


@pytest.mark.parametrize(
    ("case", "message"),
    [
        (
            "missing_ckpt",
            "ComfyUI lacks a model: node 1 (CheckpointLoaderSimple) input ckpt_name: "
            "'sd_xl_base_1.0.safetensors' is not installed",
        ),
        (
            "unknown_class",
            "ComfyUI refused the workflow: node 1: Cannot execute because node NoSuchNode "
            "does not exist.",
        ),
        (
            "missing_class_type",
            "ComfyUI refused the workflow: node 1: Cannot execute because a node is missing "
            "the class_type property.",
        ),
        (
            "bad_value",
            "ComfyUI refused the workflow: Prompt outputs failed validation; node 1 "
            "(EmptyImage) input width: Value 0 smaller than min of 1",
        ),
        (
            "bad_combo",
            "ComfyUI refused the workflow: Prompt outputs failed validation; node 1 "
            "(LoadImage) input image: Custom validation failed for node "
            "[image - Invalid image file: does_not_exist.png]",
        ),
        (
            "wrong_type_link",
            "ComfyUI refused the workflow: Prompt outputs failed validation: Return type "
            "mismatch between linked nodes: images, received_type(LATENT) mismatch "
            "input_type(IMAGE); node 2 (SaveImage) input images: Return type mismatch between "
            "linked nodes [images, received_type(LATENT) mismatch input_type(IMAGE)]",
        ),
        ("no_prompt_key", "ComfyUI refused the workflow: No prompt provided"),
    ],
)
def test_prompt_error_messages_name_node_class_and_input(case: str, message: str) -> None:
    resp = capture("errors.json")[case]
    err = prompt_error(resp["status"], resp["json"])
    assert err.detail == message


def test_a_missing_model_names_every_loader_and_keeps_the_model_names() -> None:
    body = {
        "error": {"type": "prompt_outputs_failed_validation", "message": "x", "details": ""},
        "node_errors": {
            "4": {
                "errors": [
                    {
                        "type": "value_not_in_list",
                        "message": "Value not in list",
                        "details": "ckpt_name: 'x.safetensors' not in ['a.safetensors']",
                        "extra_info": {
                            "input_name": "ckpt_name",
                            "received_value": "x.safetensors",
                        },
                    }
                ],
                "class_type": "CheckpointLoaderSimple",
            },
            "43": {
                "errors": [
                    {
                        "type": "value_not_in_list",
                        "message": "Value not in list",
                        "details": "clip_name3: 't5.safetensors' not in []",
                        "extra_info": {
                            "input_name": "clip_name3",
                            "received_value": "t5.safetensors",
                        },
                    }
                ],
                "class_type": "TripleCLIPLoader",
            },
        },
    }
    err = prompt_error(400, body)
    assert err.code == ErrorCode.MISSING_MODEL
    assert err.detail == (
        "ComfyUI lacks a model: node 4 (CheckpointLoaderSimple) input ckpt_name: "
        "'x.safetensors' is not installed; node 43 (TripleCLIPLoader) input clip_name3: "
        "'t5.safetensors' is not installed"
    )
    assert err.extra["models"] == ["x.safetensors", "t5.safetensors"]
    assert err.extra["node_id"] == "4" and err.extra["node_type"] == "CheckpointLoaderSimple"


def test_a_missing_model_without_extra_info_is_read_from_details() -> None:
    body = {
        "node_errors": {
            "26": {
                "errors": [
                    {
                        "type": "value_not_in_list",
                        "message": "Value not in list",
                        "details": "ckpt_name: 'svd_xt.safetensors' not in []",
                    }
                ],
                "class_type": "ImageOnlyCheckpointLoader",
            }
        }
    }
    err = prompt_error(200, body)
    assert err.detail == (
        "ComfyUI lacks a model: node 26 (ImageOnlyCheckpointLoader) input ckpt_name: "
        "'svd_xt.safetensors' is not installed"
    )


def test_execution_errors_name_the_node_id_and_class() -> None:
    err = execution_error(
        {
            "prompt_id": "p",
            "node_id": "4",
            "node_type": "CheckpointLoaderSimple",
            "exception_message": "Error while deserializing header: HeaderTooLarge\n",
            "exception_type": "safetensors_rust.SafetensorError",
        }
    )
    assert err.code == ErrorCode.EXECUTION_ERROR
    assert err.detail == (
        "node 4 (CheckpointLoaderSimple) failed: Error while deserializing header: HeaderTooLarge"
    )
    assert err.extra["node_id"] == "4"
    assert execution_error({"node_type": "KSampler"}).detail == "node ? (KSampler) failed"


# --- waiting for a prompt's next event ---------------------------------------------------


async def test_next_event_times_out_to_none() -> None:
    queue: asyncio.Queue[comfy.WsEvent] = asyncio.Queue()
    assert await comfy.next_event(queue, 0.01) is None
    queue.put_nowait(comfy.WsEvent("progress", {}))
    got = await comfy.next_event(queue, 0.0)
    assert got is not None and got.type == "progress"


async def test_a_cancel_as_an_event_arrives_is_not_swallowed() -> None:
    """A worker stopping (grace 0) cancels the job's task just as a websocket event
    for its prompt arrives: the cancellation must win. With ``asyncio.wait_for`` on
    Python 3.11 the event was returned instead and the job kept waiting on the prompt
    forever (a shutdown that never ended, seen in CI)."""
    queue: asyncio.Queue[comfy.WsEvent] = asyncio.Queue()
    seen: list[comfy.WsEvent | None] = []

    async def waiter() -> None:
        while True:
            seen.append(await comfy.next_event(queue, 30.0))

    task = asyncio.create_task(waiter())
    await asyncio.sleep(0)  # it waits on the queue now
    queue.put_nowait(comfy.WsEvent("executing", {"node": "3"}))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert task.cancelled()
