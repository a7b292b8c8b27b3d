"""Host and worker construction: the one place that wires AutoGen's gRPC runtime.

Also the shared process plumbing every role needs: logging, the readiness line
that `roundtable up` waits for, and shutdown on a signal on every platform.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
from autogen_core._serialization import try_get_known_serializers_for_type
from autogen_ext.runtimes.grpc import GrpcWorkerAgentRuntime, GrpcWorkerAgentRuntimeHost

from .messages import WIRE_TYPES

log = logging.getLogger("roundtable")

#: Printed once a process is connected and serving; `roundtable up` waits for it.
READY_MARKER = "roundtable ready:"

#: gRPC message size limit, the same on host and worker so neither side kills the other's stream.
MAX_GRPC_MESSAGE_BYTES = 16 * 1024 * 1024
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_BYTES),
]


class HostUnreachable(Exception):
    """The gRPC host could not be reached; the message says where and what to check."""


def setup_logging(role: str, level: str = "INFO") -> None:
    """One format for every process. AutoGen's own loggers stay at WARNING: at INFO they
    format every message they move, which costs time even when nobody reads it."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s %(levelname)-7s {role}: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("autogen_core", "autogen_core.events", "autogen_agentchat", "httpx", "openai", "grpc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def announce_ready(what: str) -> None:
    print(f"{READY_MARKER} {what}", flush=True)


async def start_host(address: str) -> GrpcWorkerAgentRuntimeHost:
    host = GrpcWorkerAgentRuntimeHost(address=address, extra_grpc_config=GRPC_OPTIONS)
    host.start()
    # `start` only schedules the server; make sure the port is really bound before
    # saying so, and turn a bind failure into a clear error.
    await asyncio.sleep(0)
    for _ in range(100):
        if await _port_open(address, 0.1):
            return host
        task = host._serve_task
        if task is not None and task.done():
            error = task.exception()
            raise HostUnreachable(f"cannot listen on {address}: {error}")
        await asyncio.sleep(0.05)
    raise HostUnreachable(f"cannot listen on {address}: the port did not open within 5 s")


async def _port_open(address: str, timeout: float) -> bool:
    host, _, port = address.rpartition(":")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]") or "127.0.0.1", int(port)), timeout)
    except (OSError, asyncio.TimeoutError, ValueError):
        return False
    writer.close()
    return True


async def probe_host(address: str, timeout: float) -> None:
    """Fail fast with a clear message when nothing answers gRPC at `address`."""
    channel = grpc.aio.insecure_channel(address)
    try:
        await asyncio.wait_for(channel.channel_ready(), timeout)
    except asyncio.TimeoutError:
        raise HostUnreachable(
            f"cannot reach the roundtable host at {address} within {timeout:g} s: is `roundtable host` running there?"
        ) from None
    finally:
        await channel.close()


async def connect_worker(address: str, timeout: float = 10.0) -> GrpcWorkerAgentRuntime:
    """A started worker runtime that knows every roundtable message type."""
    await probe_host(address, timeout)
    runtime = GrpcWorkerAgentRuntime(host_address=address, extra_grpc_config=GRPC_OPTIONS)
    for message_type in WIRE_TYPES:
        runtime.add_message_serializer(try_get_known_serializers_for_type(message_type))
    try:
        await asyncio.wait_for(runtime.start(), timeout)
    except (asyncio.TimeoutError, grpc.aio.AioRpcError) as error:
        raise HostUnreachable(f"cannot open a stream to the roundtable host at {address}: {error}") from None
    return runtime


async def stop_worker(runtime: GrpcWorkerAgentRuntime) -> None:
    try:
        await asyncio.wait_for(runtime.stop(), 5)
    except (Exception, asyncio.CancelledError) as error:  # a dead host makes stop() raise; we are leaving anyway
        log.debug("worker stop: %s", error)


@contextmanager
def shutdown_on_signal(event: asyncio.Event) -> Iterator[None]:
    """Set `event` on SIGINT or SIGTERM. Uses `signal.signal`, which works on Windows too,
    unlike `loop.add_signal_handler` (AutoGen issue 5760)."""
    loop = asyncio.get_running_loop()
    signals = [signal.SIGINT] + ([signal.SIGTERM] if hasattr(signal, "SIGTERM") else [])
    previous = {sig: signal.getsignal(sig) for sig in signals}

    def handler(signum: int, frame: object) -> None:
        loop.call_soon_threadsafe(event.set)

    for sig in signals:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


async def serve_until_signal() -> None:
    stop = asyncio.Event()
    with shutdown_on_signal(stop):
        await stop.wait()
