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
from roundtable.messages import RequestToSpeak, StreamChunk
from roundtable.security import Security, channel_credentials, load_security, write_dev_certificates
from roundtable.wire import HOST_RECEIVE_LIMIT, MAX_GRPC_MESSAGE_BYTES
from roundtable.worker import connect_worker, stop_worker

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
        limits = [(f"grpc.max_{way}_message_length", MAX_GRPC_MESSAGE_BYTES) for way in ("send", "receive")]
        self.channel = grpc.aio.secure_channel(address, channel_credentials(security), options=limits)
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

    async def subscribe(self, agent_type: str, topic_type: str) -> str:
        """Register `agent_type` and subscribe it to `topic_type`; the subscription's id."""
        await self.call("RegisterAgent", agent_worker_pb2.RegisterAgentTypeRequest(type=agent_type))
        subscription = agent_worker_pb2.Subscription(
            id=str(uuid.uuid4()),
            typeSubscription=agent_worker_pb2.TypeSubscription(topic_type=topic_type, agent_type=agent_type),
        )
        await self.add(subscription)
        return subscription.id

    async def add(self, subscription: agent_worker_pb2.Subscription) -> Any:
        return await self.call("AddSubscription", agent_worker_pb2.AddSubscriptionRequest(subscription=subscription))

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

    def request(self, request_id: str, target_type: str, data: bytes, source: str | None = None) -> None:
        request = agent_worker_pb2.RpcRequest(
            request_id=request_id,
            target=agent_worker_pb2.AgentId(type=target_type, key="default"),
            method="x",
            payload=agent_worker_pb2.Payload(data_type="x.Y", data_content_type="application/json", data=data),
        )
        if source is not None:
            request.source.CopyFrom(agent_worker_pb2.AgentId(type=source, key="default"))
        self.outgoing.put_nowait(agent_worker_pb2.Message(request=request))

    def respond(self, request_id: str, data: bytes) -> None:
        payload = agent_worker_pb2.Payload(data_type="x.Y", data_content_type="application/json", data=data)
        response = agent_worker_pb2.RpcResponse(request_id=request_id, payload=payload)
        self.outgoing.put_nowait(agent_worker_pb2.Message(response=response))

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


async def test_a_client_can_neither_see_the_ids_of_nor_remove_others_subscriptions(
    cluster: tuple[Path, Procs], certs: Path
) -> None:
    cfg, _ = cluster
    security = security_of(certs)
    owner, attacker = RawClient(address_of(cfg), security), RawClient(address_of(cfg), security)
    await owner.open()
    subscription_id = await owner.subscribe("owner_type", "owner_topic")
    await attacker.open()
    try:
        # Who is subscribed to what shows (for `roundtable status`); the others' ids do not.
        listed = await attacker.call("GetSubscriptions", agent_worker_pb2.GetSubscriptionsRequest())
        topics = {s.typeSubscription.topic_type: s.id for s in listed.subscriptions}
        assert topics["owner_topic"] == "" and not any(topics.values()), topics
        mine = await owner.call("GetSubscriptions", agent_worker_pb2.GetSubscriptionsRequest())
        assert [s.id for s in mine.subscriptions if s.id] == [subscription_id]  # its own, with their ids
        error = await rpc_error(
            attacker.call("RemoveSubscription", agent_worker_pb2.RemoveSubscriptionRequest(id=subscription_id))
        )
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        attacker.publish("owner_topic", b"{}")
        received = await asyncio.wait_for(owner.stream.read(), 10)  # still subscribed
        assert received.cloudEvent.type == "owner_topic"
    finally:
        await attacker.close()
        await owner.close()
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
    cfg = secure_config(tmp_path, certs)  # the default bound: 32 MB per client
    with processes(tmp_path) as procs:
        start_cluster(procs, cfg, ["writer", "editor"])
        security = security_of(certs)
        sleeper, flooder = RawClient(address_of(cfg), security), RawClient(address_of(cfg), security)
        await sleeper.open()
        await sleeper.subscribe("sleeper", "flood")  # ... and never reads
        await flooder.open()
        await flooder.call("RegisterAgent", agent_worker_pb2.RegisterAgentTypeRequest(type="flooder"))
        before = host_rss_kb(procs)
        # 256 KB blocks: above malloc's mmap threshold, so freed memory leaves the RSS at once
        # and the RSS shows what the host really keeps. Events and calls both wait for it.
        payload = b"x" * 256_000
        for i in range(400):  # 200 MB if the host kept it all
            flooder.publish("flood", payload)
            flooder.request(f"r{i}", "sleeper", payload)
        for _ in range(600):
            if flooder.outgoing.empty():
                break
            await asyncio.sleep(0.05)
        procs.all[0].wait_for("closing a client's stream", timeout=60)
        await asyncio.sleep(2)
        grown_mb = (host_rss_kb(procs) - before) / 1024
        print(f"host RSS grew by {grown_mb:.1f} MB while a client did not read 200 MB")
        # The sleeper's stream was ended: it knows it missed messages (what it read was queued).
        with contextlib.suppress(grpc.aio.AioRpcError):
            while await asyncio.wait_for(sleeper.stream.read(), 10) is not grpc.aio.EOF:
                pass
        await sleeper.close()
        await flooder.close()
        assert grown_mb < 80, f"the host grew by {grown_mb:.0f} MB"  # 32 MB queued, plus gRPC's own buffers
        await asyncio.to_thread(assert_chat_still_works, cfg)


async def test_a_call_is_answered_only_by_the_client_it_went_to(cluster: tuple[Path, Procs], certs: Path) -> None:
    cfg, _ = cluster
    security = security_of(certs)
    caller, answerer, thief = (RawClient(address_of(cfg), security) for _ in range(3))
    for client, agent_type in ((caller, "caller"), (answerer, "answerer"), (thief, "thief")):
        await client.open()
        await client.call("RegisterAgent", agent_worker_pb2.RegisterAgentTypeRequest(type=agent_type))
    try:
        caller.request("1", "answerer", b"question", source="caller")
        asked = (await asyncio.wait_for(answerer.stream.read(), 10)).request
        assert asked.payload.data == b"question" and asked.source.type == "caller"
        assert asked.request_id != "1"  # the host's own id, which no one else sees
        # The thief sprays answers at the ids a caller would pick, and at the one it cannot see.
        for request_id in ["1", "2", "3", asked.request_id]:
            thief.respond(request_id, b"stolen")
        await asyncio.sleep(0.5)
        answerer.respond(asked.request_id, b"answer")
        answered = (await asyncio.wait_for(caller.stream.read(), 10)).response
        assert (answered.request_id, answered.payload.data, answered.error) == ("1", b"answer", "")
        # A call sent as someone else, or to no one, is answered at once with an error.
        caller.request("2", "answerer", b"x", source="roundtable_manager")
        caller.request("3", "nobody", b"x", source="caller")
        errors = [(await asyncio.wait_for(caller.stream.read(), 10)).response for _ in range(2)]
        assert [(e.request_id, e.error) for e in errors] == [
            ("2", "the sender 'roundtable_manager' is not an agent type of yours"),
            ("3", "no worker serves agent type 'nobody'"),
        ]
        # A call whose answerer leaves is answered with an error, not left waiting.
        caller.request("4", "answerer", b"x", source="caller")
        await asyncio.wait_for(answerer.stream.read(), 10)
        await answerer.close()
        left = (await asyncio.wait_for(caller.stream.read(), 10)).response
        assert (left.request_id, left.error) == ("4", "the agent's worker disconnected before it answered")
    finally:
        for client in (caller, answerer, thief):
            await client.close()
    await asyncio.to_thread(assert_chat_still_works, cfg)


async def test_no_one_can_subscribe_for_an_agent_type_they_did_not_register(
    cluster: tuple[Path, Procs], certs: Path
) -> None:
    cfg, _ = cluster
    squatter = RawClient(address_of(cfg), security_of(certs))
    await squatter.open()
    try:
        subscription = agent_worker_pb2.Subscription(
            id=str(uuid.uuid4()),
            typeSubscription=agent_worker_pb2.TypeSubscription(topic_type="group_chat", agent_type="writer"),
        )
        error = await rpc_error(squatter.add(subscription))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error.details() == "register agent type 'writer' before subscribing it"
        # The control channel, which let one client write to another's, is not served.
        control = squatter.stub.OpenControlChannel(iter(()), metadata=squatter.metadata)
        error = await rpc_error(control.read())
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await squatter.close()
    await asyncio.to_thread(assert_chat_still_works, cfg)


async def test_a_message_at_the_size_limit_with_a_rewritten_sender_reaches_its_subscribers(
    cluster: tuple[Path, Procs], certs: Path
) -> None:
    cfg, _ = cluster
    security = security_of(certs)
    listener, sender = RawClient(address_of(cfg), security), RawClient(address_of(cfg), security)
    await listener.open()
    await listener.subscribe("big_listener", "big")
    await sender.open()
    try:
        # As big as the host accepts, with a sender it will rewrite: still under what it may send.
        sender.publish("big", b"x" * (HOST_RECEIVE_LIMIT - 1024), sender_type="someone_else" * 8)
        sender.publish("big", b"small")
        first = await asyncio.wait_for(listener.stream.read(), 30)
        assert first.cloudEvent.attributes["agagentsendertype"].ce_string == "unknown"
        assert len(first.cloudEvent.binary_data) == HOST_RECEIVE_LIMIT - 1024
        second = await asyncio.wait_for(listener.stream.read(), 10)
        assert second.cloudEvent.binary_data == b"small"
    finally:
        await listener.close()
        await sender.close()
    await asyncio.to_thread(assert_chat_still_works, cfg)


async def test_names_from_a_client_cannot_forge_or_flood_the_hosts_log(
    cluster: tuple[Path, Procs], certs: Path
) -> None:
    cfg, procs = cluster
    host = procs.all[0]
    before = len(host.output)
    attacker = RawClient(address_of(cfg), security_of(certs))
    await attacker.open()
    try:
        attacker.publish("x\n00:00:00 ERROR   host: forged", b"{}")
        for _ in range(4):
            attacker.publish("t" * 4_000_000, b"{}")
        for _ in range(3):
            attacker.outgoing.put_nowait(agent_worker_pb2.Message())  # a kind the host does not route
        await asyncio.sleep(2)
    finally:
        await attacker.close()
    await asyncio.to_thread(assert_chat_still_works, cfg)
    logged = host.output[before:]
    assert not any(line.startswith("00:00:00") for line in logged.splitlines()), logged
    assert len(logged) < 2_000, f"{len(logged)} characters logged"
    assert logged.count("does not route") == 1, logged


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
        assert "refusing to send a" in caplog.text and f"the limit is {HOST_RECEIVE_LIMIT} bytes" in caplog.text
        assert runtime.connection.connected and runtime.connection.reconnects == 0
    finally:
        await listener.close()
        await stop_worker(runtime)


async def test_a_turn_request_from_anyone_but_the_manager_is_ignored(cluster: tuple[Path, Procs], certs: Path) -> None:
    cfg, procs = cluster
    attacker = RawClient(address_of(cfg), security_of(certs))
    await attacker.open()
    try:
        # Claiming to be the manager: the host rewrites the sender, and the writer refuses it.
        forged = RequestToSpeak(conversation_id="forged", speaker="writer", history=[])
        attacker.publish("turn.writer", forged.model_dump_json().encode(), "roundtable_manager", "RequestToSpeak")
        writer = next(p for p in procs.all if p.name == "agent-writer")
        ignored = "ignored a RequestToSpeak from 'unknown': only the manager sends those"
        await asyncio.to_thread(writer.wait_for, ignored, 10)  # the loop runs on, so the attacker's stream sends
    finally:
        await attacker.close()
    await asyncio.to_thread(assert_chat_still_works, cfg)


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
