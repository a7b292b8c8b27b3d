"""The in-memory transport: a host's `Router` and any number of workers in one process and one
event loop, with no socket. It is the other side of the worker's transport seam (`worker.Link`):
the worker's reconnecting, outbox and resending, and everything above them (the manager, the
participants, presence, the terminal), run exactly as over gRPC. Messages are copied through
their wire bytes both ways, as gRPC would.

Tests use it to run the conversation logic in milliseconds, and to cut a worker's stream or
take the whole host down and up again at a chosen moment.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import grpc
from autogen_ext.runtimes.grpc.protos import agent_worker_pb2

from .config import CONNECT_TIMEOUT
from .host import Client, Refused, Router
from .security import Security
from .wire import CLIENT_ID_KEY
from .worker import WorkerRuntime

ADDRESS = "memory"


def _error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


def _copy(message: Any) -> Any:
    """The message as the other side would decode it from the wire."""
    return type(message).FromString(message.SerializeToString())


class MemoryHost:
    """A host in this process. `worker()` makes a runtime connected to it; `cut()` ends one
    worker's stream, as a lost connection would; `down()` and `up()` stop and restart the host,
    forgetting every client, as a host restart does."""

    def __init__(self, router: Router | None = None) -> None:
        self.router = router or Router(grace=0.0)
        self.running = True
        self._peers = itertools.count(1)
        self._calls: dict[str, MemoryCall] = {}  # client id -> its open stream

    def worker(self, connect_timeout: float = CONNECT_TIMEOUT) -> WorkerRuntime:
        """A (not yet started) worker runtime whose connection reaches this host."""
        return WorkerRuntime(ADDRESS, connect_timeout, Security(), dial=lambda: MemoryLink(self, next(self._peers)))

    def cut(self, runtime: WorkerRuntime) -> None:
        """End the stream of `runtime`'s current connection; it will reconnect."""
        for call in list(self._calls.values()):
            if call.runtime_client_id == runtime.connection.client_id:
                call.end(grpc.StatusCode.UNAVAILABLE, "cut by the test")

    def down(self) -> None:
        """The host stops: every stream ends, and nothing connects until `up()`."""
        self.running = False
        for call in list(self._calls.values()):
            call.end(grpc.StatusCode.UNAVAILABLE, "the host stopped")
        self.router = Router(grace=self.router.grace)

    def up(self) -> None:
        self.running = True

    def opened(self, call: MemoryCall) -> None:
        self._calls[call.runtime_client_id] = call

    def closed(self, call: MemoryCall) -> None:
        if self._calls.get(call.runtime_client_id) is call:
            del self._calls[call.runtime_client_id]


class MemoryCall:
    """One open stream: what the worker sends is routed; what the router queues is read."""

    def __init__(self, host: MemoryHost, peer: str, requests: AsyncIterator[Any], client_id: str) -> None:
        self.runtime_client_id = client_id
        self._host = host
        self._router = host.router
        self._peer = peer
        self._requests = requests
        self._client: Client | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ended: grpc.aio.AioRpcError | None = None

    async def wait_for_connection(self) -> None:
        if not self._host.running:
            raise _error(grpc.StatusCode.UNAVAILABLE, "the host is down")
        try:
            self._client = self._router.open(self.runtime_client_id, self._peer, None)
        except Refused as refused:
            raise _error(refused.code, refused.details) from None
        self._host.opened(self)
        self._reader = asyncio.create_task(self._serve(self._client))

    async def _serve(self, client: Client) -> None:
        """Route what the worker sends; when its side of the stream ends, the host forgets it,
        as the gRPC host does when a worker goes away."""
        try:
            await self._router.read(client, self._copies())
        finally:
            self._router.forget(client)
            self._host.closed(self)

    async def _copies(self) -> AsyncIterator[Any]:
        async for message in self._requests:
            yield _copy(message)

    async def read(self) -> Any:
        if self._ended is not None:
            raise self._ended
        assert self._client is not None, "read before the stream was open"
        message = await self._client.next()
        if message is None:
            if self._ended is not None:
                raise self._ended
            return grpc.aio.EOF
        return _copy(message)

    def end(self, code: grpc.StatusCode, details: str) -> None:
        self._ended = _error(code, details)
        self.cancel()

    def cancel(self) -> bool:
        if self._reader is not None:
            self._reader.cancel()
        if self._client is not None:
            self._router.forget(self._client)  # closes it: a waiting read returns
        self._host.closed(self)
        return True


class MemoryStub:
    """The `AgentRpc` stub's methods, answered by the router."""

    def __init__(self, host: MemoryHost, peer: str) -> None:
        self._host = host
        self._peer = peer
        self.calls: list[MemoryCall] = []

    def OpenChannel(self, requests: AsyncIterator[Any], metadata: Any = None) -> MemoryCall:
        call = MemoryCall(self._host, self._peer, requests, _client_id(metadata))
        self.calls.append(call)
        return call

    def _client(self, metadata: Any) -> Client:
        if not self._host.running:
            raise _error(grpc.StatusCode.UNAVAILABLE, "the host is down")
        client = self._host.router.client(_client_id(metadata))
        if client is None:
            raise _error(grpc.StatusCode.FAILED_PRECONDITION, "open a stream before registering")
        return client

    async def RegisterAgent(self, request: Any, metadata: Any = None, timeout: float | None = None) -> Any:
        client = self._client(metadata)
        _refusing(lambda: self._host.router.register(client, request.type))
        return agent_worker_pb2.RegisterAgentTypeResponse()

    async def AddSubscription(self, request: Any, metadata: Any = None, timeout: float | None = None) -> Any:
        client = self._client(metadata)
        _refusing(lambda: self._host.router.subscribe(client, _copy(request.subscription)))
        return agent_worker_pb2.AddSubscriptionResponse()

    async def RemoveSubscription(self, request: Any, metadata: Any = None, timeout: float | None = None) -> Any:
        client = self._client(metadata)
        _refusing(lambda: self._host.router.unsubscribe(client, request.id))
        return agent_worker_pb2.RemoveSubscriptionResponse()

    async def GetSubscriptions(self, request: Any, metadata: Any = None, timeout: float | None = None) -> Any:
        client = self._client(metadata)
        return agent_worker_pb2.GetSubscriptionsResponse(subscriptions=self._host.router.subscriptions(client))


class MemoryLink:
    """One connection to a `MemoryHost` (see `worker.Link`)."""

    def __init__(self, host: MemoryHost, number: int) -> None:
        self.stub = MemoryStub(host, f"memory:{number}")

    def handled(self, delivery: str) -> None:
        """A `MemoryHost` stores nothing: nothing to acknowledge."""

    async def close(self) -> None:
        """As closing a gRPC channel: its streams end, and the host forgets their clients."""
        for call in self.stub.calls:
            call.end(grpc.StatusCode.CANCELLED, "the channel was closed")
        self.stub.calls.clear()


def _client_id(metadata: Any) -> str:
    return str(dict(metadata or ()).get(CLIENT_ID_KEY, ""))


def _refusing(step: Any) -> None:
    try:
        step()
    except Refused as refused:
        raise _error(refused.code, refused.details) from None
