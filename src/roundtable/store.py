"""The transcript store: every conversation and message, written by the manager before
anyone sees them, so a restarted manager (here or on another machine) carries on where it stopped.

SQLAlchemy Core: SQLite (WAL) by default; PostgreSQL when given its URL, on SQLAlchemy's async
engine (asyncpg).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    InvalidRequestError,
    OperationalError,
    ProgrammingError,
)
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from . import clock
from .config import CONNECT_TIMEOUT, ConfigError, StoreUnavailable
from .messages import ChatMessage

T = TypeVar("T")
log = logging.getLogger("roundtable.store")

metadata = MetaData()

# Ids and names are unbounded strings: PostgreSQL enforces VARCHAR lengths where SQLite does
# not, and the store must accept whatever the wire types accept on either.
conversations = Table(
    "rt_conversations",
    metadata,
    Column("id", String, primary_key=True),
    Column("task", Text, nullable=False),
    Column("status", String(16), nullable=False, default="open"),  # open | ended
    Column("reason", Text),
    Column("ok", Boolean),
    Column("created_at", Float, nullable=False),  # Unix seconds; FLOAT is double precision on both
    Column("updated_at", Float, nullable=False),
    Column("pending_speaker", String),
    Column("pending_turn_id", String),
)

# The primary key keeps one message per (conversation, seq) and the unique constraint one per
# (conversation, id), so two managers writing the same conversation cannot duplicate a turn.
messages = Table(
    "rt_messages",
    metadata,
    Column("conversation_id", String, primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("id", String, nullable=False),
    Column("author", String, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("content", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("tokens", Integer),  # the model tokens its author used for it; added in 0.3
    UniqueConstraint("conversation_id", "id", name="rt_messages_unique_id"),
)

# The journal of tool calls: a row is written before a call runs ("started", or "awaiting" a
# person's approval) and completed after it ("done", "error"), or closed without running
# ("skipped", "denied"). A re-asked turn replays
# what is here instead of calling again; the primary key keeps one row per call.
ENDED_TOOL_STATES = frozenset({"done", "error", "skipped", "denied"})
RAN_TOOL_STATES = frozenset({"started", "done", "error"})  # what a tool-call budget counts
tool_calls = Table(
    "rt_tool_calls",
    metadata,
    Column("conversation_id", String, primary_key=True),
    Column("turn_id", String, primary_key=True),
    Column("call", String, primary_key=True),  # messages.call_signature(tool, arguments)
    Column("idx", Integer, primary_key=True),  # the how-manieth such call in the turn
    Column("attempt", String, nullable=False),  # the participant's run of the turn that started it
    Column("agent", String, nullable=False),
    Column("tool", String, nullable=False),
    Column("source", Integer),  # the tool's entry in the agent's config (its policy); added in 0.3
    Column("arguments", Text, nullable=False),
    Column("status", String(16), nullable=False),  # messages.ToolCallStatus
    Column("result", Text),
    Column("attempts", Integer, nullable=False, default=1),  # runs begun
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float),
)

# Leases (lease.py): which process may act as the one manager, and until when (Unix seconds,
# by the holder's clock).
leases = Table(
    "rt_leases",
    metadata,
    Column("name", String, primary_key=True),
    Column("holder", String, nullable=False),
    Column("expires_at", Float, nullable=False),
)

# The driver each backend's URL gets when it names none (`postgresql://...`). SQLite is then
# worked with the standard library's driver, whichever is named (see TranscriptStore).
ASYNC_DRIVERS = {"sqlite": "aiosqlite", "postgresql": "asyncpg"}

# "INSERT ... ON CONFLICT DO NOTHING" reads the same on both backends, but SQLAlchemy offers it
# only through each dialect's own insert(). Skipping in SQL, rather than catching IntegrityError,
# matters on PostgreSQL: there a failed INSERT aborts the whole transaction.
_INSERT_OR_SKIP: dict[str, Callable[[Table], postgresql.Insert | sqlite.Insert]] = {
    "sqlite": sqlite.insert,
    "postgresql": postgresql.insert,
}


#: Columns added to tables that a database made by an earlier version already has.
NEW_COLUMNS = {"rt_tool_calls": ["source INTEGER"], "rt_messages": ["tokens INTEGER"]}


def _add_new_columns(conn: Connection) -> None:
    for table, columns in NEW_COLUMNS.items():
        have = {c["name"] for c in inspect(conn).get_columns(table)}
        for column in columns:
            if column.split()[0] not in have:
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column}"))


@dataclass
class StoredConversation:
    id: str
    task: str
    created_at: float
    status: str
    reason: str | None = None
    ok: bool | None = None
    pending_speaker: str | None = None
    pending_turn_id: str | None = None
    transcript: list[ChatMessage] = field(default_factory=list)
    updated_at: float = 0.0  # the last message or change of state
    message_count: int = 0


def store_url(raw: str) -> URL:
    """The URL with its async driver; anything but SQLite or PostgreSQL is a config error."""
    try:
        url = make_url(raw)
    except ArgumentError:
        # Not echoed: an unparsable URL may still hold a password.
        raise ConfigError(
            "store.url: not a database URL (expected e.g. postgresql+asyncpg://user:password@host/db)"
        ) from None
    backend = url.get_backend_name()
    if backend not in ASYNC_DRIVERS:
        raise ConfigError(f"store.url: unsupported database {backend!r} (expected one of: sqlite, postgresql)")
    if "+" not in url.drivername:
        url = url.set(drivername=f"{backend}+{ASYNC_DRIVERS[backend]}")
    return url


#: SQLite: after this many writes in the event loop, the WAL is copied back into the database
#: (a checkpoint) on the store's thread. About 3 pages a write; SQLite's own default is 1,000 pages.
CHECKPOINT_EVERY = 200


class TranscriptStore:
    """Each method's work is one function on a connection, run in one transaction (`_run`).

    PostgreSQL: on the async engine (asyncpg), through `run_sync`.

    SQLite, a file: a write runs in the event loop itself, where it takes about 80 us, while
    the hop to a thread and back alone cost 180 us (a turn's write is on the turn's path: the
    manager stores a reply before it asks the next speaker). Two things could make it block
    the loop, and neither is done there: waiting for another writer's lock (its connection
    waits for none, and a write that finds the database locked runs again on the store's
    thread, which waits up to `busy_timeout`), and checkpoints (about 4 ms each: its
    connection never makes one; every `CHECKPOINT_EVERY` writes one runs on the thread). A
    write never overtakes one sent to the thread before it: while anything written there is
    unfinished (a write that met a lock, a checkpoint, even one whose caller stopped waiting),
    writes go there too, behind it. What the loop still waits for is the write's own file I/O
    (the WAL, in the page cache): fine on a local disk, not on a slow network one. Reads, which
    can be long (a whole transcript), and creating the tables run on the thread. (Through
    aiosqlite every statement was a hop of its own: a turn's write cost the manager 1.3 ms of
    CPU.)

    SQLite in memory: everything on the thread, the one connection there is."""

    def __init__(self, url: str, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.url = store_url(url)  # str() of a URL hides its password, so it is safe to show
        self._backend = self.url.get_backend_name()
        self._insert_or_skip = _INSERT_OR_SKIP[self._backend]
        # A turn's two statements, built once: each write only binds its values (the SET columns
        # of the update are the keys given to it).
        self._add_message = self._insert_or_skip(messages).on_conflict_do_nothing()
        self._change_conversation = update(conversations).where(conversations.c.id == bindparam("conversation"))
        self._engine: AsyncEngine | None = None
        self._sqlite: Engine | None = None
        self._in_loop: Engine | None = None  # SQLite file: the writes in the event loop
        self._writes_since_checkpoint = 0
        self._last_on_thread: Future[Any] | None = None  # the last write or checkpoint sent there
        self._thread: ThreadPoolExecutor | None = None
        try:
            if self._backend == "sqlite":
                sync_url = self.url.set(drivername="sqlite+pysqlite")
                self._sqlite = create_engine(sync_url)
                event.listen(self._sqlite, "connect", _sqlite_pragmas)
                if self._on_disk:
                    # timeout=0: not even its first statement waits for a lock (the driver's own
                    # default is 5 s, before busy_timeout is set).
                    self._in_loop = create_engine(sync_url, connect_args={"timeout": 0})
                    event.listen(self._in_loop, "connect", _sqlite_pragmas_in_loop)
                self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="roundtable-store")
            else:
                # A server that restarted or a proxy that dropped idle connections leaves dead
                # connections in the pool: test each one before use, and renew them now and then.
                self._engine = create_async_engine(
                    self.url, pool_pre_ping=True, pool_recycle=1800, connect_args={"timeout": connect_timeout}
                )
        except (ArgumentError, InvalidRequestError, ImportError) as error:
            raise ConfigError(f"store.url: {self.url}: {error}") from None
        #: Called before every write: a manager's raises once it no longer holds its lease.
        self.fence: Callable[[], None] | None = None

    @property
    def _on_disk(self) -> bool:
        """SQLite in a file (not in memory)."""
        return self._backend == "sqlite" and self.url.database not in (None, "", ":memory:")

    async def _run(self, work: Callable[[Connection], T], commit: bool = False, in_loop: bool = True) -> T:
        """`work` on a connection, in one transaction: committed (`commit`) or rolled back.
        SQLite: a write in the event loop if it can be (`in_loop`), else on the thread."""
        behind = self._last_on_thread
        if self._in_loop is not None and commit and in_loop and (behind is None or behind.done()):
            try:
                with self._in_loop.begin() as conn:
                    done = work(conn)
            except OperationalError as error:
                if not _locked(error):
                    raise
                # Rolled back whole: on the thread, which waits for the lock, it runs again.
            else:
                self._writes_since_checkpoint += 1
                if self._writes_since_checkpoint >= CHECKPOINT_EVERY:
                    self._start_checkpoint()
                return done
        if self._sqlite is not None:
            return await asyncio.wrap_future(self._on_thread_later(work, commit, ordered=commit))
        assert self._engine is not None
        async with self._engine.begin() if commit else self._engine.connect() as conn:
            return await conn.run_sync(work)

    def _on_thread(self, work: Callable[[Connection], T], commit: bool) -> T:
        assert self._sqlite is not None
        with self._sqlite.begin() if commit else self._sqlite.connect() as conn:
            return work(conn)

    def _on_thread_later(self, work: Callable[[Connection], T], commit: bool, ordered: bool) -> Future[T]:
        """`work` sent to the store's thread. `ordered` (a write, a checkpoint): the loop's writes
        wait behind it. Its future is the thread's own: done when the work is, whoever waits."""
        assert self._thread is not None
        job = self._thread.submit(self._on_thread, work, commit)
        if ordered:
            self._last_on_thread = job
        return job

    def _start_checkpoint(self) -> None:
        """Copy the WAL back into the database on the store's thread; the loop does not wait.
        Writes meanwhile go to the thread too, after it, as with SQLite's own checkpoints in
        the writer: a checkpoint that writes overtake never catches up, so the WAL would only
        grow. PASSIVE: it waits for no reader, and copies what they allow."""
        self._writes_since_checkpoint = 0

        def checkpoint(conn: Connection) -> None:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

        self._on_thread_later(checkpoint, commit=False, ordered=True).add_done_callback(_checkpoint_done)

    async def open(self) -> None:
        """Create the tables if they are missing; StoreUnavailable if the database can't be reached."""
        if self._on_disk:
            Path(str(self.url.database)).parent.mkdir(parents=True, exist_ok=True)

        def create(conn: Connection) -> None:
            metadata.create_all(conn)
            _add_new_columns(conn)

        try:
            for attempt in range(3):
                try:
                    # On the thread: the first connection turns the database to WAL, which waits
                    # for whoever holds it (another manager starting, a reader).
                    await self._run(create, commit=True, in_loop=False)
                    return
                except (IntegrityError, OperationalError, ProgrammingError):
                    # Two managers starting together on an empty database both see no table and
                    # both create it ("already exists"); the loser's next look finds it there.
                    if attempt == 2:
                        raise
        except (OSError, DBAPIError, asyncio.TimeoutError) as error:
            raise StoreUnavailable(f"cannot open the transcript store at {self.url}: {_reason(error)}") from None

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
        if self._in_loop is not None:
            in_loop, self._in_loop = self._in_loop, None  # then a write fails, as on the closed thread
            in_loop.dispose()
        if self._sqlite is not None and self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._sqlite.dispose)
            self._thread.shutdown(wait=False)

    def _may_write(self) -> None:
        """A manager that has lost its lease (lease.py) writes nothing more."""
        if self.fence is not None:
            self.fence()

    async def take_lease(self, name: str, holder: str, term: float, instead_of: str | None = None) -> tuple[bool, str]:
        """Hold lease `name` for `holder` until `term` s from now, if it is free, lapsed, already
        `holder`'s, or `instead_of`'s (a holder known to be dead). (held, who holds it now)."""
        now = clock.now()

        def take(conn: Connection) -> tuple[bool, str]:
            inserted = conn.execute(
                self._insert_or_skip(leases)
                .values(name=name, holder=holder, expires_at=now + term)
                .on_conflict_do_nothing()
            )
            if inserted.rowcount:
                return True, holder
            free = or_(leases.c.holder == holder, leases.c.expires_at < now)
            if instead_of is not None:
                free = or_(free, leases.c.holder == instead_of)
            taken = conn.execute(
                update(leases).where(leases.c.name == name, free).values(holder=holder, expires_at=now + term)
            )
            if taken.rowcount:
                return True, holder
            current = conn.scalar(select(leases.c.holder).where(leases.c.name == name))
            return False, str(current or "")

        return await self._run(take, commit=True)

    async def lease(self, name: str) -> tuple[str, float] | None:
        """Who holds lease `name`, and until when (Unix seconds); None if no one ever took it."""

        def read(conn: Connection) -> tuple[str, float] | None:
            row = conn.execute(select(leases.c.holder, leases.c.expires_at).where(leases.c.name == name)).first()
            return (str(row.holder), float(row.expires_at)) if row is not None else None

        return await self._run(read)

    async def release_lease(self, name: str, holder: str) -> None:
        def release(conn: Connection) -> None:
            conn.execute(delete(leases).where(leases.c.name == name, leases.c.holder == holder))

        await self._run(release, commit=True)

    async def start(self, conversation_id: str, task: str, first: ChatMessage | None = None) -> bool:
        """Record a new conversation, and its first message (the task) in the same transaction,
        so that no crash leaves one without the other; False if it was there already (a
        repeated start, or one by another manager), in which case nothing changes."""
        self._may_write()
        now = clock.now()

        def start(conn: Connection) -> bool:
            inserted = conn.execute(
                self._insert_or_skip(conversations)
                .values(id=conversation_id, task=_text(task), status="open", created_at=now, updated_at=now)
                .on_conflict_do_nothing()
            )
            if inserted.rowcount == 0:
                return False
            if first is not None:
                self._insert_message(conn, first, now)
            return True

        return await self._run(start, commit=True)

    def _insert_message(self, conn: Connection, message: ChatMessage, now: float) -> Any:
        values = {
            "conversation_id": message.conversation_id,
            "seq": message.seq,
            "id": message.id,
            "author": _text(message.author),
            "kind": message.kind,
            "content": _text(message.content),
            "created_at": now,
            "tokens": message.tokens,
        }
        return conn.execute(self._add_message, values)

    async def append(self, message: ChatMessage, **conversation: Any) -> bool:
        """Store one numbered message, and in the same transaction any changes to its
        conversation (the pending speaker, the end); False if it was there already."""
        self._may_write()
        now = clock.now()
        if conversation.get("reason") is not None:
            conversation["reason"] = _text(conversation["reason"])
        changes = {"conversation": message.conversation_id, "updated_at": now, **conversation}

        def append(conn: Connection) -> bool:
            if self._insert_message(conn, message, now).rowcount == 0:
                return False
            conn.execute(self._change_conversation, changes)
            return True

        return await self._run(append, commit=True)

    async def set_pending(self, conversation_id: str, speaker: str | None, turn_id: str | None) -> None:
        await self._update(conversation_id, pending_speaker=speaker, pending_turn_id=turn_id)

    async def end(self, conversation_id: str, reason: str, ok: bool) -> None:
        await self._update(
            conversation_id,
            status="ended",
            reason=_text(reason),
            ok=ok,
            pending_speaker=None,
            pending_turn_id=None,
        )

    async def _update(self, conversation_id: str, **values: Any) -> None:
        self._may_write()
        changes = {"conversation": conversation_id, "updated_at": clock.now(), **values}

        def change(conn: Connection) -> None:
            conn.execute(self._change_conversation, changes)

        await self._run(change, commit=True)

    async def get(self, conversation_id: str) -> StoredConversation | None:
        def read(conn: Connection) -> StoredConversation | None:
            row = conn.execute(select(conversations).where(conversations.c.id == conversation_id)).first()
            if row is None:
                return None
            found = _conversation(row._mapping)
            rows = conn.execute(
                select(messages).where(messages.c.conversation_id == conversation_id).order_by(messages.c.seq)
            )
            found.transcript = [
                ChatMessage(
                    conversation_id=r.conversation_id,
                    id=r.id,
                    seq=r.seq,
                    author=r.author,
                    kind=r.kind,
                    content=r.content,
                    tokens=r.tokens or 0,
                )
                for r in rows
            ]
            found.message_count = len(found.transcript)
            return found

        return await self._run(read)

    # ------------------------------------------------------------ the tool-call journal

    def _one_call(self, conversation_id: str, turn_id: str, call: str, index: int) -> Any:
        return (
            (tool_calls.c.conversation_id == conversation_id)
            & (tool_calls.c.turn_id == turn_id)
            & (tool_calls.c.call == call)
            & (tool_calls.c.idx == index)
        )

    async def tool_call(self, conversation_id: str, turn_id: str, call: str, index: int) -> StoredToolCall | None:
        def read(conn: Connection) -> StoredToolCall | None:
            query = select(tool_calls).where(self._one_call(conversation_id, turn_id, call, index))
            row = conn.execute(query).first()
            return None if row is None else _tool_call(row._mapping)

        return await self._run(read)

    async def start_tool_call(
        self,
        conversation_id: str,
        turn_id: str,
        call: str,
        index: int,
        attempt: str,
        agent: str,
        tool: str,
        source: int,
        arguments: str,
        status: str = "started",
    ) -> bool:
        """Record a call before it runs (or before a person approves it: `awaiting`); False if
        this call was recorded already."""
        self._may_write()
        record = (
            self._insert_or_skip(tool_calls)
            .values(
                conversation_id=conversation_id,
                turn_id=turn_id,
                call=call,
                idx=index,
                attempt=attempt,
                agent=_text(agent),
                tool=_text(tool),
                source=source,
                arguments=_text(arguments),
                status=status,
                attempts=1 if status == "started" else 0,
                started_at=clock.now(),
            )
            .on_conflict_do_nothing()
        )

        def start(conn: Connection) -> bool:
            return bool(conn.execute(record).rowcount)

        return await self._run(start, commit=True)

    async def move_tool_call(
        self,
        conversation_id: str,
        turn_id: str,
        call: str,
        index: int,
        *,
        was: str,
        now: str,
        result: str | None = None,
        attempt: str | None = None,
        restart: bool = False,
    ) -> bool:
        """Move a call from status `was` to `now`, with its result or a note. `attempt`: a new
        run of the turn takes the call over; `restart`: its clock starts again (it runs, or
        waits for a person, from now). False if the call was not `was`: another report moved
        it first (a repeated result, a second answer)."""
        self._may_write()
        values: dict[str, Any] = {"status": now}
        if result is not None:
            values["result"] = _text(result)
        if now in ENDED_TOOL_STATES:
            values["finished_at"] = clock.now()
        if attempt is not None:
            values["attempt"] = attempt
        if restart:
            values["started_at"] = clock.now()
            if now == "started":
                values["attempts"] = tool_calls.c.attempts + 1  # runs, not waits
        moved = (
            update(tool_calls)
            .where(self._one_call(conversation_id, turn_id, call, index) & (tool_calls.c.status == was))
            .values(**values)
        )

        def move(conn: Connection) -> bool:
            return bool(conn.execute(moved).rowcount)

        return await self._run(move, commit=True)

    async def tool_calls(self, conversation_id: str) -> list[StoredToolCall]:
        def read(conn: Connection) -> list[StoredToolCall]:
            rows = conn.execute(
                select(tool_calls)
                .where(tool_calls.c.conversation_id == conversation_id)
                .order_by(tool_calls.c.started_at, tool_calls.c.idx)
            )
            return [_tool_call(r._mapping) for r in rows]

        return await self._run(read)

    async def tool_call_counts(self) -> dict[str, dict[str, int]]:
        """Calls per agent and status, over every conversation: what `roundtable status` shows."""

        def read(conn: Connection) -> dict[str, dict[str, int]]:
            rows = conn.execute(
                select(tool_calls.c.agent, tool_calls.c.status, func.count()).group_by(
                    tool_calls.c.agent, tool_calls.c.status
                )
            )
            counts: dict[str, dict[str, int]] = {}
            for agent, status, count in rows:
                counts.setdefault(agent, {})[status] = count
            return counts

        return await self._run(read)

    async def token_counts(self) -> dict[str, int]:
        """Model tokens per agent, over every conversation."""

        def read(conn: Connection) -> dict[str, int]:
            rows = conn.execute(
                select(messages.c.author, func.sum(messages.c.tokens))
                .where(messages.c.kind == "agent")
                .group_by(messages.c.author)
            )
            return {author: int(total or 0) for author, total in rows}

        return await self._run(read)

    async def open_ids(self) -> list[str]:
        def read(conn: Connection) -> list[str]:
            rows = conn.execute(
                select(conversations.c.id).where(conversations.c.status == "open").order_by(conversations.c.created_at)
            )
            return [r.id for r in rows]

        return await self._run(read)

    async def recent(
        self, limit: int = 20, status: str | None = None, since: float | None = None
    ) -> list[StoredConversation]:
        """The latest conversations (only those with `status`, or active `since` a Unix time, if
        given), most recently active first, with their message counts but not their transcripts."""
        count = (
            select(func.count())
            .where(messages.c.conversation_id == conversations.c.id)
            .scalar_subquery()
            .label("message_count")
        )
        query = select(conversations, count).order_by(conversations.c.updated_at.desc()).limit(limit)
        if status is not None:
            query = query.where(conversations.c.status == status)
        if since is not None:
            query = query.where(conversations.c.updated_at >= since)

        def read(conn: Connection) -> list[StoredConversation]:
            return [_conversation(r._mapping) for r in conn.execute(query)]

        return await self._run(read)


@dataclass
class StoredToolCall:
    conversation_id: str
    turn_id: str
    call: str
    index: int
    attempt: str
    agent: str
    tool: str
    source: int | None
    arguments: str
    status: str
    result: str | None
    attempts: int
    started_at: float
    finished_at: float | None

    @property
    def key(self) -> str:
        """The idempotency key a tool may pass on: the same for every attempt of this call."""
        return call_key(self.conversation_id, self.turn_id, self.call, self.index)


def call_key(conversation_id: str, turn_id: str, call: str, index: int) -> str:
    """A recorded call's idempotency key, from what identifies it in the journal."""
    return f"{conversation_id}:{turn_id}:{call}:{index}"


def _tool_call(row: Any) -> StoredToolCall:
    return StoredToolCall(
        conversation_id=row["conversation_id"],
        turn_id=row["turn_id"],
        call=row["call"],
        index=row["idx"],
        attempt=row["attempt"],
        agent=row["agent"],
        tool=row["tool"],
        source=row["source"],
        arguments=row["arguments"],
        status=row["status"],
        result=row["result"],
        attempts=row["attempts"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )


def _conversation(row: Any) -> StoredConversation:
    return StoredConversation(
        id=row["id"],
        task=row["task"],
        created_at=row["created_at"],
        status=row["status"],
        reason=row["reason"],
        ok=row["ok"],
        pending_speaker=row["pending_speaker"],
        pending_turn_id=row["pending_turn_id"],
        updated_at=row["updated_at"],
        message_count=row.get("message_count", 0),
    )


def _text(value: str) -> str:
    # PostgreSQL's text cannot hold NUL at all (the INSERT fails, and the conversation with it);
    # SQLite can. Replacing it on both keeps the two backends alike, and no one writes NUL on purpose.
    return value.replace("\x00", "\ufffd")


def _reason(error: BaseException) -> str:
    """The driver's own words, on one line, without SQLAlchemy's SQL echo and links."""
    cause = getattr(error, "orig", None) or error
    text = str(cause).strip().splitlines()
    return text[0] if text else type(cause).__name__


def _sqlite_pragmas(dbapi_connection: Any, record: Any, busy_timeout: int = 5000, checkpoint: int = 1000) -> None:
    # WAL lets readers (the page, `status`) work while the manager writes; synchronous=NORMAL
    # is durable across a process crash, which is what we need.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout)}")
    cursor.execute(f"PRAGMA wal_autocheckpoint={int(checkpoint)}")
    cursor.close()


def _sqlite_pragmas_in_loop(dbapi_connection: Any, record: Any) -> None:
    """The event loop's connection waits for no lock and makes no checkpoint (TranscriptStore)."""
    _sqlite_pragmas(dbapi_connection, record, busy_timeout=0, checkpoint=0)


def _checkpoint_done(job: Future[None]) -> None:
    error = None if job.cancelled() else job.exception()
    if error is not None:
        log.warning("a checkpoint of the transcript store failed: %s", _reason(error))


def _locked(error: OperationalError) -> bool:
    """SQLite's "database is locked" (another connection writes): worth a wait, elsewhere."""
    code = getattr(error.orig, "sqlite_errorcode", None)
    if code is not None:
        return int(code) & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)  # extended codes too
    return "database is locked" in str(error.orig)
