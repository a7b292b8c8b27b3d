"""Following a conversation from the outside: the terminal and the web page both use this.

AutoGen hands each incoming message to its own task, so order is not guaranteed.
The observer restores it (chunks by index, messages by seq), drops duplicates by message id,
and calls its sink one event at a time. In seed mode it numbers the tutorial's TextMessages
(see messages.SeedExchange), whoever sent them, and shows them as ChatMessages.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from autogen_agentchat.messages import TextMessage
from autogen_core import AgentRuntime, MessageContext, RoutedAgent, TypeSubscription, message_handler

from .messages import (
    CONTROL,
    GROUP_CHAT,
    SEED_TOPIC,
    STREAM,
    AgentStatus,
    ChatMessage,
    ConversationEnded,
    ResumeConversation,
    SeedExchange,
    SpeakerSelected,
    StreamChunk,
    ToolCallEvent,
    UsageUpdate,
    topic,
)
from .worker import forget

#: A chunk of a turn not yet announced waits for the turn's SpeakerSelected: the manager asks the
#: speaker before it publishes the previous message and the announcement, and on a bus that
#: follows each topic through a consumer of its own (NATS) the order between topics is not kept
#: anyway. A turn whose announcement never comes (followed from mid-turn) shows its message whole.
#: What waits is bounded, in characters; past that the oldest turn's chunks are let go.
HELD_CHARS = 1_000_000

#: A message that comes before one it follows waits for it, up to GAP_WAIT s: the earlier one
#: was lost on its way here (its publisher's bus node died with it in flight, say), so the
#: observer asks the manager to publish the conversation again (as it does itself when it
#: reconnects or a standby takes over). Past the wait, or with more than GAP_MESSAGES waiting,
#: what waits is shown, and the missing one if it comes after all.
GAP_WAIT = 10.0
GAP_MESSAGES = 100


class Sink(Protocol):
    """Where a followed conversation goes. Calls for one conversation never overlap."""

    async def on_token(self, conversation_id: str, message_id: str, author: str, text: str) -> None: ...

    async def on_message(self, message: ChatMessage, streamed: bool) -> None: ...

    async def on_speaker(self, event: SpeakerSelected) -> None: ...

    async def on_ended(self, event: ConversationEnded) -> None: ...

    async def on_status(self, event: AgentStatus) -> None: ...

    async def on_tool(self, event: ToolCallEvent) -> bool | None:
        """Show a tool call's state; False if no one was there to see it (a page that has not
        taken the conversation up yet), so that the same state sent again is shown then."""
        ...

    async def on_usage(self, event: UsageUpdate) -> None: ...


class ConversationObserver(RoutedAgent):
    def __init__(self, sink: Sink) -> None:
        super().__init__("Follows a conversation for a person")
        self._sink = sink
        self._lock = asyncio.Lock()
        self._done: set[str] = set()  # message ids already shown whole
        self._next_index: dict[str, int] = {}
        self._early: dict[str, dict[int, StreamChunk]] = {}
        self._open: dict[str, tuple[str, str]] = {}  # streams begun, not yet whole: id -> (conversation, author)
        # Streams given up on: their author's turn was answered by another message (the author died
        # mid-message, or a node's loss held its last chunks back until after). Their late chunks
        # are not shown; their whole message, should it come after all, is.
        self._abandoned: set[str] = set()
        self._announced: set[str] = set()  # turn ids whose SpeakerSelected came
        self._held: dict[str, list[StreamChunk]] = {}  # turn id -> its chunks, until announced
        self._held_chars = 0
        self._seed = SeedExchange()
        self._last_seq = 0  # the conversation's last message shown in order (0: none numbered yet)
        self._waiting: dict[int, ChatMessage] = {}  # by seq: messages that came before one they follow
        self._gap: asyncio.Task[None] | None = None  # shows what waits once GAP_WAIT has passed
        # A call can pass a state twice (approved, run, interrupted, asked about again), each time
        # with a note of its own: the note is part of what makes an event new.
        self._tool_events: set[tuple[str, str, str, int, str, str]] = set()

    @message_handler
    async def on_chunk(self, message: StreamChunk, ctx: MessageContext) -> None:
        async with self._lock:
            if message.turn_id and message.turn_id not in self._announced:
                self._hold(message)
                return
            await self._take(message)

    def _hold(self, chunk: StreamChunk) -> None:
        if chunk.message_id in self._done:
            return
        self._held.setdefault(chunk.turn_id, []).append(chunk)
        self._held_chars += len(chunk.text)
        while self._held_chars > HELD_CHARS:
            self._let_go(next(iter(self._held)))

    def _let_go(self, turn_id: str) -> list[StreamChunk]:
        chunks = self._held.pop(turn_id, [])
        self._held_chars -= sum(len(c.text) for c in chunks)
        return chunks

    async def _release(self, turn_id: str) -> None:
        """The turn is announced: show its chunks, and any to come."""
        self._announced.add(turn_id)
        for chunk in self._let_go(turn_id):
            await self._take(chunk)

    async def _take(self, chunk: StreamChunk) -> None:
        if chunk.message_id in self._done or chunk.message_id in self._abandoned:
            return
        if chunk.message_id not in self._open:
            self._abandon(chunk.conversation_id, chunk.author, chunk.message_id)
            self._open[chunk.message_id] = (chunk.conversation_id, chunk.author)
        self._early.setdefault(chunk.message_id, {})[chunk.index] = chunk
        expected = self._next_index.get(chunk.message_id, 0)
        waiting = self._early[chunk.message_id]
        while expected in waiting:
            ready = waiting.pop(expected)
            expected += 1
            if ready.text:
                await self._sink.on_token(ready.conversation_id, ready.message_id, ready.author, ready.text)
        self._next_index[chunk.message_id] = expected

    @message_handler
    async def on_chat_message(self, message: ChatMessage, ctx: MessageContext) -> None:
        async with self._lock:
            await self._in_order(message)

    async def _in_order(self, message: ChatMessage) -> None:
        """Show `message` in its place: after the ones it follows (see GAP_WAIT)."""
        if message.id in self._done:
            return
        if self._last_seq and message.seq > self._last_seq + 1:
            self._waiting[message.seq] = message
            if len(self._waiting) > GAP_MESSAGES:
                await self._show_waiting()
            elif self._gap is None:
                self._gap = asyncio.create_task(self._gap_passed())
                # The manager publishes the conversation again when asked: the lost one comes now,
                # not only with the manager's next reconnect (a node lost between the two, say).
                resume = ResumeConversation(conversation_id=message.conversation_id)
                await self.publish_message(resume, topic(CONTROL, message.conversation_id))
            return
        await self._show(message)
        self._last_seq = max(self._last_seq, message.seq)
        while self._last_seq + 1 in self._waiting:  # the gap is filled
            self._last_seq += 1
            await self._show(self._waiting.pop(self._last_seq))
        if not self._waiting and self._gap is not None:
            self._gap.cancel()
            self._gap = None

    async def _show_waiting(self) -> None:
        """Show what waits for a message that has not come, in order; the missing one, if it
        comes, is shown when it does."""
        if self._gap is not None and self._gap is not asyncio.current_task():
            self._gap.cancel()
        self._gap = None
        for seq in sorted(self._waiting):
            await self._show(self._waiting.pop(seq))
            self._last_seq = max(self._last_seq, seq)

    async def _gap_passed(self) -> None:
        await asyncio.sleep(GAP_WAIT)
        async with self._lock:
            await self._show_waiting()

    @message_handler
    async def on_seed_message(self, message: TextMessage, ctx: MessageContext) -> None:
        """Seed mode: the tutorial's TextMessage, from our agents or a stock AutoGen one."""
        async with self._lock:
            numbered = self._seed.add(message)
            if numbered is not None:
                await self._show(numbered)

    async def _show(self, message: ChatMessage) -> None:
        if message.id in self._done:
            return
        self._done.add(message.id)
        for turn_id, held in list(self._held.items()):  # a turn never announced here: shown whole
            if any(c.message_id == message.id for c in held):
                kept = [c for c in self._let_go(turn_id) if c.message_id != message.id]
                for chunk in kept:
                    self._hold(chunk)
        streamed = self._next_index.pop(message.id, 0) > 0
        self._early.pop(message.id, None)
        self._open.pop(message.id, None)
        self._abandon(message.conversation_id, message.author, message.id)
        await self._sink.on_message(message, streamed)

    def _abandon(self, conversation_id: str, author: str, keep: str) -> None:
        """One message at a time per author: its newer one ends the stream of any other."""
        for message_id, (conversation, by) in list(self._open.items()):
            if message_id != keep and (conversation, by) == (conversation_id, author):
                del self._open[message_id]
                self._next_index.pop(message_id, None)
                self._early.pop(message_id, None)
                self._abandoned.add(message_id)

    @message_handler
    async def on_speaker(self, message: SpeakerSelected, ctx: MessageContext) -> None:
        async with self._lock:
            if message.usage is not None:
                await self._sink.on_usage(message.usage)
            await self._sink.on_speaker(message)
            if message.turn_id:
                await self._release(message.turn_id)

    @message_handler
    async def on_ended(self, message: ConversationEnded, ctx: MessageContext) -> None:
        async with self._lock:
            self._held.clear()
            self._held_chars = 0
            await self._show_waiting()
            await self._sink.on_ended(message)
        forget(self)

    @message_handler
    async def on_status(self, message: AgentStatus, ctx: MessageContext) -> None:
        async with self._lock:
            await self._sink.on_status(message)

    @message_handler
    async def on_tool(self, message: ToolCallEvent, ctx: MessageContext) -> None:
        seen = (message.turn_id, message.tool, message.arguments, message.index, message.status, message.result)
        async with self._lock:
            if seen in self._tool_events:
                return  # republished after a reconnect
            if await self._sink.on_tool(message) is not False:
                self._tool_events.add(seen)

    @message_handler
    async def on_usage(self, message: UsageUpdate, ctx: MessageContext) -> None:
        async with self._lock:
            await self._sink.on_usage(message)


async def register_observer(runtime: AgentRuntime, agent_type: str, sink: Sink, seed: bool = False) -> None:
    """Follow every conversation through this runtime; the sink routes by conversation id."""
    await ConversationObserver.register(runtime, agent_type, lambda: ConversationObserver(sink))
    for topic_type in (GROUP_CHAT, STREAM) + ((SEED_TOPIC,) if seed else ()):
        await runtime.add_subscription(TypeSubscription(topic_type, agent_type))
