"""The tutorial's own commands, run as written from examples/tutorial, against a fake OpenAI server."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from autogen_agentchat.messages import TextMessage
from fakeopenai import FakeOpenAI
from harness import READY, REPO, Proc, Procs, free_port, processes
from observe import Collector, observing, wait_until
from stock_tutorial_agent import OPENED, RECEIVED

from roundtable.messages import ChatMessage, SeedExchange

TUTORIAL = REPO / "examples" / "tutorial"
STOCK_AGENT = Path(__file__).resolve().parent / "stock_tutorial_agent.py"
WRITER_MESSAGE = "You are a one sentence Writer and provide one sentence content each time"
EDITOR_MESSAGE = "You are an Editor. You just provide feedback on the message you receive."


async def watch_seed_chat(address: str, until: int, timeout: float = 60) -> Collector:
    async with observing(address, seed=True) as (_, seen):
        await wait_until(lambda: len(seen.messages) >= until, timeout, f"{until} seed-mode messages")
    return seen


def tutorial(procs: Procs, name: str, script: str, *args: str, fake: FakeOpenAI) -> Proc:
    env = {"OPENAI_BASE_URL": fake.base_url}
    return procs.start(name, sys.executable, script, *args, env=env, cwd=TUTORIAL)


def tutorial_writer(procs: Procs, address: str, fake: FakeOpenAI) -> Proc:
    """Exercise 4's writer, `python3 agent.py ADDR writer_agent "..."` (with a key), ready."""
    args = (address, "writer_agent", WRITER_MESSAGE, "--openai-api-key", "sk-test")
    writer = tutorial(procs, "writer", "agent.py", *args, fake=fake)
    writer.wait_for(READY)
    return writer


def stock_agent(procs: Procs, name: str, address: str, task: str, answers: int = 0) -> Proc:
    """A stock AutoGen worker from the tutorial (no roundtable code) that opens an exchange."""
    return procs.start(name, sys.executable, str(STOCK_AGENT), address, "stock_agent", task, str(answers))


def received(stock: Proc, source: str) -> list[dict[str, Any]]:
    """The TextMessages from `source` that the stock agent printed, in order."""
    prefix = f"{RECEIVED}{source}: "
    return [json.loads(line.removeprefix(prefix)) for line in stock.output.splitlines() if line.startswith(prefix)]


async def wait_for_replies(stock: Proc, source: str, count: int, timeout: float = 60) -> list[dict[str, Any]]:
    await wait_until(lambda: len(received(stock, source)) >= count, timeout, f"{count} replies from {source}")
    return received(stock, source)


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


async def test_a_stock_autogen_agent_from_the_tutorial_opens_an_exchange_and_ours_answers(tmp_path: Path) -> None:
    address = f"localhost:{free_port()}"
    with FakeOpenAI() as fake, processes(tmp_path) as procs:
        tutorial(procs, "host", "host.py", address, fake=fake).wait_for("Host started at")
        tutorial_writer(procs, address, fake)
        async with observing(address, seed=True) as (_, seen):
            # It answers our writer twice: writer, stock, writer, stock, writer.
            stock = stock_agent(procs, "stock", address, "Write about a lighthouse", answers=2)
            replies = await wait_for_replies(stock, "writer_agent", 3)
            await wait_until(lambda: len(seen.messages) >= 6, 30, "the whole exchange on the page's observer")
        opening_id = stock.output.split(OPENED, 1)[1].split()[0]
    assert all("from the writer model" in r["content"] for r in replies), stock.output
    assert [r["metadata"] for r in replies] == [{"turn": "1"}, {"turn": "3"}, {"turn": "5"}]
    authors = [m.author for m in seen.messages]
    assert authors == ["user", "writer_agent", "stock_agent", "writer_agent", "stock_agent", "writer_agent"], authors
    assert [m.seq for m in seen.messages] == [0, 1, 2, 3, 4, 5]
    assert seen.messages[0].id == opening_id and seen.messages[0].content == "Write about a lighthouse"
    assert seen.messages[2].content == "Fixed answer from stock_agent: make it shorter."
    assert [m.id for m in seen.messages if m.author == "writer_agent"] == [r["id"] for r in replies]
    assert seen.tokens(replies[0]["id"]), "our replies should stream to the page, tied to the final message by id"
    assert received(stock, "stock_agent") == [], "an agent does not hear its own words"


async def test_after_a_host_restart_a_fresh_stock_agent_opens_a_new_exchange(tmp_path: Path) -> None:
    address = f"localhost:{free_port()}"
    with FakeOpenAI() as fake, processes(tmp_path) as procs:
        host = tutorial(procs, "host", "host.py", address, fake=fake)
        host.wait_for("Host started at")
        writer = tutorial_writer(procs, address, fake)
        # A first exchange to its limit (6 turns): writer 1, stock 2, ..., stock 6; the writer then keeps quiet.
        first = stock_agent(procs, "stock-1", address, "Write about a lighthouse", answers=3)
        await wait_until(lambda: "the seed exchange reached 6 turns" in writer.output, 60, "the turn limit")
        assert len(received(first, "writer_agent")) == 3, first.output
        first.stop()
        host.stop(signal.SIGKILL)
        tutorial(procs, "host-2", "host.py", address, fake=fake).wait_for("Host started at")
        await wait_until(lambda: "reconnected to" in writer.output, 30, "the writer to reconnect")
        second = stock_agent(procs, "stock-2", address, "Write about a harbour")
        await wait_until(lambda: first_turn(second) is not None, 60, "the writer to answer the new opening")
        answer = first_turn(second)
    assert answer is not None and "from the writer model" in answer["content"]
    request = fake.requests[-1]["messages"]
    assert request[-1]["content"] == "Write about a harbour"
    assert not any("lighthouse" in m["content"] for m in request), "the new exchange starts afresh"


def first_turn(stock: Proc) -> dict[str, Any] | None:
    """Our writer's answer to the stock agent's opening. (Its last words before a host restart
    may come too: a reconnecting worker sends its last message again, at least once.)"""
    return next((r for r in received(stock, "writer_agent") if r["metadata"] == {"turn": "1"}), None)


def test_seed_turns_count_every_reply_and_a_new_opening_from_user_starts_over() -> None:
    exchange = SeedExchange()

    def add(content: str, source: str, turn: str | None = None) -> ChatMessage:
        said = exchange.add(TextMessage(content=content, source=source, metadata={"turn": turn} if turn else {}))
        assert said is not None
        return said

    assert (add("Write about rain", "user").seq, exchange.messages[0].kind) == (0, "task")
    reply = add("Rain fell.", "writer_agent", turn="1")
    assert add("Shorter.", "stock_agent").seq == 2  # a stock agent states no turn: the next one
    repeat = TextMessage(id=reply.id, content=reply.content, source=reply.author, metadata={"turn": "1"})
    assert exchange.add(repeat) is None and exchange.turns == 2
    assert add("Again.", "editor_agent", turn="5").seq == 5  # a restarted peer of ours keeps count
    assert add("Write about snow", "user").seq == 0 and exchange.turns == 0
    assert [m.content for m in exchange.messages] == ["Write about snow"]
