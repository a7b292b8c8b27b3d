"""Measurement 1 and the one-way half of 3: hop latency and messages per second through a host,
stock AutoGen against roundtable's runtime, each host and worker its own process.

Every variant's cluster is started first and they take turns in small blocks, so slow
moments of a shared machine fall on all of them alike.
"""

from __future__ import annotations

import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._procs import BenchError, Proc, Procs, free_port, processes
from ._stats import ratio, summary
from .settings import Settings

READY_LINE = "roundtable ready:"
FLOOD_MODES = ("burst", "yield", "burst-large")


def wait_port(address: str, timeout: float) -> None:
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            probe.settimeout(0.5)
            if probe.connect_ex((host, int(port))) == 0:
                return
        time.sleep(0.05)
    raise BenchError(f"nothing listens on {address} after {timeout:g} s")


def _bare_host(procs: Procs, address: str) -> Proc:
    host = procs.python("bare-host", "benchmarks._bare_host", address)
    host.ready(60)
    return host


def _roundtable_host(procs: Procs, address: str) -> Proc:
    host = procs.roundtable("roundtable-host", "host", "--address", address, "--log-level", "WARNING")
    host.wait_for(READY_LINE, 60)
    return host


@dataclass(frozen=True)
class Variant:
    name: str
    # How to start this variant's host; None while the variant does not exist yet.
    start_host: Callable[[Procs, str], Proc] | None
    worker: str = ""  # the --variant of benchmarks._hop_worker


VARIANTS = (
    Variant("bare", _bare_host, "bare"),
    Variant("roundtable", _roundtable_host, "roundtable"),
    # TLS + token: a third column once roundtable.runtime grows it; the worker will need a
    # matching --variant that connects with the certificate and the token.
    Variant("roundtable+tls", None),
)


def run(settings: Settings, log_dir: Path) -> dict[str, Any]:
    available = [v for v in VARIANTS if v.start_host is not None]
    raw: dict[str, dict[str, Any]] = {v.name: {"rtt_ns": [], "lost": 0, "floods": []} for v in available}
    with processes(log_dir / "hop") as procs:
        pingers: dict[str, Proc] = {}
        for variant in available:
            assert variant.start_host is not None
            address = f"127.0.0.1:{free_port()}"
            variant.start_host(procs, address)
            wait_port(address, 30)
            common = ("--variant", variant.worker, "--host", address)
            pong = procs.python(f"{variant.name}-pong", "benchmarks._hop_worker", "--role", "pong", *common)
            pong.ready(60)
            ping = procs.python(f"{variant.name}-ping", "benchmarks._hop_worker", "--role", "ping", *common)
            ping.ready(60)
            pingers[variant.name] = ping
            raw[variant.name]["message"] = ping.request({"cmd": "sizes"}, 30)
        for ping in pingers.values():  # warm up: connections, caches, first agent instances
            ping.request({"cmd": "ping", "n": 1, "warmup": settings.hop_warmup, "timeout": 5}, 120)
        order = list(pingers)
        for block in range(settings.hop_blocks):
            for name in order if block % 2 == 0 else order[::-1]:
                command = {"cmd": "ping", "n": settings.hop_block, "warmup": 5, "timeout": 5}
                result = pingers[name].request(command, 60 + settings.hop_block * 5)
                raw[name]["rtt_ns"] += result["rtt_ns"]
                raw[name]["lost"] += result["lost"]
        floods = [(mode, settings.flood_n) for _ in range(settings.flood_reps) for mode in ("burst", "yield")]
        for rep, (mode, n) in enumerate([*floods, ("burst", settings.flood_large_n)]):
            for name in order if rep % 2 == 0 else order[::-1]:
                command = {"cmd": "flood", "n": n, "mode": mode, "timeout": settings.flood_timeout}
                result = pingers[name].request(command, settings.flood_timeout + 30)
                if n == settings.flood_large_n:
                    result["mode"] = "burst-large"
                raw[name]["floods"].append(result)
    return summarise(raw, [v.name for v in VARIANTS])


def summarise(raw: dict[str, dict[str, Any]], names: list[str]) -> dict[str, Any]:
    variants: dict[str, Any] = {}
    for name in names:
        data = raw.get(name)
        if data is None:
            variants[name] = None
            continue
        hop_ms = [ns / 2e6 for ns in data["rtt_ns"]]
        floods: dict[str, Any] = {}
        for mode in FLOOD_MODES:
            runs = [f for f in data["floods"] if f["mode"] == mode]
            floods[mode] = {
                "rate": statistics.median(f["rate"] for f in runs) if runs else float("nan"),
                "rates": [f["rate"] for f in runs],
                "lost": sum(f["lost"] for f in runs),
                "duplicated": sum(f["duplicated"] for f in runs),
                "n": runs[0]["n"] if runs else 0,
                "queue_seconds": statistics.median(f["queue_seconds"] for f in runs) if runs else float("nan"),
            }
        variants[name] = {
            "hop_ms": summary(hop_ms),
            "hop_samples_ms": hop_ms,
            "lost_pings": data["lost"],
            "message": data["message"],
            "flood": floods,
        }
    bare, rt = variants.get("bare"), variants.get("roundtable")
    ratios: dict[str, float] = {}
    if bare and rt:
        for p in ("p50", "p99"):
            ratios[f"hop_{p}"] = ratio(rt["hop_ms"][p], bare["hop_ms"][p])
        for mode in FLOOD_MODES:
            ratios[f"flood_{mode}"] = ratio(rt["flood"][mode]["rate"], bare["flood"][mode]["rate"])
    return {"variants": variants, "ratio_roundtable_over_bare": ratios}
