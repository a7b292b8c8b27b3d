"""A stock AutoGen 0.7.5 worker, written as the tutorial's Exercise 3 says, with no roundtable code.

    python stock_tutorial_agent.py HOST_ADDRESS AGENT_NAME TASK [ANSWERS]

It opens an exchange on `conversation_topic` with TextMessage(content=TASK, source="user"),
prints each TextMessage it receives as one line, `received from SOURCE: {json}`, and answers
the first ANSWERS messages of other agents with a fixed text.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterable
from typing import Any

from autogen_agentchat.messages import TextMessage
from autogen_core import (
    DefaultTopicId,
    MessageContext,
    MessageSerializer,
    RoutedAgent,
    TypeSubscription,
    message_handler,
    try_get_known_serializers_for_type,
)
from autogen_ext.runtimes.grpc import GrpcWorkerAgentRuntime

RECEIVED = "received from "
OPENED = "stock agent opened the exchange: "


def get_serializers(types: Iterable[type[Any]]) -> list[MessageSerializer[Any]]:
    """As in AutoGen's distributed-group-chat sample (its _utils.py), which the tutorial uses."""
    serializers = []
    for message_type in types:
        serializers.extend(try_get_known_serializers_for_type(message_type))
    return serializers


class StockAgent(RoutedAgent):
    def __init__(self, name: str, answers: int) -> None:
        super().__init__(description="A stock AutoGen agent from the tutorial")
        self._name = name
        self._answers_left = answers

    @message_handler
    async def handle_message(self, message: TextMessage, ctx: MessageContext) -> None:
        fields = {"id": message.id, "content": message.content, "metadata": message.metadata}
        print(f"{RECEIVED}{message.source}: {json.dumps(fields)}", flush=True)
        if message.source in ("user", self._name) or self._answers_left <= 0:
            return
        self._answers_left -= 1
        await self.publish_message(
            TextMessage(content=f"Fixed answer from {self._name}: make it shorter.", source=self._name),
            topic_id=DefaultTopicId(type="conversation_topic"),
        )


async def main(host_address: str, agent_name: str, task: str, answers: int) -> None:
    agent_runtime = GrpcWorkerAgentRuntime(host_address=host_address)
    agent_runtime.add_message_serializer(get_serializers([TextMessage]))
    await agent_runtime.start()
    agent_type = await StockAgent.register(agent_runtime, agent_name, lambda: StockAgent(agent_name, answers))
    await agent_runtime.add_subscription(TypeSubscription(topic_type="conversation_topic", agent_type=agent_type.type))
    opening = TextMessage(content=task, source="user")
    await agent_runtime.publish_message(opening, topic_id=DefaultTopicId(type="conversation_topic"))
    print(f"{OPENED}{opening.id}", flush=True)
    await agent_runtime.stop_when_signal()


if __name__ == "__main__":
    host, name, opening_task = sys.argv[1:4]
    asyncio.run(main(host, name, opening_task, int(sys.argv[4]) if len(sys.argv) > 4 else 0))
