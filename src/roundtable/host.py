"""The host: routes messages between clients, on AutoGen's gRPC wire contract and nothing else.

It implements the service generated from AutoGen's protos (`autogen_ext.runtimes.grpc.protos`,
the contract stock AutoGen workers speak), so stock workers and ours can use it, and it touches
no private part of AutoGen. It only routes: it keeps no transcript and runs no agent.

What it holds is bounded, and no client can act as another:
- A client id belongs to the connection that opened its stream. Registrations, subscriptions,
  calls and events must come over that connection.
- A client subscribes, publishes and calls only as the agent types it registered. An event's
  claimed sender it does not own becomes "unknown"; a call from a sender it does not own is
  answered with an error.
- Calls get the host's own request ids, and only the client a call went to may answer it, so
  no one can take another's reply. A call whose answerer leaves is answered with an error.
- What waits for a client is bounded in bytes (and messages), per client and in total. A
  client that stops reading is cut off: its stream ends, so it knows it missed messages.
- Names from clients are quoted and shortened in logs, so they cannot forge or flood lines.
- With per-identity tokens (identities.py), each caller registers, subscribes and publishes
  only what its role needs, makes no calls, and its events carry its own name as their sender.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from autogen_core import Subscription, TopicId, TypePrefixSubscription, TypeSubscription
from autogen_ext.runtimes.grpc.protos import agent_worker_pb2, agent_worker_pb2_grpc, cloudevent_pb2

from .identities import Authority, Grant, load_authority
from .routing import Routes
from .security import Security, TokenInterceptor, authorization, check_listen_address, server_credentials
from .wire import (
    CLIENT_ID_KEY,
    HOST_RECEIVE_LIMIT,
    MAX_GRPC_MESSAGE_BYTES,
    HostUnreachable,
    vouch_sender,
)

log = logging.getLogger("roundtable")
T = TypeVar("T")

HOST_OPTIONS = [
    ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_BYTES),
    # Less than it may send: the host rewrites a spoofed sender, which must not push an event
    # past what its subscribers accept (one such message used to end every subscriber's stream).
    ("grpc.max_receive_message_length", HOST_RECEIVE_LIMIT),
    ("grpc.http2.min_ping_interval_without_data_ms", 4_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # gRPC binds with SO_REUSEPORT by default: a second host on the same port would start
    # "fine" and take a random half of the connections. One port, one host.
    ("grpc.so_reuseport", 0),
]

CLIENT_QUEUE_LIMIT = 10_000  # messages waiting for one client before it is cut off
CLIENT_QUEUE_BYTES = 32 * 1024 * 1024  # bytes waiting for one client before it is cut off
TOTAL_QUEUE_BYTES = 256 * 1024 * 1024  # bytes waiting for all clients; past it, the worst reader is cut off
HELD_BYTES_LIMIT = 8 * 1024 * 1024  # events a freshly started host keeps for late subscribers
HOLD_AFTER_START = 10.0  # s: ... and for how long after its start
CALLS_IN_FLIGHT_LIMIT = 1_000  # calls one client may have waiting for an answer
AGENT_TYPES_LIMIT = 1_000  # agent types one client may register
SUBSCRIPTIONS_LIMIT = 10_000  # subscriptions one client may hold
STREAM_WAIT = 2.0  # s a unary call waits for its client's stream, opened first but maybe not yet served
SHOWN_CHARS = 80  # of a client-given name, in a log line
WARNINGS_LIMIT = 100  # kinds of problem logged for one client


def shown(name: str) -> str:
    """A name a client gave, safe to log: quoted (no line breaks), and short."""
    return repr(name if len(name) <= SHOWN_CHARS else name[:SHOWN_CHARS] + "…")


def subscription_from_wire(wire: agent_worker_pb2.Subscription, key: str) -> Subscription:
    """The subscription a client asked for, under the host's own id `key` (so no client can take
    an id another uses). Raises ValueError for an unknown kind or an invalid name."""
    kind = wire.WhichOneof("subscription")
    if kind == "typeSubscription":
        spec = wire.typeSubscription
        return TypeSubscription(topic_type=spec.topic_type, agent_type=spec.agent_type, id=key)
    if kind == "typePrefixSubscription":
        prefix = wire.typePrefixSubscription
        return TypePrefixSubscription(topic_type_prefix=prefix.topic_type_prefix, agent_type=prefix.agent_type, id=key)
    raise ValueError(f"unknown subscription kind {kind!r}")


class Budget:
    """Bytes waiting for every client together."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0


class Client:
    """One connected client: its stream, what it registered, and what waits for it."""

    def __init__(
        self, client_id: str, peer: str, budget: Budget, queue_limit: int, queue_bytes: int, grant: Grant | None = None
    ) -> None:
        self.id = client_id
        self.grant = grant  # what its identity may do; None: anything (the shared token, or none)
        self.key = uuid.uuid4().hex  # this connection's, never reused: it names its subscriptions
        self.peer = peer
        self.agent_types: set[str] = set()
        self.subscriptions: dict[str, agent_worker_pb2.Subscription] = {}  # the client's id -> as it sent it
        self.calls_in_flight = 0
        self.warned: set[str] = set()
        self._budget = budget
        self._queue_limit = queue_limit
        self._queue_bytes = queue_bytes
        self._waiting: deque[tuple[agent_worker_pb2.Message, int]] = deque()
        self.waiting_bytes = 0
        self._ready = asyncio.Event()
        self.closed = False

    def send(self, message: agent_worker_pb2.Message, size: int) -> bool:
        """Queue `message` for the client; False if it is (now) cut off for not reading."""
        if self.closed:
            return False
        if len(self._waiting) >= self._queue_limit or self.waiting_bytes + size > self._queue_bytes:
            self.close(f"it has {len(self._waiting)} messages ({self.waiting_bytes} bytes) waiting")
            return False
        self._waiting.append((message, size))
        self.waiting_bytes += size
        self._budget.used += size
        self._ready.set()
        return True

    async def next(self) -> agent_worker_pb2.Message | None:
        """The next message for the client, or None once it is closed."""
        while not self._waiting:
            if self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        if self.closed:
            return None
        message, size = self._waiting.popleft()
        self.waiting_bytes -= size
        self._budget.used -= size
        return message

    def close(self, why: str | None = None) -> None:
        """End the stream; what waits for it is dropped (the client must reconnect and catch up)."""
        if self.closed:
            return
        if why is not None:
            log.warning("closing a client's stream (%s): %s", self.peer, why)
        self.closed = True
        self._budget.used -= self.waiting_bytes
        self.waiting_bytes = 0
        self._waiting.clear()
        self._ready.set()


@dataclass
class Call:
    """A call on its way: who made it, under which id, and who must answer."""

    caller: Client
    request_id: str
    answerer: Client


@dataclass
class Held:
    """An event kept in a fresh host's grace period, and the agent types it reached."""

    event: cloudevent_pb2.CloudEvent
    reached: set[str] = field(default_factory=set)


class Refused(Exception):
    """The host says no to a client's request: a gRPC status code and a one-line reason."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class Router:
    """What the host does, without the transport: clients, their agent types and subscriptions,
    routing events, and calls. The gRPC service below drives it; so does the in-memory
    transport (memory.py), which runs the same routing in one process for tests.

    A freshly started host has no subscriptions until the workers reconnect. For `grace` seconds
    after start it keeps events (up to 8 MB), and an agent type that subscribes late gets those
    meant for it that it has not had; a type already served never gets one twice.
    """

    def __init__(
        self,
        grace: float = HOLD_AFTER_START,
        queue_limit: int = CLIENT_QUEUE_LIMIT,
        queue_bytes: int = CLIENT_QUEUE_BYTES,
        total_bytes: int = TOTAL_QUEUE_BYTES,
        held_bytes_limit: int = HELD_BYTES_LIMIT,
        authority: Authority | None = None,
    ) -> None:
        self.authority = authority or Authority({})
        self.routes = Routes()
        self.budget = Budget(total_bytes)
        self._clients: dict[str, Client] = {}
        self._owners: dict[str, Client] = {}  # agent type -> the client serving it
        self._calls: dict[str, Call] = {}  # the host's request id -> the call
        self._queue_limit = queue_limit
        self._queue_bytes = queue_bytes
        self._started = time.monotonic()
        self.grace = grace
        self._held: list[Held] = []
        self._held_bytes = 0
        self._held_bytes_limit = held_bytes_limit

    # ------------------------------------------------------------ clients

    def open(self, client_id: str, peer: str, grant: Grant | None) -> Client:
        """A client's stream opens: `peer` names its connection, `grant` what it may do."""
        if client_id in self._clients:
            raise Refused(grpc.StatusCode.ALREADY_EXISTS, "a stream with this client id is already open")
        client = Client(client_id, peer, self.budget, self._queue_limit, self._queue_bytes, grant)
        self._clients[client_id] = client
        return client

    def client(self, client_id: str) -> Client | None:
        return self._clients.get(client_id)

    async def read(self, client: Client, messages: AsyncIterator[agent_worker_pb2.Message]) -> None:
        """Route what a client sends until its stream ends; then it is closed."""
        try:
            async for message in messages:
                self.receive(client, message)
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass
        except Exception as error:  # a message the host cannot route must not end the stream
            log.warning("a client's stream failed (%s): %s", client.peer, type(error).__name__)
        finally:
            client.close()

    def receive(self, client: Client, message: agent_worker_pb2.Message) -> None:
        """Route one message a client sent, in the order it sent them."""
        kind = message.WhichOneof("message")
        if kind == "cloudEvent":
            self._publish(client, message.cloudEvent)
        elif kind == "request":
            self._request(client, message.request)
        elif kind == "response":
            self._answer(client, message.response)
        else:
            self._warn_once(client, f"kind:{kind}", f"a message of a kind the host does not route: {kind}")

    def forget(self, client: Client) -> None:
        """A client's stream has ended: what it registered, subscribed and was asked goes."""
        client.close()
        if self._clients.get(client.id) is client:
            del self._clients[client.id]
        for agent_type in client.agent_types:
            if self._owners.get(agent_type) is client:
                del self._owners[agent_type]
        for subscription_id in client.subscriptions:
            self.routes.remove(f"{client.key}:{subscription_id}")
        gone = "the agent's worker disconnected before it answered"
        for request_id, call in list(self._calls.items()):
            if call.answerer is client:
                self._settle(call, agent_worker_pb2.RpcResponse(error=gone))
            if call.caller is client or call.answerer is client:
                del self._calls[request_id]

    # ------------------------------------------------------------ events

    def _publish(self, client: Client, event: cloudevent_pb2.CloudEvent) -> None:
        own = client.grant.sender if client.grant is not None else None
        vouch_sender(event.attributes, own, client.agent_types.__contains__)
        try:
            topic = TopicId(event.type, event.source)
        except ValueError:
            self._warn_once(client, "topic", f"dropped an event on an invalid topic {shown(event.type)}")
            return
        if client.grant is not None and not client.grant.may_publish(event.type):
            self._warn_once(
                client,
                f"publish:{event.type}",
                f"dropped an event on topic {shown(event.type)}: {shown(client.grant.identity)} may not publish there",
            )
            return
        reached = self._deliver(topic, event, set())
        if time.monotonic() - self._started < self.grace:
            size = event.ByteSize()
            if self._held_bytes + size <= self._held_bytes_limit:  # bounded: a flood can't fill memory
                self._held.append(Held(event, reached))
                self._held_bytes += size

    @staticmethod
    def _warn_once(client: Client, what: str, line: str) -> None:
        """One log line per client and kind of problem: a flood stays one line."""
        if what not in client.warned and len(client.warned) < WARNINGS_LIMIT:
            client.warned.add(what)
            log.warning("%s (from %s)", line, client.peer)

    def _deliver(self, topic: TopicId, event: cloudevent_pb2.CloudEvent, served: set[str]) -> set[str]:
        """Send `event` to the clients of the agent types subscribed to `topic`, except the types in
        `served`; return the types it reached (a client cut off for not reading counts)."""
        clients: dict[str, Client] = {}
        reached: set[str] = set()
        for recipient in self.routes.recipients(topic):
            owner = self._owners.get(recipient.type)
            if owner is not None and recipient.type not in served:
                clients[owner.key] = owner
                reached.add(recipient.type)
        if clients:
            message = agent_worker_pb2.Message(cloudEvent=event)
            size = message.ByteSize()
            for owner in clients.values():
                self._send(owner, message, size)
        return reached

    def _send(self, client: Client, message: agent_worker_pb2.Message, size: int) -> bool:
        if self.budget.used + size > self.budget.limit:
            # Every client together holds too much: cut off the one that reads least.
            worst = max(self._clients.values(), key=lambda c: c.waiting_bytes)
            worst.close(f"the host holds {self.budget.used} bytes for its clients, {worst.waiting_bytes} for it")
        return client.send(message, size)

    # ------------------------------------------------------------ calls (RPC)

    def _request(self, caller: Client, request: agent_worker_pb2.RpcRequest) -> None:
        answerer = self._owners.get(request.target.type)
        if caller.grant is not None:
            why = f"identity {shown(caller.grant.identity)} may not make calls"
        elif request.HasField("source") and request.source.type not in caller.agent_types:
            why = f"the sender {shown(request.source.type)} is not an agent type of yours"
        elif answerer is None:
            why = f"no worker serves agent type {shown(request.target.type)}"
        elif caller.calls_in_flight >= CALLS_IN_FLIGHT_LIMIT:
            why = f"more than {CALLS_IN_FLIGHT_LIMIT} calls are waiting for an answer"
        else:
            call = Call(caller, request.request_id, answerer)
            request.request_id = uuid.uuid4().hex  # the host's own: a caller-chosen id could be guessed
            message = agent_worker_pb2.Message(request=request)
            if self._send(answerer, message, message.ByteSize()):
                self._calls[request.request_id] = call
                caller.calls_in_flight += 1
                return
            request.request_id = call.request_id
            why = "the agent's worker is not reading"
        self._respond(caller, agent_worker_pb2.RpcResponse(request_id=request.request_id, error=why))

    def _answer(self, client: Client, response: agent_worker_pb2.RpcResponse) -> None:
        call = self._calls.get(response.request_id)
        if call is None or call.answerer is not client:
            return  # not a call this client was asked: late, or someone else's
        del self._calls[response.request_id]
        self._settle(call, response)

    def _settle(self, call: Call, response: agent_worker_pb2.RpcResponse) -> None:
        """Give a call's caller its answer, under the caller's own request id."""
        call.caller.calls_in_flight -= 1
        response.request_id = call.request_id
        self._respond(call.caller, response)

    def _respond(self, caller: Client, response: agent_worker_pb2.RpcResponse) -> None:
        message = agent_worker_pb2.Message(response=response)
        self._send(caller, message, message.ByteSize())

    # ------------------------------------------------------------ registration

    def register(self, client: Client, agent_type: str) -> None:
        if client.grant is not None and not client.grant.may_register(agent_type):
            refused = f"identity {shown(client.grant.identity)} may not register agent type {shown(agent_type)}"
            raise Refused(grpc.StatusCode.PERMISSION_DENIED, refused)
        owner = self._owners.get(agent_type)
        if owner is not None and owner is not client:
            taken = f"agent type {shown(agent_type)} is already registered by another client"
            raise Refused(grpc.StatusCode.ALREADY_EXISTS, taken)
        if not agent_type or len(client.agent_types) >= AGENT_TYPES_LIMIT:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "an empty agent type, or too many for one client")
        self._owners[agent_type] = client
        client.agent_types.add(agent_type)

    def subscribe(self, client: Client, wire: agent_worker_pb2.Subscription) -> None:
        try:
            subscription = subscription_from_wire(wire, f"{client.key}:{wire.id}")
        except ValueError as error:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"not a subscription the host can route: {error}") from None
        agent_type = getattr(subscription, "agent_type", "")
        if agent_type not in client.agent_types:
            why = f"register agent type {shown(agent_type)} before subscribing it"
            raise Refused(grpc.StatusCode.PERMISSION_DENIED, why)
        prefix = isinstance(subscription, TypePrefixSubscription)
        topic_type = str(getattr(subscription, "topic_type_prefix" if prefix else "topic_type", ""))
        if client.grant is not None and not client.grant.may_subscribe(topic_type, prefix, agent_type):
            refused = f"identity {shown(client.grant.identity)} may not subscribe to topic {shown(topic_type)}"
            raise Refused(grpc.StatusCode.PERMISSION_DENIED, refused)
        if wire.id in client.subscriptions or len(client.subscriptions) >= SUBSCRIPTIONS_LIMIT:
            raise Refused(grpc.StatusCode.ALREADY_EXISTS, "this subscription id is taken, or there are too many")
        try:
            self.routes.add(subscription)
        except ValueError:
            raise Refused(grpc.StatusCode.ALREADY_EXISTS, "this client already has that subscription") from None
        client.subscriptions[wire.id] = wire
        self._catch_up()

    def _catch_up(self) -> None:
        """Give the agent types that subscribed late what they missed in the grace period."""
        if not self._held:
            return
        if time.monotonic() - self._started >= self.grace:
            self._held.clear()
            self._held_bytes = 0
            return
        for held in self._held:
            held.reached |= self._deliver(TopicId(held.event.type, held.event.source), held.event, held.reached)

    def unsubscribe(self, client: Client, subscription_id: str) -> None:
        if subscription_id not in client.subscriptions:
            raise Refused(grpc.StatusCode.PERMISSION_DENIED, "not your subscription")
        del client.subscriptions[subscription_id]
        self.routes.remove(f"{client.key}:{subscription_id}")

    def subscriptions(self, client: Client) -> list[agent_worker_pb2.Subscription]:
        """Who is connected, for `roundtable status`; another client's subscription ids are not shown."""
        listed = []
        for other in self._clients.values():
            for wire in other.subscriptions.values():
                if other is not client:
                    anonymous = agent_worker_pb2.Subscription()
                    anonymous.CopyFrom(wire)
                    anonymous.ClearField("id")
                    wire = anonymous
                listed.append(wire)
        return listed


class HostServicer(Router, agent_worker_pb2_grpc.AgentRpcServicer):
    """AutoGen's `AgentRpc` service around the `Router`: safe to share with clients that are
    broken or hostile, and kind to clients that reconnect."""

    async def OpenChannel(
        self, request_iterator: AsyncIterator[agent_worker_pb2.Message], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[agent_worker_pb2.Message]:
        client_id = await client_id_of(context)
        grant = await self._grant(context)
        client = await refusing(context, lambda: self.open(client_id, context.peer(), grant))
        reader = asyncio.create_task(self.read(client, request_iterator))
        try:
            while (message := await client.next()) is not None:
                yield message
        finally:
            reader.cancel()
            self.forget(client)

    async def _caller(self, context: grpc.aio.ServicerContext[Any, Any]) -> Client:
        """The client making a unary call, which must come over its own stream's connection."""
        client_id = await client_id_of(context)
        deadline = time.monotonic() + STREAM_WAIT
        while self.client(client_id) is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        client = self.client(client_id)
        if client is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "open a stream before registering")
        assert client is not None
        if client.peer != context.peer() or await self._grant(context) != client.grant:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "this client id belongs to another connection")
        return client

    async def _grant(self, context: grpc.aio.ServicerContext[Any, Any]) -> Grant | None:
        """What the caller's identity may do (None: anything). The token was checked already."""
        grant = self.authority.lookup(authorization(context.invocation_metadata()))
        if grant is False:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token")
        return grant or None

    async def RegisterAgent(
        self, request: agent_worker_pb2.RegisterAgentTypeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_worker_pb2.RegisterAgentTypeResponse:
        client = await self._caller(context)
        await refusing(context, lambda: self.register(client, request.type))
        return agent_worker_pb2.RegisterAgentTypeResponse()

    async def AddSubscription(
        self, request: agent_worker_pb2.AddSubscriptionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_worker_pb2.AddSubscriptionResponse:
        client = await self._caller(context)
        await refusing(context, lambda: self.subscribe(client, request.subscription))
        return agent_worker_pb2.AddSubscriptionResponse()

    async def RemoveSubscription(
        self, request: agent_worker_pb2.RemoveSubscriptionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_worker_pb2.RemoveSubscriptionResponse:
        client = await self._caller(context)
        await refusing(context, lambda: self.unsubscribe(client, request.id))
        return agent_worker_pb2.RemoveSubscriptionResponse()

    async def GetSubscriptions(
        self, request: agent_worker_pb2.GetSubscriptionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_worker_pb2.GetSubscriptionsResponse:
        client = await self._caller(context)
        return agent_worker_pb2.GetSubscriptionsResponse(subscriptions=self.subscriptions(client))

    async def OpenControlChannel(
        self, requests: AsyncIterator[agent_worker_pb2.ControlMessage], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[agent_worker_pb2.ControlMessage]:
        # AutoGen's workers never open it; its stock form let one client write to another's.
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "roundtable's host has no control channel")
        yield agent_worker_pb2.ControlMessage()  # pragma: no cover (unreachable: abort raises)


async def refusing(context: grpc.aio.ServicerContext[Any, Any], step: Callable[[], T]) -> T:
    """Run one of the router's steps; its refusal becomes the call's gRPC status."""
    try:
        return step()
    except Refused as refused:
        await context.abort(refused.code, refused.details)
        raise


async def client_id_of(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    metadata = dict(context.invocation_metadata() or ())
    client_id = metadata.get(CLIENT_ID_KEY)
    if not isinstance(client_id, str) or not client_id:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "client-id metadata not found")
    return str(client_id)


class Host:
    """The gRPC host: a grpc.aio server around `HostServicer`, with TLS and the token check when
    configured. Off loopback it refuses to listen without both."""

    def __init__(
        self,
        address: str,
        grace: float = HOLD_AFTER_START,
        security: Security | None = None,
        queue_limit: int = CLIENT_QUEUE_LIMIT,
        queue_bytes: int = CLIENT_QUEUE_BYTES,
    ) -> None:
        security = security or Security()
        check_listen_address(address, security)
        self.address = address
        authority = load_authority(security.identities, security.token)
        self.servicer = HostServicer(grace, queue_limit=queue_limit, queue_bytes=queue_bytes, authority=authority)
        interceptors = [TokenInterceptor(authority)] if authority.checks_tokens else []
        if authority.per_identity and security.token:
            log.warning("the shared token is set too: whoever holds it may act as any agent (a development shortcut)")
        self._server = grpc.aio.server(options=HOST_OPTIONS, interceptors=interceptors)
        agent_worker_pb2_grpc.add_AgentRpcServicer_to_server(self.servicer, self._server)
        try:
            if security.tls:
                self._server.add_secure_port(address, server_credentials(security))
            else:
                self._server.add_insecure_port(address)
        except RuntimeError:
            raise HostUnreachable(
                f"cannot listen on {address}: the port is in use, or the address is not one of this machine's"
            ) from None

    async def start(self) -> None:
        await self._server.start()

    async def stop(self, grace: float = 1.0) -> None:
        await self._server.stop(grace)


async def start_host(
    address: str,
    grace: float = HOLD_AFTER_START,
    security: Security | None = None,
    queue_limit: int = CLIENT_QUEUE_LIMIT,
    queue_bytes: int = CLIENT_QUEUE_BYTES,
) -> Host:
    host = Host(address, grace, security, queue_limit, queue_bytes)
    await host.start()
    return host
