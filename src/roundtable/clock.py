"""The one clock the conversation logic reads: the running event loop's.

In production it is `time.monotonic()` (asyncio's default). A test can give the loop a fake
clock (looptime, in tests/test_inprocess.py): sleeps, timeouts and these readings then move
together, so a turn timeout of minutes is tested in milliseconds. Code that waits with
`asyncio.sleep` or `wait_for` and measures with `monotonic()` here stays consistent either way.
"""

from __future__ import annotations

import asyncio


def monotonic() -> float:
    """Seconds on the running loop's clock; only for differences, like `time.monotonic()`."""
    return asyncio.get_running_loop().time()
