"""roundtable's host (`roundtable.runtime.start_host`, logging as `roundtable host` sets it up)
that also counts what it moves: messages and bytes published per topic type, and copies
delivered to subscribers. The counting is a protobuf ByteSize per message.

It also notes when each ChatMessage reaches it from the manager: the host is on every
message's path, so these times are the turn's own pace, whatever an observer's lag.

The counters wrap the host's `HostServicer.receive` (every message a client sent) and
`Client.send` (every copy queued for a client).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import defaultdict
from typing import Any

from autogen_ext.runtimes.grpc.protos import agent_worker_pb2

from roundtable.host import Client, HostServicer, start_host
from roundtable.messages import GROUP_CHAT
from roundtable.runtime import setup_logging
from roundtable.wire import SCHEMA

from ._control import serve_commands

Counts = defaultdict[str, list[int]]  # topic type -> [messages, JSON payload bytes, envelope bytes]


def _event(message: Any) -> Any:
    if isinstance(message, agent_worker_pb2.Message) and message.WhichOneof("message") == "cloudEvent":
        return message.cloudEvent
    return None


def _add(counts: Counts, message: Any) -> None:
    event = _event(message)
    if event is None:
        return
    entry = counts[event.type]
    entry[0] += 1
    entry[1] += len(event.binary_data)
    entry[2] += message.ByteSize()


def install_counters(published: Counts, delivered: Counts, chat_times: list[list[Any]]) -> None:
    receive = HostServicer.receive
    send = Client.send

    def counting_receive(self: HostServicer, client: Client, message: Any) -> None:
        arrived = time.monotonic()
        _add(published, message)
        event = _event(message)
        if event is not None and event.type == GROUP_CHAT:
            schema = event.attributes[SCHEMA].ce_string
            if schema.endswith("ChatMessage"):
                data = json.loads(event.binary_data)
                chat_times.append([arrived, data["conversation_id"], data["seq"]])
        receive(self, client, message)

    def counting_send(self: Client, message: Any, size: int) -> bool:
        _add(delivered, message)
        return send(self, message, size)

    HostServicer.receive = counting_receive  # type: ignore[method-assign]
    Client.send = counting_send  # type: ignore[method-assign]


async def main(address: str) -> None:
    setup_logging("host", "INFO")
    published: Counts = defaultdict(lambda: [0, 0, 0])
    delivered: Counts = defaultdict(lambda: [0, 0, 0])
    chat_times: list[list[Any]] = []
    install_counters(published, delivered, chat_times)
    host = await start_host(address)

    async def handle(command: dict[str, Any]) -> dict[str, Any]:
        if command["cmd"] == "chat_times":
            taken = list(chat_times)
            chat_times.clear()
            return {"times": taken}
        return {"published": dict(published), "delivered": dict(delivered)}

    try:
        await serve_commands(handle)
    finally:
        await host.stop(grace=1)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
