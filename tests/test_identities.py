"""Per-identity tokens: each agent, the manager, the page and terminal clients hold their own,
and the host lets each do only what its role needs (roundtable/identities.py).

The attacks hold a valid token: an agent's, or the page's. They run against a real TLS host
with a real manager, and a conversation must complete afterwards.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from autogen_ext.runtimes.grpc.protos import agent_worker_pb2
from conftest import certs_command
from harness import READY, Procs, free_port, processes, scripted_agent, start_cluster, write_config
from test_security import RawClient, address_of, assert_chat_still_works, rpc_error

from roundtable.config import ConfigError, SecurityConfig
from roundtable.identities import Authority, grant, load_authority, token_digest
from roundtable.messages import AgentReply, StopConversation, StreamChunk
from roundtable.security import Security, load_security


def identity_config(tmp_path: Path, directory: Path) -> Path:
    security = {
        "ca": str(directory / "ca.pem"),
        "cert": str(directory / "server.pem"),
        "key": str(directory / "server.key"),
        "tokens": str(directory),
        "identities": str(directory / "identities.yaml"),
    }
    return write_config(
        tmp_path / "roundtable.yaml",
        {
            "host": {"address": f"127.0.0.1:{free_port()}", "connect_timeout": 5, "security": security},
            "agents": [scripted_agent("writer", "Draft {n}"), scripted_agent("editor", "Feedback {n}")],
            "manager": {"termination": {"max_rounds": 2}, "turn_timeout": 20},
            "ui": {"port": free_port()},
        },
    )


def security_as(directory: Path, identity: str) -> Security:
    return load_security(SecurityConfig(ca=str(directory / "ca.pem"), tokens=str(directory)), identity)


@pytest.fixture
def without_writer(tmp_path: Path, identities: Path) -> Iterator[tuple[Path, Procs]]:
    """Host, manager and editor, each with its own token; the writer's token is free to steal."""
    cfg = identity_config(tmp_path, identities)
    with processes(tmp_path) as procs:
        start_cluster(procs, cfg, ["editor"])
        yield cfg, procs


def test_certs_writes_a_token_per_identity_and_a_secret_free_list_for_the_host(identities: Path) -> None:
    tokens = {path.stem: path.read_text().strip() for path in (identities / "tokens").iterdir()}
    assert sorted(tokens) == ["client", "editor", "manager", "ui", "writer"]
    assert len(set(tokens.values())) == 5
    assert all((identities / "tokens" / f"{name}.token").stat().st_mode & 0o077 == 0 for name in tokens)
    listing = (identities / "identities.yaml").read_text()
    assert not any(token in listing for token in tokens.values())
    roles = {e["name"]: e["role"] for e in yaml.safe_load(listing)["identities"]}
    assert roles == {"writer": "agent", "editor": "agent", "manager": "manager", "ui": "page", "client": "page"}
    assert not (identities / "token").exists()  # no shared token beside them


def test_certs_refuses_agent_names_that_are_not_names_or_are_taken_by_a_role(tmp_path: Path) -> None:
    for agents, expected in (
        ("writer,manager", "an agent may not be named 'manager'"),
        ("wri ter", "'wri ter' is not an agent name"),
        (",", "name at least one agent"),
    ):
        result = certs_command(tmp_path / "c", "--agents", agents)
        assert result.returncode == 2, result.stderr
        assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_broken_identities_file_is_one_clear_line(tmp_path: Path) -> None:
    good = {"name": "writer", "role": "agent", "token_sha256": "a" * 64}
    cases = {
        "missing": (None, "cannot read the identities file"),
        "not yaml": ("identities: [", "is not YAML"),
        "bad role": ({"identities": [{**good, "role": "boss"}]}, "identities.0.role"),
        "bad hash": ({"identities": [{**good, "token_sha256": "xyz"}]}, "identities.0.token_sha256"),
        "twice": ({"identities": [good, {**good, "token_sha256": "b" * 64}]}, "names 'writer' twice"),
    }
    for name, (content, expected) in cases.items():
        path = tmp_path / f"{name}.yaml"
        if content is not None:
            path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
        with pytest.raises(ConfigError, match=expected) as caught:
            load_authority(str(path), None)
        assert "\n" not in str(caught.value), name


def test_the_authority_knows_each_token_and_the_shared_one_grants_everything() -> None:
    authority = Authority({token_digest("w"): grant("writer", "agent")}, shared_token="dev")
    assert authority.lookup("Bearer w") == grant("writer", "agent")
    assert authority.lookup("Bearer dev") is None  # the development shortcut: no limits
    assert authority.lookup("Bearer nope") is False
    assert authority.lookup("w") is False  # not a bearer token
    assert Authority({}).lookup("") is None  # no token configured: loopback's zero-config
    writer = grant("writer", "agent")
    assert writer.may_subscribe("turn.writer") and not writer.may_subscribe("turn.editor")
    assert not writer.may_subscribe("turn.", prefix=True)
    assert grant("manager", "manager").may_publish("turn.anyone")
    assert grant("ui", "page").may_register("ui_1234") and not grant("ui", "page").may_register("writer")


def test_every_process_with_its_own_token_runs_a_conversation(tmp_path: Path, identities: Path) -> None:
    cfg = identity_config(tmp_path, identities)
    with processes(tmp_path) as procs:
        start_cluster(procs, cfg, ["writer", "editor"])
        page = procs.roundtable("ui", "ui", "--config", str(cfg))
        page.wait_for(READY, timeout=60)  # it registers and subscribes its observer at start
        assert_chat_still_works(cfg)
        logs = "".join(p.output for p in procs.all)
    for token in (identities / "tokens").iterdir():
        assert token.read_text().strip() not in logs


async def test_an_agents_token_registers_subscribes_and_publishes_only_as_that_agent(
    without_writer: tuple[Path, Procs], identities: Path
) -> None:
    cfg, procs = without_writer
    address = address_of(cfg)
    thief = RawClient(address, security_as(identities, "writer"))
    page = RawClient(address, security_as(identities, "ui"))
    await thief.open()
    await page.open()
    try:
        for agent_type in ("editor", "roundtable_manager", "ui_watcher"):
            refused = await rpc_error(thief.subscribe(agent_type, "group_chat"))
            assert refused.code() == grpc.StatusCode.PERMISSION_DENIED, refused.details()
            assert f"may not register agent type '{agent_type}'" in (refused.details() or "")
        await thief.subscribe("writer", "turn.writer")  # its own: allowed
        for topic_type in ("group_chat", "control", "turn.editor", "stream"):
            refused = await rpc_error(thief.subscribe("writer", topic_type))
            assert refused.code() == grpc.StatusCode.PERMISSION_DENIED, refused.details()
            assert f"may not subscribe to topic '{topic_type}'" in (refused.details() or "")
        everything = agent_worker_pb2.TypePrefixSubscription(topic_type_prefix="", agent_type="writer")
        refused = await rpc_error(
            thief.add(agent_worker_pb2.Subscription(id=str(uuid.uuid4()), typePrefixSubscription=everything))
        )
        assert refused.code() == grpc.StatusCode.PERMISSION_DENIED

        # What it publishes where it may not is dropped; what it may publish carries its own name.
        await page.subscribe("ui_watcher", "group_chat")
        await page.subscribe("ui_watcher", "stream")
        thief.publish("group_chat", b'{"forged": true}', sender_type="roundtable_manager")
        chunk = StreamChunk(conversation_id="c", message_id="m", author="writer", index=0, text="hi")
        thief.publish(
            "stream", chunk.model_dump_json().encode(), sender_type="roundtable_manager", schema="StreamChunk"
        )
        thief.publish("stream", chunk.model_dump_json().encode(), sender_type="", schema="StreamChunk")
        for _ in range(2):
            received = await asyncio.wait_for(page.stream.read(), 10)
            assert received.cloudEvent.type == "stream", received  # the forged group_chat event never came
            assert received.cloudEvent.attributes["agagentsendertype"].ce_string == "writer"

        # It makes no calls, and the manager takes no person's word from it.
        thief.request("1", "editor", b"{}")
        answer = await asyncio.wait_for(thief.stream.read(), 10)
        assert "identity 'writer' may not make calls" in answer.response.error, answer
        stop = StopConversation(conversation_id="any", reason="stopped by an impostor")
        thief.publish("control", stop.model_dump_json().encode(), sender_type="", schema="StopConversation")
        manager = next(p for p in procs.all if p.name == "manager")
        await asyncio.to_thread(manager.wait_for, "refused a StopConversation sent by the agent writer", 10)

        # The page's token: no agent's type, no agent's topic, and no reply in an agent's name.
        refused = await rpc_error(page.subscribe("writer", "turn.writer"))
        assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
        refused = await rpc_error(page.subscribe("ui_watcher", "turn.editor"))
        assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
        reply = AgentReply(conversation_id="any", turn_id="t", message_id="m", author="editor", content="forged")
        page.publish("control", reply.model_dump_json().encode(), sender_type="editor", schema="AgentReply")
        await asyncio.to_thread(manager.wait_for, "refused a reply for 'editor'", 10)
    finally:
        await thief.close()
        await page.close()
    writer = procs.roundtable("agent-writer", "agent", "--config", str(cfg), "--name", "writer")
    await asyncio.to_thread(writer.wait_for, READY)
    await asyncio.to_thread(assert_chat_still_works, cfg)


async def test_a_stranger_is_refused_and_an_agent_with_another_agents_token_fails_in_one_line(
    without_writer: tuple[Path, Procs], identities: Path
) -> None:
    cfg, _ = without_writer
    stranger = RawClient(address_of(cfg), Security(ca=(identities / "ca.pem").read_bytes(), token="not-a-token"))
    try:
        refused = await rpc_error(stranger.open_and_read())
        assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await stranger.close()
    editors_token = (identities / "tokens" / "editor.token").read_text().strip()
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "roundtable", "agent", "--config", str(cfg), "--name", "writer"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "ROUNDTABLE_TOKEN": editors_token},
    )
    assert result.returncode == 1, result.stderr
    expected = "refused to register agent type 'writer': identity 'editor' may not register agent type 'writer'"
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
