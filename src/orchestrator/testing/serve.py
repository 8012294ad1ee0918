"""Run an ASGI app on a free local port, in a thread or as a task, for tests and demos.

The listening socket is bound (to port 0) before uvicorn starts and handed to it, so the port is
known up front and nothing can grab it in between. Both helpers wait until uvicorn reports that it
started, and on exit they ask it to stop, wait for it, and close whatever connections are still
open, so nothing leaks a socket or a `ResourceWarning` (pytest runs with `filterwarnings=error`).

Requests still running when the server stops get `graceful_timeout_s` to finish; after that
uvicorn cancels them. That keeps a deliberately hung request (see `fake_bfl`'s `hang` fault) from
blocking shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Literal

import uvicorn
from starlette.types import ASGIApp

__all__ = ["LifespanMode", "ServedApp", "serve_in_task", "serve_in_thread"]

LifespanMode = Literal["on", "off", "auto"]
TlsFiles = tuple[str, str]  # certificate chain (PEM), private key (PEM)

_POLL_S = 0.005


@dataclass(frozen=True)
class ServedApp:
    """Where a served app listens."""

    host: str
    port: int
    server: uvicorn.Server = field(repr=False, compare=False)
    scheme: str = "http"

    @property
    def base_url(self) -> str:
        """Origin of the server, e.g. ``http://127.0.0.1:54321`` (no trailing slash)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


class _Server(uvicorn.Server):
    """A uvicorn server that leaves the process's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted sockets whose proto is
    # IPPROTO_TCP, and without it keep-alive requests stall ~40 ms (Nagle + delayed ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.bind((host, 0))
    except BaseException:
        sock.close()
        raise
    return sock


def _make_server(
    app: ASGIApp,
    host: str,
    lifespan: LifespanMode,
    graceful_timeout_s: int,
    tls: TlsFiles | None = None,
) -> tuple[_Server, socket.socket]:
    config = uvicorn.Config(
        app,
        ssl_certfile=tls[0] if tls else None,
        ssl_keyfile=tls[1] if tls else None,
        host=host,
        lifespan=lifespan,
        log_config=None,
        access_log=False,
        loop="asyncio",
        http="h11",
        timeout_graceful_shutdown=graceful_timeout_s,
    )
    return _Server(config), _bind(host)


async def _serve(server: _Server, sock: socket.socket) -> None:
    """Serve until told to stop, then close every connection uvicorn left open."""
    try:
        await server.serve(sockets=[sock])
    except SystemExit as exc:  # uvicorn exits on a failed lifespan startup
        raise RuntimeError(f"uvicorn failed to start (exit code {exc.code})") from exc
    finally:
        for conn in list(server.server_state.connections):
            transport = getattr(conn, "transport", None)
            if isinstance(transport, asyncio.BaseTransport) and not transport.is_closing():
                transport.close()
        # Let the transports' close callbacks run before the loop goes away.
        await asyncio.sleep(0)
        await asyncio.sleep(0)


def _served(server: _Server, sock: socket.socket, host: str) -> ServedApp:
    port: int = sock.getsockname()[1]
    scheme = "https" if server.config.ssl_certfile else "http"
    return ServedApp(host=host, port=port, server=server, scheme=scheme)


@contextlib.contextmanager
def serve_in_thread(
    app: ASGIApp,
    *,
    host: str = "127.0.0.1",
    lifespan: LifespanMode = "auto",
    graceful_timeout_s: int = 1,
    startup_timeout_s: float = 10.0,
    shutdown_timeout_s: float = 10.0,
    tls: TlsFiles | None = None,
) -> Iterator[ServedApp]:
    """Serve `app` with uvicorn in a daemon thread that runs its own event loop
    (over TLS when ``tls`` names a certificate chain and key file)."""
    server, sock = _make_server(app, host, lifespan, graceful_timeout_s, tls)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(_serve(server, sock))
        except BaseException as exc:  # handed to the waiting thread below
            errors.append(exc)

    thread = threading.Thread(target=run, name=f"serve-{sock.getsockname()[1]}", daemon=True)
    try:
        thread.start()
        deadline = time.monotonic() + startup_timeout_s
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("server thread exited during startup") from (
                    errors[0] if errors else None
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"server did not start within {startup_timeout_s} s")
            time.sleep(_POLL_S)
        yield _served(server, sock, host)
    finally:
        server.should_exit = True
        if thread.is_alive():
            thread.join(shutdown_timeout_s)
        if thread.is_alive():
            server.force_exit = True
            thread.join(2.0)
        sock.close()
    if thread.is_alive():  # only reached when the body did not raise
        raise RuntimeError("server thread did not stop")


@contextlib.asynccontextmanager
async def serve_in_task(
    app: ASGIApp,
    *,
    host: str = "127.0.0.1",
    lifespan: LifespanMode = "auto",
    graceful_timeout_s: int = 1,
    startup_timeout_s: float = 10.0,
    shutdown_timeout_s: float = 10.0,
) -> AsyncIterator[ServedApp]:
    """Serve `app` with uvicorn as an asyncio task in the running event loop."""
    server, sock = _make_server(app, host, lifespan, graceful_timeout_s)
    task = asyncio.create_task(_serve(server, sock), name=f"serve-{sock.getsockname()[1]}")
    try:
        deadline = time.monotonic() + startup_timeout_s
        while not server.started:
            if task.done():
                task.result()  # raises the startup error
                raise RuntimeError("server task exited during startup")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server did not start within {startup_timeout_s} s")
            await asyncio.sleep(_POLL_S)
        yield _served(server, sock, host)
    finally:
        server.should_exit = True
        done, _ = await asyncio.wait({task}, timeout=shutdown_timeout_s)
        if not done:
            server.force_exit = True
            done, _ = await asyncio.wait({task}, timeout=2.0)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        sock.close()
    if task.done() and not task.cancelled():  # only reached when the body did not raise
        exc = task.exception()
        if exc is not None:
            raise exc
