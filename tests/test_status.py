"""`roundtable status` on a real cluster: the agents that are connected, and the conversation
that is stuck waiting for one that never came."""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path

import pytest
from harness import free_port, processes, scripted_agent, start_cluster, write_config

from roundtable.config import StoreUnavailable
from roundtable.status import Status, format_status, gather_status
from roundtable.wire import HostUnreachable

pytest_plugins = ["pg"]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_status_lists_connected_agents_and_the_open_conversation_waiting_for_an_absent_one(
    tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    store_url = f"sqlite+aiosqlite:///{tmp_path / 'data' / 'transcripts.db'}"  # the harness's data dir
    if backend == "postgres":
        store_url = str(request.getfixturevalue("postgres_database"))
    address = f"127.0.0.1:{free_port()}"
    cfg = write_config(
        tmp_path / "roundtable.yaml",
        {
            "host": {"address": address, "connect_timeout": 5},
            # The critic is in the config but never started: its turn waits for it.
            "agents": [scripted_agent("writer", "Draft"), scripted_agent("editor", "Notes"), scripted_agent("critic")],
            "manager": {"termination": {"max_rounds": 6, "timeout": 300}, "turn_timeout": 300},
            "store": {"url": store_url},
        },
    )
    with processes(tmp_path) as procs:
        start_cluster(procs, cfg, ["writer", "editor"])
        terminal = procs.roundtable("chat", "chat", "Write about the sea\nin two lines", "--config", str(cfg))
        terminal.wait_for("critic speaks next", timeout=60)
        status = asyncio.run(gather_status(address, store_url, timeout=5))

    assert status.participants == ["editor", "writer"]
    assert {"editor", "writer", "roundtable_manager", "roundtable_presence"} <= set(status.agent_types)
    assert "critic" not in status.agent_types
    [conversation] = status.conversations
    assert conversation.pending_speaker == "critic"
    assert conversation.message_count == 3  # the task, the writer's draft, the editor's notes
    assert 0 <= status.at - conversation.updated_at < 30

    text = format_status(status)
    lines = text.splitlines()
    assert lines[0].startswith(f"host {address}: ")
    assert lines[1] == "  participants: editor, writer"
    assert lines[2] == "  manager:      roundtable_manager, roundtable_presence"
    assert re.fullmatch(r"  others:       terminal_\w+", lines[3]), text  # the `chat` that is following along
    assert re.fullmatch(rf"  manager lease: {socket.gethostname()}:\d+:\w+, for \d s more", lines[4]), text
    assert lines[5] == f"store {store_url}: 1 open conversation"
    assert re.fullmatch(
        rf"  {conversation.id}  3 messages  waiting for critic  idle \d+ s  Write about the sea in two lines", lines[6]
    ), text


def test_format_status_shortens_long_tasks_and_says_when_nothing_is_connected() -> None:
    text = format_status(Status(host="h:1", agent_types=[], participants=[], store="sqlite+aiosqlite:///t.db"))
    assert text.splitlines() == [
        "host h:1: 0 agent types connected",
        "  participants: none",
        "  manager:      not connected",
        "  others:       none",
        "store sqlite+aiosqlite:///t.db: 0 open conversations",
    ]


def test_an_unreachable_host_is_one_clear_line(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(HostUnreachable) as failure:
        asyncio.run(gather_status(address, f"sqlite+aiosqlite:///{tmp_path / 't.db'}", timeout=2))
    message = str(failure.value)
    assert message.startswith(f"cannot reach the roundtable host at {address} within 2 s")
    assert "\n" not in message


def test_an_unreachable_store_is_one_clear_line(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    cfg = write_config(tmp_path / "roundtable.yaml", {"host": {"address": address}})
    store_url = f"postgresql+asyncpg://rt:s3cret@127.0.0.1:{free_port()}/rt"  # nothing listens there
    with processes(tmp_path) as procs:
        start_cluster(procs, cfg, [], manager=False)
        with pytest.raises(StoreUnavailable) as failure:
            asyncio.run(gather_status(address, store_url, timeout=2))
    message = str(failure.value)
    assert message.startswith("cannot open the transcript store at postgresql+asyncpg://rt:***@127.0.0.1:")
    assert "s3cret" not in message and "\n" not in message
