"""The subscriber of the streaming benchmark: asks one agent to speak (a RequestToSpeak, as the
manager sends it, and says the turn is open when the agent checks) and timestamps each token
as roundtable's `ConversationObserver` hands it on.
It can also read the model server's stream directly, to tell the server's cost from ours."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from autogen_core import AgentId, MessageContext, RoutedAgent, TypeSubscription, message_handler

from roundtable.messages import (
    CONTROL,
    GROUP_CHAT,
    MANAGER_TYPE,
    AgentReply,
    ChatMessage,
    RequestToSpeak,
    SpeakerSelected,
    TurnCheck,
    TurnState,
    new_id,
    topic,
    turn_topic_type,
)
from roundtable.observer import register_observer
from roundtable.runtime import setup_logging
from roundtable.worker import connect_worker

from ._control import serve_commands
from ._sink import QuietSink


class TokenClock(QuietSink):
    """Sink: the arrival time of every token of the conversations it follows."""

    def __init__(self) -> None:
        self.tokens: dict[str, list[list[Any]]] = {}

    async def on_token(self, conversation_id: str, message_id: str, author: str, text: str) -> None:
        arrived = time.monotonic()  # CLOCK_MONOTONIC: the same clock as the tap's, in another process
        if conversation_id in self.tokens:
            self.tokens[conversation_id].append([arrived, text])


class ReplyCatcher(RoutedAgent):
    def __init__(self, replies: dict[str, asyncio.Future[AgentReply]]) -> None:
        super().__init__("catches the agent's finished reply")
        self._replies = replies

    @message_handler
    async def on_reply(self, message: AgentReply, ctx: MessageContext) -> None:
        future = self._replies.get(message.turn_id)
        if future is not None and not future.done():
            future.set_result(message)

    @message_handler
    async def on_turn_check(self, message: TurnCheck, ctx: MessageContext) -> None:
        # As the manager answers it before every turn: the turn is open.
        state = TurnState(conversation_id=message.conversation_id, turn_id=message.turn_id, open=True)
        await self.publish_message(state, topic(turn_topic_type(message.agent), message.conversation_id))


async def http_stream(url: str, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    """The model server alone: its SSE stream read by a plain HTTP client, no agent, no host."""
    import httpx

    tokens: list[list[Any]] = []
    async with httpx.AsyncClient(timeout=timeout) as client:
        start = time.monotonic()
        async with client.stream("POST", url, json=request) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line.startswith("data: [DONE]"):
                    continue
                content = json.loads(line[6:])["choices"][0]["delta"].get("content")
                if content:
                    tokens.append([time.monotonic(), content])
    return {"t0": start, "tokens": tokens}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    args = parser.parse_args()
    setup_logging("bench", "WARNING")
    runtime = await connect_worker(args.host, 30)
    clock = TokenClock()
    replies: dict[str, asyncio.Future[AgentReply]] = {}
    await register_observer(runtime, "bench_stream_observer", clock)
    # It stands in for the manager, under the manager's type: agents take turns only from it.
    await ReplyCatcher.register(runtime, MANAGER_TYPE, lambda: ReplyCatcher(replies))
    await runtime.add_subscription(TypeSubscription(CONTROL, MANAGER_TYPE))

    async def handle(command: dict[str, Any]) -> dict[str, Any]:
        if command["cmd"] == "http":
            return await http_stream(str(command["url"]), command["request"], float(command["timeout"]))
        if command["cmd"] != "speak":
            raise ValueError(f"unknown command {command['cmd']!r}")
        conversation_id = new_id()
        task = ChatMessage(conversation_id=conversation_id, seq=1, author="user", content=command["task"], kind="task")
        request = RequestToSpeak(conversation_id=conversation_id, speaker=command["agent"], history=[task])
        future: asyncio.Future[AgentReply] = asyncio.get_running_loop().create_future()
        replies[request.turn_id] = future
        clock.tokens[conversation_id] = []
        start = time.monotonic()
        speaker_topic = topic(turn_topic_type(command["agent"]), conversation_id)
        manager = AgentId(MANAGER_TYPE, conversation_id)
        await runtime.publish_message(request, speaker_topic, sender=manager)
        # As the manager announces each turn: the observer shows a turn's chunks after that.
        announced = SpeakerSelected(conversation_id=conversation_id, speaker=command["agent"], turn_id=request.turn_id)
        await runtime.publish_message(announced, topic(GROUP_CHAT, conversation_id), sender=manager)
        try:
            reply = await asyncio.wait_for(future, float(command["timeout"]))
        finally:
            replies.pop(request.turn_id, None)
        await asyncio.sleep(0.2)  # chunks travel apart from the reply: let the last ones land
        tokens = clock.tokens.pop(conversation_id)
        return {"t0": start, "tokens": tokens, "reply": reply.content, "error": reply.error}

    await serve_commands(handle)


if __name__ == "__main__":
    asyncio.run(main())
