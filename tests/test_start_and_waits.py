"""A start that no crash can split, and waits that keep their word: a conversation and its
task are stored in one write (and one stored without its task by an earlier version gets it
back), and processes started by hand before their host find it within `connect_timeout`."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import yaml
from harness import READY, processes, start_cluster
from test_tools import chat, tool_config

from roundtable.messages import ChatMessage
from roundtable.store import TranscriptStore


def store_at(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'data' / 'transcripts.db'}"


def test_a_conversation_and_its_task_are_stored_together(tmp_path: Path) -> None:
    async def run() -> None:
        store = TranscriptStore(store_at(tmp_path))
        await store.open()
        try:
            task = ChatMessage(conversation_id="c1", seq=1, author="ann", content="Map the bay", kind="task")
            assert await store.start("c1", task.content, task)
            assert not await store.start("c1", "another task", task.model_copy(update={"content": "another"}))
            found = await store.get("c1")
            assert found is not None and found.transcript == [task] and found.task == "Map the bay"
        finally:
            await store.close()

    asyncio.run(run())


def test_a_conversation_stored_without_its_task_gets_it_back_when_resumed(tmp_path: Path) -> None:
    writer = {"name": "writer", "model": {"provider": "scripted", "script": ["Draft for: {last}"]}}
    cfg = tool_config(tmp_path, writer, rounds=2)

    async def half_started() -> None:
        # What an earlier version left when it died between its two writes of a start.
        store = TranscriptStore(store_at(tmp_path))
        await store.open()
        await store.start("c-half", "Chart the reef")
        await store.close()

    asyncio.run(half_started())
    with processes(tmp_path) as procs:
        started = start_cluster(procs, cfg, ["writer", "editor"])
        started["manager"].wait_for("conversation c-half ended", timeout=60)

    async def read() -> list[ChatMessage]:
        store = TranscriptStore(store_at(tmp_path))
        found = await store.get("c-half")
        await store.close()
        assert found is not None
        return found.transcript

    transcript = asyncio.run(read())
    assert [(m.kind, m.content) for m in transcript[:2]] == [
        ("task", "Chart the reef"),
        ("agent", "Draft for: Chart the reef"),
    ]


def test_processes_started_before_their_host_find_it_within_connect_timeout(tmp_path: Path) -> None:
    writer = {"name": "writer", "model": {"provider": "scripted", "script": ["calm seas"]}}
    cfg = tool_config(tmp_path, writer)
    data = yaml.safe_load(cfg.read_text())
    data["host"]["connect_timeout"] = 60
    cfg.write_text(yaml.safe_dump(data))
    with processes(tmp_path) as procs:
        early = [procs.roundtable("manager", "manager", "--config", str(cfg))]
        early += [
            procs.roundtable(name, "agent", "--config", str(cfg), "--name", name) for name in ("writer", "editor")
        ]
        time.sleep(3)  # refused, again and again: they keep trying
        assert all(p.popen.poll() is None for p in early), [p.output for p in early]
        procs.roundtable("host", "host", "--config", str(cfg)).wait_for(READY)
        for proc in early:
            proc.wait_for(READY, timeout=60)
        assert "writer: calm seas" in chat(procs, cfg)


def test_with_no_host_a_process_keeps_trying_for_its_connect_timeout_then_says_so(tmp_path: Path) -> None:
    cfg = tool_config(tmp_path, {"name": "writer", "model": {"provider": "scripted", "script": ["x"]}})
    data = yaml.safe_load(cfg.read_text())
    data["host"]["connect_timeout"] = 4
    cfg.write_text(yaml.safe_dump(data))
    with processes(tmp_path) as procs:
        agent = procs.roundtable("writer", "agent", "--config", str(cfg), "--name", "writer")
        time.sleep(1.5)
        assert agent.popen.poll() is None, agent.output  # still trying, as its timeout says
        assert agent.wait_exit(30) == 1, agent.output
    assert "cannot reach the roundtable host at 127.0.0.1:" in agent.output
    assert "within 4 s" in agent.output
    assert "Traceback" not in agent.output
