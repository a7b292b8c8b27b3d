"""Nothing lost, nothing hangs: processes die mid-conversation and the conversation still completes,
with every turn stored exactly once, in order."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import time
from pathlib import Path
from typing import Any

import yaml
from autogen_core import AgentId
from harness import (
    READY,
    Proc,
    Procs,
    free_port,
    processes,
    scripted_agent,
    start_cluster,
    terminal_messages,
    write_config,
)

from roundtable.config import load_config
from roundtable.manager import register_manager
from roundtable.messages import MANAGER_TYPE, RequestToSpeak, new_id, topic, turn_topic_type
from roundtable.store import StoredConversation, TranscriptStore
from roundtable.worker import connect_worker, stop_worker

# Twenty words at 40 ms each: a turn takes about a second, long enough to kill something mid-turn.
LONG = " ".join(f"w{i}" for i in range(20))


def config(tmp_path: Path, rounds: int = 6, **manager: Any) -> Path:
    return write_config(
        tmp_path / "roundtable.yaml",
        {
            "host": {"address": f"127.0.0.1:{free_port()}", "connect_timeout": 5},
            "agents": [
                scripted_agent("writer", f"Draft {{n}}: {LONG}", delay=0.04),
                scripted_agent("editor", f"Feedback {{n}}: {LONG}", delay=0.04),
            ],
            "manager": {"termination": {"max_rounds": rounds, "timeout": 300}, "turn_timeout": 30, **manager},
        },
    )


def chat(procs: Procs, cfg: Path, name: str = "chat", task: str = "Write about rain") -> Proc:
    return procs.roundtable(name, "chat", task, "--config", str(cfg), "--timeout", "120")


def stored(tmp_path: Path) -> list[StoredConversation]:
    async def read() -> list[StoredConversation]:
        store = TranscriptStore(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'transcripts.db'}")
        try:
            found = []
            for summary in await store.recent(100):
                conversation = await store.get(summary.id)
                assert conversation is not None
                found.append(conversation)
            return found
        finally:
            await store.close()

    return asyncio.run(read())


def assert_complete(conversation: StoredConversation, rounds: int) -> None:
    """Every turn exactly once, in order, with no gaps, and the right speakers."""
    assert conversation.status == "ended" and conversation.ok, conversation
    assert [m.seq for m in conversation.transcript] == list(range(1, rounds + 2))
    assert len({m.id for m in conversation.transcript}) == rounds + 1
    agents = [m.author for m in conversation.transcript if m.kind == "agent"]
    assert agents == (["writer", "editor"] * rounds)[:rounds]


def assert_shown_once(output: str, rounds: int) -> None:
    """Each agent message printed whole exactly once (a stream cut short by a crash is marked)."""
    shown = terminal_messages(output)
    assert [author for author, _ in shown] == (["writer", "editor"] * rounds)[:rounds], output
    assert all(text.endswith("w19") for _, text in shown), output


def test_host_killed_and_restarted_mid_conversation(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    with processes(tmp_path) as procs:
        started = start_cluster(procs, cfg, ["writer", "editor"])
        terminal = chat(procs, cfg)
        terminal.wait_for("editor: ", timeout=60)
        started["host"].stop(signal.SIGKILL)
        time.sleep(1.0)
        procs.roundtable("host2", "host", "--config", str(cfg)).wait_for(READY)
        assert terminal.wait_exit(120) == 0, terminal.output
        for name in ("writer", "editor", "manager"):
            assert "reconnected to" in started[name].output, started[name].output
        output = terminal.output
    assert "max_rounds reached (6 rounds)" in output
    assert_shown_once(output, 6)
    [conversation] = stored(tmp_path)
    assert_complete(conversation, 6)


def test_manager_then_an_agent_killed_mid_turn(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    with processes(tmp_path) as procs:
        started = start_cluster(procs, cfg, ["writer", "editor"])
        terminal = chat(procs, cfg)
        terminal.wait_for("writer speaks next", timeout=60)
        time.sleep(0.5)  # mid-turn: the writer is streaming
        started["manager"].stop(signal.SIGKILL)
        procs.roundtable("manager2", "manager", "--config", str(cfg)).wait_for(READY)
        terminal.wait_for("editor speaks next", timeout=60)
        time.sleep(0.5)
        started["editor"].stop(signal.SIGKILL)
        procs.roundtable("editor2", "agent", "--config", str(cfg), "--name", "editor").wait_for(READY)
        assert terminal.wait_exit(120) == 0, terminal.output
        output = terminal.output
    assert_shown_once(output, 6)
    [conversation] = stored(tmp_path)
    assert_complete(conversation, 6)


def test_chaos_under_up_every_conversation_completes_exactly_once(tmp_path: Path) -> None:
    cfg = config(tmp_path, rounds=4)
    data = yaml.safe_load(cfg.read_text())
    for agent in data["agents"]:  # every model call, to count the work a kill wastes
        agent["model"]["record"] = str(tmp_path / f"{agent['name']}-calls.jsonl")
    cfg.write_text(yaml.safe_dump(data))
    rng = random.Random(int(os.environ.get("CHAOS_SEED", "7")))  # another seed, another run of kills
    with processes(tmp_path) as procs:
        up = procs.roundtable("up", "up", "--config", str(cfg), "--no-ui")
        up.wait_for("everything is ready", timeout=60)
        terminals = [chat(procs, cfg, f"chat{i}", f"Task {i}") for i in range(3)]
        for i, terminal in enumerate(terminals):  # the chaos is for conversations, not for a chat's first connect
            terminal.wait_for(f"(task): Task {i}", timeout=60)
        kills = []
        for _ in range(4):
            time.sleep(rng.uniform(1.0, 2.5))
            pids = dict(re.findall(r"started (\S+) \(pid (\d+)\)", up.output))
            victim = rng.choice(sorted(pids))
            kills.append(victim)
            try:
                os.kill(int(pids[victim]), signal.SIGKILL)
            except ProcessLookupError:
                pass
        for terminal in terminals:
            assert terminal.wait_exit(180) == 0, f"killed {kills}\n{terminal.output}"
            assert_shown_once(terminal.output, 4)
    conversations = stored(tmp_path)
    assert len(conversations) == 3
    for conversation in conversations:
        assert_complete(conversation, 4)
    calls = sum(len(p.read_text().splitlines()) for p in tmp_path.glob("*-calls.jsonl"))
    turns = sum(1 for c in conversations for m in c.transcript if m.kind == "agent")
    # Reported, not asserted: a kill mid-generation costs a call by nature (issue 16 wants 1.00 plus those).
    print(json.dumps({"kills": kills, "model_calls": calls, "stored_turns": turns, "calls_per_turn": calls / turns}))


def test_a_turn_that_is_no_longer_open_is_not_answered(tmp_path: Path) -> None:
    """A "your turn" that comes late (asked again, or passed on by a restarted host) for a turn the
    manager has stored already costs no model call: the agent asks the manager first."""
    cfg = config(tmp_path, rounds=2)
    data = yaml.safe_load(cfg.read_text())
    calls = tmp_path / "editor-calls.jsonl"
    data["agents"][1]["model"]["record"] = str(calls)
    cfg.write_text(yaml.safe_dump(data))
    with processes(tmp_path) as procs:
        started = start_cluster(procs, cfg, ["writer", "editor"])
        assert chat(procs, cfg).wait_exit(120) == 0
        [conversation] = stored(tmp_path)
        before = calls.read_text().splitlines()
        assert len(before) == 1  # the editor's one turn

        async def ask_late() -> None:
            # The manager, in this process instead of its own, sends a "your turn" for a turn it
            # has stored (as a restarted host once passed one on), then answers the agent's check.
            settings = load_config(cfg)
            store_url = f"sqlite+aiosqlite:///{tmp_path / 'data' / 'transcripts.db'}"  # as the processes have it
            runtime = await connect_worker(settings.host.address, 10)
            store = TranscriptStore(store_url)
            await store.open()
            try:
                watcher = await register_manager(runtime, settings.agents, settings.manager, store)
                late = RequestToSpeak(
                    conversation_id=conversation.id, turn_id=new_id(), speaker="editor", history=conversation.transcript
                )
                turn = topic(turn_topic_type("editor"), conversation.id)
                await runtime.publish_message(late, turn, sender=AgentId(MANAGER_TYPE, conversation.id))
                await asyncio.to_thread(started["editor"].wait_for, "is no longer open; not answering it", 30)
                watcher.cancel()
            finally:
                await stop_worker(runtime)
                await store.close()

        started["manager"].stop()
        asyncio.run(ask_late())
        assert calls.read_text().splitlines() == before
    [after] = stored(tmp_path)
    assert after.transcript == conversation.transcript


def test_a_silent_agent_is_shown_unreachable_then_back(tmp_path: Path) -> None:
    cfg = config(tmp_path, rounds=4)
    with processes(tmp_path) as procs:
        started = start_cluster(procs, cfg, ["writer", "editor"])
        terminal = chat(procs, cfg)
        terminal.wait_for("editor speaks next", timeout=60)
        os.kill(started["editor"].popen.pid, signal.SIGSTOP)  # alive, but silent: like a cut link
        try:
            terminal.wait_for("editor is unreachable", timeout=30)
        finally:
            os.kill(started["editor"].popen.pid, signal.SIGCONT)
        terminal.wait_for("editor is reachable again", timeout=30)
        assert terminal.wait_exit(120) == 0, terminal.output
        assert_shown_once(terminal.output, 4)
    [conversation] = stored(tmp_path)
    assert_complete(conversation, 4)
