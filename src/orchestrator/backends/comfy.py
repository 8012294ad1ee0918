"""ComfyUI: the HTTP client, the websocket follower, the pool of instances, and the
backends (``sdxl``, ``sd35``, ``svd``, raw ``comfy``) built on them.

Protocol facts this relies on (``shared/reference/comfyui.md``):

* We choose each ``prompt_id`` ourselves, so the upstream handle (instance + prompt id)
  is stored *before* the POST: a restart can always re-attach, and a prompt that never
  arrived is found absent and run again.
* Events reach only the socket whose ``clientId`` matches the prompt's ``client_id``.
  A prompt ends with ``executing {node: null}``; then ``/history/{id}`` holds the
  outputs and the status.
* Never trust the socket alone: a reconciler reads ``/history/{id}`` and ``/queue`` on a
  timer and after every reconnect. A deleted pending prompt produces no event ever;
  history lives in memory and vanishes on restart.
* A 200 to ``POST /prompt`` can still carry ``node_errors``; a missing model shows up
  as ``value_not_in_list`` on a loader. Interrupt lands only at the next node.
* Videos and animations are listed under ``images`` (with ``animated``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import mimetypes
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal
from urllib.parse import quote

import httpx2
import stamina
from pydantic import BaseModel, JsonValue

from orchestrator import errors, logs
from orchestrator.backends.base import (
    Backend,
    BackendHealth,
    CancelOutcome,
    Completed,
    ProgressFn,
    RemoteFile,
    Submitted,
)
from orchestrator.backends.comfy_workflows import (
    Workflow,
    WorkflowReport,
    build_prompt,
    model_file,
    models_in,
    template_reports,
)
from orchestrator.backends.user_workflows import UserWorkflow
from orchestrator.db.jobs import NewOutput
from orchestrator.domain.costs import gpu_seconds
from orchestrator.domain.jobs import Job, UpstreamHandle
from orchestrator.domain.params import (
    PARAMS_BY_BACKEND,
    ComfyRawParams,
    SvdParams,
    WorkflowParams,
)
from orchestrator.storage import InputStore, OutputStore

if TYPE_CHECKING:  # websockets is imported when a socket first opens
    from websockets.asyncio.client import ClientConnection

log = logs.get(__name__)
Code = errors.ErrorCode

LOADER_CLASSES = frozenset(
    {
        "CheckpointLoaderSimple",
        "ImageOnlyCheckpointLoader",
        "TripleCLIPLoader",
        "CLIPLoader",
        "DualCLIPLoader",
        "UNETLoader",
        "VAELoader",
        "LoraLoader",
        "ControlNetLoader",
        "CLIPVisionLoader",
        "UpscaleModelLoader",
    }
)
MAX_CONNECT_RETRIES = 4
HISTORY_SETTLE_TRIES = 10
# While an instance is down it is probed this often (its websocket reconnecting
# probes it at once too), so queued jobs go there within a second of its return.
DOWN_PROBE_S = 1.0
WAITING = "waiting for a ComfyUI instance"


# --- pure decisions (table-tested) ----------------------------------------------------------


_NODE_ID_DETAILS = re.compile(r"^Node ID '#(?P<id>[^']+)'$")
_NOT_IN_LIST = re.compile(r"^(?P<input>[^:]+): '(?P<value>.*)' not in ")


def _missing_model(e: Mapping[str, JsonValue]) -> tuple[str, str] | None:
    """(input name, model file) of a ``value_not_in_list`` error, from its ``extra_info``
    or, failing that, from its ``details`` (``"ckpt_name: 'x' not in [...]"``)."""
    info = e.get("extra_info")
    if isinstance(info, dict):
        name, value = info.get("input_name"), info.get("received_value")
        if isinstance(name, str) and isinstance(value, str):
            return name, value
    m = _NOT_IN_LIST.match(str(e.get("details") or ""))
    return (m["input"].strip(), m["value"]) if m else None


def prompt_error(status: int, body: JsonValue) -> errors.UpstreamError:
    """The error a rejected ``POST /prompt`` means (400, or 200 with node_errors). The
    message names each node's id, class and input, e.g. ``node 4 (CheckpointLoaderSimple)
    input ckpt_name: 'x.safetensors' is not installed``."""
    node_errors = body.get("node_errors") if isinstance(body, dict) else None
    err = body.get("error") if isinstance(body, dict) else None
    messages: list[str] = []
    missing: list[str] = []
    models: list[str] = []
    first: tuple[str, str] | None = None
    if isinstance(node_errors, dict):
        for node_id, entry in node_errors.items():
            if not isinstance(entry, dict):
                continue
            cls = str(entry.get("class_type", "?"))
            raw_errors = entry.get("errors")
            for e in raw_errors if isinstance(raw_errors, list) else []:
                if not isinstance(e, dict):
                    continue
                info = e.get("extra_info")
                input_name = info.get("input_name") if isinstance(info, dict) else None
                where = f"node {node_id} ({cls})"
                if isinstance(input_name, str):
                    where += f" input {input_name}"
                text = f"{where}: {e.get('message')}"
                details = e.get("details")
                if details and details != input_name:
                    text += f" [{details}]"
                messages.append(text)
                found = _missing_model(e) if e.get("type") == "value_not_in_list" else None
                if found is not None and cls in LOADER_CLASSES:
                    missing.append(
                        f"node {node_id} ({cls}) input {found[0]}: '{found[1]}' is not installed"
                    )
                    models.append(found[1])
                    first = first or (str(node_id), cls)
    head = ""
    refused_node: str | None = None
    if isinstance(err, dict):
        head = str(err.get("message") or err.get("type") or "")
        details = str(err.get("details") or "")
        m = _NODE_ID_DETAILS.match(details)
        if m:  # "Node ID '#1'": the node the whole prompt was refused for
            refused_node = m["id"]
            head = f"node {refused_node}: {head}"
        elif details and details != head:
            head = f"{head}: {details}"
    detail = "; ".join(([head] if head else []) + messages) or f"ComfyUI answered {status}"
    extra: dict[str, JsonValue] = {
        "node_errors": node_errors if isinstance(node_errors, dict) else {},
        "error_type": err.get("type") if isinstance(err, dict) else None,
    }
    if missing:
        assert first is not None
        return errors.UpstreamError(
            Code.MISSING_MODEL,
            f"ComfyUI lacks a model: {'; '.join(missing)}",
            models=list(models),
            node_id=first[0],
            node_type=first[1],
            **extra,
        )
    if refused_node is not None:
        extra["node_id"] = refused_node
    return errors.UpstreamError(
        Code.INVALID_WORKFLOW, f"ComfyUI refused the workflow: {detail}", **extra
    )


def execution_error(data: Mapping[str, JsonValue]) -> errors.UpstreamError:
    """A node that failed while running: ``node 4 (CheckpointLoaderSimple) failed: ...``."""
    node_type = str(data.get("node_type", "?"))
    node_id = data.get("node_id")
    message = str(data.get("exception_message", "")).strip()
    where = f"node {node_id if node_id is not None else '?'} ({node_type}) failed"
    return errors.UpstreamError(
        Code.EXECUTION_ERROR,
        f"{where}: {message}" if message else where,
        node_id=node_id,
        node_type=node_type,
        exception_type=data.get("exception_type"),
    )


@dataclass(frozen=True)
class HistoryOutcome:
    status: Literal["success", "error", "interrupted"]
    files: list[RemoteFile]
    error: errors.UpstreamError | None = None


def read_history(entry: Mapping[str, JsonValue]) -> HistoryOutcome:
    """Status and output files of a finished prompt's history entry."""
    status = entry.get("status")
    messages: list[JsonValue] = []
    status_str = None
    if isinstance(status, dict):
        status_str = status.get("status_str")
        raw = status.get("messages")
        if isinstance(raw, list):
            messages = raw
    last_type, last_data = None, {}
    if messages and isinstance(messages[-1], list) and len(messages[-1]) == 2:
        last_type = messages[-1][0]
        if isinstance(messages[-1][1], dict):
            last_data = messages[-1][1]
    files = output_files(entry.get("outputs"))
    if status_str == "success" or last_type == "execution_success":
        return HistoryOutcome("success", files)
    if last_type == "execution_interrupted":
        return HistoryOutcome(
            "interrupted",
            files,
            errors.UpstreamError(Code.INTERRUPTED, "the prompt was interrupted on ComfyUI"),
        )
    if last_type == "execution_error":
        return HistoryOutcome("error", files, execution_error(last_data))
    return HistoryOutcome(
        "error",
        files,
        errors.UpstreamError(Code.EXECUTION_ERROR, f"ComfyUI reported status {status_str!r}"),
    )


def history_gpu_seconds(entry: Mapping[str, JsonValue]) -> float | None:
    """The prompt's execution time from its history messages' timestamps."""
    status = entry.get("status")
    messages = status.get("messages") if isinstance(status, dict) else None
    return gpu_seconds(messages) if isinstance(messages, list) else None


def output_files(outputs: JsonValue) -> list[RemoteFile]:
    """Every file in a history entry's outputs, stills and videos alike (both are
    listed under ``images``); ``output`` files, else ``temp`` previews."""
    found: list[tuple[str, RemoteFile]] = []
    if not isinstance(outputs, dict):
        return []
    for node_out in outputs.values():
        if not isinstance(node_out, dict):
            continue
        for key in ("images", "gifs", "videos", "audio"):
            items = node_out.get(key)
            if not isinstance(items, list):
                continue
            for item in items:
                if not isinstance(item, dict) or "filename" not in item:
                    continue
                kind = str(item.get("type") or "output")
                ref = json.dumps(
                    {
                        "filename": str(item["filename"]),
                        "subfolder": str(item.get("subfolder") or ""),
                        "type": kind,
                    }
                )
                mime = mimetypes.guess_type(str(item["filename"]))[0]
                found.append((kind, RemoteFile(ref, mime)))
    outs = [f for kind, f in found if kind == "output"]
    return outs or [f for _kind, f in found]


# --- one instance over HTTP --------------------------------------------------------------------


class ComfyInstanceConfig(BaseModel):
    name: str
    url: str
    max_in_flight: int = 2


class ComfyClient:
    def __init__(self, http: httpx2.AsyncClient, base_url: str, name: str) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.name = name

    def _url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    async def _json(self, method: str, path: str, json: JsonValue = None) -> JsonValue:
        resp = await self.http.request(method, self._url(path), json=json)
        if resp.status_code >= 500:
            raise errors.TransientUpstreamError(
                Code.BACKEND_UNAVAILABLE, f"ComfyUI {self.name} answered {resp.status_code}"
            )
        resp.raise_for_status()
        if not resp.content:
            return None
        doc: JsonValue = resp.json()
        return doc

    async def post_prompt(
        self, workflow: Mapping[str, JsonValue], prompt_id: str, client_id: str
    ) -> None:
        body = {
            "prompt": workflow,
            "prompt_id": prompt_id,
            "client_id": client_id,
            "extra_data": {"extra_pnginfo": {"orchestrator_prompt_id": prompt_id}},
        }
        resp = await self.http.post(self._url("/prompt"), json=body)
        if resp.status_code == 200:
            doc = resp.json()
            if isinstance(doc, dict) and doc.get("node_errors"):
                # Accepted in part: the valid outputs run. We want all or nothing.
                with contextlib.suppress(httpx2.HTTPError):
                    await self.delete([prompt_id])
                    await self.interrupt(prompt_id)
                raise prompt_error(200, doc)
            return
        if resp.status_code == 400:
            try:
                doc = resp.json()
            except ValueError:
                doc = {}
            raise prompt_error(400, doc)
        raise errors.TransientUpstreamError(
            Code.BACKEND_UNAVAILABLE,
            f"ComfyUI {self.name} answered {resp.status_code} to the prompt",
        )

    async def history(self, prompt_id: str) -> dict[str, JsonValue] | None:
        doc = await self._json("GET", f"/history/{prompt_id}")
        if isinstance(doc, dict):
            entry = doc.get(prompt_id)
            if isinstance(entry, dict):
                return entry
        return None

    async def queue(self) -> tuple[list[str], list[str]]:
        """Prompt ids running and pending."""
        doc = await self._json("GET", "/queue")
        running: list[str] = []
        pending: list[str] = []
        if isinstance(doc, dict):
            for key, into in (("queue_running", running), ("queue_pending", pending)):
                items = doc.get(key)
                if isinstance(items, list):
                    for item in items:
                        if isinstance(item, list) and len(item) > 1:
                            into.append(str(item[1]))
        return running, pending

    async def queue_raw(self) -> JsonValue:
        return await self._json("GET", "/queue")

    async def interrupt(self, prompt_id: str) -> None:
        await self._json("POST", "/interrupt", json={"prompt_id": prompt_id})

    async def delete(self, prompt_ids: Sequence[str]) -> None:
        await self._json("POST", "/queue", json={"delete": list(prompt_ids)})

    async def object_info(self, node: str | None = None) -> dict[str, JsonValue]:
        path = f"/object_info/{quote(node, safe='')}" if node else "/object_info"
        doc = await self._json("GET", path)
        return doc if isinstance(doc, dict) else {}

    async def system_stats(self) -> dict[str, JsonValue]:
        doc = await self._json("GET", "/system_stats")
        return doc if isinstance(doc, dict) else {}

    async def upload_image(self, data: bytes, filename: str) -> str:
        """Upload to the instance's input folder; returns the name to use in LoadImage."""
        resp = await self.http.post(
            self._url("/upload/image"),
            files={"image": (filename, data, "application/octet-stream")},
            data={"type": "input", "overwrite": "false"},
        )
        if resp.status_code != 200:
            raise errors.UpstreamError(
                Code.INVALID_INPUT, f"ComfyUI {self.name} refused the upload ({resp.status_code})"
            )
        doc = resp.json()
        name = str(doc["name"])
        sub = str(doc.get("subfolder") or "")
        return f"{sub}/{name}" if sub else name

    async def view(self, ref: str) -> AsyncIterator[bytes]:
        params = json.loads(ref)
        async with self.http.stream("GET", self._url("/view"), params=params) as resp:
            if resp.status_code == 404:
                raise errors.UpstreamError(
                    Code.PROMPT_LOST, f"output {params.get('filename')} is gone from {self.name}"
                )
            if resp.status_code != 200:
                raise errors.TransientUpstreamError(
                    Code.BACKEND_UNAVAILABLE, f"/view answered {resp.status_code}"
                )
            async for chunk in resp.aiter_bytes(256 * 1024):
                yield chunk


# --- the websocket of one instance ----------------------------------------------------------------


RECONNECTED = "_reconnected"
DISCONNECTED = "_disconnected"


@dataclass
class WsEvent:
    type: str
    data: dict[str, JsonValue] = field(default_factory=dict)


class InstanceSocket:
    """One websocket per instance and process (one ``clientId``), shared by every
    prompt this process runs there; events are routed to per-prompt queues.
    Reconnects with backoff; listeners hear about every drop and reconnect so they
    reconcile at once."""

    def __init__(self, base_url: str, name: str, open_timeout_s: float) -> None:
        self.client_id = uuid.uuid4().hex
        ws_base = base_url.replace("https://", "wss://").replace("http://", "ws://").rstrip("/")
        self.url = f"{ws_base}/ws?clientId={self.client_id}"
        self.name = name
        self.open_timeout_s = open_timeout_s
        self.listeners: dict[str, asyncio.Queue[WsEvent]] = {}
        self.connected = asyncio.Event()
        # called on every (re)connect: the pool probes the instance at once
        self.on_connect: Callable[[], None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._ws: ClientConnection | None = None

    def ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"comfy-ws-{self.name}")

    def subscribe(self, prompt_id: str) -> asyncio.Queue[WsEvent]:
        self.ensure_running()
        q = self.listeners.get(prompt_id)
        if q is None:
            q = asyncio.Queue()
            self.listeners[prompt_id] = q
        return q

    def unsubscribe(self, prompt_id: str) -> None:
        self.listeners.pop(prompt_id, None)

    def _broadcast(self, kind: str) -> None:
        for q in self.listeners.values():
            q.put_nowait(WsEvent(kind))

    async def _run(self) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import WebSocketException

        delay = 0.2
        first = True
        while True:
            try:
                async with connect(
                    self.url,
                    open_timeout=self.open_timeout_s,
                    max_size=None,
                    ping_interval=20,
                    ping_timeout=20,
                ) as ws:
                    self._ws = ws
                    self.connected.set()
                    if self.on_connect is not None:
                        self.on_connect()
                    if not first:
                        log.info("comfy websocket reconnected", instance=self.name)
                    self._broadcast(RECONNECTED)
                    first = False
                    delay = 0.2
                    async for raw in ws:
                        if isinstance(raw, bytes):
                            continue  # binary previews
                        self._dispatch(raw)
            except asyncio.CancelledError:
                raise
            except (OSError, WebSocketException, TimeoutError) as exc:
                log.debug("comfy websocket down", instance=self.name, error=str(exc))
            finally:
                self._ws = None
                self.connected.clear()
            self._broadcast(DISCONNECTED)
            await asyncio.sleep(delay + random.random() * delay)
            delay = min(delay * 2, 5.0)

    def _dispatch(self, raw: str) -> None:
        try:
            msg = json.loads(raw)
        except ValueError:
            return
        if not isinstance(msg, dict):
            return
        data = msg.get("data")
        if not isinstance(data, dict):
            return
        prompt_id = data.get("prompt_id")
        if isinstance(prompt_id, str):
            q = self.listeners.get(prompt_id)
            if q is not None:
                q.put_nowait(WsEvent(str(msg.get("type")), data))

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


async def next_event(queue: asyncio.Queue[WsEvent], timeout_s: float) -> WsEvent | None:
    """The next event for a prompt, or None after ``timeout_s``.

    Not ``asyncio.wait_for``: on Python 3.11 it returns the item and swallows the
    cancellation when the task is cancelled just as an item arrives, so a worker
    stopping with a job on ComfyUI kept waiting on the prompt for good."""
    try:
        async with asyncio.timeout(timeout_s):
            return await queue.get()
    except TimeoutError:
        return None


# --- the pool -------------------------------------------------------------------------------------


class InstanceStatus(BaseModel):
    name: str
    url: str
    healthy: bool
    max_in_flight: int
    in_flight: int
    last_error: str | None = None
    version: str | None = None
    devices: list[dict[str, JsonValue]] = []
    models: list[str] = []
    templates: dict[str, WorkflowReport] = {}
    checked_at: float | None = None


class ComfyInstance:
    def __init__(
        self, config: ComfyInstanceConfig, http: httpx2.AsyncClient, open_timeout_s: float
    ):
        self.config = config
        self.client = ComfyClient(http, config.url, config.name)
        self.socket = InstanceSocket(config.url, config.name, open_timeout_s)
        self.healthy = False
        self.checked = False
        self.last_error: str | None = None
        self.version: str | None = None
        self.devices: list[dict[str, JsonValue]] = []
        self.object_info: dict[str, JsonValue] = {}
        self.models: set[str] = set()
        self.reports: dict[str, WorkflowReport] = {}
        # Prompts this process placed here (planned, posted or re-attached) and has not
        # let go of yet: the backend's ``release`` ends each, on every path.
        self.active: set[str] = set()
        self.info_at = 0.0
        # A process Orchestrator supervises on this URL: why it must not be used now
        # (starting, port taken by a stranger...), or None once it is ready. An answer
        # on its port alone does not make it healthy.
        self.gate: Callable[[], str | None] | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def in_flight(self) -> int:
        return len(self.active)

    def status(self) -> InstanceStatus:
        return InstanceStatus(
            name=self.name,
            url=self.config.url,
            healthy=self.healthy,
            max_in_flight=self.config.max_in_flight,
            in_flight=self.in_flight,
            last_error=self.last_error,
            version=self.version,
            devices=self.devices,
            models=sorted(self.models),
            templates=self.reports,
            checked_at=self.info_at or None,
        )


class ComfyPool:
    """Every configured ComfyUI instance, with health, models and load."""

    def __init__(
        self,
        instances: Sequence[ComfyInstanceConfig],
        http: httpx2.AsyncClient,
        *,
        health_interval_s: float = 10.0,
        info_refresh_s: float = 60.0,
        open_timeout_s: float = 10.0,
        simulated: bool = False,
    ) -> None:
        self.instances = {c.name: ComfyInstance(c, http, open_timeout_s) for c in instances}
        self.health_interval_s = health_interval_s
        self.info_refresh_s = info_refresh_s
        self.simulated = simulated
        self._task: asyncio.Task[None] | None = None
        self._probe = asyncio.Event()
        self._wakes: list[Callable[[], None]] = []
        # bumped whenever an instance comes (back) up
        self.epoch = 0
        for inst in self.instances.values():
            inst.socket.on_connect = self.probe_soon

    @property
    def capacity(self) -> int:
        return sum(i.config.max_in_flight for i in self.instances.values()) or 1

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="comfy-health")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for inst in self.instances.values():
            await inst.socket.aclose()

    def on_available(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` whenever an instance comes (back) up."""
        self._wakes.append(wake)

    def probe_soon(self) -> None:
        """Check the instances now (a websocket reconnected, a request failed)."""
        self._probe.set()

    def mark_down(self, inst: ComfyInstance, reason: str) -> None:
        """A request to ``inst`` failed to connect: route nothing more there until a
        probe (at most ``DOWN_PROBE_S`` away) or its websocket says it is back."""
        if inst.healthy:
            log.warning("comfy instance down", instance=inst.name, error=reason)
        inst.healthy = False
        inst.last_error = reason
        self.probe_soon()

    def _interval(self) -> float:
        """Every ``health_interval_s``; while an instance is down, every
        ``DOWN_PROBE_S``, so it is used again within a second of coming back."""
        if all(i.healthy for i in self.instances.values()):
            return self.health_interval_s
        return min(self.health_interval_s, DOWN_PROBE_S)

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval()):
                    await self._probe.wait()
            self._probe.clear()
            try:
                await self.refresh()
            except Exception:
                log.exception("comfy health check failed")

    async def refresh(self, force_info: bool = False) -> None:
        await asyncio.gather(*(self._check(i, force_info) for i in self.instances.values()))

    async def _check(self, inst: ComfyInstance, force_info: bool) -> None:
        closed = inst.gate() if inst.gate is not None else None
        if closed is not None:
            if inst.healthy or not inst.checked or inst.last_error != closed:
                log.info("comfy instance not usable", instance=inst.name, reason=closed)
            inst.healthy = False
            inst.last_error = closed
            inst.checked = True
            return
        try:
            stats = await inst.client.system_stats()
            system = stats.get("system")
            if isinstance(system, dict):
                inst.version = str(system.get("comfyui_version") or "") or None
            devices = stats.get("devices")
            inst.devices = (
                [d for d in devices if isinstance(d, dict)] if isinstance(devices, list) else []
            )
            now = time.monotonic()
            if force_info or not inst.object_info or now - inst.info_at > self.info_refresh_s:
                inst.object_info = await inst.client.object_info()
                inst.models = models_in(inst.object_info)
                inst.reports = template_reports(inst.object_info)
                inst.info_at = now
                bad = {k: r for k, r in inst.reports.items() if not r.ok}
                if bad:
                    log.warning(
                        "comfy templates not runnable on instance",
                        instance=inst.name,
                        problems={k: r.model_dump() for k, r in bad.items()},
                    )
            came_up = not inst.healthy
            inst.healthy = True
            inst.last_error = None
            inst.socket.ensure_running()
            if came_up:
                log.info("comfy instance healthy", instance=inst.name, version=inst.version)
                self.epoch += 1
                for wake in self._wakes:
                    wake()
        except (httpx2.HTTPError, errors.UpstreamError, ValueError) as exc:
            if inst.healthy or not inst.checked:
                log.warning("comfy instance down", instance=inst.name, error=str(exc))
            inst.healthy = False
            inst.last_error = str(exc) or type(exc).__name__
        finally:
            inst.checked = True

    def get(self, name: str | None) -> ComfyInstance | None:
        return self.instances.get(name or "")

    def waiting_reason(self) -> str | None:
        """Why no job can be placed now (no instance is up), or None."""
        if any(i.healthy for i in self.instances.values()):
            return None
        down = ", ".join(
            f"{i.name}: {i.last_error or 'not checked yet'}" for i in self.instances.values()
        )
        return f"{WAITING}: none is reachable ({down})"

    def pick(self, model: str | None, exclude: set[str] | None = None) -> ComfyInstance:
        """The least busy healthy instance that has ``model``. None up, or the model
        only on instances that are down: :class:`errors.WaitForBackend`."""
        candidates = [i for i in self.instances.values() if i.name not in (exclude or set())]
        healthy = [i for i in candidates if i.healthy]
        if not healthy:
            raise errors.WaitForBackend(self.waiting_reason() or f"{WAITING}: none is reachable")
        if model is not None:
            having = [i for i in healthy if model in i.models]
            if not having:
                down = [i.name for i in candidates if not i.healthy and model in i.models]
                if down:
                    raise errors.WaitForBackend(
                        f"{WAITING} that has {model!r}: {', '.join(down)} is down"
                    )
                raise errors.UpstreamError(
                    Code.MISSING_MODEL,
                    f"no healthy ComfyUI instance has {model!r}",
                    model=model,
                    instances=[i.name for i in healthy],
                )
            healthy = having
        return min(healthy, key=lambda i: (i.in_flight / max(i.config.max_in_flight, 1), i.name))

    def statuses(self) -> list[InstanceStatus]:
        return [i.status() for i in self.instances.values()]


# --- the backends ---------------------------------------------------------------------


class ComfyBackend(Backend):
    """One job kind (``sdxl``, ``sd35``, ``svd`` or raw ``comfy``) on the shared pool."""

    def __init__(
        self,
        kind: str,
        pool: ComfyPool | None,
        inputs: InputStore,
        *,
        deadline_s: float = 1800.0,
        reconcile_interval_s: float = 5.0,
        disabled_reason: str | None = None,
        user_workflows: dict[str, UserWorkflow] | None = None,
        max_output_bytes: int = 1024 * 1024 * 1024,
        download_timeout_s: float = 300.0,
    ) -> None:
        self.name = kind
        self.max_output_bytes = max_output_bytes
        self.download_timeout_s = download_timeout_s
        self.user_workflows = user_workflows or {}
        # prompts this process just posted: their first reconcile can wait an interval
        # (a re-attached prompt is reconciled at once, its events may be lost)
        self._fresh: set[str] = set()
        self.pool = pool
        self.inputs = inputs
        self.simulated = bool(pool and pool.simulated)
        self._deadline_s = deadline_s
        self.reconcile_interval_s = reconcile_interval_s
        self._disabled_reason = disabled_reason if pool is None else None

    @property
    def enabled(self) -> bool:
        return self.pool is not None

    @property
    def disabled_reason(self) -> str | None:
        return self._disabled_reason

    def _pool(self) -> ComfyPool:
        if self.pool is None:
            raise errors.BackendDisabled(f"{self.name} is disabled: {self._disabled_reason}")
        return self.pool

    def limit_groups(self, model: str) -> Sequence[tuple[str, int]]:
        return [("comfy", self._pool().capacity if self.pool else 1)]

    def waiting_reason(self) -> str | None:
        return self.pool.waiting_reason() if self.pool is not None else None

    @property
    def availability_epoch(self) -> int:
        return self.pool.epoch if self.pool is not None else 0

    def on_available(self, wake: Callable[[], None]) -> None:
        if self.pool is not None:
            self.pool.on_available(wake)

    def release(self, handle: UpstreamHandle) -> None:
        inst = self.pool.get(handle.instance) if self.pool is not None else None
        self._fresh.discard(handle.task_id)
        if inst is not None:
            inst.socket.unsubscribe(handle.task_id)
            inst.active.discard(handle.task_id)

    def default_deadline_s(self) -> float:
        return self._deadline_s

    def prepare(self, params: dict[str, JsonValue]) -> dict[str, JsonValue]:
        if self.name == "workflow":
            wf = self.user_workflows.get(str(params.get("name")))
            inputs = params.get("inputs")
            if wf is not None and isinstance(inputs, dict):
                spec = wf.params.get("seed")
                if spec is not None and spec.type == "integer" and inputs.get("seed") is None:
                    params = {**params, "inputs": {**inputs, "seed": random.randint(0, 2**53)}}
            return params
        if self.name != "comfy" and params.get("seed") is None:
            params = {**params, "seed": random.randint(0, 2**53)}
        return params

    def _params(self, job: Job) -> BaseModel:
        cls = PARAMS_BY_BACKEND[self.name]
        tag = "raw" if self.name == "comfy" else self.name
        return cls.model_validate({**job.params, "model": tag})

    def plan(self, job: Job) -> UpstreamHandle:
        params = self._params(job)
        model = (
            None
            if isinstance(params, ComfyRawParams | WorkflowParams)
            else model_file(self.name, params)
        )
        inst = self._pool().pick(model)
        prompt_id = str(uuid.uuid4())
        inst.active.add(prompt_id)  # until release(): counted from now on
        return UpstreamHandle(
            task_id=prompt_id, instance=inst.name, client_id=inst.socket.client_id
        )

    async def submit(self, job: Job, planned: UpstreamHandle | None = None) -> Submitted:
        assert planned is not None and planned.instance is not None
        inst = self._pool().get(planned.instance)
        if inst is None:
            raise errors.Requeue(f"instance {planned.instance} is no longer configured")
        posted = False
        try:
            params = self._params(job)
            if isinstance(params, ComfyRawParams):
                workflow: dict[str, JsonValue] = dict(params.workflow)
            elif isinstance(params, WorkflowParams):
                workflow = dict(await self._user_workflow(inst, params))
            else:
                image_name = None
                if isinstance(params, SvdParams):
                    image_name = await self._upload(inst, params.init_image)
                raw_seed = job.params.get("seed")
                seed = raw_seed if isinstance(raw_seed, int) else 0
                workflow = dict(build_prompt(self.name, params, seed=seed, image_name=image_name))
            queue = inst.socket.subscribe(planned.task_id)  # before the POST: no event missed
            del queue
            await self._post(inst, workflow, planned.task_id)
            self._fresh.add(planned.task_id)
            posted = True
        except (httpx2.TransportError, errors.TransientUpstreamError) as exc:
            # an upload before the POST could not reach the instance: nothing was queued
            self._pool().mark_down(inst, str(exc) or type(exc).__name__)
            raise errors.WaitForBackend(
                f"{WAITING}: {inst.name} could not be reached ({exc})"
            ) from exc
        finally:
            if not posted:  # refused, unreachable or canceled: it holds nothing there
                self.release(planned)
        return Submitted(handle=planned)

    async def _user_workflow(self, inst: ComfyInstance, params: WorkflowParams) -> Workflow:
        wf = self.user_workflows.get(params.name)
        if wf is None:
            raise errors.UpstreamError(
                Code.INVALID_WORKFLOW, f"no user workflow named {params.name!r} is loaded"
            )
        values = dict(params.inputs)
        for pname in wf.image_params():
            ref = values.get(pname)
            if isinstance(ref, str):
                values[pname] = await self._upload(inst, ref)
        return wf.build(values)

    async def _upload(self, inst: ComfyInstance, ref: str) -> str:
        path = await self.inputs.fetch(ref)  # from the output store on another node
        data = await asyncio.to_thread(path.read_bytes)
        return await inst.client.upload_image(data, f"orchestrator_{path.name}")

    async def _post(
        self, inst: ComfyInstance, workflow: dict[str, JsonValue], prompt_id: str
    ) -> None:
        attempts = 0
        while True:
            try:
                await inst.client.post_prompt(workflow, prompt_id, inst.socket.client_id)
                return
            except (httpx2.ConnectError, httpx2.ConnectTimeout) as exc:
                attempts += 1
                if attempts > MAX_CONNECT_RETRIES:
                    self._pool().mark_down(inst, str(exc) or type(exc).__name__)
                    raise errors.WaitForBackend(
                        f"{WAITING}: {inst.name} cannot be reached ({exc})"
                    ) from exc
            except (httpx2.TransportError, errors.TransientUpstreamError) as exc:
                # We chose the prompt id, so we can ask whether the POST got through.
                attempts += 1
                if await self._known(inst, prompt_id):
                    return
                if attempts > MAX_CONNECT_RETRIES:
                    self._pool().mark_down(inst, str(exc) or type(exc).__name__)
                    with contextlib.suppress(httpx2.HTTPError, errors.UpstreamError):
                        await inst.client.delete([prompt_id])  # in case it did get through
                    raise errors.WaitForBackend(
                        f"{WAITING}: {inst.name} failed the submit ({exc})"
                    ) from exc
            await asyncio.sleep(min(0.2 * 2**attempts, 3.0))

    async def _known(self, inst: ComfyInstance, prompt_id: str) -> bool:
        try:
            running, pending = await inst.client.queue()
            if prompt_id in running or prompt_id in pending:
                return True
            return await inst.client.history(prompt_id) is not None
        except (httpx2.HTTPError, errors.UpstreamError):
            return False

    async def wait(self, job: Job, handle: UpstreamHandle, progress: ProgressFn) -> Completed:
        inst = self._pool().get(handle.instance)
        if inst is None:
            raise errors.Requeue(f"instance {handle.instance} is no longer configured")
        prompt_id = handle.task_id
        inst.active.add(prompt_id)  # (re-attached: counted here from now on)
        queue = inst.socket.subscribe(prompt_id)
        seen_start = job.progress is not None
        unreachable_since: float | None = None
        try:
            next_check = time.monotonic()  # re-attached: reconcile at once
            if prompt_id in self._fresh:
                self._fresh.discard(prompt_id)
                next_check += self.reconcile_interval_s
            while True:
                ev = await next_event(queue, max(next_check - time.monotonic(), 0.0))
                if ev is None or ev.type in (RECONNECTED, DISCONNECTED):
                    next_check = time.monotonic() + self.reconcile_interval_s
                    try:
                        done = await self._reconcile(inst, prompt_id, seen_start)
                        unreachable_since = None
                    except (httpx2.TransportError, errors.TransientUpstreamError) as exc:
                        unreachable_since = unreachable_since or time.monotonic()
                        if time.monotonic() - unreachable_since > 3 * self.reconcile_interval_s:
                            self._pool().mark_down(inst, str(exc) or type(exc).__name__)
                            if not seen_start:
                                raise errors.WaitForBackend(
                                    f"{WAITING}: {inst.name} became unreachable before the "
                                    "prompt started"
                                ) from exc
                            raise errors.UpstreamError(
                                Code.BACKEND_UNAVAILABLE,
                                f"ComfyUI {inst.name} became unreachable while running the prompt",
                            ) from exc
                        continue
                    if done is not None:
                        return done
                    continue
                if ev.type in ("execution_start", "executing", "execution_cached"):
                    if not seen_start:
                        seen_start = True
                        await progress(0.0, "started")
                elif ev.type == "progress":
                    value, maximum = ev.data.get("value"), ev.data.get("max")
                    if (
                        isinstance(value, int | float)
                        and isinstance(maximum, int | float)
                        and maximum
                    ):
                        await progress(min(float(value) / float(maximum), 0.99), None)
                elif ev.type == "execution_error":
                    raise execution_error(ev.data)
                elif ev.type == "execution_interrupted":
                    raise errors.UpstreamError(
                        Code.INTERRUPTED, f"the prompt was interrupted on ComfyUI {inst.name}"
                    )
                if ev.type == "execution_success" or (
                    ev.type == "executing" and ev.data.get("node") is None
                ):
                    done = await self._settle(inst, prompt_id)
                    if done is not None:
                        return done
        finally:
            inst.socket.unsubscribe(prompt_id)

    async def _settle(self, inst: ComfyInstance, prompt_id: str) -> Completed | None:
        """After the end signal the history entry is there (retry briefly if not)."""
        for _ in range(HISTORY_SETTLE_TRIES):
            entry = await inst.client.history(prompt_id)
            if entry is not None:
                return self._completed(inst, entry)
            await asyncio.sleep(0.05)
        return None

    async def _reconcile(
        self, inst: ComfyInstance, prompt_id: str, seen_start: bool
    ) -> Completed | None:
        entry = await inst.client.history(prompt_id)
        if entry is not None:
            return self._completed(inst, entry)
        running, pending = await inst.client.queue()
        if prompt_id in running or prompt_id in pending:
            return None
        entry = await inst.client.history(prompt_id)  # it may have finished just now
        if entry is not None:
            return self._completed(inst, entry)
        if seen_start:
            raise errors.UpstreamError(
                Code.PROMPT_LOST,
                f"the prompt vanished from ComfyUI {inst.name} after it started "
                "(server restart or history cleared); its outputs are lost",
            )
        with contextlib.suppress(httpx2.HTTPError, errors.UpstreamError):
            await inst.client.delete([prompt_id])  # in case a late POST lands
        raise errors.Requeue(
            f"the prompt is neither queued nor in the history of ComfyUI {inst.name} "
            "(deleted, or the server restarted) and nothing ran",
            counts=False,
        )

    def _completed(self, inst: ComfyInstance, entry: dict[str, JsonValue]) -> Completed:
        outcome = read_history(entry)
        gpu_s = history_gpu_seconds(entry)
        if outcome.error is not None:
            if gpu_s is not None:
                outcome.error.extra.setdefault("gpu_seconds", gpu_s)
            raise outcome.error
        if not outcome.files:
            raise errors.UpstreamError(
                Code.EXECUTION_ERROR, "the workflow produced no files", gpu_seconds=gpu_s
            )
        return Completed(outcome.files, {"instance": inst.name, "gpu_seconds": gpu_s})

    async def fetch_outputs(
        self, job: Job, handle: UpstreamHandle, completed: Completed, store: OutputStore
    ) -> list[NewOutput]:
        inst = self._pool().get(handle.instance)
        if inst is None:
            raise errors.UpstreamError(Code.PROMPT_LOST, f"instance {handle.instance} is gone")
        outputs = []
        for n, remote in enumerate(completed.files):
            async for attempt in stamina.retry_context(
                on=(httpx2.TransportError, errors.TransientUpstreamError),
                attempts=5,
                wait_max=2.0,
            ):
                with attempt:
                    outputs.append(
                        await store.save(
                            job,
                            n,
                            inst.client.view(remote.ref),
                            mime_type=remote.mime_type,
                            extra_metadata={"instance": inst.name, "prompt_id": handle.task_id},
                            max_bytes=self.max_output_bytes,
                            timeout_s=self.download_timeout_s,
                        )
                    )
        return outputs

    async def cancel(
        self, job: Job, handle: UpstreamHandle | None, *, submit_started: bool = False
    ) -> CancelOutcome:
        # The prompt id is planned and stored before the submit, so a handle is
        # normally there once a submit started.
        if handle is None and submit_started:
            return CancelOutcome(False, "canceled while the prompt was sent to ComfyUI; it may run")
        if handle is None or self.pool is None:
            return CancelOutcome(True, "canceled before anything was sent to ComfyUI")
        inst = self.pool.get(handle.instance)
        if inst is None:
            return CancelOutcome(False, f"instance {handle.instance} is no longer configured")
        prompt_id = handle.task_id
        try:
            running, pending = await inst.client.queue()
            if prompt_id in pending:
                await inst.client.delete([prompt_id])
                return CancelOutcome(True, f"removed from the queue of ComfyUI {inst.name}")
            if prompt_id not in running:
                return CancelOutcome(True, f"not queued or running on ComfyUI {inst.name}")
            await inst.client.interrupt(prompt_id)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                running, _ = await inst.client.queue()
                if prompt_id not in running:
                    return CancelOutcome(True, f"interrupted on ComfyUI {inst.name}")
            return CancelOutcome(False, f"ComfyUI {inst.name} did not confirm the interrupt")
        except (httpx2.HTTPError, errors.UpstreamError) as exc:
            return CancelOutcome(False, f"could not reach ComfyUI {inst.name} to cancel: {exc}")

    async def health(self) -> BackendHealth:
        if self.pool is None:
            return BackendHealth(
                name=self.name,
                enabled=False,
                simulated=False,
                status="disabled",
                reason=self._disabled_reason,
            )
        statuses = self.pool.statuses()
        up = [s for s in statuses if s.healthy]
        runnable = [
            s
            for s in up
            if self.name == "comfy" or s.templates.get(self.name, WorkflowReport(ok=True)).ok
        ]
        status: Literal["ok", "degraded", "down"] = (
            "ok" if runnable and len(up) == len(statuses) else "degraded" if runnable else "down"
        )
        reason = None
        if not up:
            why = "; ".join(f"{s.name}: {s.last_error}" for s in statuses if s.last_error)
            reason = "no ComfyUI instance is reachable" + (f" ({why})" if why else "")
        elif not runnable:
            reason = f"no reachable instance has the nodes and models for {self.name}"
        return BackendHealth(
            name=self.name,
            enabled=True,
            simulated=self.simulated,
            status=status,
            reason=reason,
            details={
                "instances": [s.name for s in up],
                "in_flight": sum(s.in_flight for s in statuses),
            },
        )
