"""Measurement 5: `roundtable up --no-ui` from launch to "everything is ready", and the memory
(VmRSS from /proc) of every process it started, when ready and after one conversation.

Two configs: scripted models, and the embedded small model (its weights already installed,
so this is start-up, not installation). `up` is stopped with SIGTERM, as a person's Ctrl-C
would, and every process it started must be gone afterwards.
"""

from __future__ import annotations

import os
import re
import signal
import statistics
import time
from pathlib import Path
from typing import Any

import yaml

from ._procs import Proc, alive, descendants, free_port, memory_kb, processes
from .settings import Settings

STARTED = re.compile(r"started (\S+) \(pid (\d+)\)")
EVERYTHING_READY = "everything is ready"
READY_AFTER = re.compile(r"everything is ready after ([\d.]+) s")
TASK = "Write one sentence about a lighthouse."


def write_config(path: Path, kind: str) -> Path:
    if kind == "scripted":
        model: dict[str, Any] = {"provider": "scripted", "script": ["Draft {n}: a lamp, a keeper, a ship."]}
        extra: dict[str, Any] = {}
    else:
        model = {"provider": "local", "temperature": 0, "max_tokens": 24, "repeat_penalty": 1.0}
        extra = {"local_model": {"model": "small", "port": free_port()}}
    data = {
        "host": {"address": f"127.0.0.1:{free_port()}", "connect_timeout": 30},
        "model": model,
        "agents": [
            {"name": "writer", "description": "writes", "model": model},
            {"name": "editor", "description": "edits", "model": model},
        ],
        "manager": {"termination": {"max_rounds": 2, "timeout": 300}},
        "data_dir": str(path.parent / "data"),
        **extra,
    }
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def memory_of(pids: dict[str, int]) -> dict[str, dict[str, int]]:
    """Per process; a model server's llama.cpp child is listed on its own."""
    out: dict[str, dict[str, int]] = {}
    for name, pid in pids.items():
        out[name] = memory_kb(pid)
        for child in descendants(pid):
            out[f"{name} (llama.cpp server)"] = memory_kb(child)
    return out


def one_up(log_dir: Path, kind: str, run: int) -> dict[str, Any]:
    logs = log_dir / f"startup-{kind}-{run}"
    with processes(logs) as procs:
        config = write_config(logs / "roundtable.yaml", kind)
        up = procs.roundtable("up", "up", "--no-ui", "--config", str(config))
        line = up.wait_for(EVERYTHING_READY, 600)
        wall = time.monotonic() - up.started
        said = READY_AFTER.search(line)
        pids = {m[1]: int(m[2]) for _, text in up.timeline if (m := STARTED.search(text))}
        children = {name: pid for name, pid in pids.items()}
        ready_at = _ready_times(up, set(pids))
        at_ready = memory_of(children)
        chat = procs.roundtable("chat", "chat", TASK, "--config", str(config), "--timeout", "240")
        code = chat.wait_exit(300)
        after_chat = memory_of(children)
        everything = [*children.values(), *(d for pid in children.values() for d in descendants(pid))]
        clean = _stop_gracefully(up, everything)
    return {
        "kind": kind,
        "ready_seconds": wall,
        "ready_seconds_reported": float(said[1]) if said else None,
        "ready_at": ready_at,
        "pids": children,
        "memory_at_ready_kb": at_ready,
        "memory_after_chat_kb": after_chat,
        "chat_exit_code": code,
        "clean_shutdown": clean,
    }


def _ready_times(up: Proc, names: set[str]) -> dict[str, float]:
    """Seconds from launching `up` to each child's ready line (as `up` relays it)."""
    times: dict[str, float] = {}
    for when, text in up.timeline:
        name, _, rest = text.partition(" | ")
        name = name.strip()
        if name in names and name not in times and ("roundtable ready:" in rest or rest.startswith("ready on")):
            times[name] = when - up.started
    return times


def _stop_gracefully(up: Proc, pids: list[int], timeout: float = 30.0) -> bool:
    """SIGTERM to `up` alone: it stops its children itself. True when none is left."""
    os.kill(up.pid, signal.SIGTERM)
    up.wait_exit(timeout)
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not any(alive(p) for p in pids)


def run(settings: Settings, log_dir: Path) -> dict[str, Any]:
    configs: dict[str, Any] = {}
    for kind in ("scripted", "local-small"):
        runs = [one_up(log_dir, kind, i) for i in range(settings.startup_runs)]
        configs[kind] = {
            "runs": runs,
            "ready_seconds": statistics.median(r["ready_seconds"] for r in runs),
            "memory_at_ready_kb": runs[-1]["memory_at_ready_kb"],
            "memory_after_chat_kb": runs[-1]["memory_after_chat_kb"],
            "clean_shutdown": all(r["clean_shutdown"] for r in runs),
            "chat_ok": all(r["chat_exit_code"] == 0 for r in runs),
        }
    return {"configs": configs}
