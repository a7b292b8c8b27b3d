"""The NATS bus against the gRPC host, in the same run, the two sides taking turns.

Each side is its own set of processes: the router (`roundtable host`, or `roundtable bus` for a
local nats-server), a manager, two scripted agents that answer at once, and the benchmark's
observer, which starts one conversation of `turn_rounds` turns and timestamps each message.
A turn is the time between two consecutive messages at the observer. Reported: turn p50 and
p99 per side and their ratio (NATS / gRPC).

Then the throughput curve on the bus: `bus_conversations` four-turn conversations at once, each
writer turn costing `bus_cpu_ms` of CPU (the scripted model's `cpu_ms`), with 1, 2 (and 4)
writer processes; turns per second, and the ratio to one process.

Then recovery: one long conversation of instant turns, and a second into it the router under the
manager is killed with SIGKILL: the gRPC host (started again at once), or the node of a three-node
NATS cluster that the manager is connected to (not started again: the clients move to the other
nodes). Reported per side: the longest gap between two messages at the observer (the stall),
whether every turn arrived once and in order, and the ratio of the stalls (NATS / gRPC).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from roundtable.natsbus import ROUTE_PORT_OFFSET

from . import conversations
from ._procs import PYTHON, BenchError, Proc, Procs, free_port, processes
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
    out["recovery"] = {side: recovery(log_dir / f"bus-recovery-{side}", side) for side in SIDES}
    out["recovery"]["ratio_stall"] = ratio(out["recovery"]["nats"]["stall_ms"], out["recovery"]["grpc"]["stall_ms"])
    return out


RECOVERY_ROUNDS = 1500  # several seconds of instant turns: the kill lands mid-conversation
KILL_AFTER = 1.0  # s into the conversation


def recovery(log_dir: Path, side: str) -> dict[str, Any]:
    """The stall of one conversation when the router under its manager is killed (see above)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    if side == "nats":
        address = ",".join(f"nats://127.0.0.1:{port}" for port in cluster_ports(3))
    else:
        address = f"127.0.0.1:{free_port()}"
    config = conversations.write_config(log_dir / "roundtable.yaml", address)
    with processes(log_dir) as procs:
        routers = start_routers(procs, config, side)
        manager = conversations.start_manager(procs, config, RECOVERY_ROUNDS, PAIR)
        conversations.start_agents(procs, config, PAIR)
        driver = procs.python("driver", "benchmarks._conversations", "--host", address, "--mode", "turns")
        driver.ready(60)
        timeout = 120 + RECOVERY_ROUNDS * 0.5
        command = {"cmd": "turns", "task": conversations.TASK, "timeout": timeout}
        result: dict[str, Any] = {}
        following = threading.Thread(target=lambda: result.update(driver.request(command, timeout + 30)))
        following.start()
        time.sleep(KILL_AFTER)
        ports = [int(server.rpartition(":")[2]) for server in address.split(",")]
        victim = ports.index(connected_port(manager.pid, ports)) if side == "nats" else 0
        killed_at = time.monotonic()  # system-wide on Linux: the driver's timestamps are on it
        with contextlib.suppress(ProcessLookupError):
            os.killpg(routers[victim].pid, signal.SIGKILL)
        routers[victim].wait_exit(10)
        procs.stop(routers[victim])
        if side == "grpc":
            start_routers(procs, config, side, generation=1)
        following.join(timeout + 60)
    if not result:
        raise BenchError(f"{side}: the conversation did not end after the router was killed")
    turns = conversations.analyse_turns(result, [], RECOVERY_ROUNDS)
    arrived = [event[1] for event in result["events"] if event[0] == "message"]
    if not arrived or not min(arrived) < killed_at < max(arrived):
        raise BenchError(f"{side}: the router was killed outside the conversation, not mid-way: no stall measured")
    return {
        "stall_ms": max(turns["series_ms"]),
        "turn_ms_p50": turns["turn_ms"]["p50"],
        "all_turns_once": turns["seqs_ok"],
        "killed": "the host, started again at once" if side == "grpc" else f"node {victim} of 3 (the manager's)",
    }


def connected_port(pid: int, ports: list[int]) -> int:
    """Which of `ports` (on 127.0.0.1) process `pid` has a connection to, from /proc (Linux)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                fields = row.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if fields[9] in inodes and remote_port in ports and fields[3] == "01":  # established
                    return remote_port
    raise BenchError(f"process {pid} has no connection to any of the ports {ports}")


def cluster_ports(count: int) -> list[int]:
    """Client ports for a local cluster, each free and free ROUTE_PORT_OFFSET above (its routes)."""
    chosen: list[int] = []
    while len(chosen) < count:
        port = free_port()
        if port in chosen or port + ROUTE_PORT_OFFSET > 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + ROUTE_PORT_OFFSET))
            except OSError:
                continue
        chosen.append(port)
    return chosen


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
    # Whether the turns spread: each writer process logs a line per turn it takes.
    taken = [(log_dir / f"writer{n}.log").read_text(errors="replace").count(": speaking in ") for n in range(writers)]
    return {
        "writers": writers,
        "turns_per_writer": taken,
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


def start_routers(procs: Procs, config: Path, side: str, generation: int = 0) -> list[Proc]:
    """The gRPC host, or a node of the NATS cluster for each server in the config's address."""
    if side == "grpc":
        routers = [procs.roundtable(f"host-{generation}", "host", "--config", str(config))]
    else:
        count = len(yaml.safe_load(config.read_text(encoding="utf-8"))["host"]["address"].split(","))
        routers = [procs.roundtable(f"bus{n}", "bus", "--node", str(n), "--config", str(config)) for n in range(count)]
    for router in routers:
        router.wait_for(conversations.READY_LINE, 60)
    return routers
