"""A base for the benchmark's observer sinks: every callback roundtable's `Sink` protocol
has, or grows later, does nothing unless a subclass overrides it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any


async def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


class QuietSink:
    async def on_token(self, conversation_id: str, message_id: str, author: str, text: str) -> None: ...

    async def on_message(self, message: Any, streamed: bool) -> None: ...

    async def on_speaker(self, event: Any) -> None: ...

    async def on_ended(self, event: Any) -> None: ...

    async def on_status(self, event: Any) -> None: ...

    def __getattr__(self, name: str) -> Callable[..., Awaitable[None]]:
        # A callback added to the protocol after this was written: ignore it.
        if name.startswith("on_"):
            return _nothing
        raise AttributeError(name)
