"""Per-identity tokens on the NATS bus: each process connects as its own NATS user, whose
permissions (natsbus.authorization) let it do what its role needs, as on the gRPC host; the
receivers take the sender from the subject the publisher was allowed to publish on.

The attacks hold a valid credential, the writer's, against a real bus with the real manager.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import ssl
import subprocess
import sys
from pathlib import Path

import nats
import nats.errors
import pytest
import yaml
from conftest import certs_command
from harness import READY, Proc, processes, write_config
from test_nats import assert_one_complete, nats_config, roundtable, start_bus, start_on_nats
from test_reliability import chat

from roundtable.config import SecurityConfig
from roundtable.messages import CONTROL, GROUP_CHAT, StopConversation, topic, turn_topic_type
from roundtable.natsbus import STREAM
from roundtable.security import load_security
from roundtable.worker import connect_worker, stop_worker


def hexed(name: str) -> str:
    return name.encode().hex()


def identity_config(tmp_path: Path, directory: Path) -> Path:
    cfg = nats_config(tmp_path, rounds=2)
    data = yaml.safe_load(cfg.read_text())
    data["host"]["security"] = {
        "ca": str(directory / "ca.pem"),  # TLS too: the bus's servers use the host's certificate
        "cert": str(directory / "server.pem"),
        "key": str(directory / "server.key"),
        "tokens": str(directory),
        "identities": str(directory / "identities.yaml"),
    }
    return write_config(cfg, data)


class Spy:
    """A NATS connection with the writer's own user and password, and the errors the server sent it."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: nats.NATS | None = None

    async def connect(self, address: str, token: str, tls: ssl.SSLContext) -> nats.NATS:
        async def on_error(error: Exception) -> None:
            self.errors.append(str(error).lower())

        self.nc = await nats.connect(
            address,
            user="writer",
            password=token,
            inbox_prefix="_INBOX_writer",
            tls=tls,
            error_cb=on_error,
            allow_reconnect=False,
        )
        return self.nc

    async def refused(self, what: str) -> None:
        """The server said this was not allowed (its errors come after a round trip)."""
        assert self.nc is not None
        await self.nc.flush(timeout=5)
        for _ in range(50):
            if any(what in error for error in self.errors):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"not refused: {what} (the server said {self.errors})")


async def attack_as_the_writer(address: str, directory: Path, manager: Proc) -> None:
    token = (directory / "tokens" / "writer.token").read_text().strip()
    tls = ssl.create_default_context(cafile=str(directory / "ca.pem"))
    for user, password in (("writer", token + "x"), ("manager", token), ("writer", "")):
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(address, user=user, password=password, tls=tls, allow_reconnect=False, connect_timeout=5)
    with pytest.raises((nats.errors.Error, OSError, asyncio.TimeoutError)):  # TLS is required
        await nats.connect(address, user="writer", password=token, allow_reconnect=False, connect_timeout=5)

    spy = Spy()
    nc = await spy.connect(address, token, tls)
    try:
        js = nc.jetstream(timeout=3)
        chat_subject = f"rt.ev.{hexed(GROUP_CHAT)}.*.*"
        # Reading the conversations: not from the subject, nor another's inbox ...
        await nc.subscribe(chat_subject)
        await spy.refused(f'permissions violation for subscription to "{chat_subject}"')
        await nc.subscribe("_INBOX_manager.>")
        await spy.refused('permissions violation for subscription to "_inbox_manager.>"')
        # ... nor through a consumer of the stream, named for what it filters or not.
        with pytest.raises((nats.errors.Error, asyncio.TimeoutError)):
            await js.subscribe(chat_subject, stream=STREAM, config=nats.js.api.ConsumerConfig(name="spy"))
        await spy.refused("permissions violation for publish to")
        with pytest.raises((nats.errors.Error, asyncio.TimeoutError)):
            await js.add_consumer(STREAM, nats.js.api.ConsumerConfig(filter_subject=chat_subject))
        own_turns = f"rt.one.{hexed(turn_topic_type('writer'))}.*.*"
        disguised = {"stream_name": STREAM, "config": {"name": "spy2", "filter_subject": chat_subject}}
        answer = await nc.request(
            f"$JS.API.CONSUMER.CREATE.{STREAM}.spy2.{own_turns}", json.dumps(disguised).encode(), timeout=5
        )
        assert "error" in json.loads(answer.data), answer.data  # allowed subject, another filter: refused
        # Publishing as another identity, deleting the stream, making calls: not allowed.
        as_manager = f"rt.ev.{hexed(GROUP_CHAT)}.{hexed('c')}.manager"
        await nc.publish(as_manager, b"forged")
        await spy.refused(f'permissions violation for publish to "{as_manager}"')
        with pytest.raises((nats.errors.Error, asyncio.TimeoutError)):  # its state lists every subject
            await js.stream_info(STREAM)
        await spy.refused(f'permissions violation for publish to "$js.api.stream.info.{STREAM.lower()}"')
        with pytest.raises((nats.errors.Error, asyncio.TimeoutError)):
            await js.delete_stream(STREAM)
        await spy.refused(f'permissions violation for publish to "$js.api.stream.delete.{STREAM.lower()}"')
        await nc.publish(f"rt.rpc.{hexed('editor')}", b"call")
        await spy.refused("permissions violation for publish to")
    finally:
        await nc.close()

    # Through roundtable's own worker, as the writer: a stop claiming no sender (as a person's
    # page does) carries the writer's name, and the manager takes no person's word from it.
    security = load_security(SecurityConfig(ca=str(directory / "ca.pem"), tokens=str(directory)), "writer")
    runtime = await connect_worker(address, 10, security)
    try:
        stop = StopConversation(conversation_id="any", reason="stopped by an impostor")
        await runtime.publish_message(stop, topic(CONTROL, "any"))
    finally:
        await stop_worker(runtime)
    await asyncio.to_thread(manager.wait_for, "refused a StopConversation sent by the agent writer", 10)


def test_per_identity_tokens_on_the_bus_carry_a_conversation_and_hold_against_an_agent(
    tmp_path: Path, identities: Path
) -> None:
    cfg = identity_config(tmp_path, identities)
    address = yaml.safe_load(cfg.read_text())["bus"]
    with processes(tmp_path) as procs:
        started = start_on_nats(procs, cfg)
        page = procs.roundtable("ui", "ui", "--config", str(cfg))  # as `ui`: it follows every conversation
        page.wait_for(READY, timeout=60)
        conf = next((tmp_path / "data" / "nats").glob("**/nats-server.conf"))
        assert conf.stat().st_mode & 0o077 == 0, oct(conf.stat().st_mode)  # it holds the password hashes
        assert (identities / "tokens" / "writer.token").read_text().strip() not in conf.read_text()
        assert '"user": "writer"' in conf.read_text() and "cert_file" in conf.read_text()
        terminal = chat(procs, cfg)
        assert_one_complete(tmp_path, terminal, rounds=2)
        status = roundtable("status", "--config", str(cfg))  # as `client`: it hears the heartbeats
        assert status.returncode == 0 and "participants: editor, writer" in status.stdout, status
        asyncio.run(attack_as_the_writer(address, identities, started["manager"]))
        again = chat(procs, cfg, name="chat-again", task="Write about snow")  # the attacks broke nothing
        assert again.wait_exit(120) == 0, again.output
        for proc in (page, *(p for name, p in started.items() if name != "bus")):
            assert "violation" not in proc.output.lower(), proc.output[-3000:]  # each did only what it may


def test_an_identities_file_without_nats_passwords_is_one_clear_line(tmp_path: Path, identities: Path) -> None:
    listing = yaml.safe_load((identities / "identities.yaml").read_text())
    for entry in listing["identities"]:
        del entry["nats_bcrypt"]
    old = tmp_path / "identities.yaml"
    old.write_text(yaml.safe_dump(listing))
    cfg = identity_config(tmp_path, identities)
    data = yaml.safe_load(cfg.read_text())
    shown = roundtable("bus", "--print-security", "--config", str(cfg))  # for NATS servers of one's own
    assert shown.returncode == 0 and '"user": "writer"' in shown.stdout and "cert_file" in shown.stdout, shown
    data["host"]["security"]["identities"] = str(old)
    write_config(cfg, data)
    result = roundtable("bus", "--config", str(cfg))
    assert result.returncode == 2, result.stderr
    assert f"the identities file {old} has no NATS password for 'writer'" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_the_shared_token_over_tls_on_the_bus(tmp_path: Path) -> None:
    """The development shortcut: one token for everyone, which the bus keeps as a bcrypt hash."""
    directory = tmp_path / "certs"
    result = certs_command(directory)
    assert result.returncode == 0, result.stderr
    cfg = nats_config(tmp_path, rounds=2)
    data = yaml.safe_load(cfg.read_text())
    files = {"ca": "ca.pem", "cert": "server.pem", "key": "server.key", "token_file": "token"}
    data["host"]["security"] = {field: str(directory / name) for field, name in files.items()}
    write_config(cfg, data)
    with processes(tmp_path) as procs:
        start_on_nats(procs, cfg)
        conf = next((tmp_path / "data" / "nats").glob("**/nats-server.conf")).read_text()
        assert (directory / "token").read_text().strip() not in conf and "authorization { token" in conf
        assert_one_complete(tmp_path, chat(procs, cfg), rounds=2)
        wrong_env = {**os.environ, "ROUNDTABLE_TOKEN": "not-the-token"}
        refused = subprocess.run(
            [sys.executable, "-m", "roundtable", "status", "--config", str(cfg)],
            capture_output=True,
            text=True,
            timeout=60,
            env=wrong_env,
        )
        assert refused.returncode != 0 and "rejected this process: missing or wrong token" in refused.stderr, (
            refused.stderr
        )
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr


def test_a_shared_consumer_made_by_another_client_is_not_bound_to(tmp_path: Path) -> None:
    """Without identities a turn consumer's name can be worked out. One made under that name by
    another client, filtering other subjects, would leave the agent without its turns, silently:
    the agent says so and exits instead."""
    cfg = nats_config(tmp_path, rounds=2)
    address = yaml.safe_load(cfg.read_text())["bus"]
    with processes(tmp_path) as procs:
        start_bus(procs, cfg)
        procs.roundtable("manager", "manager", "--config", str(cfg)).wait_for(READY, timeout=60)  # makes the stream

        async def squat() -> None:
            nc = await nats.connect(address)
            try:
                theirs = f"rt.one.{hexed(turn_topic_type('editor'))}.*.*"
                name = "o" + hashlib.sha256(f"editor\n{theirs}".encode()).hexdigest()[:24]
                other = f"rt.one.{hexed(turn_topic_type('writer'))}.*.*"
                config = nats.js.api.ConsumerConfig(
                    name=name, durable_name=name, deliver_group=name, deliver_subject="squat", filter_subject=other
                )
                await nc.jetstream(timeout=5).add_consumer(STREAM, config)
            finally:
                await nc.close()

        asyncio.run(squat())
        editor = procs.roundtable("agent-editor", "agent", "--config", str(cfg), "--name", "editor")
        assert editor.wait_exit(60) == 1, editor.output
        assert "another client made it" in editor.output, editor.output
