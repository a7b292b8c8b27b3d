"""A2A both ways, with real processes and the official A2A SDK on both ends:
- a remote A2A agent (tests/a2a_peer.py, built with the SDK alone) takes a participant's seat;
- `roundtable a2a` serves the room, and the SDK's own client starts, follows and joins a
  conversation through it."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from harness import READY, REPO, Procs, free_port, processes, scripted_agent, start_cluster, write_config

TOKEN = "peer-token-0123456789"
ROOM_TOKEN = "room-token-0123456789"


def peer(procs: Procs, port: int, tmp_path: Path, mode: str = "reply", token: str | None = TOKEN) -> None:
    args = ["--port", str(port), "--mode", mode, "--record", str(tmp_path / "peer.jsonl")]
    if token:
        args += ["--token", token]
    procs.start("peer", sys.executable, str(REPO / "tests" / "a2a_peer.py"), *args).wait_for("peer ready", 60)


def room_config(tmp_path: Path, reviewer: dict[str, Any] | None = None, **manager: Any) -> Path:
    agents = [scripted_agent("writer", "Draft {n}: the harbour lights come on one by one.", delay=0.01)]
    agents.append(reviewer or scripted_agent("editor", "Feedback {n}: name the harbour.", delay=0.01))
    data = {
        "host": {"address": f"127.0.0.1:{free_port()}", "connect_timeout": 10},
        "model": {"provider": "scripted", "script": ["(default)"]},
        "agents": agents,
        "manager": {"turn_timeout": 30, "termination": {"max_rounds": 4, "timeout": 120}, **manager},
        "a2a": {"port": free_port()},
    }
    return write_config(tmp_path / "roundtable.yaml", data)


def reviewer(port: int, **a2a: Any) -> dict[str, Any]:
    return {
        "name": "reviewer",
        "description": "a reviewer from another framework",
        "a2a": {"url": f"http://127.0.0.1:{port}", "token": TOKEN, **a2a},
    }


# ---------------------------------------------------------------- an A2A agent as a participant


def test_an_a2a_agent_takes_its_turns_and_its_reply_streams_into_the_room(tmp_path: Path) -> None:
    port = free_port()
    cfg = room_config(tmp_path, reviewer(port))
    with processes(tmp_path) as procs:
        peer(procs, port, tmp_path)
        started = start_cluster(procs, cfg, ["writer", "reviewer"])
        assert f"agent reviewer (a2a http://127.0.0.1:{port}, managed)" in started["reviewer"].output
        chat = procs.roundtable("chat", "chat", "Write about a harbour", "--config", str(cfg), "--timeout", "90")
        assert chat.wait_exit(120) == 0, chat.output
    out = chat.output
    assert "reviewer: Peer 1: I read 2 messages; the last was from writer.\n" in out, out
    assert "reviewer: Peer 2: I read 4 messages; the last was from writer.\n" in out, out
    assert "· conversation ended: max_rounds reached (4 rounds)" in out, out
    sent = [json.loads(line) for line in (tmp_path / "peer.jsonl").read_text().splitlines()]
    assert len(sent) == 2
    # The A2A context is the conversation; the history comes as text and as metadata.
    assert len({s["context_id"] for s in sent}) == 1
    history = sent[1]["metadata"]["roundtable"]["history"]
    assert [h["author"] for h in history] == ["user", "writer", "reviewer", "writer"]
    assert history[0]["content"] == "Write about a harbour"
    assert "[user] Write about a harbour" in sent[1]["text"] and "Write reviewer's next message" in sent[1]["text"]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong token", "reviewer: the A2A agent at {url} refused the token (401): check agents.reviewer.a2a.token"),
        ("fails", "reviewer: the A2A agent at {url} ended the turn failed: the peer's model is out of credit"),
        ("unreachable", "reviewer: cannot reach the A2A agent at {url}: "),
        ("silent", "reviewer: the A2A agent at {url} did not answer within 3 s"),
    ],
)
def test_an_a2a_agent_that_fails_ends_the_turn_with_one_line_as_a_model_would(
    tmp_path: Path, case: str, expected: str
) -> None:
    port = free_port()
    settings: dict[str, Any] = {"max_retries": 0, "timeout": 3}
    if case == "wrong token":
        settings["token"] = "not-the-token"
    cfg = room_config(tmp_path, reviewer(port, **settings))
    url = f"http://127.0.0.1:{port}"
    with processes(tmp_path) as procs:
        if case != "unreachable":
            peer(procs, port, tmp_path, mode={"fails": "fail", "silent": "silent"}.get(case, "reply"))
        start_cluster(procs, cfg, ["writer", "reviewer"])
        chat = procs.roundtable("chat", "chat", "Write about a harbour", "--config", str(cfg), "--timeout", "90")
        code = chat.wait_exit(120)
    out = chat.output
    assert code == 1, out
    assert f"· conversation ended: {expected.format(url=url)}" in out, out
    assert "Traceback" not in out


def test_an_a2a_agent_needs_an_http_url_and_no_factory(tmp_path: Path) -> None:
    for a2a, error in [
        ("ftp://peer", "agents[1].a2a.url: expected an http:// or https:// URL, not 'ftp://peer'"),
        ({"url": "http://peer", "timeout": 0}, "agents[1].a2a.timeout"),
    ]:
        cfg = room_config(tmp_path, {"name": "reviewer", "a2a": a2a})
        with processes(tmp_path) as procs:
            agent = procs.roundtable("reviewer", "agent", "--config", str(cfg), "--name", "reviewer")
            assert agent.wait_exit(60) == 2, agent.output
        assert error in agent.output and "Traceback" not in agent.output, agent.output
    cfg = room_config(tmp_path, {"name": "reviewer", "a2a": {"url": "http://peer", "token_file": "/no/such/token"}})
    with processes(tmp_path) as procs:
        agent = procs.roundtable("reviewer", "agent", "--config", str(cfg), "--name", "reviewer")
        assert agent.wait_exit(60) == 2, agent.output
    assert "error: agents.reviewer.a2a.token_file: cannot read /no/such/token: No such file" in agent.output
    cfg = room_config(tmp_path, {"name": "reviewer", "a2a": "http://peer", "factory": "x:y"})
    with processes(tmp_path) as procs:
        agent = procs.roundtable("reviewer", "agent", "--config", str(cfg), "--name", "reviewer")
        assert agent.wait_exit(60) == 2, agent.output
    assert "an a2a agent brings its own tools and logic: leave out factory and tools" in agent.output


# ---------------------------------------------------------------- the room as an A2A agent


def start_room(procs: Procs, cfg: Path, token: str | None = ROOM_TOKEN) -> str:
    start_cluster(procs, cfg, ["writer", "editor"])
    port = yaml.safe_load(cfg.read_text())["a2a"]["port"]
    env = {"ROUNDTABLE_A2A_TOKEN": token} if token else None
    procs.roundtable("a2a", "a2a", "--config", str(cfg), env=env).wait_for(f"{READY} a2a on", 60)
    return f"http://127.0.0.1:{port}"


async def client_for(url: str, token: str | None = ROOM_TOKEN) -> Any:
    from a2a.client import ClientConfig, ClientFactory

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    http = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(60))
    return await ClientFactory(ClientConfig(streaming=True, httpx_client=http)).create_from_url(url), http


def message(text: str, context_id: str | None = None, author: str | None = None) -> Any:
    from a2a.types import Message, Part, Role, SendMessageRequest

    metadata = {"author": author} if author else None
    return SendMessageRequest(
        message=Message(
            role=Role.ROLE_USER,
            message_id=str(uuid.uuid4()),
            parts=[Part(text=text)],
            context_id=context_id,
            metadata=metadata,
        )
    )


def read(event: Any) -> tuple[str, str, str, str]:
    """(kind, state, author, text) of one streamed event."""
    from a2a.types import TaskState
    from google.protobuf.json_format import MessageToDict

    kind = event.WhichOneof("payload")
    if kind == "status_update":
        status = event.status_update.status
        author = MessageToDict(status.message.metadata).get("author", "")
        text = "".join(p.text for p in status.message.parts)
        return kind, TaskState.Name(status.state), author, text
    if kind == "artifact_update":
        return (
            kind,
            event.artifact_update.artifact.name,
            "",
            "".join(p.text for p in event.artifact_update.artifact.parts),
        )
    if kind == "task":
        return kind, TaskState.Name(event.task.status.state), "", ""
    return kind, "", "", ""


def test_an_a2a_client_starts_follows_and_joins_a_conversation(tmp_path: Path) -> None:
    cfg = room_config(tmp_path)
    data = yaml.safe_load(cfg.read_text())
    for agent in data["agents"]:
        agent["model"]["token_delay"] = 0.1  # slow enough to join in mid-way
    data["manager"]["termination"]["max_rounds"] = 6
    write_config(cfg, data)
    context_id = f"harbour-{uuid.uuid4().hex[:8]}"

    async def drive(url: str) -> tuple[list[tuple[str, str, str, str]], list[tuple[str, str, str, str]]]:
        from a2a.client import A2ACardResolver

        client, http = await client_for(url)
        card = await A2ACardResolver(http, url).get_agent_card()
        assert card.name == "roundtable" and card.capabilities.streaming
        events: list[tuple[str, str, str, str]] = []
        joined: list[tuple[str, str, str, str]] = []
        async for event in client.send_message(message("Write about a harbour", context_id)):
            events.append(read(event))
            if events[-1][2] == "writer" and not joined:  # the first draft is in: join in
                async for answer in client.send_message(message("Mention the gulls.", context_id, author="ana")):
                    joined.append(read(answer))
        await client.close()
        await http.aclose()
        return events, joined

    with processes(tmp_path) as procs:
        url = start_room(procs, cfg)
        events, joined = asyncio.run(asyncio.wait_for(drive(url), 180))
    said = [
        (author, text.split(":")[0]) for kind, state, author, text in events if state == "TASK_STATE_WORKING" and text
    ]
    assert said[0] == ("user", "Write about a harbour"), events
    agents = [author for author, _ in said if author in ("writer", "editor")]
    assert agents == ["writer", "editor"] * 3, events
    assert ("ana", "Mention the gulls.") in said, events  # a person's words, with their name
    assert joined[-1][1] == "TASK_STATE_COMPLETED" and "as ana's message" in joined[-1][3], joined
    transcript = [e for e in events if e[0] == "artifact_update"]
    assert len(transcript) == 1 and transcript[0][1] == "transcript", events
    assert "ana: Mention the gulls." in transcript[0][3] and "writer: Draft 3" in transcript[0][3], events
    assert events[-1][1] == "TASK_STATE_COMPLETED", events
    assert events[-1][3] == "Conversation ended: max_rounds reached (6 rounds)", events


def test_the_a2a_endpoint_wants_the_token_but_shows_its_card_to_all(tmp_path: Path) -> None:
    from a2a.utils.errors import A2AError

    cfg = room_config(tmp_path)

    async def attempts(url: str) -> list[str]:
        seen = []
        for token in (None, "wrong-token"):
            client, http = await client_for(url, token)
            try:
                async for _ in client.send_message(message("Write about a harbour")):
                    seen.append("answered")
            except A2AError as error:
                seen.append(str(error))
            await http.aclose()
        async with httpx.AsyncClient() as plain:
            card = (await plain.get(f"{url}/.well-known/agent-card.json")).json()
            seen.append(json.dumps(card["securitySchemes"]))
        return seen

    with processes(tmp_path) as procs:
        url = start_room(procs, cfg)
        seen = asyncio.run(asyncio.wait_for(attempts(url), 120))
        manager = next(p for p in procs.all if p.name == "manager")
        assert "started: Write about a harbour" not in manager.output, manager.output  # nothing got through
    assert all("401" in s for s in seen[:2]), seen
    assert "bearer" in seen[2], seen


def test_the_a2a_endpoint_will_not_listen_off_loopback_without_a_token(tmp_path: Path) -> None:
    cfg = room_config(tmp_path)
    with processes(tmp_path) as procs:
        a2a = procs.roundtable("a2a", "a2a", "--config", str(cfg), "--listen", "0.0.0.0")
        assert a2a.wait_exit(60) == 2, a2a.output
    assert "roundtable: error: the A2A endpoint would listen on 0.0.0.0 with no token" in a2a.output, a2a.output


def test_up_serves_the_a2a_endpoint_beside_the_page_when_the_config_says_so() -> None:
    from roundtable.config import Config
    from roundtable.launcher import plan

    agents = [scripted_agent("writer", "hi")]
    for enabled, last in [(True, ["ui", "a2a"]), (False, ["ui"])]:
        config = Config.model_validate(
            {"agents": agents, "model": {"provider": "scripted"}, "a2a": {"enabled": enabled}}
        )
        assert [role.name for role in plan(config, None, with_ui=True)[-1]] == last


def test_bad_a2a_requests_get_one_line_each_and_the_room_carries_on(tmp_path: Path) -> None:
    from a2a.utils.errors import A2AError

    cfg = room_config(tmp_path)

    async def attempts(url: str) -> list[str]:
        client, http = await client_for(url)
        said = []
        for request in (message("   "), message("Write about a harbour", context_id="no spaces, please")):
            try:
                async for _ in client.send_message(request):
                    said.append("answered")
            except A2AError as error:
                said.append(str(error))
        async for event in client.send_message(message("Write about a harbour")):  # still serving
            said.append(read(event)[1])
        await http.aclose()
        return said

    with processes(tmp_path) as procs:
        url = start_room(procs, cfg)
        said = asyncio.run(asyncio.wait_for(attempts(url), 120))
    assert "the message has no text: say what the agents should work on" in said[0], said
    assert "context_id: use 1 to 128 letters, digits and _ . : -" in said[1], said
    assert said[-1] == "TASK_STATE_COMPLETED", said
