"""The page's history: Chainlit's SQLAlchemy data layer on SQLite, with its schema made here.

SQLite refuses list and dict values (thread tags, message modes), and Chainlit then drops the whole
write with a warning; here they are stored as JSON text and read back as lists and dicts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from chainlit.data.sql_alchemy import SQLAlchemyDataLayer
from chainlit.element import ElementDict
from chainlit.step import StepDict
from chainlit.types import Feedback, ThreadDict
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine

log = logging.getLogger("roundtable.ui")

# Result columns (as Chainlit's queries name them) that hold JSON text.
JSON_RESULT_COLUMNS = frozenset(
    {"tags", "thread_tags", "step_tags", "metadata", "thread_metadata", "step_metadata", "generation"}
    | {"step_generation", "modes", "step_modes", "playerConfig"}
)
BOOLEAN_FIELDS = frozenset({"streaming", "waitForAnswer", "isError", "defaultOpen", "autoCollapse", "autoPlay"})
INTEGER_FIELDS = frozenset({"page", "indent", "value"})


def _column_type(field: str) -> sa.types.TypeEngine[Any]:
    if field in BOOLEAN_FIELDS:
        return sa.Boolean()
    if field in INTEGER_FIELDS:
        return sa.Integer()
    return sa.Text()  # text, timestamps, and JSON for lists and dicts


def _fields(typed: type, leave_out: set[str]) -> list[str]:
    # The keys only: resolving the annotations would need names Chainlit imports for type checking only.
    names = [name for name in typed.__annotations__ if name not in leave_out]
    return sorted(names, key=lambda name: name != "id")  # the key first, the rest as Chainlit lists them


def history_schema() -> sa.MetaData:
    """Every field Chainlit writes gets a column, read from its own type definitions, so a field
    it adds (`autoCollapse` is missing from older published schemas) cannot make writes fail."""
    meta = sa.MetaData()
    sa.Table(
        "users",
        meta,
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("identifier", sa.Text, nullable=False, unique=True),
        sa.Column("metadata", sa.Text, nullable=False),
        sa.Column("createdAt", sa.Text),
    )
    tables: list[tuple[str, list[str], dict[str, str]]] = [
        ("threads", _fields(ThreadDict, {"steps", "elements"}), {"userId": "users.id"}),
        ("steps", _fields(StepDict, {"feedback"}), {"threadId": "threads.id"}),
        ("elements", _fields(ElementDict, set()), {"threadId": "threads.id"}),
        ("feedbacks", [f.name for f in dataclasses.fields(Feedback)], {"threadId": "threads.id"}),
    ]
    for name, fields, references in tables:
        columns = []
        for field in fields:
            args: list[Any] = [field, _column_type(field)]
            if field in references:
                args.append(sa.ForeignKey(references[field], ondelete="CASCADE"))
            columns.append(sa.Column(*args, primary_key=field == "id"))
        sa.Table(name, meta, *columns)
    return meta


async def ensure_schema(url: str) -> None:
    """Create the tables, and add any column a newer Chainlit needs to tables made before."""
    engine = create_async_engine(url)
    meta = history_schema()
    try:
        async with engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                # Writers (one per message) and the history sidebar's reads then do not block each other.
                await conn.exec_driver_sql("PRAGMA journal_mode=WAL")
            await conn.run_sync(meta.create_all)
            existing = await conn.run_sync(
                lambda sync: {t: {c["name"] for c in sa.inspect(sync).get_columns(t)} for t in meta.tables}
            )
            for table in meta.tables.values():
                for column in table.columns:
                    if column.name not in existing[table.name]:
                        kind = column.type.compile(dialect=conn.dialect)
                        log.info("history store: adding column %s.%s", table.name, column.name)
                        await conn.exec_driver_sql(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}')
    finally:
        await engine.dispose()


def _to_column(value: Any) -> Any:
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return value


def _from_column(name: str, value: Any) -> Any:
    if name in JSON_RESULT_COLUMNS and isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


class HistoryStore(SQLAlchemyDataLayer):
    """Chainlit's SQLAlchemy data layer, made safe for SQLite's column types; a failed write is an error."""

    def __init__(self, url: str) -> None:
        super().__init__(conninfo=url)

    async def execute_sql(self, query: str, parameters: dict[str, Any]) -> list[dict[str, Any]] | int | None:
        bound = {key: _to_column(value) for key, value in parameters.items()}
        async with self.async_session() as session:
            try:
                result = await session.execute(sa.text(query), bound)
                await session.commit()
                if not result.returns_rows:
                    return int(result.rowcount)
                rows = [dict(row._mapping) for row in result.fetchall()]
            except SQLAlchemyError as error:
                await session.rollback()
                statement = " ".join(query.split())[:60]
                log.error("history store: %s... failed: %s", statement, getattr(error, "orig", None) or error)
                return None
        return [{key: _from_column(key, value) for key, value in row.items()} for row in rows]

    async def get_current_timestamp(self) -> str:
        # Chainlit's own stamps local time with a "Z"; the sidebar groups threads by day from it.
        return datetime.now(timezone.utc).replace(tzinfo=None).isoformat() + "Z"
