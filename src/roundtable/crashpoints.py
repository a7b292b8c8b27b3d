"""Named crash points: the places where a process dying matters, for tests to hit on purpose.

`ROUNDTABLE_CRASH_AT=manager.reply.stored:2` makes the process that reaches that point for the
second time kill itself with SIGKILL there, as a power cut would. Unset (always, outside tests)
a crash point costs one comparison. docs/reliability.md lists the points and what each guards.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass

from .config import ConfigError

log = logging.getLogger("roundtable.crash")

CRASH_ENV = "ROUNDTABLE_CRASH_AT"

#: Every crash point, in the order a turn passes them. A name not listed here is refused.
POINTS = (
    "manager.start.stored",  # the conversation and its task are stored; nothing published yet
    "manager.ask.before_publish",  # the next speaker is stored; it has not been asked
    "manager.ask.published",  # the speaker has been asked
    "agent.turn.begun",  # the agent took the turn; no model call yet
    "agent.stream.chunk",  # mid-stream: some tokens are out, the reply is not finished
    "agent.tool.before_run",  # the manager recorded the call and said run; it has not run
    "agent.tool.after_run",  # the tool ran (its effect happened); the result is not reported
    "manager.tool.recorded",  # a call is recorded as started; the agent has not been told
    "manager.tool.result_stored",  # a call's result is stored; the agent has not been told
    "agent.reply.ready",  # the reply is finished; not sent to the manager
    "agent.reply.sent",  # the reply is sent (it may not have left the process yet)
    "manager.reply.received",  # the manager has the reply; not stored
    "manager.reply.stored",  # the reply and what comes next are stored; nothing published
    "manager.end.stored",  # the end is stored; not announced
)


@dataclass
class _Target:
    name: str
    on_pass: int
    passes: int = 0


def _target() -> _Target | None:
    spec = os.environ.get(CRASH_ENV, "").strip()
    if not spec:
        return None
    name, _, count = spec.partition(":")
    if name not in POINTS:
        raise ConfigError(f"{CRASH_ENV}: unknown crash point {name!r} (expected one of: {', '.join(POINTS)})")
    if count and not (count.isdigit() and int(count) > 0):
        raise ConfigError(f"{CRASH_ENV}: {spec!r}: the pass after ':' must be a whole number from 1")
    return _Target(name, int(count or 1))


_TARGET: _Target | None = None


def arm() -> None:
    """Read CRASH_ENV (ConfigError if it names no crash point); every command does this at start."""
    global _TARGET
    _TARGET = _target()


def crash_point(name: str) -> None:
    """Die here, by SIGKILL, if this is the point (and the pass) that CRASH_ENV names."""
    target = _TARGET
    if target is None or target.name != name:
        return
    target.passes += 1
    if target.passes == target.on_pass:
        log.warning("crash point %s (pass %d): killing this process", name, target.passes)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
