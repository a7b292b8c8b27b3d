"""The tutorial's own commands, run as written from examples/tutorial, against a fake OpenAI server."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from fakeopenai import FakeOpenAI
from harness import READY, REPO, Procs, free_port, processes
from observe import Collector, observing, wait_until

TUTORIAL = REPO / "examples" / "tutorial"
WRITER_MESSAGE = "You are a one sentence Writer and provide one sentence content each time"
EDITOR_MESSAGE = "You are an Editor. You just provide feedback on the message you receive."


async def watch_seed_chat(address: str, until: int, timeout: float = 60) -> Collector:
    async with observing(address, seed=True) as (_, seen):
        await wait_until(lambda: len(seen.messages) >= until, timeout, f"{until} seed-mode messages")
    return seen


def tutorial(procs: Procs, name: str, script: str, *args: str, fake: FakeOpenAI):
    env = {"OPENAI_BASE_URL": fake.base_url}
    return procs.start(name, sys.executable, script, *args, env=env, cwd=TUTORIAL)


async def test_fast_track_commands_writer_first_then_editor(tmp_path: Path) -> None:
    address = f"localhost:{free_port()}"
    with FakeOpenAI() as fake, processes(tmp_path) as procs:
        host = tutorial(procs, "host", "host.py", "--host-address", address, fake=fake)
        host.wait_for("Host started at")
        writer = tutorial(
            procs,
            "writer",
            "agent.py",
            "--host-address",
            address,
            "--agent-name",
            "writer_agent",
            "--agent-system-message",
            WRITER_MESSAGE,
            "--openai-api-key",
            "sk-test",
            fake=fake,
        )
        writer.wait_for(READY)
        watching = asyncio.create_task(watch_seed_chat(address, until=4))
        await asyncio.sleep(3)  # the tutorial starts the editor in another terminal, a little later
        editor = tutorial(
            procs,
            "editor",
            "agent.py",
            "--host-address",
            address,
            "--agent-name",
            "editor_agent",
            "--agent-system-message",
            EDITOR_MESSAGE,
            "--openai-api-key",
            "sk-test",
            fake=fake,
        )
        editor.wait_for(READY)
        seen = await watching
    authors = [m.author for m in seen.messages[:4]]
    assert authors == ["user", "writer_agent", "editor_agent", "writer_agent"], seen.messages
    assert "from the writer model" in seen.messages[1].content
    assert "from the editor model" in seen.messages[2].content
    assert seen.tokens(seen.messages[1].id), "replies should stream token by token"
    assert all(r["messages"][0]["content"] in (WRITER_MESSAGE, EDITOR_MESSAGE) for r in fake.requests)
    assert all(r.get("stream") for r in fake.requests)


async def test_exercise_4_positional_commands_editor_first(tmp_path: Path) -> None:
    address = f"localhost:{free_port()}"
    with FakeOpenAI() as fake, processes(tmp_path) as procs:
        host = tutorial(procs, "host", "host.py", address, fake=fake)
        host.wait_for("Host started at")
        # Exercise 4 passes no model flags: the key comes from the environment.
        env = {"OPENAI_BASE_URL": fake.base_url, "OPENAI_API_KEY": "sk-test"}
        editor = procs.start(
            "editor", sys.executable, "agent.py", address, "editor_agent", EDITOR_MESSAGE, env=env, cwd=TUTORIAL
        )
        editor.wait_for(READY)
        watching = asyncio.create_task(watch_seed_chat(address, until=5))
        await asyncio.sleep(3)
        writer = procs.start(
            "writer", sys.executable, "agent.py", address, "writer_agent", WRITER_MESSAGE, env=env, cwd=TUTORIAL
        )
        writer.wait_for(READY)
        seen = await watching
    authors = [m.author for m in seen.messages[:5]]
    assert authors == ["user", "writer_agent", "editor_agent", "writer_agent", "editor_agent"], seen.messages
    assert [m.seq for m in seen.messages[:5]] == [0, 1, 2, 3, 4]
