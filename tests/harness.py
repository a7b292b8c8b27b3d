"""Real processes for tests: start them, wait for what they print, and always stop them."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from roundtable.runtime import READY_MARKER

READY = READY_MARKER  # what every process prints once it serves
REPO = Path(__file__).resolve().parent.parent


class LoopTicks:
    """Counts a 10 ms timer from now until `stop`: an event loop that stood still meanwhile
    counted (nearly) none."""

    def __init__(self) -> None:
        self.count = 0
        self._task = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.01)
            self.count += 1

    def stop(self) -> int:
        self._task.cancel()
        return self.count


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """One child process whose combined output goes to a file we can search."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_dir: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stdin: bool = False,
    ):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        # Each test keeps its own transcripts and page history.
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "ROUNDTABLE_DATA_DIR": str(log_dir / "data"), **(env or {})}
        self.popen = subprocess.Popen(
            list(argv),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            env=full_env,
            cwd=str(cwd) if cwd else None,
            start_new_session=True,
        )

    @property
    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for(self, text: str, timeout: float = 30.0, count: int = 1) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.output
            if out.count(text) >= count:
                return out
            if self.popen.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.popen.returncode} before printing {text!r}:\n{out[-3000:]}"
                )
            time.sleep(0.05)
        raise AssertionError(f"{self.name} did not print {text!r} within {timeout} s:\n{self.output[-3000:]}")

    def type(self, line: str) -> None:
        """A line on the process's standard input, as if typed (start it with stdin=True)."""
        assert self.popen.stdin is not None, f"{self.name} was started without stdin"
        self.popen.stdin.write(line.encode() + b"\n")
        self.popen.stdin.flush()

    def wait_exit(self, timeout: float = 60.0) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} did not exit within {timeout} s:\n{self.output[-3000:]}") from None

    def send(self, sig: int = signal.SIGTERM) -> None:
        """Send `sig` to the process and its children, if it still runs."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        self.send(sig)
        if self.popen.poll() is None:
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout)
        self._log.close()
        if self.popen.stdin is not None:
            self.popen.stdin.close()


class Procs:
    """A set of processes that a test owns; all are stopped when it ends."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.all: list[Proc] = []

    def start(
        self, name: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, stdin: bool = False
    ) -> Proc:
        proc = Proc(name, args, self.log_dir, env, cwd, stdin)
        self.all.append(proc)
        return proc

    def roundtable(self, name: str, *args: str, env: dict[str, str] | None = None, stdin: bool = False) -> Proc:
        return self.start(name, sys.executable, "-m", "roundtable", *args, env=env, stdin=stdin)

    def stop_all(self) -> None:
        """All at once: each is asked to stop, then each is waited for (and killed if it hangs)."""
        for proc in reversed(self.all):
            proc.send()
        for proc in reversed(self.all):
            proc.stop()


@contextmanager
def processes(log_dir: Path) -> Iterator[Procs]:
    procs = Procs(log_dir)
    failed = True
    try:
        yield procs
        failed = False
    finally:
        procs.stop_all()
        for proc in procs.all if failed else ():  # pytest shows what a failed test printed
            print(f"----- {proc.name} ({proc.log_path}), last lines:\n{proc.output[-2500:]}")


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def scripted_agent(name: str, *replies: str, delay: float = 0.0, record: Path | None = None) -> dict[str, Any]:
    model: dict[str, Any] = {"provider": "scripted", "script": list(replies), "token_delay": delay, "model": name}
    if record is not None:
        model["record"] = str(record)
    return {"name": name, "description": f"the {name}", "model": model}


def start_cluster(procs: Procs, config: Path, agents: Sequence[str], manager: bool = True) -> dict[str, Proc]:
    """A host, the named agents and (optionally) a manager, each its own process, all ready."""
    started = {"host": procs.roundtable("host", "host", "--config", str(config))}
    started["host"].wait_for(READY)
    for name in agents:
        started[name] = procs.roundtable(f"agent-{name}", "agent", "--config", str(config), "--name", name)
    if manager:
        started["manager"] = procs.roundtable("manager", "manager", "--config", str(config))
    for proc in started.values():
        proc.wait_for(READY)
    return started


def terminal_messages(output: str, authors: Sequence[str] = ("writer", "editor")) -> list[tuple[str, str]]:
    """The agent messages `roundtable chat` printed, put back together where a notice split
    one ("writer (continued): ..."); a stream cut short by a crash ends in "(interrupted)",
    one that lost tokens on the way in "(shown whole below)"."""
    messages: list[tuple[str, str]] = []
    for line in output.splitlines():
        author, _, text = line.partition(": ")
        if author in authors:
            messages.append((author, text))
        elif author.endswith(" (continued)") and messages and messages[-1][0] == author.removesuffix(" (continued)"):
            messages[-1] = (messages[-1][0], messages[-1][1] + text)
    return [m for m in messages if not m[1].endswith(("(interrupted)", "(shown whole below)"))]
