"""`roundtable up`: start the host, the model server, the manager, every agent and the page;
watch them, restart what crashes, and stop them all on Ctrl-C or SIGTERM.

Each process is a child started in order, once what it needs is ready. Their
output becomes one stream, each line prefixed and coloured by process.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from .config import NATS_SCHEMES, Config
from .engine import describe_exit, signal_of
from .identities import CLIENT_IDENTITY
from .models import MODEL_STATE_ENV
from .natsbus import servers_of
from .runtime import READY_MARKER, shutdown_on_signal, unless_stopped
from .security import load_security

log = logging.getLogger("roundtable.up")

COLORS = ["36", "33", "35", "32", "34", "91", "92", "93", "94", "95", "96"]
READY_TIMEOUT = 120.0
STOP_TIMEOUT = 10.0
MAX_BACKOFF = 30.0
#: A child that fails this many times within CRASH_WINDOW seconds is not restarted again.
#: Being killed (SIGKILL, SIGTERM, ...: a person, a chaos test, the OOM killer) is not failing.
MAX_CRASHES = 3
CRASH_WINDOW = 60.0
KILLED_FROM_OUTSIDE = frozenset({signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
MODEL_ROLE = "model"
#: A child's one-line error ("roundtable: error: ..."), or an ERROR log line ("... ERROR   model: ...").
_ERROR_TEXT = re.compile(r"(?:\berror:|\bERROR\s+[^:]+:)\s*(.+)")


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM if `up` itself is killed, even with SIGKILL, so no orphans."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


@dataclass
class Role:
    name: str
    argv: list[str]
    ready_timeout: float = READY_TIMEOUT


@dataclass
class Child:
    role: Role
    color: str
    process: asyncio.subprocess.Process | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    restarts: int = 0
    reader: asyncio.Task[None] | None = None
    crashes: list[float] = field(default_factory=list)
    last_error: str = ""


class Launcher:
    def __init__(
        self,
        out: TextIO | None = None,
        color: bool | None = None,
        quiet: bool = False,
        model_state: Path | None = None,
    ) -> None:
        self._out = out or sys.stdout
        # With one conversation in the terminal, the children's INFO lines would bury it.
        self._child_env = {"ROUNDTABLE_LOG_LEVEL": "WARNING"} if quiet else {}
        # Where agents read why the model server is down, to say so instead of "is it running?".
        self._model_state = model_state
        if model_state is not None:
            self._child_env[MODEL_STATE_ENV] = os.fspath(model_state)
        self._color = self._out.isatty() if color is None else color
        self._children: list[Child] = []
        self._stopping = False
        self._watchers: list[asyncio.Task[None]] = []

    def say(self, name: str, line: str, color: str = "0") -> None:
        prefix = f"{name:>8} | "
        if self._color:
            prefix = f"\x1b[{color}m{prefix}\x1b[0m"
        self._out.write(prefix + line + "\n")
        self._out.flush()

    async def _spawn(self, child: Child) -> None:
        child.ready.clear()
        child.process = await asyncio.create_subprocess_exec(
            *child.role.argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self._child_env},
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        child.reader = asyncio.create_task(self._read(child, child.process))
        self.say("up", f"started {child.role.name} (pid {child.process.pid})")

    async def _read(self, child: Child, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while True:
            raw = await process.stdout.readline()
            if not raw:
                break
            line = raw.decode(errors="replace").rstrip()
            if READY_MARKER in line:
                child.ready.set()
                if child.role.name == MODEL_ROLE:
                    self._set_model_state("")
            elif error := _ERROR_TEXT.search(line):
                child.last_error = error[1].strip()
            self.say(child.role.name, line, child.color)

    def _set_model_state(self, state: str) -> None:
        if self._model_state is None:
            return
        try:
            tmp = self._model_state.with_name(self._model_state.name + ".tmp")
            tmp.write_text(state)
            os.replace(tmp, self._model_state)
        except OSError as error:
            log.debug("cannot write %s: %s", self._model_state, error)

    async def start(self, role: Role) -> Child:
        """Start one process and wait, bounded, until it is ready."""
        child = Child(role, COLORS[len(self._children) % len(COLORS)])
        self._children.append(child)
        await self._spawn(child)
        await self._await_ready(child)
        self._watchers.append(asyncio.create_task(self._watch(child)))
        return child

    async def _await_ready(self, child: Child) -> None:
        assert child.process is not None
        ready = asyncio.create_task(child.ready.wait())
        exited = asyncio.create_task(child.process.wait())
        await asyncio.wait({ready, exited}, timeout=child.role.ready_timeout, return_when="FIRST_COMPLETED")
        ready.cancel()
        exited.cancel()
        if child.ready.is_set():
            return
        if child.reader is not None:
            await asyncio.wait({child.reader}, timeout=2)
        if child.process.returncode is not None:
            reason = f": {child.last_error}" if child.last_error else ""
            raise LaunchError(
                f"{child.role.name} {describe_exit(child.process.returncode)} before it was ready{reason}"
            )
        raise LaunchError(f"{child.role.name} was not ready within {child.role.ready_timeout:g} s")

    async def _watch(self, child: Child) -> None:
        """Restart a crashed process with exponential backoff."""
        while not self._stopping:
            assert child.process is not None
            code = await child.process.wait()
            if child.reader is not None:
                await asyncio.wait({child.reader}, timeout=2)  # its last words, before ours
            if self._stopping:
                return
            now = time.monotonic()
            child.crashes = [t for t in child.crashes if now - t < CRASH_WINDOW]
            if signal_of(code) not in KILLED_FROM_OUTSIDE:  # a kill says nothing of the child's health
                child.crashes.append(now)
            why = f"{child.role.name} {describe_exit(code)}" + (f": {child.last_error}" if child.last_error else "")
            if child.role.name == MODEL_ROLE:
                self._set_model_state(
                    f"the model server {describe_exit(code)}" + (f": {child.last_error}" if child.last_error else "")
                )
            if len(child.crashes) >= MAX_CRASHES:
                self.say(
                    "up",
                    f"{why}; it failed {len(child.crashes)} times within {CRASH_WINDOW:g} s,"
                    " so it is not restarted again: fix the cause, then start roundtable up again",
                )
                return
            child.restarts += 1
            delay = min(MAX_BACKOFF, 0.5 * 2 ** (child.restarts - 1))
            self.say("up", f"{why}; restarting in {delay:g} s (restart {child.restarts})")
            child.last_error = ""
            await asyncio.sleep(delay)
            if self._stopping:
                return
            await self._spawn(child)
            try:
                await self._await_ready(child)
                self.say("up", f"{child.role.name} is back")
            except LaunchError as error:
                self.say("up", str(error))

    async def stop(self) -> None:
        """Stop everything, newest first: SIGTERM, then SIGKILL after a grace period."""
        self._stopping = True
        for watcher in self._watchers:
            watcher.cancel()
        for child in reversed(self._children):
            process = child.process
            if process is None or process.returncode is not None:
                continue
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
            except asyncio.TimeoutError:
                self.say("up", f"{child.role.name} did not stop within {STOP_TIMEOUT:g} s; killing it")
                process.kill()
                await process.wait()
            if child.reader is not None:
                await asyncio.wait({child.reader}, timeout=2)

    @property
    def pids(self) -> list[int]:
        return [c.process.pid for c in self._children if c.process is not None]


class LaunchError(Exception):
    """A process could not be started or did not become ready."""


def plan(config: Config, config_path: str | None, with_ui: bool, bus: str | None = None) -> list[list[Role]]:
    """The processes to start, in stages: each stage waits for the one before. `bus`: a NATS bus
    given on the command line, in place of the config's host or bus (every process is told)."""
    me = [sys.executable, "-m", "roundtable"]
    cfg = ["--config", config_path] if config_path else []
    to_bus = ["--bus", bus] if bus else []
    on_nats = config.host.address.startswith(NATS_SCHEMES)
    if on_nats:
        nodes = servers_of(config.host.address)
        address = ["--address", config.host.address] if bus else []
        if len(nodes) == 1:
            routers = [Role("bus", [*me, "bus", *address, *cfg])]
        else:  # a node of a local cluster for each server listed
            routers = [Role(f"bus{n}", [*me, "bus", "--node", str(n), *address, *cfg]) for n in range(len(nodes))]
    else:
        routers = [Role("host", [*me, "host", *cfg])]
    stages: list[list[Role]] = [routers]
    workers = [Role("manager", [*me, "manager", *cfg, *to_bus])]
    # A human seat has no process: people answer from the page or a terminal.
    workers += [Role(a.name, [*me, "agent", "--name", a.name, *cfg, *to_bus]) for a in config.agents if not a.human]
    if config.uses_local_model:
        # Agents need the model only to answer, so it loads beside them; the page and a
        # task given with --task wait for the whole stage. Joining and checking the
        # weights the first time takes a while: allow for it.
        workers.insert(0, Role(MODEL_ROLE, [*me, "model", *cfg], ready_timeout=900))
    stages.append(workers)
    front: list[Role] = []
    if with_ui and config.ui.enabled:
        front.append(Role("ui", [*me, "ui", *cfg, *to_bus], ready_timeout=120))
    if with_ui and config.a2a.enabled:  # the room as an A2A agent, beside the page
        front.append(Role("a2a", [*me, "a2a", *cfg, *to_bus], ready_timeout=120))
    if front:
        stages.append(front)
    return stages


async def run_up(
    config: Config,
    config_path: str | None,
    task: str | None = None,
    with_ui: bool = True,
    chat_timeout: float = 900.0,
    on_ready: Callable[[Launcher], Awaitable[None]] | None = None,
    bus: str | None = None,
) -> int:
    """Start everything; with a task, run one conversation and return its outcome, else run until a signal."""
    from .chat import run_chat

    state_dir = Path(tempfile.mkdtemp(prefix="roundtable-up-"))
    launcher = Launcher(
        quiet=task is not None and "ROUNDTABLE_LOG_LEVEL" not in os.environ, model_state=state_dir / "model.state"
    )
    stop = asyncio.Event()
    started = time.monotonic()
    code = 0
    with shutdown_on_signal(stop):
        try:
            for stage in plan(config, config_path, with_ui and task is None, config.host.address if bus else None):
                waiting = asyncio.ensure_future(asyncio.gather(*(launcher.start(role) for role in stage)))
                if not await unless_stopped(waiting, stop):
                    return 130
                waiting.result()
            launcher.say("up", f"everything is ready after {time.monotonic() - started:.1f} s")
            if with_ui and task is None and config.ui.enabled:
                launcher.say("up", f"open http://{config.ui.host}:{config.ui.port} in a browser")
            if with_ui and task is None and config.a2a.enabled:
                card = f"http://{config.a2a.host}:{config.a2a.port}/.well-known/agent-card.json"
                launcher.say("up", f"A2A clients: the agent card is at {card}")
            if on_ready is not None:
                await on_ready(launcher)
            if task is not None:
                chat = asyncio.ensure_future(
                    run_chat(
                        config.host.address,
                        task,
                        chat_timeout,
                        config.host.connect_timeout,
                        security=load_security(config.host.security, CLIENT_IDENTITY),
                    )
                )
                stopped = asyncio.ensure_future(stop.wait())
                await asyncio.wait({chat, stopped}, return_when="FIRST_COMPLETED")
                stopped.cancel()
                if stop.is_set():
                    chat.cancel()
                    return 130
                code = 0 if chat.result().ok else 1
            else:
                await stop.wait()
        except LaunchError as error:
            launcher.say("up", f"error: {error}")
            code = 1
        finally:
            launcher.say("up", "stopping everything")
            await launcher.stop()
            shutil.rmtree(state_dir, ignore_errors=True)
            launcher.say("up", "stopped")
    return code
