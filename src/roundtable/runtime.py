"""Process plumbing every role shares: one logging setup, the readiness line that `roundtable up`
waits for, and shutdown on a signal on every platform. (The host is host.py, the worker worker.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("roundtable")

#: Printed once a process is connected and serving; `roundtable up` waits for it.
READY_MARKER = "roundtable ready:"


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
    for noisy in ("autogen_core", "autogen_core.events", "autogen_agentchat", "httpx", "openai", "grpc", "mcp", "a2a"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def announce_ready(what: str) -> None:
    print(f"{READY_MARKER} {what}", flush=True)


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


async def unless_stopped(work: Awaitable[Any], stop: asyncio.Event) -> bool:
    """Wait for `work` or a stop request: True when `work` ended first (what it raised is raised
    here), False (and `work` cancelled) when the stop came first."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait([task, stopped], return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if task.done():
        task.result()
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


async def serve_until_signal() -> None:
    stop = asyncio.Event()
    with shutdown_on_signal(stop):
        await stop.wait()


def child_setup() -> Callable[[], None] | None:
    """A preexec_fn for a server we run (the model's, NATS): its own process group, and on Linux a SIGKILL when we die.

    Own group: a terminal's Ctrl-C then reaches only us and we stop the server with one
    SIGTERM. uvicorn re-raises a SIGINT it caught, which ends in a KeyboardInterrupt
    traceback, and a second SIGINT (ours plus the terminal's) makes it skip its shutdown.
    Parent-death signal: even a SIGKILLed roundtable leaves no server behind.
    """
    if sys.platform == "win32":
        return None
    prctl: Callable[..., int] | None = None
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork, not in the child
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:
        os.setpgid(0, 0)
        if prctl is not None:
            prctl(pr_set_pdeathsig, signal.SIGKILL)
            if os.getppid() != parent:  # we died before prctl took effect
                os._exit(1)

    return preexec
