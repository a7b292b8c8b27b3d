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
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import grpc
from autogen_core import AgentId, RoutedAgent
from autogen_core._serialization import try_get_known_serializers_for_type
from autogen_ext.runtimes.grpc import GrpcWorkerAgentRuntime
from autogen_ext.runtimes.grpc.protos import agent_worker_pb2, agent_worker_pb2_grpc, cloudevent_pb2

from . import telemetry
from .messages import WIRE_TYPES
from .routing import Routes
from .security import Security, channel_credentials, channel_options, token_metadata
from .wire import (
    CLIENT_ID_KEY,
    HOST_RECEIVE_LIMIT,
    MAX_GRPC_MESSAGE_BYTES,
    SCHEMA,
    HostUnreachable,
)

log = logging.getLogger("roundtable")

#: Printed once a process is connected and serving; `roundtable up` waits for it.
READY_MARKER = "roundtable ready:"

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
TRACE_KEYS = ("traceparent", "tracestate")
RECONNECT_MAX_DELAY = 0.5
#: The last message handed to a stream that broke is sent again on the next one, unless it
#: is older than this: a keepalive ping was then answered after it, so it was delivered (TCP
#: keeps order). Without the bound, a reconnect repeated a message sent minutes before.
RESEND_WINDOW = (KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS) / 1000


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


# ---------------------------------------------------------------- the worker


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
        return [(CLIENT_ID_KEY, self._client_id), *token_metadata(self._security)]

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
