"""AutoGen AgentChat's own group chat, in one process, with the same scripted replies as the
turn-overhead measurement (conversations.py): the floor a distributed turn is compared with.

`RoundRobinGroupChat` of two `AssistantAgent`s on roundtable's scripted model, streaming on and
off; a turn is the time between two consecutive agent messages out of `run_stream`, as ours is
the time between two consecutive ChatMessages at the observer.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.conditions import MaxMessageTermination
from autogen_agentchat.messages import TextMessage
from autogen_agentchat.teams import RoundRobinGroupChat

from roundtable.scripted import ScriptedChatCompletionClient

from ._stats import summary
from .settings import Settings


async def _turn_ms(replies: dict[str, str], task: str, rounds: int, stream: bool) -> list[float]:
    agents = [
        AssistantAgent(name, model_client=ScriptedChatCompletionClient([reply], name=name), model_client_stream=stream)
        for name, reply in replies.items()
    ]
    team = RoundRobinGroupChat(agents, termination_condition=MaxMessageTermination(rounds + 1))  # the task too
    times = []
    async for event in team.run_stream(task=task):
        if isinstance(event, TextMessage) and event.source != "user":
            times.append(time.perf_counter())
    return [(b - a) * 1e3 for a, b in itertools.pairwise(times)]


def run(settings: Settings, replies: dict[str, str], task: str) -> dict[str, Any]:
    """Turn times, streaming on and off, for agents named and answering as `replies` says."""
    rounds = settings.turn_rounds
    asyncio.run(_turn_ms(replies, task, min(rounds, 20), stream=True))  # warm up: imports, first calls
    return {
        "rounds": rounds,
        "streaming": summary(asyncio.run(_turn_ms(replies, task, rounds, stream=True))),
        "not_streaming": summary(asyncio.run(_turn_ms(replies, task, rounds, stream=False))),
    }
