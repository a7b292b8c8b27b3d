"""Serving HTTP from a roundtable process (the page, the A2A endpoint): our socket, uvicorn, our signals."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Any

from .runtime import announce_ready, shutdown_on_signal
from .wire import HostUnreachable


def listen(host: str, port: int, what: str) -> socket.socket:
    """Bind here rather than in uvicorn, which answers a busy port with sys.exit from inside the loop."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as error:
        raise HostUnreachable(f"{what} cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.set_inheritable(True)
    return sock


async def serve_http(app: Any, sock: socket.socket, ready: str) -> None:
    """Serve until SIGINT or SIGTERM, announcing `ready` once the server answers."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # Ours (below) stop the server and let the worker stop after it; uvicorn's would
            # re-raise the signal after its shutdown and kill the process first.
            yield

    server = Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=3, lifespan="on"))
    stop = asyncio.Event()
    with shutdown_on_signal(stop):
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not serving.done():
            await asyncio.wait({serving}, timeout=0.05)
        if server.started:
            announce_ready(ready)
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
        server.should_exit = True
        await serving
