"""The fake ComfyUI on a real port: WebSocket event order and routing as captured from ComfyUI
0.3.64, previews, interrupts, cancels, and the connection-level faults a client has to survive."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import struct
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
from PIL import Image
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from orchestrator.testing.fake_comfy import FakeComfy, FakeComfyConfig
from orchestrator.testing.serve import ServedApp, serve_in_task, serve_in_thread

Msg = dict[str, Any] | bytes

FAST = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 641628},
    },
    "2": {
        "class_type": "SaveImage",
        "inputs": {"images": ["1", 0], "filename_prefix": "probe_fast"},
    },
}
SLOW = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 64, "height": 64, "batch_size": 2, "color": 3652},
    },
    "2": {
        "class_type": "ImageBlur",
        "inputs": {"image": ["1", 0], "blur_radius": 31, "sigma": 10.0},
    },
    "3": {
        "class_type": "ImageSharpen",
        "inputs": {"image": ["2", 0], "sharpen_radius": 31, "sigma": 10.0, "alpha": 1.0},
    },
    "4": {
        "class_type": "ImageScale",
        "inputs": {
            "image": ["3", 0],
            "upscale_method": "lanczos",
            "width": 32,
            "height": 32,
            "crop": "disabled",
        },
    },
    "5": {
        "class_type": "SaveImage",
        "inputs": {"images": ["4", 0], "filename_prefix": "probe_slow"},
    },
}

# A connection the fake drops on purpose ends in a FIN (no response) or, when the
# request was still unread, an RST: both are a dropped connection to the client.
DROPPED = (httpx2.RemoteProtocolError, httpx2.ReadError)


def ws_image(frames: int) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 64, "height": 48, "batch_size": frames, "color": 65280},
        },
        "2": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}},
    }


# Message type sequences of the captures (success.json, noclient.json, wsimage.json).
SUCCESS_FIRST = [
    "status",
    "status",
    "status",
    "execution_start",
    "execution_cached",
    "progress_state",
    "executing",
    "progress_state",
    "progress_state",
    "executing",
    "executed",
    "progress_state",
    "execution_success",
    "status",
    "executing",
]
SUCCESS_CACHED = [
    "status",
    "status",
    "execution_start",
    "execution_cached",
    "executed",
    "progress_state",
    "execution_success",
    "status",
    "executing",
]
NOCLIENT_OBSERVER = ["status", "status", "status", *["progress_state"] * 4, "status"]
_TICK_DEFAULT = ["progress_state", "progress", "binary"]
_TICK_METADATA = ["progress_state", "binary", "progress"]
WSIMAGE_DEFAULT = [
    "status",
    "status",
    "status",
    "execution_start",
    "execution_cached",
    "progress_state",
    "executing",
    "progress_state",
    "progress_state",
    "executing",
    *_TICK_DEFAULT * 3,
    "progress_state",
    "execution_success",
    "status",
    "executing",
]
WSIMAGE_METADATA = [
    "status",
    "feature_flags",
    "status",
    "status",
    "execution_start",
    "execution_cached",
    "progress_state",
    "executing",
    *_TICK_METADATA * 3,
    "progress_state",
    "execution_success",
    "status",
    "executing",
]


# --- helpers ------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def served(
    tmp_path: Path, **overrides: Any
) -> AsyncIterator[tuple[FakeComfy, ServedApp, httpx2.AsyncClient]]:
    config: dict[str, Any] = {"base_dir": tmp_path / "comfy", "node_delay_s": 0.001}
    config.update(overrides)
    fake = FakeComfy(FakeComfyConfig(**config))
    async with (
        serve_in_task(fake.app) as app,
        httpx2.AsyncClient(base_url=app.base_url, timeout=5) as client,
    ):
        yield fake, app, client


def ws_url(app: ServedApp, client_id: str | None = None) -> str:
    query = f"?clientId={client_id}" if client_id else ""
    return f"ws://127.0.0.1:{app.port}/ws{query}"


def kind(message: Msg) -> str:
    return "binary" if isinstance(message, bytes) else str(message["type"])


async def recv(ws: ClientConnection, limit_s: float = 5.0) -> Msg:
    raw = await asyncio.wait_for(ws.recv(), limit_s)
    if isinstance(raw, bytes):
        return raw
    message: dict[str, Any] = json.loads(raw)
    return message


async def collect(
    ws: ClientConnection, stop: Callable[[Msg], bool], limit_s: float = 5.0
) -> list[Msg]:
    """Every message up to and including the first one `stop` accepts."""
    messages: list[Msg] = []
    deadline = time.monotonic() + limit_s
    while True:
        message = await recv(ws, max(0.01, deadline - time.monotonic()))
        messages.append(message)
        if stop(message):
            return messages


async def drain(ws: ClientConnection, seconds: float) -> list[Msg]:
    """Whatever arrives within `seconds`."""
    messages: list[Msg] = []
    deadline = time.monotonic() + seconds
    with contextlib.suppress(TimeoutError):
        while (left := deadline - time.monotonic()) > 0:
            messages.append(await recv(ws, left))
    return messages


def done(prompt_id: str) -> Callable[[Msg], bool]:
    def stop(message: Msg) -> bool:
        return (
            isinstance(message, dict)
            and message["type"] == "executing"
            and message["data"]["node"] is None
            and message["data"].get("prompt_id") == prompt_id
        )

    return stop


def executing(node: str) -> Callable[[Msg], bool]:
    def stop(message: Msg) -> bool:
        return (
            isinstance(message, dict)
            and message["type"] == "executing"
            and message["data"]["node"] == node
        )

    return stop


async def submit(client: httpx2.AsyncClient, prompt: dict[str, Any], **body: Any) -> str:
    response = await client.post("/prompt", json={"prompt": prompt, **body})
    assert response.status_code == 200, response.text
    prompt_id: str = response.json()["prompt_id"]
    return prompt_id


async def wait_until(predicate: Callable[[], bool], limit_s: float = 5.0) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def statuses(messages: list[Msg]) -> list[int]:
    return [
        m["data"]["status"]["exec_info"]["queue_remaining"]
        for m in messages
        if isinstance(m, dict) and m["type"] == "status"
    ]


# --- event order and routing ------------------------------------------------------------------


async def test_success_sequence_matches_the_capture(tmp_path: Path) -> None:
    async with (
        served(tmp_path) as (fake, app, client),
        connect(ws_url(app, "main")) as ws,
        connect(ws_url(app, "other")) as other,
    ):
        first_status = await recv(other)
        assert first_status == {
            "type": "status",
            "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "other"},
        }
        extra = {"extra_pnginfo": {"note": "probe"}}
        pid = await submit(client, FAST, client_id="main", extra_data=extra)
        first = await collect(ws, done(pid))
        assert [kind(m) for m in first] == SUCCESS_FIRST
        assert first[0] == {
            "type": "status",
            "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "main"},
        }
        assert statuses(first) == [0, 1, 1, 0]
        by_type = {kind(m): m for m in first if isinstance(m, dict)}
        assert by_type["executed"]["data"] == {
            "node": "2",
            "display_node": "2",
            "output": {
                "images": [{"filename": "probe_fast_00001_.png", "subfolder": "", "type": "output"}]
            },
            "prompt_id": pid,
        }
        state = first[5]
        assert isinstance(state, dict)
        assert state["data"] == {
            "prompt_id": pid,
            "nodes": {
                "1": {
                    "value": 0.0,
                    "max": 1.0,
                    "state": "running",
                    "node_id": "1",
                    "prompt_id": pid,
                    "display_node_id": "1",
                    "parent_node_id": None,
                    "real_node_id": "1",
                }
            },
        }
        assert isinstance(first[6], dict)
        assert first[6]["data"] == {"node": "1", "display_node": "1", "prompt_id": pid}
        assert set(by_type["execution_start"]["data"]) == {"prompt_id", "timestamp"}

        cached_pid = await submit(client, FAST, client_id="main")
        cached = await collect(ws, done(cached_pid))
        assert [kind(m) for m in cached] == SUCCESS_CACHED
        assert isinstance(cached[3], dict)
        assert cached[3]["data"]["nodes"] == ["1", "2"]
        assert isinstance(cached[5], dict)
        assert cached[5]["data"]["nodes"]["2"]["value"] == 1  # an int, as captured

        seen = await drain(other, 0.2)
        assert [kind(m) for m in seen] == ["status"] * 6
        assert statuses(seen) == [1, 1, 0, 1, 1, 0]
        assert fake.history_ids == [pid, cached_pid]


async def test_no_client_id_gets_only_status_and_progress_state(tmp_path: Path) -> None:
    async with served(tmp_path) as (_, app, client), connect(ws_url(app)) as observer:
        hello = await recv(observer)
        assert isinstance(hello, dict)
        assert len(hello["data"]["sid"]) == 32  # a made-up hex sid
        pid = await submit(client, FAST)
        seen = [hello, *await drain(observer, 0.3)]
        assert [kind(m) for m in seen] == NOCLIENT_OBSERVER
        assert (await client.get(f"/history/{pid}")).json()[pid]["status"]["completed"]


async def test_events_go_only_to_the_prompts_client(tmp_path: Path) -> None:
    async with (
        served(tmp_path) as (_, app, client),
        connect(ws_url(app, "a")) as ws_a,
        connect(ws_url(app, "b")) as ws_b,
    ):
        await recv(ws_a)
        await recv(ws_b)
        pid = await submit(client, ws_image(2), client_id="a")
        got_a = await collect(ws_a, done(pid))
        assert "progress" in [kind(m) for m in got_a]
        got_b = await drain(ws_b, 0.2)
        assert {kind(m) for m in got_b} == {"status"}


# --- previews --------------------------------------------------------------------------------


async def test_binary_previews_default_and_negotiated(tmp_path: Path) -> None:
    async with served(tmp_path, step_delay_s=0) as (_, app, client):
        async with connect(ws_url(app, "plain")) as ws:
            pid = await submit(client, ws_image(3), client_id="plain")
            got = await collect(ws, done(pid))
        assert [kind(m) for m in got] == WSIMAGE_DEFAULT
        frames = [m for m in got if isinstance(m, bytes)]
        for frame in frames:
            assert frame[:8] == struct.pack(">II", 1, 2)
            with Image.open(io.BytesIO(frame[8:])) as img:
                assert (img.format, img.size) == ("PNG", (64, 48))
        progress = [m["data"] for m in got if isinstance(m, dict) and m["type"] == "progress"]
        assert progress == [{"value": v, "max": 3, "prompt_id": pid, "node": "2"} for v in range(3)]
        last_state = [m for m in got if isinstance(m, dict) and m["type"] == "progress_state"][-1]
        assert last_state["data"]["nodes"]["2"]["state"] == "finished"
        assert (
            last_state["data"]["nodes"]["2"]["value"],
            last_state["data"]["nodes"]["2"]["max"],
        ) == (3, 3)

        async with connect(ws_url(app, "meta")) as ws:
            flags = {"type": "feature_flags", "data": {"supports_preview_metadata": True}}
            await ws.send(json.dumps(flags))
            hello = await collect(ws, lambda m: kind(m) == "feature_flags")
            assert hello[-1] == {
                "type": "feature_flags",
                "data": {"supports_preview_metadata": True, "max_upload_size": 104857600},
            }
            pid = await submit(client, ws_image(3), client_id="meta")
            got = hello + await collect(ws, done(pid))
        assert [kind(m) for m in got] == WSIMAGE_METADATA
        cached = next(m for m in got if isinstance(m, dict) and m["type"] == "execution_cached")
        assert cached["data"]["nodes"] == ["1"]  # SaveImageWebsocket is never cached
        for frame in (m for m in got if isinstance(m, bytes)):
            event, size = struct.unpack(">II", frame[:8])
            assert event == 4
            assert json.loads(frame[8 : 8 + size]) == {
                "node_id": "2",
                "prompt_id": pid,
                "display_node_id": "2",
                "parent_node_id": None,
                "real_node_id": "2",
                "image_type": "image/png",
            }
            assert frame[8 + size : 8 + size + 4] == b"\x89PNG"


async def test_sampler_progress_counts_steps(tmp_path: Path) -> None:
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "svd.safetensors"}},
        "2": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1},
        },
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a fox", "clip": ["1", 1]}},
        "4": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "seed": 7,
                "steps": 4,
                "cfg": 8.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "positive": ["3", 0],
                "negative": ["3", 0],
                "latent_image": ["2", 0],
                "denoise": 1.0,
            },
        },
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}},
    }
    async with (
        served(tmp_path, sampler_previews=True) as (_, app, client),
        connect(ws_url(app, "s")) as ws,
    ):
        pid = await submit(client, prompt, client_id="s")
        got = await collect(ws, done(pid))
    ticks = [m["data"]["value"] for m in got if isinstance(m, dict) and m["type"] == "progress"]
    assert ticks == [1, 2, 3, 4]
    previews = [m for m in got if isinstance(m, bytes)]
    assert len(previews) == 4
    assert all(p[:8] == struct.pack(">II", 1, 1) and p[8:10] == b"\xff\xd8" for p in previews)
    order = [m["data"]["node"] for m in got if isinstance(m, dict) and m["type"] == "executing"]
    assert order == ["1", "2", "3", "4", "5", "6", None]


async def test_execution_order_prefers_output_nodes(tmp_path: Path) -> None:
    def empty(color: int) -> dict[str, Any]:
        inputs = {"width": 16, "height": 16, "batch_size": 2, "color": color}
        return {"class_type": "EmptyImage", "inputs": inputs}

    prompt = {
        "1": empty(255),
        "2": empty(16711680),
        "3": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["2", 0]}},
        "4": {
            "class_type": "SaveAnimatedWEBP",
            "inputs": {
                "images": ["3", 0],
                "filename_prefix": "a",
                "fps": 6.0,
                "lossless": False,
                "quality": 80,
                "method": "default",
            },
        },
        "5": {
            "class_type": "SaveAnimatedPNG",
            "inputs": {"images": ["3", 0], "filename_prefix": "a", "fps": 6.0, "compress_level": 4},
        },
        "8": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }
    async with served(tmp_path) as (_, app, client), connect(ws_url(app, "o")) as ws:
        pid = await submit(client, prompt, client_id="o")
        got = await collect(ws, done(pid))
    order = [m["data"]["node"] for m in got if isinstance(m, dict) and m["type"] == "executing"]
    assert order == ["2", "1", "3", "8", "5", "4", None]  # as in the video capture


# --- cancel and interrupt -------------------------------------------------------------------------


async def test_interrupt_lands_at_the_next_node(tmp_path: Path) -> None:
    async with (
        served(tmp_path, node_delays={"ImageBlur": 0.3}) as (fake, app, client),
        connect(ws_url(app, "c")) as ws,
    ):
        a = await submit(client, SLOW, client_id="c")
        await collect(ws, executing("2"))
        b = await submit(client, SLOW | {"1": FAST["1"]}, client_id="c")
        c = await submit(client, FAST, client_id="c")
        assert fake.queue_ids == [a, b, c]
        await client.post("/queue", json={"delete": [b]})
        ignored = await client.post("/interrupt", json={"prompt_id": c})  # pending: a no-op
        assert (ignored.status_code, ignored.content) == (200, b"")
        await client.post("/interrupt", json={"prompt_id": a})
        rest = await collect(ws, done(c))
        events = [m for m in rest if isinstance(m, dict) and m["type"] != "status"]
        a_events = [m for m in events if m["data"].get("prompt_id") == a]
        assert [kind(m) for m in a_events] == [
            "progress_state",
            "progress_state",
            "executing",
            "execution_interrupted",
            "executing",
        ]
        assert a_events[2]["data"]["node"] == "3"
        interrupted = a_events[3]["data"]
        assert {k: interrupted[k] for k in ("node_id", "node_type", "executed")} == {
            "node_id": "3",
            "node_type": "ImageSharpen",
            "executed": ["2", "1"],
        }
        assert all(m["data"].get("prompt_id") != b for m in events)
        history = (await client.get(f"/history/{a}")).json()[a]
        assert history["outputs"] == {}
        assert history["status"]["status_str"] == "error"
        assert [m[0] for m in history["status"]["messages"]] == [
            "execution_start",
            "execution_cached",
            "execution_interrupted",
        ]
        assert (await client.get(f"/history/{b}")).json() == {}
        assert (await client.get(f"/history/{c}")).json()[c]["status"]["completed"]


async def test_interrupt_mid_node_at_a_progress_tick(tmp_path: Path) -> None:
    async with (
        served(tmp_path, step_delay_s=0.02) as (_, app, client),
        connect(ws_url(app, "m")) as ws,
    ):
        pid = await submit(client, ws_image(40), client_id="m")

        def third_tick(message: Msg) -> bool:
            return isinstance(message, dict) and message == {
                "type": "progress",
                "data": {"value": 3, "max": 40, "prompt_id": pid, "node": "2"},
            }

        await collect(ws, third_tick)
        await client.post("/interrupt")
        rest = await collect(ws, done(pid))
    ticks = [m["data"]["value"] for m in rest if isinstance(m, dict) and m["type"] == "progress"]
    assert len(ticks) <= 2
    tail = [m for m in rest if isinstance(m, dict) and m["type"] != "progress_state"]
    tail = [m for m in tail if m["type"] != "progress"]
    assert [kind(m) for m in tail] == ["execution_interrupted", "status", "executing"]
    assert {k: tail[0]["data"][k] for k in ("node_id", "node_type", "executed")} == {
        "node_id": "2",
        "node_type": "SaveImageWebsocket",
        "executed": ["1"],
    }


async def test_hang_release_and_interrupt_at_a_hang(tmp_path: Path) -> None:
    async with served(tmp_path) as (fake, app, client), connect(ws_url(app, "h")) as ws:
        fake.hang_next_node("ImageSharpen")
        pid = await submit(client, SLOW, client_id="h")
        await collect(ws, executing("3"))
        await wait_until(lambda: bool(fake.hung))
        assert await drain(ws, 0.1) == []
        fake.release()
        assert kind((await collect(ws, done(pid)))[-1]) == "executing"
        fake.hang_next_node()
        pid = await submit(client, SLOW | {"1": FAST["1"]}, client_id="h")
        await collect(ws, executing("1"))
        await client.post("/interrupt", json={"prompt_id": pid})
        rest = await collect(ws, done(pid))
        assert [kind(m) for m in rest] == ["execution_interrupted", "status", "executing"]
        assert fake.hung == []


# --- connection faults ----------------------------------------------------------------------------


async def test_drop_sockets_and_reconnect(tmp_path: Path) -> None:
    async with served(tmp_path) as (fake, app, client):
        async with connect(ws_url(app, "d")) as ws:
            await recv(ws)
            fake.drop_sockets()
            with pytest.raises(ConnectionClosedError) as closed:
                await recv(ws)
            assert closed.value.rcvd is None  # no close frame: code 1006
        await wait_until(lambda: fake.socket_ids == [])
        pid = await submit(client, FAST, client_id="d")  # its events are lost
        await wait_until(lambda: pid in fake.history_ids)
        async with connect(ws_url(app, "d")) as ws:
            hello = await recv(ws)
            assert isinstance(hello, dict)
            assert hello["data"] == {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "d"}
            assert await drain(ws, 0.05) == []
        history = (await client.get(f"/history/{pid}")).json()[pid]
        assert history["status"]["completed"]


async def test_reconnect_mid_run_gets_the_current_node(tmp_path: Path) -> None:
    cid = "reconnect-test-client"
    async with served(tmp_path) as (fake, app, client):
        fake.hang_next_node("ImageBlur")
        async with connect(ws_url(app, cid)) as ws:
            pid = await submit(client, SLOW, client_id=cid)
            await collect(ws, executing("2"))
        await wait_until(lambda: cid not in fake.socket_ids)
        async with connect(ws_url(app, cid)) as ws:
            hello = await collect(ws, executing("2"))
            assert hello == [
                {
                    "type": "status",
                    "data": {"status": {"exec_info": {"queue_remaining": 1}}, "sid": cid},
                },
                {"type": "executing", "data": {"node": "2"}},
            ]
            fake.release()
            rest = await collect(ws, done(pid))
        nodes = [
            m["data"]["node"] for m in rest if isinstance(m, dict) and m["type"] == "executing"
        ]
        assert nodes == ["3", "4", "5", None]


async def test_client_id_reuse_race(tmp_path: Path) -> None:
    async with served(tmp_path) as (fake, app, client):
        async with connect(ws_url(app, "x")) as old:
            await recv(old)
            async with connect(ws_url(app, "x")) as new:
                await recv(new)
                pid = await submit(client, FAST, client_id="x")
                await collect(new, done(pid))
                assert await drain(old, 0.05) == []  # replaced: nothing more for the old one
                await old.close()
                await wait_until(lambda: fake.socket_ids == [])
                # ComfyUI 0.3.64 unregisters the clientId when the *old* socket closes.
                pid = await submit(client, FAST | {"1": SLOW["1"]}, client_id="x")
                await wait_until(lambda: pid in fake.history_ids)
                assert await drain(new, 0.05) == []
        fake.config.stale_close_unregisters = False
        async with connect(ws_url(app, "y")) as old:
            await recv(old)
            async with connect(ws_url(app, "y")) as new:
                await recv(new)
                await old.close()
                await asyncio.sleep(0.05)
                pid = await submit(client, FAST, client_id="y")
                assert kind((await collect(new, done(pid)))[-1]) == "executing"


async def test_restart_abandons_the_running_prompt(tmp_path: Path) -> None:
    async with served(tmp_path) as (fake, app, client):
        fake.hang_next_node("ImageSharpen")
        async with connect(ws_url(app, "r")) as ws:
            pid = await submit(client, SLOW, client_id="r")
            await collect(ws, executing("3"))
            await submit(client, FAST, client_id="r")
            fake.restart()
            with pytest.raises(ConnectionClosedError):
                while True:
                    await recv(ws)
        assert (await client.get("/history")).json() == {}
        assert (await client.get("/queue")).json() == {"queue_running": [], "queue_pending": []}
        async with connect(ws_url(app, "r")) as ws:
            hello = await recv(ws)
            assert isinstance(hello, dict)
            assert hello["data"]["status"] == {"exec_info": {"queue_remaining": 0}}
            assert await drain(ws, 0.1) == []  # nothing more ever comes for the old prompt
            response = await client.post("/prompt", json={"prompt": FAST, "client_id": "r"})
            assert response.json()["number"] == 0
            await collect(ws, done(response.json()["prompt_id"]))
        assert fake.history_ids == [response.json()["prompt_id"]]
        assert pid in fake.submitted


async def test_refuse_modes(tmp_path: Path) -> None:
    async with served(tmp_path) as (fake, app, client):
        fake.refuse()
        with pytest.raises(DROPPED):
            await client.get("/system_stats")
        with pytest.raises(ConnectionClosed):
            async with connect(ws_url(app, "z")) as ws:
                await recv(ws)
        fake.refuse(mode="503")
        response = await client.get("/system_stats")
        assert (response.status_code, response.text) == (503, "503 Service Unavailable")
        with pytest.raises(InvalidStatus) as rejected:
            async with connect(ws_url(app, "z")):
                pass
        assert rejected.value.response.status_code == 503
        assert (await client.get("/_fake/state")).json()["refusing"] is True
        fake.refuse(False)
        assert (await client.get("/system_stats")).status_code == 200
        fake.restart(down_s=0.2)
        with pytest.raises(DROPPED):
            await client.get("/prompt")
        await asyncio.sleep(0.25)
        async with connect(f"ws://127.0.0.1:{app.port}/api/ws?clientId=z") as ws:
            assert kind(await recv(ws)) == "status"


async def test_lost_answer_to_post_prompt(tmp_path: Path) -> None:
    async with served(tmp_path) as (fake, _, client):
        fake.fail_next_prompt_http(drop=True, process=True)
        with pytest.raises(DROPPED):
            await client.post("/prompt", json={"prompt": FAST, "prompt_id": "resubmit-me"})
        assert fake.submitted == ["resubmit-me"]
        await wait_until(lambda: "resubmit-me" in fake.history_ids)


def test_served_in_a_thread_with_admin_endpoints(tmp_path: Path) -> None:
    fake = FakeComfy(FakeComfyConfig(base_dir=tmp_path / "comfy", node_delay_s=0.001))
    with serve_in_thread(fake.app) as app, httpx2.Client(base_url=app.base_url, timeout=30) as http:
        assert http.post("/_fake/hang", json={"class_type": "SaveImage"}).json() == {"ok": True}
        pid = http.post("/prompt", json={"prompt": FAST}).json()["prompt_id"]
        # each wait has its own bound: they shared one, so a slow first wait on a busy
        # machine left the second too little time
        deadline = time.monotonic() + 30
        while not fake.hung:
            assert time.monotonic() < deadline, "the node never hung"
            time.sleep(0.005)
        assert http.get("/_fake/state").json()["hung"][0]["prompt_id"] == pid
        assert fake.queue_ids == [pid]
        fake.release()  # from another thread than the server's loop
        deadline = time.monotonic() + 30
        while pid not in fake.history_ids:
            assert time.monotonic() < deadline, "the released prompt never finished"
            time.sleep(0.005)
        http.post("/_fake/fail_next_prompt", json={"drop": True})
        with pytest.raises(DROPPED):
            http.post("/prompt", json={"prompt": FAST})
        http.post("/_fake/restart")
        assert http.get("/history").json() == {}
        assert fake.submitted == [pid]
        view = http.get("/view", params={"filename": "probe_fast_00001_.png"})
        assert view.headers["content-type"] == "image/png"
