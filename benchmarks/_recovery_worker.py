"""A worker process for the host-restart benchmark: `--role pub` publishes numbered messages
on command, `--role sub` records when each one arrives (and every copy of it).

Variants as in `_hop_worker`: `bare` is stock AutoGen 0.7.5's `GrpcWorkerAgentRuntime` and a
plain dataclass; `roundtable` is `roundtable.runtime.connect_worker` and its `StreamChunk`.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import defaultdict
from typing import Any

from autogen_core import AgentRuntime, MessageContext, RoutedAgent, TopicId, TypeSubscription, message_handler

from roundtable.messages import StreamChunk

from ._control import serve_commands
from ._hop_worker import Ping, connect, index_of, make_message

TOPIC = "bench_recovery"
SOURCE = "restart"
PUBLISH_TIMEOUT = 10.0


class Arrivals:
    """Every copy of every message the subscriber got: index -> arrival times (monotonic)."""

    def __init__(self) -> None:
        self.times: dict[int, list[float]] = defaultdict(list)
        self.changed = asyncio.Event()

    def add(self, index: int) -> None:
        self.times[index].append(time.monotonic())
        self.changed.set()

    async def wait(self, indices: list[int], timeout: float, settle: float) -> dict[str, Any]:
        """Wait, bounded, until every index has arrived; then `settle` more seconds for late
        copies. Returns the first arrival of each index that came, and the copies of all."""
        deadline = time.monotonic() + timeout
        wanted = set(indices)
        while not wanted <= self.times.keys():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except asyncio.TimeoutError:
                break
        await asyncio.sleep(settle)
        first = {i: self.times[i][0] for i in indices if i in self.times}
        copies = {i: len(times) for i, times in self.times.items()}
        return {"first": first, "copies": copies}


class Receiver(RoutedAgent):
    def __init__(self, arrivals: Arrivals) -> None:
        super().__init__("records what arrives")
        self._arrivals = arrivals

    @message_handler
    async def on_ping(self, message: Ping, ctx: MessageContext) -> None:
        self._arrivals.add(index_of(message))

    @message_handler
    async def on_chunk(self, message: StreamChunk, ctx: MessageContext) -> None:
        self._arrivals.add(index_of(message))


def state(runtime: AgentRuntime) -> dict[str, Any]:
    """Whether a roundtable worker has a live stream, and how often it reconnected; stock
    AutoGen's worker cannot tell (None)."""
    connection = getattr(runtime, "connection", None)
    if connection is None:
        return {"connected": None, "reconnects": None}
    return {"connected": connection.connected, "reconnects": connection.reconnects}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", choices=["bare", "roundtable"], required=True)
    parser.add_argument("--role", choices=["pub", "sub"], required=True)
    parser.add_argument("--host", required=True)
    args = parser.parse_args()
    runtime = await connect(args.variant, args.host)
    arrivals = Arrivals()
    if args.role == "sub":
        await Receiver.register(runtime, "bench_receiver", lambda: Receiver(arrivals))
        await runtime.add_subscription(TypeSubscription(TOPIC, "bench_receiver"))

    async def handle(command: dict[str, Any]) -> dict[str, Any]:
        if command["cmd"] == "state":
            return state(runtime)
        if command["cmd"] == "publish" and args.role == "pub":
            began = time.monotonic()
            for index in command["indices"]:
                message = make_message(args.variant, int(index))
                # While the host is down roundtable's worker only queues it in its outbox.
                await asyncio.wait_for(runtime.publish_message(message, TopicId(TOPIC, SOURCE)), PUBLISH_TIMEOUT)
            return {"published": len(command["indices"]), "seconds": time.monotonic() - began}
        if command["cmd"] == "wait" and args.role == "sub":
            got = await arrivals.wait(
                [int(i) for i in command["indices"]], float(command["timeout"]), float(command["settle"])
            )
            return {"first": {str(k): v for k, v in got["first"].items()}, "copies": got["copies"]}
        raise ValueError(f"unknown command {command['cmd']!r} for a {args.role}")

    await serve_commands(handle)


if __name__ == "__main__":
    asyncio.run(main())
