"""Only token holders join, and no client, however broken or hostile, disturbs the others.

Each attack runs against a real TLS + token host with a real conversation around it,
and the conversation must still complete afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import ssl
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from autogen_ext.runtimes.grpc.protos import agent_worker_pb2, agent_worker_pb2_grpc, cloudevent_pb2
from harness import READY, Procs, free_port, processes, scripted_agent, start_cluster, write_config

from roundtable.config import SecurityConfig
from roundtable.messages import StreamChunk
from roundtable.runtime import connect_worker, stop_worker
from roundtable.security import Security, channel_credentials, load_security, write_dev_certificates

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("certs")
    write_dev_certificates(directory, ["localhost", "127.0.0.1"])
    return directory


def secure_config(tmp_path: Path, certs: Path, mutual: bool = False, **host: Any) -> Path:
    security = {
        "ca": str(certs / "ca.pem"),
        "cert": str(certs / "server.pem"),
        "key": str(certs / "server.key"),
        "token_file": str(certs / "token"),
        "mutual": mutual,
        "client_cert": str(certs / "client.pem"),
        "client_key": str(certs / "client.key"),
    }
    return write_config(
        tmp_path / "roundtable.yaml",
        {
            "host": {"address": f"127.0.0.1:{free_port()}", "connect_timeout": 5, "security": security, **host},
            "agents": [scripted_agent("writer", "Draft {n}"), scripted_agent("editor", "Feedback {n}")],
            "manager": {"termination": {"max_rounds": 2}, "turn_timeout": 20},
        },
    )


def security_of(certs: Path, mutual: bool = False) -> Security:
    return load_security(
        SecurityConfig(
            ca=str(certs / "ca.pem"),
            token_file=str(certs / "token"),
            mutual=mutual,
            client_cert=str(certs / "client.pem"),
            client_key=str(certs / "client.key"),
        )
    )


def chat(cfg: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "roundtable", "chat", "hello", "--config", str(cfg), "--timeout", "60"],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, **(env or {})},
    )


def assert_chat_still_works(cfg: Path) -> None:
    result = chat(cfg)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "writer: Draft" in result.stdout and "editor: Feedback" in result.stdout


@pytest.fixture
def cluster(tmp_path: Path, certs: Path) -> Iterator[tuple[Path, Procs]]:
    cfg = secure_config(tmp_path, certs)
    with processes(tmp_path) as procs:
        start_cluster(procs, cfg, ["writer", "editor"])
        yield cfg, procs


def address_of(cfg: Path) -> str:
    return re.search(r"address: (\S+)", cfg.read_text()).group(1).strip("'\"")  # type: ignore[union-attr]


class RawClient:
    """A client that speaks AutoGen's gRPC protocol directly, as an attacker would."""

    def __init__(self, address: str, security: Security, client_id: str | None = None) -> None:
        self.client_id = client_id or str(uuid.uuid4())
        self.channel = grpc.aio.secure_channel(address, channel_credentials(security))
        self.stub = agent_worker_pb2_grpc.AgentRpcStub(self.channel)  # type: ignore[no-untyped-call]
        self.outgoing: asyncio.Queue[agent_worker_pb2.Message] = asyncio.Queue()
        self.stream: Any = None

    @property
    def metadata(self) -> list[tuple[str, str]]:
        return [("client-id", self.client_id)]

    async def open(self) -> None:
        async def requests() -> AsyncIterator[agent_worker_pb2.Message]:
            while True:
                yield await self.outgoing.get()

        self.stream = self.stub.OpenChannel(requests(), metadata=self.metadata)
        await asyncio.wait_for(self.stream.wait_for_connection(), 5)

    async def open_and_read(self) -> agent_worker_pb2.Message:
        await self.open()
        return await asyncio.wait_for(self.stream.read(), 10)

    async def call(self, method: str, request: Any) -> Any:
        return await getattr(self.stub, method)(request, metadata=self.metadata, timeout=5)

    async def subscribe(self, agent_type: str, topic_type: str) -> None:
        await self.call("RegisterAgent", agent_worker_pb2.RegisterAgentTypeRequest(type=agent_type))
        subscription = agent_worker_pb2.Subscription(
            id=str(uuid.uuid4()),
            typeSubscription=agent_worker_pb2.TypeSubscription(topic_type=topic_type, agent_type=agent_type),
        )
        await self.call("AddSubscription", agent_worker_pb2.AddSubscriptionRequest(subscription=subscription))

    def publish(self, topic_type: str, data: bytes, sender_type: str = "x", schema: str = "x.Y") -> None:
        def attr(value: str) -> cloudevent_pb2.CloudEvent.CloudEventAttributeValue:
            return cloudevent_pb2.CloudEvent.CloudEventAttributeValue(ce_string=value)

        event = cloudevent_pb2.CloudEvent(
            id=str(uuid.uuid4()),
            spec_version="1.0",
            type=topic_type,
            source="default",
            attributes={
                "datacontenttype": attr("application/json"),
                "dataschema": attr(schema),
                "agagentsendertype": attr(sender_type),
                "agagentsenderkey": attr("default"),
                "agmsgkind": attr("publish"),
            },
            binary_data=data,
        )
        self.outgoing.put_nowait(agent_worker_pb2.Message(cloudEvent=event))

    async def close(self) -> None:
        if self.stream is not None:
            self.stream.cancel()
        await self.channel.close()


async def rpc_error(awaitable: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await awaitable
    return caught.value


# ---------------------------------------------------------------- transport and token


def test_tls_and_token_with_mutual_tls_carry_a_conversation(tmp_path: Path, certs: Path) -> None:
    cfg = secure_config(tmp_path, certs, mutual=True)
    with processes(tmp_path) as procs:
        start_cluster(procs, cfg, ["writer", "editor"])
        assert_chat_still_works(cfg)
        logs = "".join(p.output for p in procs.all)
    assert (certs / "token").read_text().strip() not in logs


def test_a_worker_with_a_wrong_token_fails_at_once(cluster: tuple[Path, Procs]) -> None:
    cfg, _ = cluster
    result = chat(cfg, env={"ROUNDTABLE_TOKEN": "not-the-token"})
    assert result.returncode == 1
    assert "rejected this process: missing or wrong token" in result.stderr
    assert "not-the-token" not in result.stdout + result.stderr


def test_plain_text_to_a_tls_host_is_refused(cluster: tuple[Path, Procs]) -> None:
    cfg, _ = cluster
    result = subprocess.run(
        [sys.executable, "-m", "roundtable", "chat", "hi", "--host", address_of(cfg), "--start-timeout", "3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "cannot reach the roundtable host" in result.stderr


def test_listening_off_loopback_needs_tls_and_token_or_insecure(tmp_path: Path) -> None:
    port = free_port()
    refused = subprocess.run(
        [sys.executable, "-m", "roundtable", "host", "--address", f"0.0.0.0:{port}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode == 2
    assert "refusing to listen on 0.0.0.0" in refused.stderr
    with processes(tmp_path) as procs:
        host = procs.roundtable("host", "host", "--address", f"0.0.0.0:{port}", "--insecure")
        host.wait_for(READY)


# ---------------------------------------------------------------- a hardened host


async def test_a_client_id_cannot_be_hijacked(cluster: tuple[Path, Procs], certs: Path) -> None:
    cfg, _ = cluster
    security = security_of(certs)
    owner = RawClient(address_of(cfg), security)
    await owner.open()
    await owner.subscribe("owner_type", "owner_topic")
    thief = RawClient(address_of(cfg), security, client_id=owner.client_id)
    try:
        # The duplicate-registration error no longer names anyone's client id.
        error = await rpc_error(owner.call("RegisterAgent", agent_worker_pb2.RegisterAgentTypeRequest(type="writer")))
        assert not UUID.search(error.details() or ""), error.details()
        # Knowing the id anyway does not help: no second stream, no calls from another connection.
        error = await rpc_error(thief.open_and_read())
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS
        error = await rpc_error(thief.call("RegisterAgent", agent_worker_pb2.RegisterAgentTypeRequest(type="t2")))
        assert error.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.FAILED_PRECONDITION)
    finally:
        await thief.close()
        await owner.close()
    await asyncio.to_thread(assert_chat_still_works, cfg)


async def test_registering_without_a_stream_is_refused(cluster: tuple[Path, Procs], certs: Path) -> None:
    cfg, _ = cluster
    ghost = RawClient(address_of(cfg), security_of(certs))
    try:
        error = await rpc_error(ghost.subscribe("ghost", "group_chat"))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        await ghost.close()
    await asyncio.to_thread(assert_chat_still_works, cfg)


async def test_a_client_cannot_remove_others_subscriptions(cluster: tuple[Path, Procs], certs: Path) -> None:
    cfg, _ = cluster
    attacker = RawClient(address_of(cfg), security_of(certs))
    await attacker.open()
    try:
        listed = await attacker.call("GetSubscriptions", agent_worker_pb2.GetSubscriptionsRequest())
        assert listed.subscriptions, "the cluster's subscriptions should be visible"
        for subscription in listed.subscriptions:
            error = await rpc_error(
                attacker.call("RemoveSubscription", agent_worker_pb2.RemoveSubscriptionRequest(id=subscription.id))
            )
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await attacker.close()
    await asyncio.to_thread(assert_chat_still_works, cfg)


async def test_a_spoofed_sender_is_replaced_by_unknown(cluster: tuple[Path, Procs], certs: Path) -> None:
    cfg, _ = cluster
    security = security_of(certs)
    listener, spoofer = RawClient(address_of(cfg), security), RawClient(address_of(cfg), security)
    await listener.open()
    await listener.subscribe("listener", "spoof_topic")
    await spoofer.open()
    try:
        spoofer.publish("spoof_topic", b"{}", sender_type="roundtable_manager")
        received = await asyncio.wait_for(listener.stream.read(), 10)
        assert received.cloudEvent.attributes["agagentsendertype"].ce_string == "unknown"
    finally:
        await listener.close()
        await spoofer.close()


def host_rss_kb(procs: Procs) -> int:
    pid = procs.all[0].popen.pid
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]


async def test_a_client_that_stops_reading_cannot_grow_the_hosts_memory(tmp_path: Path, certs: Path) -> None:
    cfg = secure_config(tmp_path, certs, client_queue_limit=100)
    with processes(tmp_path) as procs:
        start_cluster(procs, cfg, ["writer", "editor"])
        security = security_of(certs)
        sleeper, flooder = RawClient(address_of(cfg), security), RawClient(address_of(cfg), security)
        await sleeper.open()
        await sleeper.subscribe("sleeper", "flood")  # ... and never reads
        await flooder.open()
        before = host_rss_kb(procs)
        # 256 KB blocks: above malloc's mmap threshold, so freed memory leaves the RSS at once
        # and the RSS shows what the host really keeps.
        payload = b"x" * 256_000
        for _ in range(800):  # 200 MB if the host kept it all
            flooder.publish("flood", payload)
        for _ in range(600):
            if flooder.outgoing.empty():
                break
            await asyncio.sleep(0.05)
        procs.all[0].wait_for("dropping more for it", timeout=60)
        await asyncio.sleep(2)
        grown_mb = (host_rss_kb(procs) - before) / 1024
        print(f"host RSS grew by {grown_mb:.1f} MB while a client did not read 200 MB")
        await sleeper.close()
        await flooder.close()
        assert grown_mb < 80, f"the host grew by {grown_mb:.0f} MB"
        await asyncio.to_thread(assert_chat_still_works, cfg)


async def test_an_oversized_message_is_refused_locally_and_the_stream_stays_up(
    cluster: tuple[Path, Procs], certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg, _ = cluster
    runtime = await connect_worker(address_of(cfg), 5, security_of(certs))
    listener = RawClient(address_of(cfg), security_of(certs))
    try:
        await listener.open()
        await listener.subscribe("big_listener", "big")
        from roundtable.messages import topic

        await runtime.publish_message(
            StreamChunk(conversation_id="c", message_id="m", author="a", index=0, text="x" * 17_000_000),
            topic("big", "c"),
        )
        await runtime.publish_message(
            StreamChunk(conversation_id="c", message_id="m", author="a", index=1, text="small"), topic("big", "c")
        )
        received = await asyncio.wait_for(listener.stream.read(), 10)
        assert b"small" in received.cloudEvent.binary_data
        assert "refusing to send a" in caplog.text and "the limit is 16777216 bytes" in caplog.text
        assert runtime.connection.connected and runtime.connection.reconnects == 0
    finally:
        await listener.close()
        await stop_worker(runtime)


# ---------------------------------------------------------------- hostile input


async def test_the_host_keeps_serving_through_hostile_input(cluster: tuple[Path, Procs], certs: Path) -> None:
    cfg, procs = cluster
    host, port = address_of(cfg).rsplit(":", 1)
    # Random bytes on the port.
    for _ in range(3):
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            raw.sendall(os.urandom(4096))
    # TLS, then junk.
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(os.urandom(4096))
    security = security_of(certs)
    # Undecodable protobuf on the stream.
    channel = grpc.aio.secure_channel(address_of(cfg), channel_credentials(security))
    junk_stream = channel.stream_stream(
        "/agents.AgentRpc/OpenChannel", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )

    async def junk() -> AsyncIterator[bytes]:
        yield b"\xff\xfe\xfd not a protobuf"

    call = junk_stream(junk(), metadata=[("client-id", str(uuid.uuid4()))])
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.TimeoutError):
        await asyncio.wait_for(call.read(), 2)  # the host may end the call or ignore it: either way it goes on
    call.cancel()
    await channel.close()
    # Malformed CloudEvents and unknown message types, sent to the participants' own topic.
    attacker = RawClient(address_of(cfg), security)
    await attacker.open()
    attacker.publish("turn.writer", b"\x00\x01 not json", schema="roundtable.messages.RequestToSpeak")
    attacker.publish("turn.writer", b"{}", schema="no.such.Type")
    bare = cloudevent_pb2.CloudEvent(id="1", spec_version="1.0", type="turn.writer", source="default")
    attacker.outgoing.put_nowait(agent_worker_pb2.Message(cloudEvent=bare))
    await asyncio.sleep(1)
    await attacker.close()
    await asyncio.to_thread(assert_chat_still_works, cfg)
    writer_log = next(p for p in procs.all if p.name == "agent-writer").output
    assert "skipped a message on 'turn.writer' that could not be handled" in writer_log
    assert "Traceback" not in writer_log
