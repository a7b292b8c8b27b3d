"""The worker: autogen-core's `AgentRuntime` on a connection to the host that survives it.

Written on autogen-core's public interface (so `RoutedAgent`, `@message_handler` and AgentChat
agents run on it unchanged) and on the host's wire contract (AutoGen's protos), with nothing
private of AutoGen's. It speaks that contract as AutoGen's own worker does, so it works with
a stock AutoGen host, and stock workers with ours.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import suppress
from typing import Any, Protocol, TypeVar, cast

import grpc
from autogen_core import (
    JSON_DATA_CONTENT_TYPE,
    PROTOBUF_DATA_CONTENT_TYPE,
    Agent,
    AgentId,
    AgentInstantiationContext,
    AgentMetadata,
    AgentRuntime,
    AgentType,
    CancellationToken,
    MessageContext,
    MessageHandlerContext,
    MessageSerializer,
    RoutedAgent,
    Subscription,
    TopicId,
    TypePrefixSubscription,
    TypeSubscription,
    UnknownPayload,
    try_get_known_serializers_for_type,
)
from autogen_ext.runtimes.grpc.protos import agent_worker_pb2, agent_worker_pb2_grpc, cloudevent_pb2

from . import clock, telemetry
from .config import CONNECT_TIMEOUT, NATS_SCHEMES
from .messages import WIRE_TYPES
from .routing import Routes
from .security import Security, channel_credentials, channel_options, token_metadata
from .wire import (
    CLIENT_ID_KEY,
    CONTENT_TYPE,
    DELIVERED_TO,
    DELIVERY,
    HOST_RECEIVE_LIMIT,
    MAX_GRPC_MESSAGE_BYTES,
    MESSAGE_KIND,
    PUBLISH,
    SCHEMA,
    SENDER_KEY,
    SENDER_TYPE,
    TRACE_KEYS,
    HostRefused,
    HostUnreachable,
    RuntimeStopped,
)

log = logging.getLogger("roundtable")

T = TypeVar("T", bound=Agent)

#: A worker sends no more than the host accepts, and accepts what the host may send.
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", HOST_RECEIVE_LIMIT),
    ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_BYTES),
]


# Keepalive pings find a dead peer (a partition, a host that vanished) in seconds, not
# minutes; the host must accept pings that often.
KEEPALIVE_TIME_MS = 5_000
KEEPALIVE_TIMEOUT_MS = 3_000
WORKER_KEEPALIVE = [
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Our own loop decides when to try again. gRPC shares subchannels between channels to
    # the same address, with a backoff of their own that grows to minutes: keep them
    # private and quick, or a restarted host is found seconds late.
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]
OUTBOX_LIMIT = 10_000
RECONNECT_MAX_DELAY = 0.5
#: The last message handed to a stream that broke is sent again on the next one, unless it
#: is older than this: a keepalive ping was then answered after it, so it was delivered (TCP
#: keeps order). Without the bound, a reconnect repeated a message sent minutes before.
#: How the host says no to a registration or subscription (see host.py).
REFUSALS = {
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
}
RESEND_WINDOW = (KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS) / 1000


class Link(Protocol):
    """One connection to a host: the `AgentRpc` stub's methods, and a way to close it. This is the
    transport seam: `GrpcLink` goes over gRPC; `memory.MemoryLink` reaches a host's `Router` in
    the same process (for tests). Reconnecting, the outbox and everything above stay the same."""

    stub: Any

    def handled(self, delivery: str) -> None:
        """The event this link delivered as `delivery` has been handled (a bus that stores events
        may now forget it)."""

    async def close(self) -> None: ...


class GrpcLink:
    """A gRPC channel to the host at `address`, with TLS and the token when configured."""

    def __init__(self, address: str, security: Security) -> None:
        options = GRPC_OPTIONS + WORKER_KEEPALIVE + channel_options(security)
        if security.tls:
            self._channel = grpc.aio.secure_channel(address, channel_credentials(security), options=options)
        else:
            self._channel = grpc.aio.insecure_channel(address, options=options)
        self.stub = agent_worker_pb2_grpc.AgentRpcStub(self._channel)

    def handled(self, delivery: str) -> None:
        """The host stores nothing: nothing to acknowledge."""

    async def close(self) -> None:
        await self._channel.close()


class ResilientConnection:
    """The worker's connection to the host, which survives a lost stream: it reconnects with
    exponential backoff and jitter, registers the agent types and subscriptions again, and
    keeps what is published meanwhile in a bounded outbox. The last message handed to a stream
    that then broke is sent again (at least once: consumers drop duplicates by message id)."""

    def __init__(
        self,
        address: str,
        connect_timeout: float,
        security: Security | None = None,
        outbox_limit: int = OUTBOX_LIMIT,
        dial: Callable[[], Link] | None = None,
    ) -> None:
        self.address = address
        self._security = security or Security()
        self._dial = dial or self._default_dial(address, connect_timeout)
        self.agent_types: list[str] = []
        self.subscriptions: dict[str, agent_worker_pb2.AddSubscriptionRequest] = {}
        self.reconnects = 0
        self._connect_timeout = connect_timeout
        self._outbox: deque[agent_worker_pb2.Message] = deque()
        self._outbox_limit = outbox_limit
        self._has_items = asyncio.Event()  # the stream's reader waits on this
        self._waiting_for_space: deque[asyncio.Future[None]] = deque()  # publishers, when the outbox is full
        self._inbox: asyncio.Queue[agent_worker_pb2.Message] = asyncio.Queue()
        self._in_flight: agent_worker_pb2.Message | None = None
        self._in_flight_at = 0.0
        self._connected = asyncio.Event()
        self._generation = 0
        self._client_id = ""
        self._link: Link | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._listeners: list[Callable[[], Awaitable[None]]] = []

    def _default_dial(self, address: str, connect_timeout: float) -> Callable[[], Link]:
        """gRPC to a host, or NATS for a nats:// address (natsbus.py)."""
        if address.startswith(NATS_SCHEMES):
            from .natsbus import NatsLink, Session

            session = Session()  # its consumers, and the events it was handed, outlive a connection
            return lambda: NatsLink(address, self._security, connect_timeout, session)
        return lambda: GrpcLink(address, self._security)

    @property
    def per_type_delivery(self) -> bool:
        """Whether the bus hands each event to one named agent type (NATS), not to all of ours."""
        return self.address.startswith(NATS_SCHEMES)

    @property
    def metadata(self) -> list[tuple[str, str]]:
        return [(CLIENT_ID_KEY, self._client_id), *token_metadata(self._security)]

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def link(self) -> Link | None:
        """The link of the connection now (None between connections)."""
        return self._link

    @property
    def client_id(self) -> str:
        """This connection's id with the host (a new one at every reconnect)."""
        return self._client_id

    def on_reconnect(self, listener: Callable[[], Awaitable[None]]) -> None:
        self._listeners.append(listener)

    async def open(self) -> None:
        """The first connection, tried again (refused, unreachable, TLS not ready yet) until
        `connect_timeout` has passed: processes started by hand in any order find each other.
        Then, or at once for a rejected token, a clear error instead of retrying for ever."""
        deadline = clock.monotonic() + self._connect_timeout
        attempt = 0
        while True:
            try:
                call = await self._connect(max(0.1, deadline - clock.monotonic()))
                break
            except (grpc.aio.AioRpcError, asyncio.TimeoutError) as error:
                await self._drop_channel()
                if isinstance(error, grpc.aio.AioRpcError) and error.code() == grpc.StatusCode.UNAUTHENTICATED:
                    raise HostUnreachable(
                        f"the roundtable host at {self.address} rejected this process: missing or wrong token "
                        "(set ROUNDTABLE_TOKEN, security.token_file or security.tokens)"
                    ) from None
                delay = min(RECONNECT_MAX_DELAY, 0.05 * 2**attempt) * random.uniform(0.5, 1.0)
                attempt += 1
                if clock.monotonic() + delay >= deadline:
                    detail = error.details() if isinstance(error, grpc.aio.AioRpcError) else "timed out"
                    raise HostUnreachable(
                        f"cannot reach the roundtable host at {self.address} within {self._connect_timeout:g} s "
                        f"({detail}): is {'the NATS server' if self.per_type_delivery else '`roundtable host`'} "
                        "running there?"
                    ) from None
                await asyncio.sleep(delay)
        self._task = asyncio.create_task(self._run(call))

    async def _connect(self, timeout: float | None = None) -> grpc.aio.StreamStreamCall[Any, Any]:
        self._generation += 1
        generation = self._generation
        self._has_items.set()  # an older stream's reader, if still waiting, sees it is stale and ends
        self._link = self._dial()
        self._client_id = str(uuid.uuid4())  # a new id each time: the host may still be cleaning up the old one
        requests = _Requests(self, generation, self._in_flight)
        call = self._link.stub.OpenChannel(requests, metadata=self.metadata)
        try:
            await asyncio.wait_for(call.wait_for_connection(), timeout or self._connect_timeout)
            # A stream is accepted before the host has checked anything; this call proves the
            # token and the stream, so a rejected worker fails here, at once.
            await self._raw_call("GetSubscriptions", agent_worker_pb2.GetSubscriptionsRequest())
            for agent_type in self.agent_types:
                await self._raw_call("RegisterAgent", agent_worker_pb2.RegisterAgentTypeRequest(type=agent_type))
            for subscription in self.subscriptions.values():
                await self._raw_call("AddSubscription", subscription)
        except BaseException:
            requests.close()
            call.cancel()
            raise
        requests.ready.set()
        self._connected.set()
        return call

    async def next_request(self, generation: int) -> agent_worker_pb2.Message:
        """The next message for the stream of `generation`; a newer stream owns the outbox."""
        while not self._outbox:
            if generation != self._generation:
                raise StopAsyncIteration
            self._has_items.clear()
            await self._has_items.wait()
        if generation != self._generation:
            raise StopAsyncIteration
        message = self._outbox.popleft()
        while self._waiting_for_space:  # one slot freed: wake exactly one waiting publisher
            waiter = self._waiting_for_space.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break
        self._in_flight, self._in_flight_at = message, clock.monotonic()
        return message

    async def _run(self, call: grpc.aio.StreamStreamCall[Any, Any]) -> None:
        attempt = 0
        while True:
            try:
                while True:
                    message = await call.read()
                    if message is grpc.aio.EOF:
                        break
                    await self._inbox.put(message)
            except grpc.aio.AioRpcError as error:
                log.debug("stream to %s ended: %s", self.address, error.code())
            self._connected.clear()
            call.cancel()
            await self._drop_channel()
            if self._closed:
                return
            lost_at = clock.monotonic()
            if lost_at - self._in_flight_at > RESEND_WINDOW:
                self._in_flight = None  # delivered: see RESEND_WINDOW
            log.warning("lost the host at %s; reconnecting", self.address)
            while not self._closed:
                # Exponential backoff with jitter, capped at half a second so that messages
                # flow again within a second of the host coming back.
                await asyncio.sleep(min(RECONNECT_MAX_DELAY, 0.05 * 2**attempt) * random.uniform(0.5, 1.0))
                attempt += 1
                try:
                    call = await self._connect()
                except (grpc.aio.AioRpcError, asyncio.TimeoutError) as error:
                    detail = error.details() if isinstance(error, grpc.aio.AioRpcError) else "timed out"
                    log.debug("connecting to %s again failed: %s", self.address, detail)
                    await self._drop_channel()
                    continue
                self.reconnects += 1
                log.warning(
                    "reconnected to %s after %.1f s (%d attempts)", self.address, clock.monotonic() - lost_at, attempt
                )
                attempt = 0
                for listener in self._listeners:
                    try:
                        await listener()
                    except Exception:  # a listener's failure must not stop the reconnecting
                        log.exception("after reconnecting")
                break

    async def _drop_channel(self) -> None:
        if self._link is not None:
            link, self._link = self._link, None
            await link.close()

    async def _raw_call(self, method: str, request: Any) -> Any:
        assert self._link is not None
        return await getattr(self._link.stub, method)(request, metadata=self.metadata, timeout=self._connect_timeout)

    async def call(self, method: str, request: Any) -> Any:
        """A unary call, after waiting (bounded) for a live connection."""
        try:
            await asyncio.wait_for(self._connected.wait(), self._connect_timeout)
        except asyncio.TimeoutError:
            raise HostUnreachable(f"not connected to the roundtable host at {self.address}") from None
        return await self._raw_call(method, request)

    async def register(self, agent_type: str) -> None:
        """Register an agent type with the host, now and after every reconnect."""
        request = agent_worker_pb2.RegisterAgentTypeRequest(type=agent_type)
        await self._ask_host(f"register agent type {agent_type!r}", "RegisterAgent", request)
        self.agent_types.append(agent_type)

    async def subscribe(self, subscription: agent_worker_pb2.Subscription) -> None:
        """Subscribe with the host, now and after every reconnect."""
        request = agent_worker_pb2.AddSubscriptionRequest(subscription=subscription)
        await self._ask_host("subscribe", "AddSubscription", request)
        self.subscriptions[subscription.id] = request

    async def _ask_host(self, what: str, method: str, request: Any) -> None:
        """A registration or subscription; the host's refusal becomes one line (HostRefused)."""
        try:
            await self.call(method, request)
        except grpc.aio.AioRpcError as error:
            if error.code() not in REFUSALS:
                raise
            raise HostRefused(f"the host at {self.address} refused to {what}: {error.details()}") from None

    async def unsubscribe(self, subscription_id: str) -> None:
        self.subscriptions.pop(subscription_id, None)
        await self.call("RemoveSubscription", agent_worker_pb2.RemoveSubscriptionRequest(id=subscription_id))

    async def send(self, message: agent_worker_pb2.Message) -> None:
        size = message.ByteSize()
        if size > HOST_RECEIVE_LIMIT:
            # Sent, it would kill our stream (gRPC's limit) and everything registered on it.
            event = message.cloudEvent
            log.error(
                "refusing to send a %d-byte message (%s on %s; the limit is %d bytes)",
                size,
                event.attributes[SCHEMA].ce_string if SCHEMA in event.attributes else "rpc",
                event.type or "?",
                HOST_RECEIVE_LIMIT,
            )
            return
        if message.WhichOneof("message") == "cloudEvent":
            carrier: dict[str, str] = {}
            telemetry.inject(carrier)
            for key, value in carrier.items():
                message.cloudEvent.attributes[key].ce_string = value
        while len(self._outbox) >= self._outbox_limit:
            # Back-pressure rather than loss: wait, in turn, for the stream to drain the outbox.
            waiter = asyncio.get_running_loop().create_future()
            self._waiting_for_space.append(waiter)
            await waiter
        self._outbox.append(message)
        self._has_items.set()

    async def recv(self) -> agent_worker_pb2.Message:
        return await self._inbox.get()

    def handled(self, event: cloudevent_pb2.CloudEvent) -> None:
        """`event`'s handlers have run: the link may acknowledge it (see `Link.handled`). One
        delivered on an earlier connection is not: the bus hands it out again, and then it is
        dropped as seen."""
        if DELIVERY in event.attributes and self._link is not None:
            self._link.handled(event.attributes[DELIVERY].ce_string)

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        await self._drop_channel()


class _Requests:
    """The request side of one stream. It waits until the types and subscriptions are
    registered again, then sends first the message that may have been lost with the last
    stream, then the outbox. (A class, not an async generator: gRPC may close it while it
    waits, which an async generator does not allow.)"""

    def __init__(
        self, connection: ResilientConnection, generation: int, resend: agent_worker_pb2.Message | None
    ) -> None:
        self.ready = asyncio.Event()
        self._connection = connection
        self._generation = generation
        self._resend = resend
        self._closed = False

    def close(self) -> None:
        """This stream failed before it was ready: let gRPC's reader of it finish."""
        self._closed = True
        self.ready.set()

    def __aiter__(self) -> _Requests:
        return self

    async def __anext__(self) -> agent_worker_pb2.Message:
        await self.ready.wait()
        if self._closed:
            raise StopAsyncIteration
        if self._resend is not None:
            message, self._resend = self._resend, None
            return message
        return await self._connection.next_request(self._generation)


def subscription_to_wire(subscription: Subscription) -> agent_worker_pb2.Subscription:
    """A subscription as the host's protocol carries it: by type, or by type prefix."""
    if isinstance(subscription, TypeSubscription):
        by_type = agent_worker_pb2.TypeSubscription(
            topic_type=subscription.topic_type, agent_type=subscription.agent_type
        )
        return agent_worker_pb2.Subscription(id=subscription.id, typeSubscription=by_type)
    if isinstance(subscription, TypePrefixSubscription):
        by_prefix = agent_worker_pb2.TypePrefixSubscription(
            topic_type_prefix=subscription.topic_type_prefix, agent_type=subscription.agent_type
        )
        return agent_worker_pb2.Subscription(id=subscription.id, typePrefixSubscription=by_prefix)
    raise ValueError(f"the host routes TypeSubscription and TypePrefixSubscription only, not {type(subscription)}")


def type_name(message: Any) -> str:
    """The name a message's type travels under: as autogen-core's serializers name it."""
    descriptor = getattr(message, "DESCRIPTOR", None)
    full_name = getattr(descriptor, "full_name", None)
    return full_name if isinstance(full_name, str) else type(message).__name__


class WorkerRuntime(AgentRuntime):
    """An `AgentRuntime` whose agents live in this process and whose messages go through the host.

    Each message received is handled in its own task, as AutoGen's worker does. Agents are made
    on first use, one per agent id; `forget` drops one whose conversation has ended (AutoGen's
    worker kept every one for ever). Calls (`send_message`) still waiting when the connection is
    lost fail at once: the host forgets them with the connection.
    """

    def __init__(
        self,
        address: str,
        connect_timeout: float = CONNECT_TIMEOUT,
        security: Security | None = None,
        dial: Callable[[], Link] | None = None,
    ) -> None:
        self.connection = ResilientConnection(address, connect_timeout, security, dial=dial)
        self.routes = Routes()
        self._factories: dict[str, Callable[[], Awaitable[Agent]]] = {}
        self._instance_types: dict[str, type[Agent]] = {}
        self._agents: dict[AgentId, Agent] = {}
        self._serializers: dict[tuple[str, str], MessageSerializer[Any]] = {}
        self._calls: dict[str, asyncio.Future[Any]] = {}
        self._next_call = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._reader: asyncio.Task[None] | None = None
        self._running = False
        for message_type in WIRE_TYPES:
            self.add_message_serializer(try_get_known_serializers_for_type(message_type))
        self.connection.on_reconnect(self._fail_calls)

    # ------------------------------------------------------------ running

    async def start(self) -> None:
        if self._running:
            raise ValueError("the runtime is already running")
        await self.connection.open()
        self._reader = asyncio.create_task(self._read())
        self._running = True

    async def stop(self) -> None:
        """Stop at once: what is being handled is cancelled (a turn left unfinished is asked again)."""
        self._running = False
        if self._reader is not None:
            self._reader.cancel()
            with suppress(asyncio.CancelledError):
                await self._reader
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.connection.close()
        await self._fail_calls("the runtime stopped")

    def on_reconnect(self, listener: Callable[[], Awaitable[None]]) -> None:
        """Call `listener` after each reconnect, once types and subscriptions are registered again."""
        self.connection.on_reconnect(listener)

    def forget(self, agent_id: AgentId) -> None:
        """Drop an agent instance whose conversation has ended; a message that still comes for
        it simply makes a new one."""
        self._agents.pop(agent_id, None)

    async def _read(self) -> None:
        while True:
            message = await self.connection.recv()
            kind = message.WhichOneof("message")
            if kind == "response":
                self._on_response(message.response)
            elif kind == "cloudEvent":
                self._spawn(self.handle_event(message.cloudEvent))
            elif kind == "request":
                self._spawn(self.handle_request(message.request))

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------ messages in

    async def handle_event(self, event: cloudevent_pb2.CloudEvent) -> None:
        """Deliver a published message to this worker's agents subscribed to its topic. One that
        cannot be decoded or handled is logged in one line and skipped."""
        attributes = event.attributes
        carrier = {key: attributes[key].ce_string for key in TRACE_KEYS if key in attributes}
        try:
            with telemetry.restored(carrier), telemetry.span("roundtable.handle", topic=event.type[:80]):
                sender = None
                if SENDER_TYPE in attributes and SENDER_KEY in attributes:
                    sender = AgentId(attributes[SENDER_TYPE].ce_string, attributes[SENDER_KEY].ce_string)
                topic = TopicId(event.type, event.source)
                content_type = attributes[CONTENT_TYPE].ce_string
                if content_type == PROTOBUF_DATA_CONTENT_TYPE:
                    data = event.proto_data.SerializeToString()
                elif content_type == JSON_DATA_CONTENT_TYPE:
                    data = event.binary_data
                else:
                    raise ValueError(f"unsupported content type {content_type!r}")
                message = self._decode(data, attributes[SCHEMA].ce_string, content_type)
                only = None
                if self.connection.per_type_delivery and DELIVERED_TO in attributes:
                    only = attributes[DELIVERED_TO].ce_string  # the bus delivers once per agent type
                handlers = []
                for agent_id in self.routes.recipients(topic):
                    if agent_id == sender or (only is not None and agent_id.type != only):
                        continue
                    agent = await self._agent(agent_id)
                    context = MessageContext(
                        sender=sender,
                        topic_id=topic,
                        is_rpc=False,
                        cancellation_token=CancellationToken(),
                        message_id=event.id,
                    )
                    handlers.append(_handle(agent, message, context))
                await asyncio.gather(*handlers)
        except Exception as error:
            log.warning("skipped a message on %r that could not be handled: %s", event.type[:80], error)
        self.connection.handled(event)

    async def handle_request(self, request: agent_worker_pb2.RpcRequest) -> None:
        """Answer a call to one of this worker's agents: its handler's result, or its error."""
        response = agent_worker_pb2.RpcResponse(request_id=request.request_id)
        try:
            sender = AgentId(request.source.type, request.source.key) if request.HasField("source") else None
            payload = request.payload
            message = self._decode(payload.data, payload.data_type, payload.data_content_type)
            agent = await self._agent(AgentId(request.target.type, request.target.key))
            context = MessageContext(
                sender=sender,
                topic_id=None,
                is_rpc=True,
                cancellation_token=CancellationToken(),
                message_id=request.request_id,
            )
            result = await _handle(agent, message, context)
            if result is not None:
                response.payload.CopyFrom(self._payload(result))
        except Exception as error:
            response.error = str(error) or type(error).__name__
        await self.connection.send(agent_worker_pb2.Message(response=response))

    def _on_response(self, response: agent_worker_pb2.RpcResponse) -> None:
        future = self._calls.pop(response.request_id, None)
        if future is None or future.done():
            return
        if response.error:
            future.set_exception(RuntimeError(response.error))
            return
        payload = response.payload
        try:
            result = (
                self._decode(payload.data, payload.data_type, payload.data_content_type) if payload.data_type else None
            )
        except Exception as error:
            future.set_exception(error)
        else:
            future.set_result(result)

    async def _fail_calls(self, why: str = "the connection to the host was lost") -> None:
        calls, self._calls = self._calls, {}
        for future in calls.values():
            if not future.done():
                future.set_exception(RuntimeError(why))

    # ------------------------------------------------------------ messages out

    async def publish_message(
        self,
        message: Any,
        topic_id: TopicId,
        *,
        sender: AgentId | None = None,
        cancellation_token: CancellationToken | None = None,
        message_id: str | None = None,
    ) -> None:
        if not self._running:
            raise RuntimeStopped("the runtime must be running to publish")
        payload = self._payload(message)
        sender = sender or AgentId("unknown", "unknown")

        def text(value: str) -> cloudevent_pb2.CloudEvent.CloudEventAttributeValue:
            return cloudevent_pb2.CloudEvent.CloudEventAttributeValue(ce_string=value)

        event = cloudevent_pb2.CloudEvent(
            id=message_id or str(uuid.uuid4()),
            spec_version="1.0",
            type=topic_id.type,
            source=topic_id.source,
            attributes={
                CONTENT_TYPE: text(payload.data_content_type),
                SCHEMA: text(payload.data_type),
                SENDER_TYPE: text(sender.type),
                SENDER_KEY: text(sender.key),
                MESSAGE_KIND: text(PUBLISH),
            },
            binary_data=payload.data,
        )
        # A span per message, as AutoGen's worker makes: the first one a process publishes starts
        # the conversation's trace, and the host carries its context to every subscriber.
        with telemetry.span("roundtable.publish", topic=topic_id.type, type=payload.data_type):
            await self.connection.send(agent_worker_pb2.Message(cloudEvent=event))

    async def send_message(
        self,
        message: Any,
        recipient: AgentId,
        *,
        sender: AgentId | None = None,
        cancellation_token: CancellationToken | None = None,
        message_id: str | None = None,
    ) -> Any:
        if not self._running:
            raise ValueError("the runtime must be running to send")
        self._next_call += 1
        request_id = str(self._next_call)
        request = agent_worker_pb2.RpcRequest(
            request_id=request_id,
            target=agent_worker_pb2.AgentId(type=recipient.type, key=recipient.key),
            payload=self._payload(message),
        )
        if sender is not None:
            request.source.CopyFrom(agent_worker_pb2.AgentId(type=sender.type, key=sender.key))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls[request_id] = future
        if cancellation_token is not None:
            cancellation_token.link_future(future)
        try:
            await self.connection.send(agent_worker_pb2.Message(request=request))
            return await future
        finally:
            self._calls.pop(request_id, None)

    # ------------------------------------------------------------ serialization

    def add_message_serializer(self, serializer: MessageSerializer[Any] | Sequence[MessageSerializer[Any]]) -> None:
        for one in serializer if isinstance(serializer, Sequence) else [serializer]:
            self._serializers[(one.data_content_type, one.type_name)] = one

    def _payload(self, message: Any) -> agent_worker_pb2.Payload:
        name = type_name(message)
        serializer = self._serializers.get((JSON_DATA_CONTENT_TYPE, name))
        if serializer is None:
            raise ValueError(f"no serializer for {name}: add one with add_message_serializer")
        data = serializer.serialize(message)
        return agent_worker_pb2.Payload(data_type=name, data_content_type=JSON_DATA_CONTENT_TYPE, data=data)

    def _decode(self, data: bytes, name: str, content_type: str) -> Any:
        serializer = self._serializers.get((content_type, name))
        if serializer is None:  # a type this worker does not know: its agents may still take it
            return UnknownPayload(type_name=name, data_content_type=content_type, payload=data)
        return serializer.deserialize(data)

    # ------------------------------------------------------------ agents

    async def register_factory(
        self,
        type: str | AgentType,
        agent_factory: Callable[[], T | Awaitable[T]],
        *,
        expected_class: type[T] | None = None,
    ) -> AgentType:
        agent_type = AgentType(type) if isinstance(type, str) else type
        if agent_type.type in self._factories:
            raise ValueError(f"agent type {agent_type.type!r} is already registered in this worker")

        async def make() -> Agent:
            agent = agent_factory()
            if inspect.isawaitable(agent):
                agent = await agent
            if expected_class is not None and not isinstance(agent, expected_class):
                raise ValueError(f"the factory of {agent_type.type!r} made a {agent!r}, not a {expected_class}")
            return cast(Agent, agent)

        self._factories[agent_type.type] = make
        await self.connection.register(agent_type.type)
        return agent_type

    async def register_agent_instance(self, agent_instance: Agent, agent_id: AgentId) -> AgentId:
        if agent_id in self._agents:
            raise ValueError(f"agent {agent_id} already exists")
        if agent_id.type in self._factories and agent_id.type not in self._instance_types:
            raise ValueError(f"agent type {agent_id.type!r} is registered with a factory, not with instances")
        known = self._instance_types.setdefault(agent_id.type, type(agent_instance))
        if known is not type(agent_instance):
            raise ValueError(f"the instances of agent type {agent_id.type!r} must all be {known.__name__}")
        if agent_id.type not in self._factories:

            async def no_factory() -> Agent:
                raise LookupError(f"agent type {agent_id.type!r} has instances only; {agent_id} is not one")

            self._factories[agent_id.type] = no_factory
            await self.connection.register(agent_id.type)
        await agent_instance.bind_id_and_runtime(id=agent_id, runtime=self)
        self._agents[agent_id] = agent_instance
        return agent_id

    async def _agent(self, agent_id: AgentId) -> Agent:
        agent = self._agents.get(agent_id)
        if agent is not None:
            return agent
        make = self._factories.get(agent_id.type)
        if make is None:
            raise LookupError(f"no agent type {agent_id.type!r} in this worker")
        with AgentInstantiationContext.populate_context((self, agent_id)):
            agent = await make()
        return self._agents.setdefault(agent_id, agent)

    async def get(
        self, id_or_type: AgentId | AgentType | str, /, key: str = "default", *, lazy: bool = True
    ) -> AgentId:
        if isinstance(id_or_type, AgentId):
            agent_id = id_or_type
        else:
            agent_id = AgentId(id_or_type.type if isinstance(id_or_type, AgentType) else id_or_type, key)
        if not lazy:
            await self._agent(agent_id)
        return agent_id

    async def try_get_underlying_agent_instance(self, id: AgentId, type: type[T] = Agent) -> T:  # type: ignore[assignment]
        if id.type not in self._factories:
            raise LookupError(f"no agent type {id.type!r} in this worker")
        agent = await self._agent(id)
        if not isinstance(agent, type):
            raise TypeError(f"agent {id} is a {agent.__class__.__name__}, not a {type.__name__}")
        return agent

    async def agent_metadata(self, agent: AgentId) -> AgentMetadata:
        return (await self._agent(agent)).metadata

    async def agent_save_state(self, agent: AgentId) -> Mapping[str, Any]:
        return await (await self._agent(agent)).save_state()

    async def agent_load_state(self, agent: AgentId, state: Mapping[str, Any]) -> None:
        await (await self._agent(agent)).load_state(state)

    async def save_state(self) -> Mapping[str, Any]:
        return {str(agent_id): dict(await agent.save_state()) for agent_id, agent in self._agents.items()}

    async def load_state(self, state: Mapping[str, Any]) -> None:
        for key, agent_state in state.items():
            agent_id = AgentId.from_str(key)
            if agent_id.type in self._factories:
                await (await self._agent(agent_id)).load_state(agent_state)

    # ------------------------------------------------------------ subscriptions

    async def add_subscription(self, subscription: Subscription) -> None:
        await self.connection.subscribe(subscription_to_wire(subscription))
        self.routes.add(subscription)

    async def remove_subscription(self, id: str) -> None:
        await self.connection.unsubscribe(id)
        if not self.routes.remove(id):
            raise LookupError(f"no subscription {id!r}")


async def _handle(agent: Agent, message: Any, context: MessageContext) -> Any:
    with MessageHandlerContext.populate_context(agent.id):
        return await agent.on_message(message, ctx=context)


async def connect_worker(
    address: str, timeout: float = CONNECT_TIMEOUT, security: Security | None = None
) -> WorkerRuntime:
    """A started worker runtime that knows every roundtable message type."""
    runtime = WorkerRuntime(address, timeout, security)
    await runtime.start()
    return runtime


def forget(agent: RoutedAgent) -> None:
    """Let the runtime drop this (finished) agent instance, if it is one of ours."""
    if isinstance(agent.runtime, WorkerRuntime):
        agent.runtime.forget(agent.id)


async def stop_worker(runtime: WorkerRuntime) -> None:
    try:
        await asyncio.wait_for(runtime.stop(), 5)
    except (Exception, asyncio.CancelledError) as error:  # we are leaving anyway
        log.debug("worker stop: %s", error)
