"""Sampling profiles of running processes with py-spy (from PyPI), summarised as the frames
where the time goes: self time per function, and inclusive time per function."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from ._procs import Proc, Procs

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def start(
    procs: Procs, targets: dict[str, int], out_dir: Path, rate: int = 250, native: bool = False
) -> dict[str, tuple[Proc, Path]]:
    binary = py_spy()
    if binary is None:
        raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
    out_dir.mkdir(parents=True, exist_ok=True)
    spies: dict[str, tuple[Proc, Path]] = {}
    # Blocking mode (py-spy pauses the process for each sample): it is the mode that tells idle
    # threads apart, and profiles run in a separate conversation from the timed one anyway.
    extra = ["--native"] if native else []
    for name, pid in targets.items():
        out = out_dir / f"{name}.txt"
        argv = [binary, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", *extra]
        spies[name] = (procs.start(f"py-spy-{name}", *argv, "--output", str(out)), out)
    return spies


def stop(procs: Procs, spies: dict[str, tuple[Proc, Path]]) -> dict[str, Any]:
    """Ctrl-C each profiler (that is when py-spy writes its file) and summarise what it wrote."""
    for proc, _ in spies.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
    summaries: dict[str, Any] = {}
    for name, (proc, out) in spies.items():
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(30)
        procs.stop(proc)
        summaries[name] = summarise(out) if out.exists() else {"error": "no profile written"}
    return summaries


def _parse(frame: str) -> tuple[str, str]:
    """(function, path shortened to the package) of one py-spy frame."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip(), ""
    path = match["file"]
    for marker in ("site-packages/", "src/", "lib/python3.11/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return match["func"], path


def package_of(path: str) -> str:
    head = path.split("/", 1)[0]
    if head in ("asyncio", "concurrent", "threading.py", "selectors.py", "contextlib.py", "_weakrefset.py"):
        return "asyncio + stdlib"
    if head.endswith(".py") and "/" not in path:
        return "stdlib"
    return head or "native"


def summarise(path: Path, top: int = 15) -> dict[str, Any]:
    """Only the event loop's busy samples count: py-spy cannot tell a thread blocked in C
    (gRPC's poller, a queue wait, our stdin reader) from a busy one, but the loop's thread
    is idle exactly when its leaf frame is the selector."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = busy = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_parse(f) for f in stack.split(";") if f]
        if not any(func == "BaseEventLoop.run_forever" for func, _ in frames):
            continue
        total += count
        leaf_func, leaf_path = frames[-1]
        if leaf_func in ("EpollSelector.select", "select"):
            continue
        busy += count
        self_time[f"{leaf_func} ({leaf_path})"] += count
        # Handle._run as a leaf is a callback running in native code: gRPC's Cython, mostly.
        packages["grpc (native callbacks)" if leaf_func == "Handle._run" else package_of(leaf_path)] += count
        for func, file in set(frames):
            if not file.startswith(("asyncio/", "runpy", "<frozen")):
                inclusive[f"{func} ({file})"] += count

    def shares(counter: Counter[str], n: int = top) -> list[list[Any]]:
        return [[name, round(count / busy, 4)] for name, count in counter.most_common(n)] if busy else []

    return {
        "loop_samples": total,
        "busy_share": round(busy / total, 4) if total else 0.0,
        "by_package": shares(packages, 12),
        "self": shares(self_time),
        "inclusive": shares(inclusive, 30),
        "file": str(path),
    }
