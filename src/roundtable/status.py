"""`roundtable status`: which agents are connected to the host right now, and which
conversations the transcript store still has open, with how long each has been idle.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import grpc
from autogen_core import MessageContext, RoutedAgent, TypeSubscription, message_handler
from autogen_ext.runtimes.grpc.protos import agent_worker_pb2
from sqlalchemy.exc import DBAPIError

from .config import NATS_SCHEMES, StoreUnavailable
from .lease import MANAGER_LEASE
from .messages import MANAGER_TYPE, PRESENCE, PRESENCE_TYPE, SEED_TOPIC, TURN_PREFIX, AgentOnline, new_id
from .security import Security
from .store import StoredConversation, TranscriptStore
from .wire import HostUnreachable
from .worker import connect_worker, stop_worker

TASK_CHARS = 60
HEARD_LIMIT = 1_000  # agents listed from heartbeats, at most


@dataclass
class Status:
    host: str
    agent_types: list[str]  # every agent type with a subscription at the host, ours excepted
    participants: list[str]  # those that take turns (or talk in seed mode)
    store: str  # the store's URL, password hidden
    conversations: list[StoredConversation] = field(default_factory=list)  # open ones, latest activity first
    tool_calls: dict[str, dict[str, int]] = field(default_factory=dict)  # agent -> status -> calls, all time
    tokens: dict[str, int] = field(default_factory=dict)  # agent -> model tokens, all time
    at: float = field(default_factory=time.time)  # when this was gathered; idle times count from here
    # On a NATS bus, which no one routes: the processes heard from (their heartbeats), per agent.
    replicas: dict[str, int] | None = None
    lease: tuple[str, float] | None = None  # the manager lease: its holder, and until when


async def gather_status(
    host_address: str,
    store_url: str,
    timeout: float,
    security: Security | None = None,
    limit: int = 20,
    heartbeat: float = 2.0,
) -> Status:
    """Ask the host and the store; HostUnreachable or StoreUnavailable (one line each) if one can't
    answer. On a NATS bus, listen to the agents' heartbeats instead of asking a host."""
    replicas = None
    if host_address.startswith(NATS_SCHEMES):
        replicas = await _heard(host_address, timeout, security, heartbeat)
        agent_types, participants = sorted(replicas), sorted(replicas)
    else:
        agent_types, participants = await _connected(host_address, timeout, security)
    store = TranscriptStore(store_url, connect_timeout=timeout)
    try:
        conversations = await asyncio.wait_for(_open_conversations(store, limit), timeout)
        tool_calls = await asyncio.wait_for(store.tool_call_counts(), timeout)
        tokens = await asyncio.wait_for(store.token_counts(), timeout)
        lease = await asyncio.wait_for(store.lease(MANAGER_LEASE), timeout)
    except asyncio.TimeoutError:
        raise StoreUnavailable(f"the transcript store at {store.url} did not answer within {timeout:g} s") from None
    finally:
        await store.close()
    return Status(
        host_address,
        agent_types,
        participants,
        str(store.url),
        conversations,
        tool_calls,
        tokens,
        replicas=replicas,
        lease=lease,
    )


class _Listener(RoutedAgent):
    """Hears the agents' heartbeats, for `_heard`."""

    def __init__(self, heard: dict[str, set[str]]) -> None:
        super().__init__("Lists the agents that are online")
        self._heard = heard

    @message_handler
    async def on_online(self, message: AgentOnline, ctx: MessageContext) -> None:
        if len(self._heard) < HEARD_LIMIT:
            self._heard.setdefault(message.name[:64], set()).add(message.replica[:64])


async def _heard(address: str, timeout: float, security: Security | None, heartbeat: float) -> dict[str, int]:
    """Each agent heard from within one and a half heartbeats, with how many processes serve it."""
    heard: dict[str, set[str]] = {}
    runtime = await connect_worker(address, timeout, security)
    try:
        agent_type = f"status_{new_id()[:12]}"
        await _Listener.register(runtime, agent_type, lambda: _Listener(heard))
        await runtime.add_subscription(TypeSubscription(PRESENCE, agent_type))
        await asyncio.sleep(1.5 * heartbeat)
    finally:
        await stop_worker(runtime)
    return {name: len(replicas) for name, replicas in heard.items()}


async def _connected(address: str, timeout: float, security: Security | None) -> tuple[list[str], list[str]]:
    """The host's subscriptions exist only while their workers are connected, so the agent types
    they name are the ones online now."""
    runtime = await connect_worker(address, timeout, security)
    try:
        response = await asyncio.wait_for(
            runtime.connection.call("GetSubscriptions", agent_worker_pb2.GetSubscriptionsRequest()), timeout
        )
    except (grpc.aio.AioRpcError, asyncio.TimeoutError) as error:
        detail = error.details() if isinstance(error, grpc.aio.AioRpcError) else f"no answer within {timeout:g} s"
        raise HostUnreachable(f"the roundtable host at {address} did not list its agents ({detail})") from None
    finally:
        await stop_worker(runtime)
    own = set(runtime.connection.agent_types)
    agent_types: set[str] = set()
    participants: set[str] = set()
    for subscription in response.subscriptions:
        kind = subscription.WhichOneof("subscription")
        if kind == "typeSubscription":
            agent_type, topic_type = subscription.typeSubscription.agent_type, subscription.typeSubscription.topic_type
        elif kind == "typePrefixSubscription":
            prefix = subscription.typePrefixSubscription
            agent_type, topic_type = prefix.agent_type, prefix.topic_type_prefix
        else:
            continue
        if agent_type in own:
            continue
        agent_types.add(agent_type)
        if topic_type.startswith(TURN_PREFIX) or topic_type == SEED_TOPIC:
            participants.add(agent_type)
    return sorted(agent_types), sorted(participants)


async def _open_conversations(store: TranscriptStore, limit: int) -> list[StoredConversation]:
    await store.open()
    try:
        return await store.recent(limit, status="open")
    except (DBAPIError, OSError) as error:
        raise StoreUnavailable(f"cannot read the transcript store at {store.url}: {error}".splitlines()[0]) from None


def format_status(status: Status) -> str:
    manager = [t for t in (MANAGER_TYPE, PRESENCE_TYPE) if t in status.agent_types]
    others = [t for t in status.agent_types if t not in status.participants and t not in manager]
    open_count = len(status.conversations)
    if status.replicas is not None:
        counted = [f"{name} ({n} processes)" if n > 1 else name for name, n in sorted(status.replicas.items())]
        lines = [
            f"bus {status.host}: {len(status.replicas)} agents heard from",
            f"  participants: {', '.join(counted) or 'none'}",
            "  manager:      not listed on a NATS bus (it sends no heartbeat; see its lease below)",
        ]
    else:
        lines = [
            f"host {status.host}: {len(status.agent_types)} agent types connected",
            f"  participants: {', '.join(status.participants) or 'none'}",
            f"  manager:      {', '.join(manager) or 'not connected'}",
            f"  others:       {', '.join(others) or 'none'}",
        ]
    if status.lease is not None:
        holder, until = status.lease
        left = until - status.at
        held = f"for {_duration(left)} more" if left > 0 else f"lapsed {_duration(-left)} ago"
        lines.append(f"  manager lease: {holder[:120]}, {held}")
    lines += [
        f"store {status.store}: {open_count} open conversation{'' if open_count == 1 else 's'}",
    ]
    for conversation in status.conversations:
        waiting = f"waiting for {conversation.pending_speaker}" if conversation.pending_speaker else "between turns"
        lines.append(
            f"  {conversation.id}  {conversation.message_count} messages  {waiting}  "
            f"idle {_duration(status.at - conversation.updated_at)}  {_shorten(conversation.task)}"
        )
    agents = sorted(set(status.tool_calls) | set(status.tokens))
    if agents:
        lines.append("usage per agent (all conversations):")
        for agent in agents:
            counts = status.tool_calls.get(agent, {})
            calls = f"{sum(counts.values())} tool calls"
            if counts:
                calls += " (" + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) + ")"
            lines.append(f"  {agent}: {status.tokens.get(agent, 0):,} tokens, {calls}")
    return "\n".join(lines)


def _shorten(task: str) -> str:
    line = " ".join(task.split())
    return line if len(line) <= TASK_CHARS else line[: TASK_CHARS - 1] + "…"


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
