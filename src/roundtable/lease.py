"""One manager at a time: the lease that makes a manager the one that drives the conversations.

Several `roundtable manager` processes may run, on several machines if they share a PostgreSQL
store. The one that holds the lease (a row in the store) drives every conversation and renews it
every third of its term; the others stand by, and the first to find it lapsed takes it and
resumes every open conversation from the store, as a restarted manager does.

A holder acts only while its own clock says the lease is surely still its own: a third of the
term short of its end, so clocks a little apart and a slow store do not let two act at once. One
that could not renew in time (paused, cut off from the store) stops writing and publishing at
once (`fence`), then exits; its last writes are refused by the store's keys besides.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.exc import DBAPIError

from . import clock
from .config import StoreUnavailable
from .messages import new_id
from .store import TranscriptStore

log = logging.getLogger("roundtable.lease")

#: The lease every manager competes for.
MANAGER_LEASE = "manager"


class LeaseLost(RuntimeError):
    """This process no longer holds the lease (another took it, or it could not renew in time)."""


def this_holder() -> str:
    """`host:pid:nonce`: which process holds a lease, and whether it still lives if it is ours."""
    return f"{socket.gethostname()}:{os.getpid()}:{new_id()[:8]}"


def is_dead_here(holder: str) -> bool:
    """Whether `holder` is a process of this machine that no longer runs (a manager that crashed
    and is started again need not wait out its own old lease)."""
    host, _, rest = holder.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    with contextlib.suppress(OSError, IndexError):  # killed, but not yet reaped by its parent
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    return False


class Lease:
    def __init__(self, store: TranscriptStore, term: float, name: str = MANAGER_LEASE) -> None:
        self.store = store
        self.term = term
        self.name = name
        self.holder = this_holder()
        self._until = 0.0  # clock.monotonic() until which this process may act

    def held(self) -> bool:
        return clock.monotonic() < self._until

    def fence(self) -> None:
        """Raise LeaseLost unless this process may act now."""
        if not self.held():
            raise LeaseLost(f"{self.name} lease not held by this process")

    async def try_take(self) -> str:
        """Take (or renew) the lease if it is free, lapsed or ours; the holder after the attempt."""
        asked = clock.monotonic()
        held, holder = await self.store.take_lease(self.name, self.holder, self.term)
        if not held and is_dead_here(holder):
            held, holder = await self.store.take_lease(self.name, self.holder, self.term, instead_of=holder)
        if held:
            self._until = asked + self.term * 2 / 3
        return holder

    async def wait(self, standing_by: Callable[[str], None]) -> None:
        """Until this process holds the lease; `standing_by(holder)` is told once who holds it."""
        told = False
        while True:
            holder = await self._attempt()
            if holder == self.holder:
                return
            if not told and holder:
                standing_by(holder)
                told = True
            await asyncio.sleep(self.term / 6)

    async def keep(self) -> None:
        """Renew every third of the term while it holds; raise LeaseLost when it no longer does."""
        while True:
            await asyncio.sleep(self.term / 3)
            holder = await self._attempt()
            if holder == self.holder:
                continue
            if holder:  # it lapsed, and another took it
                self._until = 0.0
                raise LeaseLost(f"the {self.name} lease was taken by {holder}")
            if not self.held():
                raise LeaseLost(f"could not renew the {self.name} lease within its term (the store is out of reach)")

    async def _attempt(self) -> str:
        """try_take, with a store that cannot be reached counted as not held ("")."""
        try:
            return await asyncio.wait_for(self.try_take(), self.term / 3)
        except (StoreUnavailable, DBAPIError, OSError, asyncio.TimeoutError) as error:
            why = (str(error).splitlines() or ["no answer within a third of its term"])[0][:200]
            log.warning("could not reach the store for the %s lease: %s", self.name, why)
            return ""

    async def release(self) -> None:
        """Give the lease up (a clean stop), so another manager takes over at once."""
        self._until = 0.0
        with contextlib.suppress(StoreUnavailable, DBAPIError, OSError, asyncio.TimeoutError):
            await asyncio.wait_for(self.store.release_lease(self.name, self.holder), self.term / 3)
