"""The conversation logic in one process and one event loop: the host's router, the manager,
the participants and the terminal, on the in-memory transport (roundtable/memory.py) instead
of gRPC. Everything above the transport seam is the code the real processes run: the
reconnecting connection and its outbox, presence, the turn check, the store (SQLite).

These check logic: turns, timeouts, reconnects. The wiring (gRPC, TLS, processes, the browser)
keeps its real-process tests.

They run on a fake clock (tests/fakeclock.py) with the default timeouts: a heartbeat of 2 s,
a turn timeout of 3 minutes and a host that stays down for 10 s cost milliseconds. The tests
that talk HTTP to a model server on another thread keep the real clock.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import re
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from autogen_core import AgentId, TopicId
from autogen_core.models import LLMMessage, SystemMessage
from fakeclock import FakeClockLoop, held
from fakeopenai import FakeOpenAI
from test_tools import counted, counting_writer

from roundtable import clock
from roundtable.chat import Outcome, run_chat
from roundtable.config import AgentConfig, BudgetConfig, HostConfig, ManagerConfig, ModelConfig
from roundtable.lease import Lease
from roundtable.manager import GroupChatManager, register_manager
from roundtable.memory import MemoryHost
from roundtable.messages import (
    CONTROL,
    MANAGER_TYPE,
    ChatMessage,
    HumanMessage,
    RequestToSpeak,
    TurnState,
    topic,
    turn_topic_type,
)
from roundtable.models import build_client
from roundtable.outbox import Outbox
from roundtable.participant import CHECK_WAIT, TURN_CHECK_RESEND, Participant, register_participant
from roundtable.scripted import ScriptedChatCompletionClient
from roundtable.store import TranscriptStore
from roundtable.tools import AgentTools
from roundtable.worker import WorkerRuntime, stop_worker

HEARTBEAT = HostConfig().heartbeat  # the default, as all timeouts here

pytestmark = pytest.mark.fake_clock

#: Virtual times are sums of floats on a clock that starts at the real one's reading: they can
#: fall a hair short of a whole number of seconds (1079.999999999999 for 3 x 2 x 180 s, seen in CI).
EPSILON = 1e-6


def agent(name: str, *replies: str, delay: float = 0.0, **model: object) -> AgentConfig:
    settings = ModelConfig.model_validate(
        {"provider": "scripted", "model": name, "script": list(replies), "token_delay": delay, **model}
    )
    return AgentConfig(name=name, description=f"the {name}", model=settings)


def scripted(*replies: str) -> dict[str, object]:
    return {"provider": "scripted", "script": list(replies)}


def speakers(outcome: Outcome) -> list[str]:
    return [m.author for m in outcome.messages if m.kind == "agent"]


@dataclass
class Room:
    host: MemoryHost
    store: TranscriptStore
    agents: Sequence[AgentConfig]
    manager: ManagerConfig
    data: Path
    runtimes: dict[str, WorkerRuntime] = field(default_factory=dict)
    beats: dict[str, asyncio.Task[None]] = field(default_factory=dict)  # heartbeats, by process
    tools: list[AgentTools] = field(default_factory=list)
    lease: Lease | None = None  # the manager's, taken and never renewed (no `Lease.keep`)

    async def start_manager(self) -> None:
        runtime = await self._runtime("manager")
        selector = build_client(self.manager.model) if self.manager.model is not None else None
        if self.lease is not None:
            assert await self.lease.try_take() == self.lease.holder
        self.beats["manager"] = await register_manager(
            runtime, self.agents, self.manager, self.store, selector, HEARTBEAT, self.lease
        )

    async def start_agent(self, settings: AgentConfig) -> WorkerRuntime:
        assert settings.model is not None
        tools = AgentTools.from_config(settings)
        await tools.start()
        self.tools.append(tools)
        outbox = Outbox.at(self.data / "agents" / settings.name / "replies")
        runtime = await self._runtime(settings.name)
        client = build_client(settings.model)
        beat = await register_participant(runtime, settings, client, None, HEARTBEAT, tools, outbox)
        if beat is not None:
            self.beats[settings.name] = beat
        return runtime

    async def stop(self, name: str) -> None:
        """The process `name` goes away: its heartbeat stops and so does its runtime."""
        if name in self.beats:
            self.beats.pop(name).cancel()
        await stop_worker(self.runtimes.pop(name))

    async def _runtime(self, name: str) -> WorkerRuntime:
        runtime = self.host.worker(connect_timeout=5)
        await runtime.start()
        self.runtimes[name] = runtime
        return runtime

    async def chat(self, task: str, timeout: float = 3600, out: io.StringIO | None = None) -> tuple[Outcome, str]:
        out = out or io.StringIO()
        terminal = self.host.worker(connect_timeout=5)
        await terminal.start()
        outcome = await run_chat("memory", task, timeout, out=out, runtime=terminal)
        return outcome, out.getvalue()


@asynccontextmanager
async def room(
    tmp_path: Path,
    agents: Sequence[AgentConfig],
    absent: Sequence[str] = (),
    lease_term: float | None = None,
    **manager: object,
) -> AsyncIterator[Room]:
    """A manager that knows `agents`, and each of them running but the `absent` ones; with
    `lease_term`, the manager acts only while it holds a lease of that term, taken once."""
    # Its reads (and a write that meets a lock) finish on its thread: the fake clock waits for them.
    store = held(TranscriptStore(f"sqlite+aiosqlite:///{tmp_path / 'transcripts.db'}"))
    await store.open()
    settings = ManagerConfig.model_validate({"termination": {"max_rounds": 4}, **manager})
    state = Room(MemoryHost(), store, agents, settings, tmp_path / "data")
    if lease_term is not None:
        state.lease = Lease(store, lease_term)
    try:
        await state.start_manager()
        for settings_of in agents:
            if settings_of.name not in absent and not settings_of.human:  # a person takes a human seat
                await state.start_agent(settings_of)
        yield state
    finally:
        for beat in state.beats.values():
            beat.cancel()
        for name in list(state.runtimes):
            await state.stop(name)
        for tools in state.tools:
            await tools.stop()
        await store.close()


WRITER = agent("writer", "Draft {n}: rain on the roof")
EDITOR = agent("editor", "Feedback {n}: shorter")


async def test_the_fake_clock_jumps_to_the_next_timer_but_stands_still_while_a_thread_works() -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, FakeClockLoop)
    start = loop.time()
    timer = asyncio.create_task(asyncio.sleep(60))
    await asyncio.to_thread(time.sleep, 0.05)  # idle in the loop, yet not a minute
    assert not timer.done() and loop.time() - start < 1
    await timer
    assert loop.time() - start == pytest.approx(60)


async def test_a_conversation_runs_in_one_process_and_is_stored_once_in_order(tmp_path: Path) -> None:
    async with room(tmp_path, [WRITER, EDITOR]) as state:
        outcome, shown = await state.chat("Write about rain")
        stored = await state.store.get(outcome.messages[0].conversation_id)
    assert outcome.ok and outcome.reason == "max_rounds reached (4 rounds)", outcome
    assert stored is not None
    assert [(m.seq, m.author) for m in stored.transcript] == [
        (1, "user"),
        (2, "writer"),
        (3, "editor"),
        (4, "writer"),
        (5, "editor"),
    ]
    assert shown.count("writer: Draft") == 2 and shown.count("editor: Feedback") == 2, shown


async def test_a_manager_whose_lease_lapsed_while_it_waited_acts_on_nothing_it_hears(tmp_path: Path) -> None:
    """A manager whose lease lapses while a turn is out (a long pause; here, a slow reply and no
    renewal) hears the reply when it comes and does nothing with it: no write, no publish.
    Another manager, which took the lease meanwhile, owns the conversation now."""
    slow_writer = agent("writer", "Draft {n}: rain on the roof", delay=1.0)  # 1 s a token
    async with room(tmp_path, [slow_writer, EDITOR], lease_term=6.0) as state:
        assert state.lease is not None
        out = io.StringIO()
        with pytest.raises(TimeoutError, match="did not end within 60 s"):
            await state.chat("Write about rain", timeout=60, out=out)
        assert not state.lease.held()
        [conversation] = await state.store.recent(limit=10)
        stored = await state.store.get(conversation.id)
    shown = out.getvalue()
    assert stored is not None and [m.author for m in stored.transcript] == ["user"]
    assert stored.pending_speaker == "writer"  # as the lapsed manager left it, for its successor
    # The writer's words streamed to the terminal as it spoke; nothing came after them.
    assert "editor" not in shown and "could not be handled: manager lease not held" in shown, shown


async def test_late_in_a_long_conversation_a_turn_does_no_more_work_and_the_model_still_reads_it_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a turn does does not grow with the transcript: the manager keeps one turn deadline
    (the last ask's), not one per turn so far, and an agent makes the model's form of each
    earlier message once, not all of them again each turn. The model still reads the whole
    history, in order."""
    seen: list[tuple[list[LLMMessage], int]] = []  # (what the model read, turn deadlines), by turn
    create_stream = ScriptedChatCompletionClient.create_stream

    def reading(self: ScriptedChatCompletionClient, messages: Sequence[LLMMessage], **kwargs: Any) -> Any:
        deadlines = [t for t in asyncio.all_tasks() if t.get_coro().__qualname__.endswith("._turn_deadline")]
        seen.append(([m for m in messages if not isinstance(m, SystemMessage)], len(deadlines)))
        return create_stream(self, messages, **kwargs)

    monkeypatch.setattr(ScriptedChatCompletionClient, "create_stream", reading)
    async with room(tmp_path, [WRITER, EDITOR], termination={"max_rounds": 12}) as state:
        outcome, _ = await state.chat("Write about rain")
    assert outcome.ok and len(seen) == 12, outcome
    assert [deadlines for _, deadlines in seen] == [1] * 12
    said = [(m.author, m.content) for m in outcome.messages]
    for turn, (read, _) in enumerate(seen):
        assert [(m.source, m.content) for m in read] == said[: turn + 1], f"turn {turn + 1}"
    for agent_turns in (seen[0::2], seen[1::2]):  # the writer's, the editor's
        for (before, _), (after, _) in itertools.pairwise(agent_turns):
            made = before[:-1]  # the last is the turn's input, which the agent passes as it came
            assert len(after) > len(made)
            assert all(a is b for a, b in zip(made, after, strict=False)), "earlier messages made again"


async def test_a_first_ask_is_answered_at_once_and_one_that_comes_late_is_checked_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each new turn's first ask vouches for the turn for a moment: no check, no round trip to
    the manager. The same ask come seconds late (as one held through a reconnect would) is
    checked, and for a turn stored since, not answered: no model call."""
    checked: list[str] = []
    check = Participant._turn_open

    async def counted_check(self: Participant, message: RequestToSpeak, send_history: bool = False) -> object:
        checked.append(message.turn_id)
        return await check(self, message, send_history)

    monkeypatch.setattr(Participant, "_turn_open", counted_check)
    calls = tmp_path / "editor-calls.jsonl"
    editor = agent("editor", "Feedback {n}: shorter", record=str(calls))
    async with room(tmp_path, [WRITER, editor]) as state:
        outcome, _ = await state.chat("Write about rain")
        assert outcome.ok and checked == [], (outcome, checked)
        assert len(calls.read_text().splitlines()) == 2  # the editor's two turns
        stored = await _stored(state)
        late = await ask_late(state, "editor", stored)
        await asyncio.sleep(10)  # time enough to have answered, had it not checked
        assert await _stored(state) == stored
    assert checked == [late.turn_id]
    assert len(calls.read_text().splitlines()) == 2  # no model call for the late ask


async def ask_late(state: Room, speaker: str, history: list[ChatMessage]) -> RequestToSpeak:
    """The manager's ask for a turn after `history`, come 5 s late (as one held through a
    reconnect would)."""
    conversation = history[0].conversation_id
    late = RequestToSpeak(
        conversation_id=conversation, speaker=speaker, history=history, asked_at=clock.now() - 5, fresh_for=1.0
    )
    await state.runtimes["manager"].publish_message(
        late, topic(turn_topic_type(speaker), conversation), sender=AgentId(MANAGER_TYPE, conversation)
    )
    return late


async def test_an_agent_speaks_only_on_the_managers_word_and_asks_for_it_for_a_minute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every answer to an agent's turn check is lost (a manager too busy, or gone): the agent
    keeps asking, and calls no model without the manager's word. Speaking anyway, as it did
    after 3 s, made two processes serving one agent answer the same turn under load."""
    lost: list[TurnState] = []
    publish = GroupChatManager.publish_message

    async def lossy(self: GroupChatManager, message: object, topic_id: TopicId, **options: Any) -> None:
        if isinstance(message, TurnState):
            lost.append(message)
            return
        await publish(self, message, topic_id, **options)

    calls = tmp_path / "editor-calls.jsonl"
    editor = agent("editor", "Feedback {n}: shorter", record=str(calls))
    async with room(tmp_path, [WRITER, editor]) as state:
        outcome, _ = await state.chat("Write about rain")
        assert outcome.ok, outcome
        monkeypatch.setattr(GroupChatManager, "publish_message", lossy)
        stored = await _stored(state)
        late = await ask_late(state, "editor", stored)
        await asyncio.sleep(CHECK_WAIT + 10)
        assert await _stored(state) == stored
    assert {m.turn_id for m in lost} == {late.turn_id}, lost
    assert len(lost) >= CHECK_WAIT / TURN_CHECK_RESEND - 1, f"it stopped asking after {len(lost)} checks"
    assert len(calls.read_text().splitlines()) == 2  # no model call for the unconfirmed turn


def editor_forgets(monkeypatch: pytest.MonkeyPatch, asks: list[tuple[str, int, int]] | None = None) -> None:
    """Every ask finds the editor's process without the messages it had (as a restarted
    process, or another process of the same agent, would); `asks` gets (agent, base, messages
    sent) for each ask."""
    whole = Participant._whole_history

    def forgetful(self: Participant, message: RequestToSpeak) -> list[ChatMessage] | None:
        if asks is not None:
            asks.append((self.name, message.base, len(message.history)))
        if self.name == "editor":
            self._history = []
        return whole(self, message)

    monkeypatch.setattr(Participant, "_whole_history", forgetful)


async def test_an_ask_leaves_out_what_the_agent_has_and_a_process_without_it_gets_it_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new turn's first ask carries only the messages since the agent's last ask. The
    editor's process is made to forget them before its second turn (as a restarted process, or
    another process of the same agent, would): it asks for the history with its turn check and
    answers from the whole of it."""
    asks: list[tuple[str, int, int]] = []
    editor_forgets(monkeypatch, asks)
    calls = tmp_path / "calls.jsonl"
    writer = agent("writer", "Draft {n}: rain on the roof", record=str(calls))
    editor = agent("editor", "Feedback {n}: shorter", record=str(calls))
    async with room(tmp_path, [writer, editor]) as state:
        outcome, _ = await state.chat("Write about rain")
        stored = await _stored(state)
    assert outcome.ok, outcome
    # The writer's second ask leaves out the task; the editor's, the task and the first draft.
    assert asks == [("writer", 0, 1), ("editor", 0, 2), ("writer", 1, 2), ("editor", 2, 2)], asks
    inputs = {(c["model"], c["call"]): c["input"] for c in map(json.loads, calls.read_text().splitlines())}
    said = [m.content for m in stored]
    # What each model saw after its system message: the whole conversation so far.
    assert inputs[("writer", 2)][1:] == said[:3] and inputs[("editor", 2)][1:] == said[:4], inputs


async def test_an_agent_without_the_history_keeps_asking_for_it_until_the_manager_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The editor lacks the messages its second ask leaves out, and the manager's first answers
    to its check are lost (as when the host is restarted meanwhile): it cannot answer without
    them, so it asks again until an answer comes, rather than leaving the turn to the turn
    timeout (3 minutes)."""
    editor_forgets(monkeypatch)
    lost: list[TurnState] = []
    publish = GroupChatManager.publish_message

    async def lossy(self: GroupChatManager, message: object, topic_id: TopicId, **options: Any) -> None:
        if isinstance(message, TurnState) and message.history is not None and len(lost) < 5:
            lost.append(message)  # five answers at one a second: past the plain check's 3 s
            return
        await publish(self, message, topic_id, **options)

    monkeypatch.setattr(GroupChatManager, "publish_message", lossy)
    async with room(tmp_path, [WRITER, EDITOR]) as state:
        began = clock.monotonic()
        outcome, _ = await state.chat("Write about rain")
        took = clock.monotonic() - began
    assert outcome.ok, outcome
    assert len(lost) == 5 and {m.turn_id for m in lost} == {lost[0].turn_id}, lost
    assert [m.author for m in outcome.messages] == ["user", "writer", "editor", "writer", "editor"]
    assert took < 30, f"the turn waited {took:.0f} s (virtual): it was left to the turn timeout"


async def test_a_stream_cut_mid_conversation_reconnects_and_nothing_is_lost_or_doubled(tmp_path: Path) -> None:
    slow_writer = agent("writer", "Draft {n}: " + " ".join(f"w{i}" for i in range(30)), delay=0.01)
    async with room(tmp_path, [slow_writer, EDITOR]) as state:
        chat = asyncio.create_task(state.chat("Write about rain"))
        writer = state.runtimes["writer"]
        while not any("Draft" in m.content for m in await _stored(state)):
            await asyncio.sleep(0.01)
        state.host.cut(writer)  # mid-way through its turns: it reconnects and carries on
        state.host.cut(state.runtimes["manager"])
        outcome, shown = await chat
        assert writer.connection.reconnects == 1
    assert outcome.ok, outcome
    authors = [m.author for m in outcome.messages]
    assert authors == ["user", "writer", "editor", "writer", "editor"], authors
    assert shown.count("· conversation ended") == 1, shown


async def test_the_host_going_down_and_up_again_loses_no_turn(tmp_path: Path) -> None:
    async with room(tmp_path, [WRITER, EDITOR]) as state:
        chat = asyncio.create_task(state.chat("Write about rain"))
        while len(await _stored(state)) < 2:
            await asyncio.sleep(0.01)
        state.host.down()
        await asyncio.sleep(10)
        state.host.up()
        outcome, _ = await chat
        stored = await _stored(state)
    assert outcome.ok, outcome
    assert [m.author for m in stored] == ["user", "writer", "editor", "writer", "editor"]
    # The terminal got each message once. One missed during the outage comes when it catches up,
    # which can be after the next one (seen once in CI): arrival order is not asserted here.
    assert sorted(m.seq for m in outcome.messages) == [1, 2, 3, 4, 5], outcome.messages


async def test_a_silent_agent_is_asked_again_then_passed_over_with_a_note(tmp_path: Path) -> None:
    """The editor never comes: each of its turns waits turn_timeout (3 minutes), is asked
    again, waits again, and is skipped with a note; the writer carries on."""
    termination = {"max_rounds": 4, "timeout": 3600}
    async with room(tmp_path, [WRITER, EDITOR], absent=["editor"], termination=termination) as state:
        started = asyncio.get_running_loop().time()
        outcome, shown = await state.chat("Write about rain")
        took = asyncio.get_running_loop().time() - started
    # Each time the editor was due: asked, asked again, skipped; the note reaches the terminal.
    assert [m.author for m in outcome.messages] == ["user", "writer", "writer", "writer", "writer"]
    assert shown.count("writer speaks next (editor did not answer within 180 s; skipped)") == 3, shown
    assert 3 * 2 * 180 - EPSILON <= took < 3 * 2 * 180 + 60, took  # on the clock the manager reads
    assert outcome.reason == "max_rounds reached (4 rounds)", outcome


async def test_an_agent_that_goes_away_mid_turn_is_noted_and_asked_again_the_moment_it_is_back(
    tmp_path: Path,
) -> None:
    """Three missed heartbeats (6 s) make the editor unreachable, which the terminal shows; it
    comes back a minute later and is asked again at once, well before its 3-minute turn timeout."""
    slow_editor = agent("editor", "Feedback {n}: " + " ".join(f"w{i}" for i in range(20)), delay=1)
    async with room(tmp_path, [WRITER, slow_editor]) as state:
        loop = asyncio.get_running_loop()
        chat = asyncio.create_task(state.chat("Write about rain"))
        while len(await _stored(state)) < 2:  # the task and the writer's draft: the editor's turn
            await asyncio.sleep(0.5)
        await asyncio.sleep(5)  # mid-way through its 20 s of streaming
        await state.stop("editor")
        gone = loop.time()
        await asyncio.sleep(60)
        await state.start_agent(slow_editor)
        outcome, shown = await chat
        back_and_done = loop.time() - gone
        stored = await _stored(state)
    assert outcome.ok, outcome
    assert [m.author for m in stored] == ["user", "writer", "editor", "writer", "editor"]
    assert "· editor is unreachable (no heartbeat); waiting for it" in shown, shown
    assert "· editor is reachable again" in shown, shown
    assert "did not answer" not in shown, shown  # asked again when back, not at its turn timeout
    assert 60 < back_and_done < 180, back_and_done


ANA = AgentConfig(name="ana", kind="human", people=["ana"], description="a person")


async def say_when_due(state: Room, author: str, content: str, after: int) -> None:
    """As the page would: once `after` messages are stored, `author` says `content`."""
    while len(await _stored(state)) < after:
        await asyncio.sleep(0.5)
    [conversation] = await state.store.recent(limit=1)
    person = state.host.worker(connect_timeout=5)
    await person.start()
    words = HumanMessage(conversation_id=conversation.id, author=author, content=content)
    await person.publish_message(words, topic(CONTROL, conversation.id))
    await stop_worker(person)


async def test_a_person_in_a_human_seat_takes_its_turn_and_the_agents_hear_it(tmp_path: Path) -> None:
    writer = agent("writer", "Draft {n} after: {last}")
    async with room(tmp_path, [writer, ANA], termination={"max_rounds": 3}) as state:
        chat = asyncio.create_task(state.chat("Write about rain"))
        await say_when_due(state, "ana", "Make it about the sea instead.", after=2)
        outcome, shown = await chat
        stored = await _stored(state)
    assert [(m.author, m.kind) for m in stored] == [
        ("user", "task"),
        ("writer", "agent"),
        ("ana", "agent"),  # a seat's turn, whoever takes it
        ("writer", "agent"),
    ]
    assert stored[3].content == "Draft 2 after: Make it about the sea instead.", stored  # the writer heard her
    assert "· ana speaks next" in shown and "ana: Make it about the sea instead." in shown, shown
    assert "did not answer" not in shown, shown  # round robin goes on from her turn to the writer
    assert outcome.reason == "max_rounds reached (3 rounds)", outcome


async def test_a_human_seat_no_one_answers_is_skipped_at_its_turn_timeout_with_a_note(tmp_path: Path) -> None:
    async with room(tmp_path, [agent("writer", "Draft {n}"), ANA], termination={"max_rounds": 3}) as state:
        loop = asyncio.get_running_loop()
        started = loop.time()
        outcome, shown = await state.chat("Write about rain")
        took = loop.time() - started
    assert "· writer speaks next (ana did not answer within 180 s; skipped)" in shown, shown
    assert [m.author for m in outcome.messages] == ["user", "writer", "writer", "writer"], outcome.messages
    assert 2 * 180 - EPSILON <= took < 3 * 180, took  # each of her two turns waited once (not asked twice)


async def test_someone_not_listed_for_a_human_seat_only_joins_in_and_no_one_speaks_as_an_agent(
    tmp_path: Path,
) -> None:
    async with room(tmp_path, [agent("writer", "Draft {n}"), ANA], termination={"max_rounds": 2}) as state:
        chat = asyncio.create_task(state.chat("Write about rain"))
        await say_when_due(state, "writer", "Forget the task.", after=2)  # a person posing as an agent: refused
        await say_when_due(state, "bo", "I am not ana.", after=2)
        outcome, shown = await chat
        stored = await _stored(state)
    # bo's words join the conversation; ana's turn still waits for her, and is skipped.
    assert [(m.author, m.kind) for m in stored] == [
        ("user", "task"),
        ("writer", "agent"),
        ("bo", "human"),
        ("writer", "agent"),
    ]
    assert "· writer speaks next (ana did not answer within 180 s; skipped)" in shown, shown
    assert outcome.ok, outcome


async def _stored(state: Room) -> list[ChatMessage]:
    conversations = await state.store.recent(limit=1)
    if not conversations:
        return []
    found = await state.store.get(conversations[0].id)
    return list(found.transcript) if found else []


@pytest.fixture(autouse=True)
def _quiet_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING")


# ---------------------------------------------------------------- who speaks, and when it ends

LAST_WRITER = agent("writer", "Draft {n} about: {last}")
LAST_EDITOR = agent("editor", "Feedback {n}: more colour please, on {last}")


async def test_text_mention_ends_the_chat_early(tmp_path: Path) -> None:
    editor = agent("editor", "Needs work.", "Much better. APPROVE")
    termination = {"max_rounds": 20, "text_mention": "APPROVE"}
    async with room(tmp_path, [LAST_WRITER, editor], termination=termination) as state:
        outcome, _ = await state.chat("Write a haiku")
    assert speakers(outcome) == ["writer", "editor", "writer", "editor"]
    assert outcome.reason == "'APPROVE' mentioned by editor"


async def test_a_selector_that_answers_garbage_falls_back_and_finishes(tmp_path: Path) -> None:
    manager = {"strategy": "selector", "model": scripted("banana"), "termination": {"max_rounds": 3}}
    async with room(tmp_path, [LAST_WRITER, LAST_EDITOR], **manager) as state:
        outcome, shown = await state.chat("Write a slogan")
    assert speakers(outcome) == ["writer", "editor", "writer"]
    assert "speaks next (selector named nobody ('banana'); falling back to round robin)" in shown, shown


async def test_a_selector_picks_the_speaker_it_names(tmp_path: Path) -> None:
    manager = {"strategy": "selector", "model": scripted("I think editor should go."), "termination": {"max_rounds": 2}}
    async with room(tmp_path, [LAST_WRITER, LAST_EDITOR], **manager) as state:
        outcome, _ = await state.chat("Review this")
    assert speakers(outcome) == ["editor", "editor"]


async def test_the_graph_strategy_follows_allowed_transitions(tmp_path: Path) -> None:
    graph = {"writer": ["critic"], "critic": ["editor"], "editor": ["writer"]}
    agents = [LAST_WRITER, LAST_EDITOR, agent("critic", "Critique {n}")]
    async with room(tmp_path, agents, strategy="graph", graph=graph, termination={"max_rounds": 6}) as state:
        outcome, _ = await state.chat("Write a poem")
    assert speakers(outcome) == ["writer", "critic", "editor", "writer", "critic", "editor"]


@pytest.mark.parametrize("strategy", ["round_robin", "random"])
async def test_every_strategy_finishes(tmp_path: Path, strategy: str) -> None:
    async with room(tmp_path, [LAST_WRITER, LAST_EDITOR], strategy=strategy, termination={"max_rounds": 3}) as state:
        outcome, _ = await state.chat("Go")
    assert len(speakers(outcome)) == 3 and outcome.ok


async def test_the_timeout_ends_a_conversation_that_would_run_on(tmp_path: Path) -> None:
    slow = agent("writer", "a b c d e f g h i j k l m n o p q r s t", delay=2)  # 40 s a turn
    async with room(tmp_path, [slow, LAST_EDITOR], termination={"max_rounds": 100}) as state:
        outcome, _ = await state.chat("Go on and on")
    assert outcome.reason == "timeout after 600 s"  # the default
    assert 1 <= len(speakers(outcome)) < 100


async def test_a_reply_that_runs_out_of_tokens_ends_at_its_last_full_sentence(tmp_path: Path) -> None:
    """The scripted model counts words as tokens: 12 words with max_tokens 8 stop mid-sentence."""
    writer = agent("writer", "A lamp turns. The sea is dark and the keeper counts ships", max_tokens=8)
    async with room(tmp_path, [writer, LAST_EDITOR], termination={"max_rounds": 2}) as state:
        outcome, _ = await state.chat("Write about a lighthouse")
    assert [m.content for m in outcome.messages if m.kind == "agent"] == [
        "A lamp turns.",
        "Feedback 1: more colour please, on A lamp turns.",
    ]


# ---------------------------------------------------------------- budgets

TEN_WORDS = "one two three four five six seven eight nine ten"


async def test_an_agent_over_its_token_budget_is_left_out_and_the_others_carry_on(tmp_path: Path) -> None:
    writer = agent("writer", TEN_WORDS).model_copy(update={"budget": BudgetConfig(tokens=10)})
    async with room(tmp_path, [writer, LAST_EDITOR]) as state:
        outcome, shown = await state.chat("Count the ships")
    assert speakers(outcome) == ["writer", "editor", "editor", "editor"], shown
    assert re.search(r"· editor speaks next \(writer is left out: it used its budget \(\d+ of 10 tokens\)\)", shown)
    assert re.search(r"· used: writer \d+ tokens, 0 tool calls; editor \d+ tokens, 0 tool calls", shown), shown


async def test_an_agent_whose_tool_budget_runs_out_ends_the_conversation_when_so_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COUNTER_FILE", str(tmp_path / "counter.jsonl"))
    writer = AgentConfig.model_validate(
        {
            **counting_writer('CALL count {"label": "eels"}', "Counted: {last}"),
            "budget": {"tool_calls": 1, "on_exceeded": "end"},
        }
    )
    async with room(tmp_path, [writer, LAST_EDITOR], termination={"max_rounds": 6}) as state:
        outcome, shown = await state.chat("Count the eels")
    assert outcome.reason == "writer used its budget (1 of 1 tool calls)", shown
    assert [e["label"] for e in counted(tmp_path)] == ["eels"]


async def test_the_conversation_ends_when_all_agents_together_reach_its_budget(tmp_path: Path) -> None:
    writer = agent("writer", "a b c d e")
    manager = {"termination": {"max_rounds": 20}, "budget": {"tokens": 40}}
    async with room(tmp_path, [writer, LAST_EDITOR], **manager) as state:
        outcome, _ = await state.chat("Go")
    assert re.fullmatch(r"the conversation used its budget \(\d+ of 40 tokens\)", outcome.reason), outcome.reason
    assert len(speakers(outcome)) < 20


# ---------------------------------------------------------------- a model that fails

#: A model server on another thread answers in real time: these tests keep the real clock.
REAL_CLOCK = pytest.mark.fake_clock(False)


@REAL_CLOCK
async def test_a_rate_limited_model_is_retried_then_succeeds(tmp_path: Path) -> None:
    with FakeOpenAI(status=429, fail_first=2) as fake:
        writer = agent("writer", base_url=fake.base_url, provider="openai-compatible", model="m", max_retries=3)
        async with room(tmp_path, [writer, LAST_EDITOR], termination={"max_rounds": 2}) as state:
            outcome, _ = await state.chat("hello")
        assert len(fake.requests) == 3
    assert outcome.ok and outcome.messages[1].content == "Reply 3 from the writer model.", outcome


@REAL_CLOCK
async def test_a_rejected_key_fails_fast_without_retries(tmp_path: Path) -> None:
    with FakeOpenAI(status=401) as fake:
        writer = agent("writer", base_url=fake.base_url, provider="openai-compatible", model="m", max_retries=3)
        async with room(tmp_path, [writer, LAST_EDITOR], termination={"max_rounds": 2}) as state:
            outcome, _ = await state.chat("hello")
        assert len(fake.requests) == 1
    assert not outcome.ok
    assert outcome.reason == "writer: the model server rejected the API key (401): check the key", outcome.reason


@REAL_CLOCK
async def test_a_model_that_never_answers_ends_the_conversation_at_its_timeout(tmp_path: Path) -> None:
    with FakeOpenAI(hang=True) as fake:
        writer = agent(
            "writer", base_url=fake.base_url, provider="openai-compatible", model="m", timeout=1, max_retries=1
        )
        async with room(tmp_path, [writer, LAST_EDITOR], termination={"max_rounds": 2}) as state:
            outcome, _ = await state.chat("hello")
    assert not outcome.ok
    assert outcome.reason == "writer: the model server did not answer in time", outcome.reason
