"""The benchmark's chat client: starts conversations through a real host and watches them.

`--mode turns`: roundtable's own `ConversationObserver` (what the terminal and the page use)
with a sink that timestamps every event of one long conversation.
`--mode concurrent`: a raw recorder of every ChatMessage copy that arrives, duplicates
included, for many conversations at once; the observer would hide duplicates by id.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from autogen_core import AgentRuntime, MessageContext, RoutedAgent, TypeSubscription, message_handler

from roundtable.messages import (
    CONTROL,
    GROUP_CHAT,
    ChatMessage,
    ConversationEnded,
    SpeakerSelected,
    StartConversation,
    new_id,
    topic,
)
from roundtable.observer import register_observer
from roundtable.runtime import setup_logging
from roundtable.worker import connect_worker

from ._control import serve_commands
from ._sink import QuietSink

RETRY_START_AFTER = 5.0


@dataclass
class Followed:
    """One conversation as the driver saw it."""

    id: str
    task: str
    started: float = 0.0
    starts: int = 0
    heard: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    events: list[list[Any]] = field(default_factory=list)  # [kind, time, ...]
    seqs: list[int] = field(default_factory=list)  # every ChatMessage copy received
    end: list[Any] = field(default_factory=list)


class TimingSink(QuietSink):
    """Timestamps what the observer hands on, for the conversations it is given."""

    def __init__(self, followed: dict[str, Followed]) -> None:
        self._followed = followed

    def _record(self, conversation_id: str, *event: Any) -> Followed | None:
        conv = self._followed.get(conversation_id)
        if conv is not None:
            conv.heard.set()
            conv.events.append([event[0], time.monotonic(), *event[1:]])
        return conv

    async def on_token(self, conversation_id: str, message_id: str, author: str, text: str) -> None:
        self._record(conversation_id, "token", message_id)

    async def on_message(self, message: ChatMessage, streamed: bool) -> None:
        conv = self._record(message.conversation_id, "message", message.seq, message.author, message.id)
        if conv is not None:
            conv.seqs.append(message.seq)

    async def on_speaker(self, event: SpeakerSelected) -> None:
        self._record(event.conversation_id, "speaker", event.speaker)

    async def on_ended(self, event: ConversationEnded) -> None:
        conv = self._record(event.conversation_id, "ended", event.reason, event.ok)
        if conv is not None:
            conv.end = [time.monotonic(), event.reason, event.ok]
            conv.ended.set()


class Recorder(RoutedAgent):
    """Every copy of every group-chat message, with no de-duplication."""

    def __init__(self, followed: dict[str, Followed]) -> None:
        super().__init__("records group chat traffic as it arrives")
        self._followed = followed

    @message_handler
    async def on_chat_message(self, message: ChatMessage, ctx: MessageContext) -> None:
        conv = self._followed.get(message.conversation_id)
        if conv is not None:
            conv.heard.set()
            conv.seqs.append(message.seq)
            conv.events.append(["message", time.monotonic(), message.seq])

    @message_handler
    async def on_speaker(self, message: SpeakerSelected, ctx: MessageContext) -> None:
        conv = self._followed.get(message.conversation_id)
        if conv is not None:
            conv.heard.set()

    @message_handler
    async def on_ended(self, message: ConversationEnded, ctx: MessageContext) -> None:
        conv = self._followed.get(message.conversation_id)
        if conv is not None and not conv.ended.is_set():
            conv.end = [time.monotonic(), message.reason, message.ok]
            conv.ended.set()


class Driver:
    def __init__(self, runtime: AgentRuntime) -> None:
        self.runtime = runtime
        self.followed: dict[str, Followed] = {}

    async def _start(self, conv: Followed) -> None:
        conv.starts += 1
        await self.runtime.publish_message(
            StartConversation(conversation_id=conv.id, task=conv.task), topic(CONTROL, conv.id)
        )

    async def run_conversations(self, count: int, task: str, timeout: float) -> tuple[list[Followed], float, float]:
        """Start `count` conversations at once; wait, bounded, until all have ended. Like the
        terminal chat, a start nobody answered is published again."""
        convs = [Followed(new_id(), f"{task} #{i}") for i in range(count)]
        for conv in convs:
            self.followed[conv.id] = conv
        began = time.monotonic()
        for conv in convs:
            conv.started = time.monotonic()
            await self._start(conv)
        deadline = began + timeout
        while not all(c.ended.is_set() for c in convs):
            now = time.monotonic()
            if now >= deadline:
                break
            for conv in convs:
                if not conv.heard.is_set() and now - conv.started > RETRY_START_AFTER * conv.starts:
                    await self._start(conv)
            pending = [asyncio.ensure_future(c.ended.wait()) for c in convs if not c.ended.is_set()]
            await asyncio.wait(pending, timeout=min(1.0, max(deadline - now, 0.01)), return_when="ALL_COMPLETED")
            for waiter in pending:
                waiter.cancel()
        finished = max((c.end[0] for c in convs if c.end), default=time.monotonic())
        for conv in convs:
            self.followed.pop(conv.id, None)
        return convs, began, finished

    async def turns(self, command: dict[str, Any]) -> dict[str, Any]:
        (conv,), began, _ = await self.run_conversations(1, str(command["task"]), float(command["timeout"]))
        return {"id": conv.id, "began": began, "events": conv.events, "end": conv.end, "starts": conv.starts}

    async def concurrent(self, command: dict[str, Any]) -> dict[str, Any]:
        expected = list(range(1, int(command["messages"]) + 1))
        convs, began, finished = await self.run_conversations(
            int(command["count"]), str(command["task"]), float(command["timeout"])
        )
        lost = duplicated = unfinished = failed = 0
        durations: list[float] = []
        for conv in convs:
            seen = set(conv.seqs)
            lost += sum(1 for seq in expected if seq not in seen)
            duplicated += len(conv.seqs) - len(seen)
            duplicated += sum(1 for seq in seen if seq not in expected)  # a number that should not exist
            if not conv.end:
                unfinished += 1
            elif not conv.end[2]:
                failed += 1
            if conv.end:
                durations.append(conv.end[0] - conv.started)
        return {
            "count": len(convs),
            "seconds": finished - began,
            "lost": lost,
            "duplicated": duplicated,
            "unfinished": unfinished,
            "failed": failed,
            "start_retries": sum(c.starts - 1 for c in convs),
            "durations": durations,
            "reasons": sorted({str(c.end[1]) for c in convs if c.end}),
        }

    async def soak(self, command: dict[str, Any]) -> dict[str, Any]:
        """`count` conversations, `concurrency` at a time; then a sample taken with nothing else
        running: the turn times of `sample` conversations one after another, and how long the
        host takes to add and remove a subscription (`changes` times)."""
        count, concurrency, timeout = int(command["count"]), int(command["concurrency"]), float(command["timeout"])
        unfinished = failed = 0
        for done in range(0, count, concurrency):
            convs, _, _ = await self.run_conversations(min(concurrency, count - done), "Soak", timeout)
            unfinished += sum(1 for c in convs if not c.end)
            failed += sum(1 for c in convs if c.end and not c.end[2])
        turn_ms: list[float] = []
        for _ in range(int(command["sample"])):
            (conv,), _, _ = await self.run_conversations(1, "Soak sample", timeout)
            times = [t for _, t in sorted((e[2], e[1]) for e in conv.events if e[0] == "message")]
            turn_ms += [(b - a) * 1e3 for a, b in itertools.pairwise(times)]
        change_ms: list[float] = []
        for i in range(int(command["changes"])):
            subscription = TypeSubscription(f"soak_probe_{new_id()[:8]}_{i}", "bench_recorder")
            began = time.monotonic()
            await self.runtime.add_subscription(subscription)
            await self.runtime.remove_subscription(subscription.id)
            change_ms.append((time.monotonic() - began) * 1e3)
        return {"unfinished": unfinished, "failed": failed, "turn_ms": turn_ms, "change_ms": change_ms}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--mode", choices=["turns", "concurrent"], required=True)
    args = parser.parse_args()
    setup_logging("bench", "WARNING")
    runtime = await connect_worker(args.host, 30)
    driver = Driver(runtime)
    if args.mode == "turns":
        await register_observer(runtime, "bench_observer", TimingSink(driver.followed))
    else:
        await Recorder.register(runtime, "bench_recorder", lambda: Recorder(driver.followed))
        await runtime.add_subscription(TypeSubscription(GROUP_CHAT, "bench_recorder"))

    async def handle(command: dict[str, Any]) -> dict[str, Any]:
        if command["cmd"] == "turns":
            return await driver.turns(command)
        if command["cmd"] == "concurrent":
            return await driver.concurrent(command)
        if command["cmd"] == "soak":
            return await driver.soak(command)
        raise ValueError(f"unknown command {command['cmd']!r}")

    await serve_commands(handle)


if __name__ == "__main__":
    asyncio.run(main())
