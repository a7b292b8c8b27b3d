"""The NATS bus against the gRPC host, in the same run, the two sides taking turns.

Each side is its own set of processes: the router (`roundtable host`, or `roundtable bus` for a
local nats-server), a manager, two scripted agents that answer at once, and the benchmark's
observer, which starts one conversation of `turn_rounds` turns and timestamps each message.
A turn is the time between two consecutive messages at the observer. Reported: turn p50 and
p99 per side and their ratio (NATS / gRPC); the throughput with agent replicas and recovery
after a node kill are not measured yet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import conversations
from ._procs import Procs, free_port, processes
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
    return out


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
