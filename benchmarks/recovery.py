"""Measurement 6: a host restart. A publisher worker and a subscriber worker stay up while the
host process is killed (SIGKILL) and, a moment later, started again on the same address.
While it is down the publisher publishes N numbered messages. Measured: the time from the
new host's ready line to the subscriber having all N, and how many were lost or duplicated.

roundtable's `connect_worker` against stock AutoGen 0.7.5's worker and host, which do not
reconnect: for them the wait is bounded, and the result is what arrived by then.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from ._control import READY
from ._procs import BenchError, Proc, Procs, free_port, processes
from .hop import wait_port
from .settings import Settings

READY_LINE = "roundtable ready:"
VARIANTS = ("roundtable", "bare")
SETTLE = 0.5  # seconds after the last message arrives, for late duplicates
PROBE_TIMEOUT = 10.0
BURST_KILL_AFTER = 0.05  # seconds into the mid-burst publish
BURST_WAIT = 5.0  # what has not come 5 s after the restart is not coming


def start_host(procs: Procs, variant: str, address: str, generation: int) -> Proc:
    """Launch the host process; the caller waits for its ready line (it times the restart)."""
    name = f"{variant}-host-{generation}"
    if variant == "bare":
        return procs.python(name, "benchmarks._bare_host", address)
    return procs.roundtable(name, "host", "--address", address, "--log-level", "WARNING")


def ready_marker(variant: str) -> str:
    return READY if variant == "bare" else READY_LINE


def wait_ready(host: Proc, variant: str, timeout: float = 60.0) -> float:
    """Wait for the host's ready line; return when the benchmark read it (time.monotonic)."""
    marker = ready_marker(variant)
    host.wait_for(marker, timeout)
    return next(t for t, line in host.timeline if marker in line)


def kill(procs: Procs, host: Proc) -> float:
    """SIGKILL the host, as a crash would; return when."""
    killed = time.monotonic()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(host.pid, signal.SIGKILL)
    host.wait_exit(10)
    procs.stop(host)  # reaps it and closes its pipes and log
    return killed


def wait_port_closed(address: str, timeout: float) -> None:
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            probe.settimeout(0.5)
            if probe.connect_ex((host, int(port))) != 0:
                return
        time.sleep(0.01)
    raise BenchError(f"{address} still accepts connections {timeout:g} s after the host was killed")


def wait_disconnected(workers: list[Proc], timeout: float) -> float:
    """Until every roundtable worker says its stream is gone; returns when."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(w.request({"cmd": "state"}, 10)["connected"] is False for w in workers):
            return time.monotonic()
        time.sleep(0.01)
    raise BenchError(f"the workers still think they are connected {timeout:g} s after the host was killed")


def start_workers(procs: Procs, variant: str, address: str, generation: int) -> tuple[Proc, Proc]:
    common = ("--variant", variant, "--host", address)
    sub = procs.python(f"{variant}-sub-{generation}", "benchmarks._recovery_worker", "--role", "sub", *common)
    sub.ready(60)
    pub = procs.python(f"{variant}-pub-{generation}", "benchmarks._recovery_worker", "--role", "pub", *common)
    pub.ready(60)
    return pub, sub


def measure(variant: str, settings: Settings, log_dir: Path) -> dict[str, Any]:
    reps = settings.recovery_reps if variant == "roundtable" else settings.recovery_bare_reps
    n = settings.recovery_messages
    numbers = itertools.count()
    runs: list[dict[str, Any]] = []
    with processes(log_dir / f"recovery-{variant}") as procs:
        address = f"127.0.0.1:{free_port()}"
        host = start_host(procs, variant, address, 0)
        wait_ready(host, variant)
        wait_port(address, 30)
        pub, sub = start_workers(procs, variant, address, 0)
        duplicates_before = 0
        for rep in range(reps):
            if variant == "bare" and rep > 0:
                # Stock workers stay cut off after a restart: each repetition needs new ones.
                procs.stop(pub)
                procs.stop(sub)
                pub, sub = start_workers(procs, variant, address, rep)
            # The path works before the kill (and this is the message last in flight).
            probe = [next(numbers)]
            pub.request({"cmd": "publish", "indices": probe}, 30)
            got = sub.request({"cmd": "wait", "indices": probe, "timeout": PROBE_TIMEOUT, "settle": 0}, 60)
            if not got["first"]:
                raise BenchError(f"{variant}: a message published before the kill did not arrive")

            killed = kill(procs, host)
            wait_port_closed(address, 10)
            noticed = wait_disconnected([pub, sub], 10) if variant == "roundtable" else time.monotonic()
            indices = [next(numbers) for _ in range(n)]
            published = pub.request({"cmd": "publish", "indices": indices}, 60)
            time.sleep(max(0.0, killed + settings.recovery_down_seconds - time.monotonic()))

            launched = time.monotonic()
            host = start_host(procs, variant, address, rep + 1)
            ready_at = wait_ready(host, variant)
            command = {"cmd": "wait", "indices": indices, "timeout": settings.recovery_wait_seconds, "settle": SETTLE}
            got = sub.request(command, settings.recovery_wait_seconds + 30)
            first = sorted(got["first"].values())
            copies = {int(k): v for k, v in got["copies"].items()}
            duplicated = sum(copies.get(i, 0) - 1 for i in indices if copies.get(i, 0) > 1)
            duplicates_now = sum(c - 1 for c in copies.values() if c > 1)
            states = [w.request({"cmd": "state"}, 10) for w in (pub, sub)]
            runs.append(
                {
                    "n": n,
                    "received": len(first),
                    "lost": n - len(first),
                    "duplicated": duplicated,
                    # Extra copies of messages published before the kill (the last one in flight
                    # is sent again after a reconnect: at least once).
                    "earlier_resent": duplicates_now - duplicates_before - duplicated,
                    "recovery_s": (first[-1] - ready_at) if len(first) == n else None,
                    "first_s": (first[0] - ready_at) if first else None,
                    "noticed_s": noticed - killed,
                    "publish_s": published["seconds"],
                    "down_s": ready_at - killed,
                    "host_start_s": ready_at - launched,
                    "reconnects": [s["reconnects"] for s in states],
                }
            )
            duplicates_before = duplicates_now
        bursts = []
        if variant == "roundtable":
            for rep in range(settings.recovery_burst_reps):
                host, result = kill_mid_burst(procs, pub, sub, host, address, numbers, settings, reps + rep + 1)
                bursts.append(result)
    return summarise(variant, runs, settings) | {"mid_burst": bursts}


def kill_mid_burst(
    procs: Procs,
    pub: Proc,
    sub: Proc,
    host: Proc,
    address: str,
    numbers: itertools.count[int],
    settings: Settings,
    generation: int,
) -> tuple[Proc, dict[str, Any]]:
    """Not what the README promises, for context: the host is killed while a burst flows
    through it. What the host holds in memory, or a dead socket swallows, at that moment
    cannot come back; what is still in the workers' outboxes is sent to the new host."""
    indices = [next(numbers) for _ in range(settings.recovery_burst)]
    failure: list[BaseException] = []

    def publish() -> None:
        try:
            pub.request({"cmd": "publish", "indices": indices}, 60)
        except BaseException as error:  # reported below, once the host is back
            failure.append(error)

    sender = threading.Thread(target=publish, name="burst", daemon=True)
    sender.start()
    time.sleep(BURST_KILL_AFTER)
    killed = kill(procs, host)
    sender.join(70)
    if sender.is_alive() or failure:
        raise BenchError(f"publishing the burst failed: {failure[0] if failure else 'no answer'}")
    time.sleep(max(0.0, killed + settings.recovery_down_seconds - time.monotonic()))
    host = start_host(procs, "roundtable", address, generation)
    ready_at = wait_ready(host, "roundtable")
    got = sub.request({"cmd": "wait", "indices": indices, "timeout": BURST_WAIT, "settle": SETTLE}, BURST_WAIT + 30)
    copies = {int(k): v for k, v in got["copies"].items()}
    first = sorted(got["first"].values())
    return host, {
        "n": len(indices),
        "lost": len(indices) - len(first),
        "duplicated": sum(copies.get(i, 0) - 1 for i in indices if copies.get(i, 0) > 1),
        "received_before_kill": sum(1 for t in first if t < killed),
        "recovery_s": (first[-1] - ready_at) if len(first) == len(indices) else None,
    }


def summarise(variant: str, runs: list[dict[str, Any]], settings: Settings) -> dict[str, Any]:
    recovered = [r["recovery_s"] for r in runs if r["recovery_s"] is not None]
    firsts = [r["first_s"] for r in runs if r["first_s"] is not None]
    return {
        "variant": variant,
        "reps": len(runs),
        "n": settings.recovery_messages,
        "wait_s": settings.recovery_wait_seconds,
        "recovered_reps": len(recovered),
        "recovery_s": {
            "p50": statistics.median(recovered) if recovered else None,
            "max": max(recovered) if recovered else None,
            "min": min(recovered) if recovered else None,
        },
        "first_s": {"p50": statistics.median(firsts) if firsts else None, "max": max(firsts) if firsts else None},
        "lost": sum(r["lost"] for r in runs),
        "duplicated": sum(r["duplicated"] for r in runs),
        "earlier_resent": sum(r["earlier_resent"] for r in runs),
        "published": sum(r["n"] for r in runs),
        "down_s": statistics.median(r["down_s"] for r in runs) if runs else None,
        "host_start_s": statistics.median(r["host_start_s"] for r in runs) if runs else None,
        "runs": runs,
    }


def run(settings: Settings, log_dir: Path) -> dict[str, Any]:
    return {
        "down_seconds": settings.recovery_down_seconds,
        "variants": {variant: measure(variant, settings, log_dir) for variant in VARIANTS},
    }
