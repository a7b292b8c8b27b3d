"""Agents for `agents[].factory`, as a user would write them (see the README's "Your own agent")."""

from __future__ import annotations

from collections.abc import Sequence

from autogen_agentchat.agents import AssistantAgent, BaseChatAgent
from autogen_agentchat.base import Response
from autogen_agentchat.messages import BaseChatMessage, TextMessage
from autogen_core import CancellationToken

from roundtable.tools import AgentContext


def counting_assistant(context: AgentContext) -> AssistantAgent:
    """An AssistantAgent of our own making, with roundtable's (journaled) tools."""
    return AssistantAgent(
        name=context.name,
        model_client=context.model_client,
        system_message=context.system_message,
        workbench=context.workbench,
        reflect_on_tool_use=True,
        model_client_stream=True,
    )


class Shouter(BaseChatAgent):
    """A custom agent, no model at all: it repeats the last message in capitals."""

    @property
    def produced_message_types(self) -> Sequence[type[BaseChatMessage]]:
        return (TextMessage,)

    async def on_messages(self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken) -> Response:
        last = messages[-1].to_text() if messages else ""
        return Response(chat_message=TextMessage(content=f"{last.upper()}!", source=self.name))

    async def on_reset(self, cancellation_token: CancellationToken) -> None:
        pass


def shouter(context: AgentContext) -> Shouter:
    return Shouter(context.name, description=context.description)


def not_an_agent(context: AgentContext) -> str:
    return "I am a string"
