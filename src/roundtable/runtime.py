"""Host and worker construction: the one place that wires AutoGen's gRPC runtime.

Also the shared process plumbing every role needs: logging, the readiness line
that `roundtable up` waits for, and shutdown on a signal on every platform.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import sys
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import grpc
from autogen_core import AgentId, RoutedAgent, TopicId
from autogen_core._serialization import try_get_known_serializers_for_type
from autogen_ext.runtimes.grpc import GrpcWorkerAgentRuntime, GrpcWorkerAgentRuntimeHostServicer
from autogen_ext.runtimes.grpc._worker_runtime_host_servicer import CallbackChannelConnection
from autogen_ext.runtimes.grpc.protos import agent_worker_pb2, agent_worker_pb2_grpc, cloudevent_pb2
from autogen_ext.runtimes.grpc.protos.agent_worker_pb2_grpc import add_AgentRpcServicer_to_server

from . import telemetry
from .messages import WIRE_TYPES
from .routing import Routes
from .security import (
    Security,
    TokenInterceptor,
    channel_credentials,
    channel_options,
    check_listen_address,
    server_credentials,
    token_metadata,
)

log = logging.getLogger("roundtable")

#: Printed once a process is connected and serving; `roundtable up` waits for it.
READY_MARKER = "roundtable ready:"

#: gRPC message size limit, the same on host and worker so neither side kills the other's stream.
MAX_GRPC_MESSAGE_BYTES = 16 * 1024 * 1024
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_BYTES),
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
HOST_KEEPALIVE = [
    ("grpc.http2.min_ping_interval_without_data_ms", 4_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # gRPC binds with SO_REUSEPORT by default: a second host on the same port would start
    # "fine" and take a random half of the connections. One port, one host.
    ("grpc.so_reuseport", 0),
]
OUTBOX_LIMIT = 10_000
CLIENT_QUEUE_LIMIT = 10_000  # messages waiting for one client on the host before it is cut off
HELD_BYTES_LIMIT = 8 * 1024 * 1024  # events a freshly started host keeps for late subscribers
SENDER_TYPE = "agagentsendertype"
#: The sender of a message published by no agent (a page, a terminal), or by one a client does not own.
UNKNOWN_SENDER = "unknown"
SCHEMA = "dataschema"
STREAM_WAIT_STEPS = 200  # x 10 ms
TRACE_KEYS = ("traceparent", "tracestate")
SENDER_KEY = "agagentsenderkey"
RECONNECT_MAX_DELAY = 0.5
#: The last message handed to a stream that broke is sent again on the next one, unless it
#: is older than this: a keepalive ping was then answered after it, so it was delivered (TCP
#: keeps order). Without the bound, a reconnect repeated a message sent minutes before.
RESEND_WINDOW = (KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS) / 1000


class HostUnreachable(Exception):
    """The gRPC host could not be reached; the message says where and what to check."""


def setup_logging(role: str, level: str = "INFO") -> None:
    """One format for every process. AutoGen's own loggers stay at WARNING: at INFO they
    format every message they move, which costs time even when nobody reads it."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s %(levelname)-7s {role}: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("autogen_core", "autogen_core.events", "autogen_agentchat", "httpx", "openai", "grpc", "mcp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def announce_ready(what: str) -> None:
    print(f"{READY_MARKER} {what}", flush=True)


# ---------------------------------------------------------------- the host
#
# AutoGen's GrpcWorkerAgentRuntimeHost has no hook for how events are routed, so we run
# our own grpc.aio server around a subclass of its servicer. The subclass reads the
# servicer's private routing tables; this section and the worker's below are the only
# places in roundtable that touch AutoGen's private state.


def use_routes(runtime: object) -> Routes:
    """Put `Routes` in place of the SubscriptionManager of AutoGen's host servicer or worker
    runtime (see routing.py). If AutoGen no longer keeps its table where this expects, say so
    at once rather than route for ever in a table that grows."""
    stock = getattr(runtime, "_subscription_manager", None)
    if stock is None or not hasattr(stock, "get_subscribed_recipients") or list(stock.subscriptions):
        raise RuntimeError(f"{type(runtime).__name__}: AutoGen's routing table is not where roundtable expects it")
    routes = Routes()
    runtime._subscription_manager = routes  # type: ignore[attr-defined]
    return routes


class _Close:
    """Put on a client's send queue to end its stream (it fell too far behind)."""


CLOSE = _Close()


async def _client_id(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    metadata = dict(context.invocation_metadata() or ())
    client_id = metadata.get("client-id")
    if not isinstance(client_id, str) or not client_id:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "client-id metadata not found")
    return str(client_id)


class _QuietConnection(CallbackChannelConnection[agent_worker_pb2.Message, agent_worker_pb2.Message]):
    """AutoGen's stream connection without its per-message log line (formatted even when off)."""

    async def _receive_messages(
        self, client_id: str, request_iterator: AsyncIterator[agent_worker_pb2.Message]
    ) -> None:
        async for message in request_iterator:
            await self._handle_message(message)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("the host could not route a message: %s", task.exception())


class RoutingServicer(GrpcWorkerAgentRuntimeHostServicer):
    """AutoGen's host servicer, made safe to share with clients that are broken or hostile,
    and kind to clients that reconnect.

    - A client id belongs to the connection that opened its stream: another stream with
      the same id is refused, and registrations, subscriptions and removals must come
      over that same connection (the stock servicer lets anyone who learns an id take
      over its messages, and register without a stream, which breaks delivery).
    - The duplicate-registration error no longer reveals the owner's client id.
    - A client may only remove its own subscriptions.
    - The sender of an event is checked against what the client registered; a claimed
      sender it does not own is replaced by "unknown".
    - Each client's send queue is bounded. When a client stops reading and its queue is
      full, what else is meant for it is dropped, and its stream is ended as soon as it
      reads again: it has missed messages, so it must reconnect (ours do, and the manager
      then publishes the open transcripts again). The host's memory stays bounded.
    - A freshly started host has no subscriptions until the workers reconnect, and the
      stock servicer drops what they publish meanwhile. For `grace` seconds after start,
      events are kept (up to 8 MB), and an agent type that subscribes late gets those meant
      for it that it has not had (a type already served never gets one twice).
    """

    def __init__(
        self, grace: float = 10.0, held_bytes_limit: int = HELD_BYTES_LIMIT, queue_limit: int = CLIENT_QUEUE_LIMIT
    ) -> None:
        super().__init__()
        self.routes = use_routes(self)
        self._started = time.monotonic()
        self._grace = grace
        self._held: list[tuple[cloudevent_pb2.CloudEvent, set[str]]] = []
        self._held_bytes = 0
        self._held_bytes_limit = held_bytes_limit
        self._queue_limit = queue_limit
        self._peers: dict[str, str] = {}
        self._cut_off: set[str] = set()

    def _in_grace(self) -> bool:
        return time.monotonic() - self._started < self._grace

    async def _caller(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        """The client id of a unary call, which must come over that client's own stream connection."""
        client_id = await _client_id(context)
        # The stream is opened first, but its handler may start a moment after this call arrives.
        for _ in range(STREAM_WAIT_STEPS):
            if client_id in self._data_connections:
                break
            await asyncio.sleep(0.01)
        else:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "open a stream before registering")
        if self._peers.get(client_id) != context.peer():
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "this client id belongs to another connection")
        return client_id

    async def OpenChannel(
        self, request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[agent_worker_pb2.Message]:
        client_id = await _client_id(context)
        if client_id in self._data_connections:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, "a stream with this client id is already open")
        self._peers[client_id] = context.peer()

        async def handle(message: agent_worker_pb2.Message) -> None:
            await self._receive_message(client_id, message)

        connection = _QuietConnection(request_iterator, client_id, handle_callback=handle)
        self._data_connections[client_id] = connection
        try:
            async for message in connection:
                if message is CLOSE:
                    log.warning("a client stopped reading; closing its stream")
                    break
                yield message
        finally:
            # As the stock servicer does when a stream ends, plus our own bookkeeping.
            del self._data_connections[client_id]
            for future in self._pending_responses.pop(client_id, {}).values():
                future.cancel()
            await self._on_client_disconnect(client_id)
            self._peers.pop(client_id, None)
            self._cut_off.discard(client_id)

    async def _receive_message(self, client_id: str, message: agent_worker_pb2.Message) -> None:
        # The stock version formats every message into a log line at INFO, whatever the log
        # level: on a busy host that was a third of its time.
        kind = message.WhichOneof("message")
        work: Coroutine[Any, Any, None]
        if kind == "cloudEvent":
            attributes = message.cloudEvent.attributes
            claimed = attributes[SENDER_TYPE].ce_string if SENDER_TYPE in attributes else ""
            if claimed and self._agent_type_to_client_id.get(claimed) != client_id:
                attributes[SENDER_TYPE].ce_string = UNKNOWN_SENDER
                if SENDER_KEY in attributes:
                    attributes[SENDER_KEY].ce_string = UNKNOWN_SENDER
            work = self._process_event(message.cloudEvent)
        elif kind == "request":
            work = self._process_request(message.request, client_id)
        elif kind == "response":
            work = self._process_response(message.response, client_id)
        else:
            return
        task = asyncio.create_task(work)
        self._background_tasks.add(task)
        task.add_done_callback(self._background_tasks.discard)
        task.add_done_callback(_log_failure)

    async def _deliver(self, event: cloudevent_pb2.CloudEvent, served: set[str]) -> set[str]:
        """Send `event` to the clients of its subscribed agent types, except the types in
        `served`; return the types it reached (a client cut off for not reading counts)."""
        recipients = await self.routes.get_subscribed_recipients(TopicId(event.type, event.source))
        by_client: dict[str, set[str]] = {}
        async with self._agent_type_to_client_id_lock:
            for recipient in recipients:
                client_id = self._agent_type_to_client_id.get(recipient.type)
                if client_id is not None and recipient.type not in served:
                    by_client.setdefault(client_id, set()).add(recipient.type)
        reached: set[str] = set()
        for client_id, agent_types in by_client.items():
            connection = self._data_connections.get(client_id)
            if connection is None:
                continue
            queue = connection._send_queue
            if queue.qsize() >= self._queue_limit:
                if client_id not in self._cut_off:
                    self._cut_off.add(client_id)
                    log.warning("a client has %d messages waiting; dropping more for it", queue.qsize())
                    queue.put_nowait(CLOSE)  # type: ignore[arg-type]
            else:
                await connection.send(agent_worker_pb2.Message(cloudEvent=event))
            reached |= agent_types
        return reached

    async def _process_event(self, event: cloudevent_pb2.CloudEvent) -> None:
        reached = await self._deliver(event, set())
        if self._in_grace():
            size = event.ByteSize()
            if self._held_bytes + size <= self._held_bytes_limit:  # bounded: a flood can't fill memory
                self._held.append((event, reached))
                self._held_bytes += size

    async def RegisterAgent(
        self, request: agent_worker_pb2.RegisterAgentTypeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_worker_pb2.RegisterAgentTypeResponse:
        client_id = await self._caller(context)
        async with self._agent_type_to_client_id_lock:
            if request.type in self._agent_type_to_client_id:
                await context.abort(
                    grpc.StatusCode.ALREADY_EXISTS, f"agent type {request.type} is already registered by another client"
                )
            self._agent_type_to_client_id[request.type] = client_id
        return agent_worker_pb2.RegisterAgentTypeResponse()

    async def AddSubscription(
        self, request: agent_worker_pb2.AddSubscriptionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_worker_pb2.AddSubscriptionResponse:
        await self._caller(context)
        response = await super().AddSubscription(request, context)
        if self._held and not self._in_grace():
            self._held.clear()
            self._held_bytes = 0
        for event, reached in self._held:
            # An agent type that comes back gets what it missed; one that was served, nothing twice.
            reached |= await self._deliver(event, reached)
        return response

    async def RemoveSubscription(
        self, request: agent_worker_pb2.RemoveSubscriptionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_worker_pb2.RemoveSubscriptionResponse:
        client_id = await self._caller(context)
        owned = self._client_id_to_subscription_id_mapping.get(client_id, set())
        if request.id not in owned:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not your subscription")
        owned.discard(request.id)
        return await super().RemoveSubscription(request, context)

    async def GetSubscriptions(
        self, request: agent_worker_pb2.GetSubscriptionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_worker_pb2.GetSubscriptionsResponse:
        await self._caller(context)
        return await super().GetSubscriptions(request, context)


class Host:
    """The gRPC host: our own server around the routing servicer, with TLS and the token
    check when configured. Off loopback it refuses to listen without both."""

    def __init__(
        self,
        address: str,
        grace: float = 10.0,
        security: Security | None = None,
        queue_limit: int = CLIENT_QUEUE_LIMIT,
    ) -> None:
        security = security or Security()
        check_listen_address(address, security)
        self.address = address
        self.servicer = RoutingServicer(grace, queue_limit=queue_limit)
        interceptors = [TokenInterceptor(security.token)] if security.token else []
        self._server = grpc.aio.server(options=GRPC_OPTIONS + HOST_KEEPALIVE, interceptors=interceptors)
        add_AgentRpcServicer_to_server(self.servicer, self._server)
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
    address: str, grace: float = 10.0, security: Security | None = None, queue_limit: int = CLIENT_QUEUE_LIMIT
) -> Host:
    host = Host(address, grace, security, queue_limit)
    await host.start()
    return host


# ---------------------------------------------------------------- the worker


class _StubProxy:
    """What AutoGen's worker calls as `host_connection.stub`: it remembers each agent type and
    subscription so they can be registered again after a reconnect."""

    def __init__(self, connection: ResilientConnection) -> None:
        self._connection = connection

    async def RegisterAgent(
        self, request: agent_worker_pb2.RegisterAgentTypeRequest, metadata: Any = None
    ) -> agent_worker_pb2.RegisterAgentTypeResponse:
        response = await self._connection.call("RegisterAgent", request)
        self._connection.agent_types.append(request.type)
        return response  # type: ignore[no-any-return]

    async def AddSubscription(
        self, request: agent_worker_pb2.AddSubscriptionRequest, metadata: Any = None
    ) -> agent_worker_pb2.AddSubscriptionResponse:
        response = await self._connection.call("AddSubscription", request)
        self._connection.subscriptions[request.subscription.id] = request
        return response  # type: ignore[no-any-return]

    async def RemoveSubscription(
        self, request: agent_worker_pb2.RemoveSubscriptionRequest, metadata: Any = None
    ) -> agent_worker_pb2.RemoveSubscriptionResponse:
        self._connection.subscriptions.pop(request.id, None)
        return await self._connection.call("RemoveSubscription", request)  # type: ignore[no-any-return]

    async def GetSubscriptions(
        self, request: agent_worker_pb2.GetSubscriptionsRequest, metadata: Any = None
    ) -> agent_worker_pb2.GetSubscriptionsResponse:
        return await self._connection.call("GetSubscriptions", request)  # type: ignore[no-any-return]


class ResilientConnection:
    """Stands in for AutoGen's HostConnection (`send`, `recv`, `stub`, `metadata`, `close`),
    but survives a lost stream: it reconnects with exponential backoff and jitter, registers
    the agent types and subscriptions again, and keeps what is published meanwhile in a
    bounded outbox. The last message handed to a stream that then broke is sent again
    (at least once: consumers drop duplicates by message id)."""

    def __init__(
        self,
        address: str,
        connect_timeout: float,
        security: Security | None = None,
        outbox_limit: int = OUTBOX_LIMIT,
    ) -> None:
        self.address = address
        self._security = security or Security()
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
        self._stub: agent_worker_pb2_grpc.AgentRpcStub | None = None
        self._channel: grpc.aio.Channel | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._listeners: list[Callable[[], Awaitable[None]]] = []
        self.stub = _StubProxy(self)

    @property
    def metadata(self) -> list[tuple[str, str]]:
        return [("client-id", self._client_id), *token_metadata(self._security)]

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def on_reconnect(self, listener: Callable[[], Awaitable[None]]) -> None:
        self._listeners.append(listener)

    async def open(self) -> None:
        """The first connection, tried again (refused, unreachable, TLS not ready yet) until
        `connect_timeout` has passed: processes started by hand in any order find each other.
        Then, or at once for a rejected token, a clear error instead of retrying for ever."""
        deadline = time.monotonic() + self._connect_timeout
        attempt = 0
        while True:
            try:
                call = await self._connect(max(0.1, deadline - time.monotonic()))
                break
            except (grpc.aio.AioRpcError, asyncio.TimeoutError) as error:
                await self._drop_channel()
                if isinstance(error, grpc.aio.AioRpcError) and error.code() == grpc.StatusCode.UNAUTHENTICATED:
                    raise HostUnreachable(
                        f"the roundtable host at {self.address} rejected this process: missing or wrong token "
                        "(set ROUNDTABLE_TOKEN or security.token_file)"
                    ) from None
                delay = min(RECONNECT_MAX_DELAY, 0.05 * 2**attempt) * random.uniform(0.5, 1.0)
                attempt += 1
                if time.monotonic() + delay >= deadline:
                    detail = error.details() if isinstance(error, grpc.aio.AioRpcError) else "timed out"
                    raise HostUnreachable(
                        f"cannot reach the roundtable host at {self.address} within {self._connect_timeout:g} s "
                        f"({detail}): is `roundtable host` running there?"
                    ) from None
                await asyncio.sleep(delay)
        self._task = asyncio.create_task(self._run(call))

    async def _connect(self, timeout: float | None = None) -> grpc.aio.StreamStreamCall[Any, Any]:
        self._generation += 1
        generation = self._generation
        self._has_items.set()  # an older stream's reader, if still waiting, sees it is stale and ends
        options = GRPC_OPTIONS + WORKER_KEEPALIVE + channel_options(self._security)
        if self._security.tls:
            credentials = channel_credentials(self._security)
            self._channel = grpc.aio.secure_channel(self.address, credentials, options=options)
        else:
            self._channel = grpc.aio.insecure_channel(self.address, options=options)
        self._stub = agent_worker_pb2_grpc.AgentRpcStub(self._channel)
        self._client_id = str(uuid.uuid4())  # a new id each time: the host may still be cleaning up the old one
        requests = _Requests(self, generation, self._in_flight)
        call = self._stub.OpenChannel(requests, metadata=self.metadata)
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
        self._in_flight, self._in_flight_at = message, time.monotonic()
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
            lost_at = time.monotonic()
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
                except (grpc.aio.AioRpcError, asyncio.TimeoutError):
                    await self._drop_channel()
                    continue
                self.reconnects += 1
                log.warning(
                    "reconnected to %s after %.1f s (%d attempts)", self.address, time.monotonic() - lost_at, attempt
                )
                attempt = 0
                for listener in self._listeners:
                    try:
                        await listener()
                    except Exception:  # a listener's failure must not stop the reconnecting
                        log.exception("after reconnecting")
                break

    async def _drop_channel(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close()

    async def _raw_call(self, method: str, request: Any) -> Any:
        assert self._stub is not None
        return await getattr(self._stub, method)(request, metadata=self.metadata, timeout=self._connect_timeout)

    async def call(self, method: str, request: Any) -> Any:
        """A unary call, after waiting (bounded) for a live connection."""
        try:
            await asyncio.wait_for(self._connected.wait(), self._connect_timeout)
        except asyncio.TimeoutError:
            raise HostUnreachable(f"not connected to the roundtable host at {self.address}") from None
        return await self._raw_call(method, request)

    async def send(self, message: agent_worker_pb2.Message) -> None:
        size = message.ByteSize()
        if size > MAX_GRPC_MESSAGE_BYTES:
            # Sent, it would kill our stream (gRPC's limit) and everything registered on it.
            event = message.cloudEvent
            log.error(
                "refusing to send a %d-byte message (%s on %s; the limit is %d bytes)",
                size,
                event.attributes[SCHEMA].ce_string if SCHEMA in event.attributes else "rpc",
                event.type or "?",
                MAX_GRPC_MESSAGE_BYTES,
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


class WorkerRuntime(GrpcWorkerAgentRuntime):
    """AutoGen's gRPC worker runtime on a connection that reconnects by itself."""

    def __init__(self, address: str, connect_timeout: float = 10.0, security: Security | None = None) -> None:
        super().__init__(host_address=address, extra_grpc_config=GRPC_OPTIONS)
        self.routes = use_routes(self)
        self.connection = ResilientConnection(address, connect_timeout, security)
        for message_type in WIRE_TYPES:
            self.add_message_serializer(try_get_known_serializers_for_type(message_type))

    async def start(self) -> None:
        if self._running:
            raise ValueError("Runtime is already running.")
        await self.connection.open()
        # The stock start() would open its own HostConnection; these three attributes are
        # all it sets, and the rest of the runtime only uses the connection's public surface.
        self._host_connection = self.connection  # type: ignore[assignment]
        self._read_task = asyncio.create_task(self._run_read_loop())
        self._running = True

    def on_reconnect(self, listener: Callable[[], Awaitable[None]]) -> None:
        """Call `listener` after each reconnect, once types and subscriptions are registered again."""
        self.connection.on_reconnect(listener)

    def forget(self, agent_id: AgentId) -> None:
        """Drop an agent instance whose conversation has ended. The stock runtime keeps every
        instance for ever, so a long-running process would grow with each conversation; a
        message that still comes for it simply makes a new one."""
        self._instantiated_agents.pop(agent_id, None)

    async def _process_event(self, event: cloudevent_pb2.CloudEvent) -> None:
        # The stock runtime lets a message it cannot decode escape as an unhandled task error
        # with a traceback; log one line and go on.
        carrier = {k: event.attributes[k].ce_string for k in TRACE_KEYS if k in event.attributes}
        try:
            with telemetry.restored(carrier):
                await super()._process_event(event)
        except Exception as error:
            log.warning("skipped a message on %r that could not be handled: %s", event.type, error)


async def connect_worker(address: str, timeout: float = 10.0, security: Security | None = None) -> WorkerRuntime:
    """A started worker runtime that knows every roundtable message type."""
    runtime = WorkerRuntime(address, timeout, security)
    await runtime.start()
    return runtime


def forget(agent: RoutedAgent) -> None:
    """Let the runtime drop this (finished) agent instance, if it is one of ours."""
    if isinstance(agent.runtime, WorkerRuntime):
        agent.runtime.forget(agent.id)


async def stop_worker(runtime: GrpcWorkerAgentRuntime) -> None:
    try:
        await asyncio.wait_for(runtime.stop(), 5)
    except (Exception, asyncio.CancelledError) as error:  # we are leaving anyway
        log.debug("worker stop: %s", error)


@contextmanager
def shutdown_on_signal(event: asyncio.Event) -> Iterator[None]:
    """Set `event` on SIGINT or SIGTERM. Uses `signal.signal`, which works on Windows too,
    unlike `loop.add_signal_handler` (AutoGen issue 5760)."""
    loop = asyncio.get_running_loop()
    signals = [signal.SIGINT] + ([signal.SIGTERM] if hasattr(signal, "SIGTERM") else [])
    previous = {sig: signal.getsignal(sig) for sig in signals}

    def handler(signum: int, frame: object) -> None:
        loop.call_soon_threadsafe(event.set)

    for sig in signals:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


async def serve_until_signal() -> None:
    stop = asyncio.Event()
    with shutdown_on_signal(stop):
        await stop.wait()
