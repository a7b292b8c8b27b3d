"""The transcript store: every conversation and message, written by the manager before
anyone sees them, so a restarted manager carries on where it stopped.

SQLAlchemy's async engine: SQLite (WAL) by default, PostgreSQL when given its URL.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    event,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from .messages import ChatMessage

metadata = MetaData()

conversations = Table(
    "rt_conversations",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("task", Text, nullable=False),
    Column("status", String(16), nullable=False, default="open"),  # open | ended
    Column("reason", Text),
    Column("ok", Boolean),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("pending_speaker", String(64)),
    Column("pending_turn_id", String(64)),
)

messages = Table(
    "rt_messages",
    metadata,
    Column("conversation_id", String(64), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("id", String(64), nullable=False),
    Column("author", String(128), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("content", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("conversation_id", "id", name="rt_messages_unique_id"),
)


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


class TranscriptStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: AsyncEngine = create_async_engine(url)
        if url.startswith("sqlite"):
            event.listen(self._engine.sync_engine, "connect", _sqlite_pragmas)

    async def open(self) -> None:
        if self.url.startswith("sqlite"):
            path = self.url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        async with self._engine.begin() as conn:
            await conn.run_sync(metadata.create_all)

    async def close(self) -> None:
        await self._engine.dispose()

    async def start(self, conversation_id: str, task: str) -> None:
        now = time.time()
        async with self._engine.begin() as conn:
            try:
                await conn.execute(
                    insert(conversations).values(
                        id=conversation_id, task=task, status="open", created_at=now, updated_at=now
                    )
                )
            except IntegrityError:
                pass  # a repeated start

    async def append(self, message: ChatMessage) -> bool:
        """Store one numbered message; False if it was there already (by id or seq)."""
        async with self._engine.begin() as conn:
            try:
                await conn.execute(
                    insert(messages).values(
                        conversation_id=message.conversation_id,
                        seq=message.seq,
                        id=message.id,
                        author=message.author,
                        kind=message.kind,
                        content=message.content,
                        created_at=time.time(),
                    )
                )
            except IntegrityError:
                return False
            await conn.execute(
                update(conversations)
                .where(conversations.c.id == message.conversation_id)
                .values(updated_at=time.time())
            )
        return True

    async def set_pending(self, conversation_id: str, speaker: str | None, turn_id: str | None) -> None:
        await self._update(conversation_id, pending_speaker=speaker, pending_turn_id=turn_id)

    async def end(self, conversation_id: str, reason: str, ok: bool) -> None:
        await self._update(
            conversation_id, status="ended", reason=reason, ok=ok, pending_speaker=None, pending_turn_id=None
        )

    async def _update(self, conversation_id: str, **values: Any) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                update(conversations)
                .where(conversations.c.id == conversation_id)
                .values(updated_at=time.time(), **values)
            )

    async def get(self, conversation_id: str) -> StoredConversation | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(conversations).where(conversations.c.id == conversation_id))).first()
            if row is None:
                return None
            found = StoredConversation(
                id=row.id,
                task=row.task,
                created_at=row.created_at,
                status=row.status,
                reason=row.reason,
                ok=row.ok,
                pending_speaker=row.pending_speaker,
                pending_turn_id=row.pending_turn_id,
            )
            rows = await conn.execute(
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
                )
                for r in rows
            ]
            return found

    async def open_ids(self) -> list[str]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(conversations.c.id).where(conversations.c.status == "open").order_by(conversations.c.created_at)
            )
            return [r.id for r in rows]

    async def recent(self, limit: int = 20) -> list[StoredConversation]:
        """The latest conversations, newest first, without their transcripts."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(conversations).order_by(conversations.c.updated_at.desc()).limit(limit))
            return [
                StoredConversation(
                    id=r.id, task=r.task, created_at=r.updated_at, status=r.status, reason=r.reason, ok=r.ok
                )
                for r in rows
            ]


def _sqlite_pragmas(dbapi_connection: Any, record: Any) -> None:
    # WAL lets readers (the page, `status`) work while the manager writes; synchronous=NORMAL
    # is durable across a process crash, which is what we need.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()
