"""The transcript store behaves the same on SQLite and on a real PostgreSQL server, and a
conversation survives its manager being killed and replaced by one on another "machine"."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import READY, LoopTicks, free_port, processes, start_cluster, write_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_reliability import assert_complete, assert_shown_once, chat, config

from roundtable.config import ConfigError, StoreUnavailable
from roundtable.messages import MAX_CONTENT_CHARS, ChatMessage
from roundtable.store import StoredConversation, TranscriptStore

pytest_plugins = ["pg"]


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'data' / 'transcripts.db'}"
    return str(request.getfixturevalue("postgres_database"))


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[TranscriptStore]:
    opened = TranscriptStore(store_url)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


def message(conversation_id: str, seq: int, content: str = "", **fields: Any) -> ChatMessage:
    return ChatMessage(
        conversation_id=conversation_id, seq=seq, author="writer", content=content or f"turn {seq}", **fields
    )


async def test_a_conversation_is_stored_followed_and_ended(store: TranscriptStore) -> None:
    before = time.time()
    await store.start("c1", "Write about rain")
    for seq in (1, 2, 3):
        assert await store.append(message("c1", seq, kind="task" if seq == 1 else "agent"))
    await store.set_pending("c1", "editor", "turn-4")

    found = await store.get("c1")
    assert found is not None
    assert (found.task, found.status, found.pending_speaker, found.pending_turn_id) == (
        "Write about rain",
        "open",
        "editor",
        "turn-4",
    )
    assert [m.seq for m in found.transcript] == [1, 2, 3]
    assert [m.kind for m in found.transcript] == ["task", "agent", "agent"]
    assert before <= found.created_at <= found.updated_at <= time.time()
    assert await store.open_ids() == ["c1"]
    [summary] = await store.recent(status="open")
    assert (summary.id, summary.message_count, summary.pending_speaker) == ("c1", 3, "editor")

    await store.end("c1", "max_rounds reached (1 rounds)", ok=True)
    ended = await store.get("c1")
    assert ended is not None
    assert (ended.status, ended.reason, ended.ok, ended.pending_speaker) == (
        "ended",
        "max_rounds reached (1 rounds)",
        True,
        None,
    )
    assert await store.open_ids() == []
    assert await store.recent(status="open") == []
    assert [c.id for c in await store.recent()] == ["c1"]
    assert await store.get("nope") is None


async def test_a_failed_conversation_keeps_ok_false(store: TranscriptStore) -> None:
    await store.start("c1", "task")
    await store.end("c1", "writer: the model server rejected the API key (401)", ok=False)
    ended = await store.get("c1")
    assert ended is not None and ended.ok is False


async def test_recent_lists_the_most_recently_active_first(store: TranscriptStore) -> None:
    for name in ("a", "b", "c"):
        await store.start(name, f"task {name}")
    await store.append(message("a", 1))  # "a" becomes the most recently active
    assert [c.id for c in await store.recent()] == ["a", "c", "b"]
    assert [c.id for c in await store.recent(limit=2)] == ["a", "c"]
    assert [c.message_count for c in await store.recent()] == [1, 0, 0]


async def test_a_repeated_start_keeps_the_first_task(store: TranscriptStore) -> None:
    await store.start("c1", "first")
    await store.start("c1", "second")
    found = await store.get("c1")
    assert found is not None and found.task == "first"


async def test_a_duplicate_by_id_or_seq_is_refused_and_the_store_carries_on(store: TranscriptStore) -> None:
    await store.start("c1", "task")
    first = message("c1", 1, "the original")
    assert await store.append(first)
    assert not await store.append(first)  # the same message again
    assert not await store.append(message("c1", 1, "another message, same seq"))
    assert not await store.append(first.model_copy(update={"seq": 2}))  # the same id, another seq
    # The refusals did not spoil anything: the next message and the next change go through.
    assert await store.append(message("c1", 2, "the second"))
    await store.set_pending("c1", "editor", "t3")
    found = await store.get("c1")
    assert found is not None
    assert [(m.seq, m.content) for m in found.transcript] == [(1, "the original"), (2, "the second")]
    assert found.transcript[0] == first
    assert found.pending_speaker == "editor"


async def test_two_stores_writing_at_once_keep_one_message_per_seq(store_url: str) -> None:
    """Two managers (two engines) race for the same seqs: each seq is taken exactly once."""
    first, second = TranscriptStore(store_url), TranscriptStore(store_url)
    # Opening both at once on an empty database also races the creation of the tables.
    await asyncio.gather(first.open(), second.open())
    try:
        await asyncio.gather(first.start("c1", "task"), second.start("c1", "task"))
        seqs = range(1, 41)
        results = await asyncio.gather(
            *(
                writer.append(message("c1", seq, f"{name} {seq}", id=f"{name}-{seq}"))
                for seq in seqs
                for name, writer in (("one", first), ("two", second))
            )
        )
        found = await first.get("c1")
        assert found is not None
        assert [m.seq for m in found.transcript] == list(seqs)
        assert sum(results) == len(seqs)
        for seq, won in zip(seqs, zip(results[::2], results[1::2], strict=True), strict=True):
            assert won.count(True) == 1, (seq, won)
            winner = "one" if won[0] else "two"
            assert found.transcript[seq - 1].id == f"{winner}-{seq}"
            assert found.transcript[seq - 1].content == f"{winner} {seq}"
    finally:
        await first.close()
        await second.close()


async def test_a_lease_has_one_holder_however_many_race_for_it(store_url: str) -> None:
    """Managers on two engines race for the manager lease: one holds it; a lapsed one is taken."""
    first, second = TranscriptStore(store_url), TranscriptStore(store_url)
    await asyncio.gather(first.open(), second.open())
    try:
        results = await asyncio.gather(
            *(store.take_lease("manager", f"m{n}", 60.0) for n in range(8) for store in (first, second))
        )
        winners = {holder for held, holder in results if held}
        assert len(winners) == 1 and all(holder in winners for _, holder in results), results
        [winner] = winners
        assert await first.take_lease("manager", winner, 60.0) == (True, winner)  # renewed
        assert await second.take_lease("manager", "late", 60.0) == (False, winner)
        assert await second.take_lease("manager", "late", 60.0, instead_of=winner) == (True, "late")  # known dead
        await first.release_lease("manager", winner)  # not its own any more: nothing changes
        assert await first.take_lease("manager", "other", 60.0) == (False, "late")
        await second.release_lease("manager", "late")
        assert await first.take_lease("manager", "other", 0.0) == (True, "other")
        await asyncio.sleep(0.01)
        assert await second.take_lease("manager", "next", 60.0) == (True, "next")  # lapsed
    finally:
        await first.close()
        await second.close()


async def test_a_sqlite_write_that_finds_the_database_locked_waits_on_the_thread_not_in_the_loop(
    tmp_path: Path,
) -> None:
    """SQLite writes run in the event loop (TranscriptStore): one that meets another writer's
    lock must neither fail nor stop the loop while it waits."""
    path = tmp_path / "transcripts.db"
    store = TranscriptStore(f"sqlite:///{path}")
    await store.open()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        await store.start("c1", "task")
        other.execute("BEGIN IMMEDIATE")  # another process's write, in progress
        ticks = LoopTicks()
        write = asyncio.create_task(store.append(message("c1", 1)))
        await asyncio.sleep(0.3)
        assert not write.done(), "the write did not wait for the lock"
        assert ticks.stop() >= 10, f"the event loop stood still while the write waited ({ticks.count} ticks in 0.3 s)"
        other.execute("COMMIT")
        assert await asyncio.wait_for(write, 5.0) is True
        found = await store.get("c1")
        assert found is not None and [m.content for m in found.transcript] == ["turn 1"]
    finally:
        other.close()
        await store.close()


async def test_a_sqlite_write_never_overtakes_one_sent_to_the_thread_even_if_no_one_waits_for_that(
    tmp_path: Path,
) -> None:
    """A renewal of the lease meets a lock and goes to the store's thread; its caller stops
    waiting (a clean stop cancels the renewal), then releases the lease. The release must come
    after the renewal, not before it in the loop: else the renewal puts the lease back for a
    process that is leaving, and the standby waits out a whole term."""
    path = tmp_path / "transcripts.db"
    store = TranscriptStore(f"sqlite:///{path}")
    await store.open()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        renewal = asyncio.create_task(store.take_lease("manager", "leaving", 60.0))
        await asyncio.sleep(0.2)  # on the thread, in SQLite's wait for the lock
        renewal.cancel()
        other.execute("COMMIT")
        await store.release_lease("manager", "leaving")  # at once: the thread's wait is still asleep
        assert await store.lease("manager") is None
    finally:
        other.close()
        await store.close()


async def test_sqlite_writes_back_to_back_keep_the_wal_small(tmp_path: Path) -> None:
    """The loop's connection makes no checkpoint of its own; the store's must keep up even when
    writes never pause (without one, 1,000 turns leave a WAL of about 17 MB)."""
    path = tmp_path / "transcripts.db"
    store = TranscriptStore(f"sqlite:///{path}")
    await store.open()
    try:
        await store.start("c1", "task")
        for seq in range(1, 1001):
            assert await store.append(message("c1", seq, "word " * 14), pending_speaker="editor")
        wal = path.with_name(path.name + "-wal").stat().st_size
        assert wal < 8 * 1024 * 1024, f"the WAL grew to {wal} bytes"
        found = await store.get("c1")
        assert found is not None and found.message_count == 1000
    finally:
        await store.close()


async def test_nul_is_kept_as_a_replacement_character(store: TranscriptStore) -> None:
    """PostgreSQL text cannot hold NUL: both backends store U+FFFD instead, and carry on."""
    await store.start("c1", "a\x00task")
    assert await store.append(message("c1", 1, "before\x00after"))
    found = await store.get("c1")
    assert found is not None
    assert (found.task, found.transcript[0].content) == ("a\ufffdtask", "before\ufffdafter")


# Any text a person or a model can send: everything but NUL (see above) and lone surrogates,
# which are not valid UTF-8 and cannot reach us over the wire.
TEXT = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
CONTENT = st.one_of(
    st.text(TEXT, max_size=300),
    st.sampled_from(["", "'", '"', "''", "\\", "%s", "$1", "'); DROP TABLE rt_messages; --", "🙂 naïve 漢字"]),
    # Long messages, right up to the limit the wire types allow.
    st.builds(
        lambda unit, size: (unit * (size // len(unit) + 1))[:size],
        st.text(TEXT, min_size=1, max_size=20),
        st.integers(MAX_CONTENT_CHARS - 10, MAX_CONTENT_CHARS),
    ),
)
MESSAGE = st.fixed_dictionaries(
    {
        "id": st.text(TEXT, min_size=1, max_size=80),
        "author": st.text(TEXT, min_size=1, max_size=200),
        "kind": st.sampled_from(["task", "agent", "human"]),
        "content": CONTENT,
    }
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(task=st.text(TEXT, min_size=1, max_size=500), batch=st.lists(MESSAGE, max_size=6, unique_by=lambda m: m["id"]))
async def test_any_messages_round_trip_exactly(store: TranscriptStore, task: str, batch: list[dict[str, Any]]) -> None:
    conversation_id = uuid.uuid4().hex
    sent = [ChatMessage(conversation_id=conversation_id, seq=seq, **m) for seq, m in enumerate(batch, 1)]
    await store.start(conversation_id, task)
    for m in sent:
        assert await store.append(m)
    found = await store.get(conversation_id)
    assert found is not None
    assert found.task == task
    assert found.transcript == sent


def test_a_plain_postgresql_url_gets_the_async_driver() -> None:
    assert TranscriptStore("postgresql://u@127.0.0.1/db").url.drivername == "postgresql+asyncpg"
    assert TranscriptStore("sqlite:///x.db").url.drivername == "sqlite+aiosqlite"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysql://u@h/db", "store.url: unsupported database 'mysql' (expected one of: sqlite, postgresql)"),
        ("not a url", "store.url: not a database URL"),
    ],
)
def test_an_unsupported_url_is_a_config_error(url: str, expected: str) -> None:
    with pytest.raises(ConfigError) as failure:
        TranscriptStore(url)
    assert str(failure.value).startswith(expected)


async def test_an_unreachable_postgresql_is_one_clear_line_without_the_password() -> None:
    port = free_port()  # nothing listens there
    store = TranscriptStore(f"postgresql+asyncpg://rt:s3cret@127.0.0.1:{port}/rt", connect_timeout=5)
    with pytest.raises(StoreUnavailable) as failure:
        await store.open()
    await store.close()
    text = str(failure.value)
    assert text.startswith(f"cannot open the transcript store at postgresql+asyncpg://rt:***@127.0.0.1:{port}/rt: ")
    assert "s3cret" not in text and "\n" not in text


# ---------------------------------------------------------------- a manager on another machine


def read_all(url: str) -> list[StoredConversation]:
    async def read() -> list[StoredConversation]:
        store = TranscriptStore(url)
        try:
            return [c for s in await store.recent(100) if (c := await store.get(s.id)) is not None]
        finally:
            await store.close()

    return asyncio.run(read())


def test_a_manager_killed_mid_conversation_is_replaced_by_one_that_shares_only_postgresql(
    tmp_path: Path, postgres_database: str
) -> None:
    cfg = config(tmp_path)
    write_config(cfg, {**yaml.safe_load(cfg.read_text(encoding="utf-8")), "store": {"url": postgres_database}})
    elsewhere = tmp_path / "another-machine"
    with processes(tmp_path) as procs:
        started = start_cluster(procs, cfg, ["writer", "editor"])
        terminal = chat(procs, cfg)
        terminal.wait_for("editor speaks next", timeout=60)
        time.sleep(0.5)  # mid-turn: the editor is streaming
        started["manager"].stop(signal.SIGKILL)
        [before] = read_all(postgres_database)
        assert before.status == "open" and 1 < len(before.transcript) < 7
        replacement = procs.roundtable(
            "manager2", "manager", "--config", str(cfg), env={"ROUNDTABLE_DATA_DIR": str(elsewhere)}
        )
        replacement.wait_for(READY)
        assert terminal.wait_exit(120) == 0, terminal.output
        assert "resumed at message" in replacement.output, replacement.output
        output = terminal.output
    assert_shown_once(output, 6)
    [conversation] = read_all(postgres_database)
    assert_complete(conversation, 6)
    # Neither manager wrote a local SQLite store: everything went to PostgreSQL.
    assert not list(tmp_path.rglob("transcripts.db"))
