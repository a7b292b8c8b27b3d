"""The NATS bus against the gRPC host, in the same run, the two sides taking turns.

Each side is its own set of processes: the router (`roundtable host`, or `roundtable bus` for a
local nats-server), a manager, two scripted agents that answer at once, and the benchmark's
observer, which starts one conversation of `turn_rounds` turns and timestamps each message.
A turn is the time between two consecutive messages at the observer. Reported: turn p50 and
p99 per side and their ratio (NATS / gRPC).

Then the throughput curve on the bus: `bus_conversations` four-turn conversations at once, each
writer turn costing `bus_cpu_ms` of CPU (the scripted model's `cpu_ms`), with 1, 2 (and 4)
writer processes; turns per second, and the ratio to one process. Recovery after a NATS node
is killed is not measured yet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from . import conversations
from ._procs import PYTHON, Procs, free_port, processes
from ._stats import ratio, summary
from .settings import Settings

PAIR = "sentence"
SIDES = ("grpc", "nats")


def run(settings: Settings, log_dir: Path) -> dict[str, Any]:
    series: dict[str, list[float]] = {side: [] for side in SIDES}
    ok: dict[str, bool] = {side: True for side in SIDES}
    for rep in range(settings.bus_reps):
        for side in SIDES if rep % 2 == 0 else tuple(reversed(SIDES)):
            turns = one_side(log_dir / f"bus-{side}-{rep}", side, settings.turn_rounds)
            series[side] += turns["series_ms"]
            ok[side] = ok[side] and turns["seqs_ok"]
    out: dict[str, Any] = {side: {"turn_ms": summary(series[side]), "all_turns_once": ok[side]} for side in SIDES}
    out["ratio_p50"] = ratio(out["nats"]["turn_ms"]["p50"], out["grpc"]["turn_ms"]["p50"])
    out["rounds"] = settings.turn_rounds
    out["reps"] = settings.bus_reps
    out["replicas"] = {
        str(n): throughput(log_dir / f"bus-replicas-{n}", n, settings.bus_conversations, settings.bus_cpu_ms)
        for n in settings.bus_replicas
    }
    one = out["replicas"].get("1", {}).get("turns_per_s")
    for result in out["replicas"].values():
        result["x_one"] = ratio(result["turns_per_s"], one) if one else None
    out["cpu_ms"] = settings.bus_cpu_ms
    out["conversations"] = settings.bus_conversations
    return out


THROUGHPUT_ROUNDS = 4


def throughput(log_dir: Path, writers: int, count: int, cpu_ms: float) -> dict[str, Any]:
    """`count` conversations at once on the bus with `writers` writer processes."""
    log_dir.mkdir(parents=True, exist_ok=True)
    address = f"nats://127.0.0.1:{free_port()}"
    config = log_dir / "roundtable.yaml"
    writer = {"provider": "scripted", "script": ["Draft {n}."], "cpu_ms": cpu_ms}
    data = {
        "bus": address,
        "host": {"connect_timeout": 30},
        "agents": [
            {"name": "writer", "model": writer},
            {"name": "editor", "model": {"provider": "scripted", "script": ["Noted."]}},
        ],
        "manager": {"turn_timeout": 600, "termination": {"max_rounds": THROUGHPUT_ROUNDS, "timeout": 1800}},
        "data_dir": str(log_dir / "data"),
    }
    config.write_text(yaml.safe_dump(data), encoding="utf-8")
    with processes(log_dir) as procs:
        start_router(procs, config, "nats")
        started = [procs.roundtable("manager", "manager", "--config", str(config))]
        started.append(procs.roundtable("editor", "agent", "--config", str(config), "--name", "editor"))
        for n in range(writers):
            own = {"ROUNDTABLE_DATA_DIR": str(log_dir / f"writer{n}")}
            argv = ("-m", "roundtable", "agent", "--config", str(config), "--name", "writer")
            started.append(procs.start(f"writer{n}", PYTHON, *argv, env=own))
        for proc in started:
            proc.wait_for(conversations.READY_LINE, 60)
        driver = procs.python("driver", "benchmarks._conversations", "--host", address, "--mode", "concurrent")
        driver.ready(60)
        timeout = 120 + count * THROUGHPUT_ROUNDS * cpu_ms / 1000 * 2
        command = {
            "cmd": "concurrent",
            "count": count,
            "task": conversations.TASK,
            "timeout": timeout,
            "messages": THROUGHPUT_ROUNDS + 1,
        }
        result = driver.request(command, timeout + 30)
    turns = result["count"] * THROUGHPUT_ROUNDS
    return {
        "writers": writers,
        "seconds": result["seconds"],
        "turns_per_s": turns / result["seconds"] if result["seconds"] else None,
        "lost": result["lost"],
        "duplicated": result["duplicated"],
        "unfinished": result["unfinished"],
    }


def one_side(log_dir: Path, side: str, rounds: int) -> dict[str, Any]:
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    address = f"nats://127.0.0.1:{port}" if side == "nats" else f"127.0.0.1:{port}"
    config = conversations.write_config(log_dir / "roundtable.yaml", address)
    with processes(log_dir) as procs:
        start_router(procs, config, side)
        conversations.start_manager(procs, config, rounds, PAIR)
        conversations.start_agents(procs, config, PAIR)
        driver = procs.python("driver", "benchmarks._conversations", "--host", address, "--mode", "turns")
        driver.ready(60)
        timeout = 60 + rounds * 1.0
        command = {"cmd": "turns", "task": conversations.TASK, "timeout": timeout}
        driver.request(command, timeout + 30)  # warm-up
        result = driver.request(command, timeout + 30)
    return conversations.analyse_turns(result, [], rounds)


def start_router(procs: Procs, config: Path, side: str) -> None:
    command = "bus" if side == "nats" else "host"
    router = procs.roundtable(command, command, "--config", str(config))
    router.wait_for(conversations.READY_LINE, 60)
