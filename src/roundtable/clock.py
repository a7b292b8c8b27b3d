"""The one clock the conversation logic reads: the running event loop's.

In production it is `time.monotonic()` (asyncio's default). A test can run the loop on a fake
clock (tests/fakeclock.py): sleeps, timeouts and these readings then move together, so a turn
timeout of minutes is tested in milliseconds. Code that waits with `asyncio.sleep` or
`wait_for` and reads the time here stays consistent either way.
"""

from __future__ import annotations

import asyncio
import time


def monotonic() -> float:
    """Seconds on the running loop's clock; only for differences, like `time.monotonic()`."""
    return asyncio.get_running_loop().time()


def now() -> float:
    """Seconds since the epoch, like `time.time()`, for times that are stored and outlive the
    process; they move with the running loop's clock (on a real loop, the two agree)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # no loop runs: the wall clock itself
        return time.time()
    return time.time() + (loop.time() - time.monotonic())
