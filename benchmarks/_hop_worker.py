"""A worker process for the hop and one-way throughput benchmarks, in one of three variants:

- `bare`: stock AutoGen 0.7.5, `GrpcWorkerAgentRuntime(host_address)` and a plain dataclass message;
- `roundtable`: `roundtable.runtime.connect_worker` and roundtable's own `StreamChunk`;
- `roundtable+tls`: the same over TLS with the bearer token, as off loopback: the CA from
  `--tls-ca`, the token from ROUNDTABLE_TOKEN, both read by `roundtable.security.load_security`.

`--role pong` echoes pings and counts floods; `--role ping` takes commands from the benchmark
(stdin) and measures. Both roles publish on topics, as the product does.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from autogen_core import AgentRuntime, MessageContext, RoutedAgent, TopicId, TypeSubscription, message_handler
from autogen_core._serialization import try_get_known_serializers_for_type

from roundtable.messages import StreamChunk

from ._control import serve_commands

PING = "bench_ping"
PONG = "bench_pong"
FLOOD = "bench_flood"
COUNT = "bench_count"
TALLY = "bench_tally"
SOURCE = "hop"
TOKEN = " token"  # about one token of text, as a StreamChunk usually carries


@dataclass
class Ping:
    """The bare variant's message: as trivial as AutoGen's own samples."""

    index: int
    text: str


@dataclass
class CountRequest:
    nonce: int
    reset: bool = False


@dataclass
class Tally:
    nonce: int
    received: int
    unique: int
    first: float
    last: float


@dataclass
class FloodLog:
    indices: list[int] = field(default_factory=list)
    first: float = 0.0
    last: float = 0.0

    def add(self, index: int) -> None:
        now = time.monotonic()
        if not self.indices:
            self.first = now
        self.last = now
        self.indices.append(index)


def make_message(variant: str, index: int) -> Any:
    if variant == "bare":
        return Ping(index=index, text=TOKEN)
    return StreamChunk(
        conversation_id="c0ffee" * 5 + "00",  # 32 hex characters, like a real conversation id
        message_id="beef" * 8,
        author="writer",
        index=index,
        text=TOKEN,
    )


def index_of(message: Any) -> int:
    return int(message.index)


def security_for(variant: str, ca: str | None) -> Any:
    """What a roundtable worker connects with: nothing on loopback, or the CA and the token."""
    from roundtable.config import SecurityConfig
    from roundtable.security import Security, load_security

    if variant != "roundtable+tls":
        return Security()
    security = load_security(SecurityConfig(ca=ca))
    if not (security.tls and security.token):
        raise RuntimeError("roundtable+tls needs --tls-ca and ROUNDTABLE_TOKEN")
    return security


async def refused_without_token(address: str, security: Any) -> str:
    """Proof that the host checks the token: the same TLS connection without it must fail."""
    from dataclasses import replace

    from roundtable.wire import HostUnreachable
    from roundtable.worker import connect_worker, stop_worker

    try:
        runtime = await connect_worker(address, 10, replace(security, token=None))
    except HostUnreachable as error:
        return str(error)
    await stop_worker(runtime)
    raise RuntimeError(f"the host at {address} accepted a worker without the token")


async def connect(variant: str, address: str, ca: str | None = None) -> AgentRuntime:
    bench_types = [CountRequest, Tally]
    if variant == "bare":
        from autogen_ext.runtimes.grpc import GrpcWorkerAgentRuntime

        runtime = GrpcWorkerAgentRuntime(host_address=address)
        for message_type in [Ping, *bench_types]:
            runtime.add_message_serializer(try_get_known_serializers_for_type(message_type))
        await asyncio.wait_for(runtime.start(), 30)
        return runtime
    from roundtable.runtime import setup_logging
    from roundtable.worker import connect_worker

    setup_logging("bench", "WARNING")  # what every roundtable process does
    runtime = await connect_worker(address, 30, security_for(variant, ca))
    for message_type in bench_types:
        runtime.add_message_serializer(try_get_known_serializers_for_type(message_type))
    return runtime


# ---------------------------------------------------------------- pong side


class Echo(RoutedAgent):
    def __init__(self, floods: FloodLog) -> None:
        super().__init__("echoes pings, counts floods")
        self._floods = floods

    async def _on_measured(self, message: Any, ctx: MessageContext) -> None:
        if ctx.topic_id is not None and ctx.topic_id.type == FLOOD:
            self._floods.add(index_of(message))
        else:
            await self.publish_message(message, TopicId(PONG, SOURCE))

    @message_handler
    async def on_ping(self, message: Ping, ctx: MessageContext) -> None:
        await self._on_measured(message, ctx)

    @message_handler
    async def on_chunk(self, message: StreamChunk, ctx: MessageContext) -> None:
        await self._on_measured(message, ctx)

    @message_handler
    async def on_count(self, message: CountRequest, ctx: MessageContext) -> None:
        log = self._floods
        tally = Tally(message.nonce, len(log.indices), len(set(log.indices)), log.first, log.last)
        if message.reset:
            log.indices.clear()
        await self.publish_message(tally, TopicId(TALLY, SOURCE))


# ---------------------------------------------------------------- ping side


class Collector(RoutedAgent):
    def __init__(self, waiting: dict[int, asyncio.Future[float]], tallies: dict[int, asyncio.Future[Tally]]) -> None:
        super().__init__("collects pongs and tallies")
        self._waiting = waiting
        self._tallies = tallies

    def _arrived(self, index: int) -> None:
        future = self._waiting.pop(index, None)
        if future is not None and not future.done():
            future.set_result(time.perf_counter())

    @message_handler
    async def on_ping(self, message: Ping, ctx: MessageContext) -> None:
        self._arrived(message.index)

    @message_handler
    async def on_chunk(self, message: StreamChunk, ctx: MessageContext) -> None:
        self._arrived(message.index)

    @message_handler
    async def on_tally(self, message: Tally, ctx: MessageContext) -> None:
        future = self._tallies.pop(message.nonce, None)
        if future is not None and not future.done():
            future.set_result(message)


class Pinger:
    def __init__(self, runtime: AgentRuntime, variant: str, refusal: str = "") -> None:
        self.runtime = runtime
        self.variant = variant
        self.refusal = refusal  # roundtable+tls: how the host refused the same worker without the token
        self.waiting: dict[int, asyncio.Future[float]] = {}
        self.tallies: dict[int, asyncio.Future[Tally]] = {}
        self._indices = itertools.count()
        self._nonces = itertools.count(1)

    async def count(self, reset: bool = False, timeout: float = 5.0) -> Tally:
        nonce = next(self._nonces)
        future: asyncio.Future[Tally] = asyncio.get_running_loop().create_future()
        self.tallies[nonce] = future
        await self.runtime.publish_message(CountRequest(nonce, reset), TopicId(COUNT, SOURCE))
        return await asyncio.wait_for(future, timeout)

    async def ping(self, n: int, warmup: int, timeout: float) -> dict[str, Any]:
        """Round trips, one at a time: publish, wait for the echo. A hop is half a round trip."""
        loop = asyncio.get_running_loop()
        rtts: list[int] = []
        lost = 0
        for i in range(warmup + n):
            index = next(self._indices)
            message = make_message(self.variant, index)
            future: asyncio.Future[float] = loop.create_future()
            self.waiting[index] = future
            sent = time.perf_counter()
            await self.runtime.publish_message(message, TopicId(PING, SOURCE))
            try:
                arrived = await asyncio.wait_for(future, timeout)
            except asyncio.TimeoutError:
                self.waiting.pop(index, None)
                lost += 1
                continue
            if i >= warmup:
                rtts.append(round((arrived - sent) * 1e9))
        return {"rtt_ns": rtts, "lost": lost}

    async def flood(self, n: int, mode: str, timeout: float) -> dict[str, Any]:
        """n one-way messages as fast as they go; the echo side counts them.

        `burst`: a plain loop of awaited publishes. AutoGen's publish never yields, so the whole
        burst is serialised and queued before the first message leaves. `yield`: the same loop
        with `await asyncio.sleep(0)` after each publish, so sending overlaps producing."""
        await self.count(reset=True)
        messages = [make_message(self.variant, i) for i in range(n)]
        topic = TopicId(FLOOD, SOURCE)
        start = time.monotonic()
        for message in messages:
            await self.runtime.publish_message(message, topic)
            if mode == "yield":
                await asyncio.sleep(0)
        queued = time.monotonic()
        deadline = start + timeout
        # The count request queues behind the flood, so it may take as long as the flood.
        tally = await self.count(timeout=max(deadline - time.monotonic(), 1.0))
        stalled_since = time.monotonic()
        while tally.received < n and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            before = tally.received
            try:
                tally = await self.count(timeout=max(deadline - time.monotonic(), 1.0))
            except asyncio.TimeoutError:
                break
            if tally.received != before:
                stalled_since = time.monotonic()
            elif time.monotonic() - stalled_since > 3:
                break  # nothing more is coming: the rest is lost
        elapsed = (tally.last - start) if tally.received else float("nan")
        return {
            "n": n,
            "mode": mode,
            "received": tally.received,
            "unique": tally.unique,
            "lost": n - tally.unique,
            "duplicated": tally.received - tally.unique,
            "seconds": elapsed,
            "queue_seconds": queued - start,
            "rate": tally.received / elapsed if tally.received else 0.0,
        }

    async def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        if command["cmd"] == "ping":
            return await self.ping(int(command["n"]), int(command.get("warmup", 0)), float(command["timeout"]))
        if command["cmd"] == "flood":
            return await self.flood(int(command["n"]), str(command["mode"]), float(command["timeout"]))
        if command["cmd"] == "sizes":
            return message_sizes(self.variant) | ({"refused_without_token": self.refusal} if self.refusal else {})
        raise ValueError(f"unknown command {command['cmd']!r}")


def message_sizes(variant: str) -> dict[str, Any]:
    from ._wire import envelope_size

    message = make_message(variant, 12345)
    payload, envelope = envelope_size(message, TopicId(PING, SOURCE))
    return {"type": type(message).__name__, "payload_bytes": payload, "envelope_bytes": envelope}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", choices=["bare", "roundtable", "roundtable+tls"], required=True)
    parser.add_argument("--role", choices=["ping", "pong"], required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--tls-ca", help="roundtable+tls: the CA that signed the host's certificate")
    args = parser.parse_args()
    refusal = ""
    if args.variant == "roundtable+tls" and args.role == "ping":
        refusal = await refused_without_token(args.host, security_for(args.variant, args.tls_ca))
    runtime = await connect(args.variant, args.host, args.tls_ca)
    if args.role == "pong":
        floods = FloodLog()
        await Echo.register(runtime, "bench_echo", lambda: Echo(floods))
        for topic_type in (PING, FLOOD, COUNT):
            await runtime.add_subscription(TypeSubscription(topic_type, "bench_echo"))
        await serve_commands(_idle)
        return
    pinger = Pinger(runtime, args.variant, refusal)
    await Collector.register(runtime, "bench_collector", lambda: Collector(pinger.waiting, pinger.tallies))
    for topic_type in (PONG, TALLY):
        await runtime.add_subscription(TypeSubscription(topic_type, "bench_collector"))
    await serve_commands(pinger.handle)


async def _idle(command: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True}


if __name__ == "__main__":
    asyncio.run(main())
