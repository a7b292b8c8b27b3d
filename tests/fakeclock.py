"""A fake clock for tests that run the conversation logic in one event loop.

`FakeClockLoop` is an asyncio loop whose `time()` is virtual: it moves only when nothing in the
loop can run and no outside work is under way, and then it jumps straight to the next timer.
A turn timeout of 30 s, a heartbeat of 2 s or a host that stays down for 10 s then take
milliseconds, and the order of events is what the real durations would give.

"Outside work" is what finishes on another thread and wakes the loop when done: anything sent
to `run_in_executor` (so `asyncio.to_thread`, as tools run), and whatever a test marks with
`loop.hold()`, such as the SQLite store's calls (aiosqlite runs them on its own thread). While
any is under way, time stands still, so a slow disk cannot look like a timeout.

The code under test reads the time through `roundtable.clock`, which reads the loop's; a loop
on real time gives the same answers, only slower.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import selectors
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

#: How long the loop waits in real time for outside work before it looks again.
REAL_STEP = 0.002


class _Selector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """Turns the loop's wait for its next timer into a jump of the virtual clock."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: FakeClockLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout <= 0:
            return super().select(timeout)  # type: ignore[no-any-return]
        ready: list[tuple[selectors.SelectorKey, int]] = super().select(0)
        if ready:
            return ready
        assert self.loop is not None
        if self.loop.busy:  # outside work will wake the loop: wait for it in real time
            return super().select(REAL_STEP if timeout is None else min(timeout, REAL_STEP))  # type: ignore[no-any-return]
        if timeout is None:  # no timer at all: only a real event can come
            return super().select(None)  # type: ignore[no-any-return]
        self.loop.advance(timeout)
        return []


class FakeClockLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        selector = _Selector()
        self._now = time.monotonic()
        self._holds = 0
        super().__init__(selector)
        selector.loop = self

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds

    @property
    def busy(self) -> bool:
        return self._holds > 0

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Time stands still while the block runs: it waits on work outside the loop."""
        self._holds += 1
        try:
            yield
        finally:
            self._holds -= 1

    def run_in_executor(self, executor: Executor | None, func: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        future = super().run_in_executor(executor, func, *args)
        self._holds += 1
        future.add_done_callback(lambda _: self._release())
        return future

    def _release(self) -> None:
        self._holds -= 1


def held(target: T) -> T:
    """`target` with each of its public coroutine methods holding the running fake clock
    while it runs: for objects whose calls finish on another thread (like the store)."""
    for name, method in inspect.getmembers(target, inspect.iscoroutinefunction):
        if not name.startswith("_"):
            setattr(target, name, _holding(method))
    return target


def _holding(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    @functools.wraps(method)
    async def call(*args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        if not isinstance(loop, FakeClockLoop):
            return await method(*args, **kwargs)
        with loop.hold():
            return await method(*args, **kwargs)

    return call
