"""The benchmark's child processes: start them in their own process group, read what they
print, talk to them over stdin/stdout, and always stop them (and whatever they started)."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ._control import READY, REPLY

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


class BenchError(Exception):
    """A benchmark step failed (a process died, a wait timed out); the message says which."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children_of(pid: int) -> list[int]:
    """Direct children, from /proc (every thread's list)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                found += [int(p) for p in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return found


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children_of(todo.pop()):
            out.append(child)
            todo.append(child)
    return out


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) in kB from /proc/<pid>/status; empty if the process is gone."""
    values: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of these processes (all their threads), from /proc/<pid>/stat."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / _TICKS


class CpuMeter:
    """CPU seconds each named group of processes spends inside `measure()` blocks, added up.
    Ticks are 10 ms, so it is meant for sums over many turns or tokens."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.seconds = dict.fromkeys(groups, 0.0)

    @contextlib.contextmanager
    def measure(self) -> Iterator[None]:
        before = {name: cpu_seconds(pids) for name, pids in self.groups.items()}
        try:
            yield
        finally:
            for name, pids in self.groups.items():
                self.seconds[name] += cpu_seconds(pids) - before[name]

    def per(self, units: float) -> dict[str, float]:
        """Milliseconds of CPU per unit (a turn, a token)."""
        return {name: seconds * 1e3 / units for name, seconds in self.seconds.items()} if units else {}


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _kill(pids: Sequence[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


class Proc:
    """One child in its own session. Its stdout is read line by line by a thread (kept, and
    copied to a log file), stderr goes straight to the log file."""

    def __init__(self, name: str, argv: Sequence[str], log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.lines: list[str] = []
        self.timeline: list[tuple[float, str]] = []  # (time.monotonic() when read, line), every line
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.started = time.monotonic()
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.timeline.append((time.monotonic(), line))
            self._queue.put(line)
            with contextlib.suppress(ValueError):  # the log may be closed while we stop
                self._log.write(raw)
                self._log.flush()
        self._queue.put(None)

    def tail(self, n: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    def next_line(self, timeout: float) -> str:
        """The next line of stdout; raises BenchError when the process ends or the time is up."""
        try:
            line = self._queue.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            raise BenchError(f"{self.name}: nothing printed within {timeout:.0f} s\n{self.tail()}") from None
        if line is None:
            self._queue.put(None)  # keep reporting the end to later callers
            code = self.popen.wait(5)
            raise BenchError(f"{self.name} exited with code {code}\n{self.tail()}")
        self.lines.append(line)
        return line

    def wait_for(self, match: str | Callable[[str], bool], timeout: float) -> str:
        """Read lines until one contains `match` (or satisfies it); return that line."""
        test = match if callable(match) else (lambda line: match in line)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(f"{self.name}: no line matching {match!r} within {timeout:.0f} s\n{self.tail()}")
            line = self.next_line(remaining)
            if test(line):
                return line

    def ready(self, timeout: float = 60.0) -> None:
        self.wait_for(READY, timeout)

    def request(self, command: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send one command to a benchmark child and wait, bounded, for its reply."""
        assert self.popen.stdin is not None
        try:
            self.popen.stdin.write((json.dumps(command) + "\n").encode())
            self.popen.stdin.flush()
        except BrokenPipeError:
            raise BenchError(f"{self.name} is gone\n{self.tail()}") from None
        line = self.wait_for(lambda text: text.startswith(REPLY), timeout)
        reply: dict[str, Any] = json.loads(line[len(REPLY) :])
        if "bench_error" in reply:
            raise BenchError(f"{self.name}: {command.get('cmd')}: {reply['bench_error']}")
        return reply

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{self.name} did not exit within {timeout:.0f} s\n{self.tail()}") from None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL after `timeout`; then any descendant left over
        (a child that moved to its own group, like llama.cpp's server)."""
        family = descendants(self.pid)
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(5)
        deadline = time.monotonic() + timeout
        while any(alive(p) for p in family) and time.monotonic() < deadline:
            time.sleep(0.1)
        _kill([p for p in family if alive(p)], signal.SIGKILL)
        self._reader.join(5)  # it ends at the pipe's end: closed under it, it would fail mid-read
        for stream in (self.popen.stdin, self.popen.stdout):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()
        self._log.close()


class Procs:
    """The processes of one measurement; all stopped, newest first, when the block ends."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.all: list[Proc] = []

    def start(self, name: str, *argv: str, env: dict[str, str] | None = None) -> Proc:
        proc = Proc(name, argv, self.log_dir, env)
        self.all.append(proc)
        return proc

    def python(self, name: str, module: str, *args: str, env: dict[str, str] | None = None) -> Proc:
        return self.start(name, PYTHON, "-m", module, *args, env=env)

    def roundtable(self, name: str, *args: str) -> Proc:
        return self.python(name, "roundtable", *args)

    def stop(self, proc: Proc) -> None:
        proc.stop()
        self.all.remove(proc)

    def stop_all(self) -> None:
        while self.all:
            self.all.pop().stop()


@contextlib.contextmanager
def processes(log_dir: Path) -> Iterator[Procs]:
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = Procs(log_dir)
    try:
        yield procs
    finally:
        procs.stop_all()
