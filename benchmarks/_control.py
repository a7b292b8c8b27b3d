"""The child side of the benchmark's control channel: JSON commands on stdin, one JSON
reply line each on stdout. Children print nothing else on stdout."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

READY = "BENCH-READY"
REPLY = "BENCH "

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def say_ready() -> None:
    print(READY, flush=True)


def reply(result: dict[str, Any]) -> None:
    """One line, written whole. The benchmark runs children unbuffered, where a write to a pipe
    that a signal interrupts (py-spy's sampling, for --profile) can end part way: print() would
    drop the rest of a long line (seen: a 185 kB reply cut at 128 kB), so what is left is
    written again until the line is out."""
    sys.stdout.flush()
    line = memoryview((REPLY + json.dumps(result) + "\n").encode())
    while line:
        line = line[os.write(sys.stdout.fileno(), line) :]


async def serve_commands(handler: Handler) -> None:
    """Answer commands until stdin closes or says {"cmd": "quit"}. A failing command
    answers {"bench_error": ...} instead of killing the process."""
    loop = asyncio.get_running_loop()
    say_ready()
    while True:
        # A thread blocked in read() holds no GIL, so it does not disturb the measurement.
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        command: dict[str, Any] = json.loads(line)
        if command.get("cmd") == "quit":
            reply({"ok": True})
            return
        try:
            result = await handler(command)
        except Exception as error:
            traceback.print_exc(file=sys.stderr)
            result = {"bench_error": f"{type(error).__name__}: {error}"}
        reply(result)
