"""Follow conversations from inside a test, over real gRPC, with roundtable's own observer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from autogen_ext.runtimes.grpc import GrpcWorkerAgentRuntime

from roundtable.messages import (
    CONTROL,
    AgentStatus,
    ChatMessage,
    ConversationEnded,
    SpeakerSelected,
    StartConversation,
    ToolCallEvent,
    UsageUpdate,
    new_id,
    topic,
)
from roundtable.observer import register_observer
from roundtable.worker import connect_worker, stop_worker


@dataclass
class Collector:
    """Everything seen, in arrival order: ("token", message_id, text, time) and ("message", message, time)."""

    events: list[tuple[object, ...]] = field(default_factory=list)
    messages: list[ChatMessage] = field(default_factory=list)
    speakers: list[SpeakerSelected] = field(default_factory=list)
    ended: dict[str, ConversationEnded] = field(default_factory=dict)
    statuses: list[AgentStatus] = field(default_factory=list)

    async def on_token(self, conversation_id: str, message_id: str, author: str, text: str) -> None:
        self.events.append(("token", message_id, text, time.monotonic()))

    async def on_message(self, message: ChatMessage, streamed: bool) -> None:
        self.messages.append(message)
        self.events.append(("message", message, time.monotonic()))

    async def on_speaker(self, event: SpeakerSelected) -> None:
        self.speakers.append(event)

    async def on_ended(self, event: ConversationEnded) -> None:
        self.ended[event.conversation_id] = event

    async def on_status(self, event: AgentStatus) -> None:
        self.statuses.append(event)

    async def on_tool(self, event: ToolCallEvent) -> None:
        pass

    async def on_usage(self, event: UsageUpdate) -> None:
        pass

    def tokens(self, message_id: str) -> list[str]:
        return [str(e[2]) for e in self.events if e[0] == "token" and e[1] == message_id]

    def in_conversation(self, conversation_id: str) -> list[ChatMessage]:
        return [m for m in self.messages if m.conversation_id == conversation_id]


@asynccontextmanager
async def observing(address: str, seed: bool = False) -> AsyncIterator[tuple[GrpcWorkerAgentRuntime, Collector]]:
    collector = Collector()
    runtime = await connect_worker(address, 10)
    try:
        await register_observer(runtime, f"test_observer_{new_id()[:8]}", collector, seed=seed)
        yield runtime, collector
    finally:
        await stop_worker(runtime)


async def wait_until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


async def converse(runtime: GrpcWorkerAgentRuntime, seen: Collector, task: str, timeout: float) -> str:
    """Start a conversation and wait, bounded, for its end; return its id."""
    conversation_id = new_id()
    await runtime.publish_message(
        StartConversation(conversation_id=conversation_id, task=task), topic(CONTROL, conversation_id)
    )
    await wait_until(lambda: conversation_id in seen.ended, timeout, f"conversation {task!r} to end")
    return conversation_id
