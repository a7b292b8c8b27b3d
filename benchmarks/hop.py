"""Measurement 1 and the one-way half of 3: hop latency and messages per second through a host,
stock AutoGen against roundtable's runtime, plain on loopback and with TLS and the bearer token
(as off loopback), each host and worker its own process.

Every variant's cluster is started first and they take turns in small blocks, so slow
moments of a shared machine fall on all of them alike.
"""

from __future__ import annotations

import socket
import ssl
import statistics
import tempfile
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


@dataclass(frozen=True)
class Certs:
    """Development certificates and a token, written by roundtable's own `write_dev_certificates`."""

    directory: Path

    @property
    def ca(self) -> str:
        return str(self.directory / "ca.pem")

    @property
    def token(self) -> str:
        return (self.directory / "token").read_text(encoding="utf-8").strip()

    def host_args(self) -> tuple[str, ...]:
        return ("--tls-cert", str(self.directory / "server.pem"), "--tls-key", str(self.directory / "server.key"))

    def env(self) -> dict[str, str]:
        return {"ROUNDTABLE_TOKEN": self.token}


def _bare_host(procs: Procs, address: str, certs: Certs) -> Proc:
    host = procs.python("bare-host", "benchmarks._bare_host", address)
    host.ready(60)
    return host


def _roundtable_host(procs: Procs, address: str, certs: Certs) -> Proc:
    host = procs.roundtable("roundtable-host", "host", "--address", address, "--log-level", "WARNING")
    host.wait_for(READY_LINE, 60)
    return host


def _tls_host(procs: Procs, address: str, certs: Certs) -> Proc:
    """`roundtable host` as the README starts it off loopback: certificate, key, ROUNDTABLE_TOKEN."""
    args = ("host", "--address", address, "--log-level", "WARNING", *certs.host_args())
    host = procs.python("roundtable+tls-host", "roundtable", *args, env=certs.env())
    host.wait_for(READY_LINE, 60)
    return host


def check_tls(address: str, ca: str, timeout: float = 10.0) -> str:
    """A TLS handshake with the host, checked against the dev CA: the port really speaks TLS."""
    host, _, port = address.rpartition(":")
    context = ssl.create_default_context(cafile=ca)
    context.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            cipher = tls.cipher()
            return f"{tls.version()}, {cipher[0] if cipher else '?'}"


@dataclass(frozen=True)
class Variant:
    name: str
    start_host: Callable[[Procs, str, Certs], Proc]
    worker: str  # the --variant of benchmarks._hop_worker
    tls: bool = False


VARIANTS = (
    Variant("bare", _bare_host, "bare"),
    Variant("roundtable", _roundtable_host, "roundtable"),
    Variant("roundtable+tls", _tls_host, "roundtable+tls", tls=True),
)


def run(settings: Settings, log_dir: Path) -> dict[str, Any]:
    raw: dict[str, dict[str, Any]] = {v.name: {"rtt_ns": [], "lost": 0, "floods": []} for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="roundtable-bench-certs-") as tmp, processes(log_dir / "hop") as procs:
        from roundtable.security import write_dev_certificates

        certs = Certs(Path(tmp))
        write_dev_certificates(certs.directory, ["127.0.0.1", "localhost"])
        pingers: dict[str, Proc] = {}
        for variant in VARIANTS:
            address = f"127.0.0.1:{free_port()}"
            variant.start_host(procs, address, certs)
            wait_port(address, 30)
            common: tuple[str, ...] = ("--variant", variant.worker, "--host", address)
            env = None
            if variant.tls:
                raw[variant.name]["tls"] = check_tls(address, certs.ca)
                common += ("--tls-ca", certs.ca)
                env = certs.env()
            pong = procs.python(f"{variant.name}-pong", "benchmarks._hop_worker", "--role", "pong", *common, env=env)
            pong.ready(60)
            ping = procs.python(f"{variant.name}-ping", "benchmarks._hop_worker", "--role", "ping", *common, env=env)
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
        if "tls" in data:
            variants[name]["tls"] = data["tls"]
    return {
        "variants": variants,
        "ratio_roundtable_over_bare": ratios(variants.get("roundtable"), variants.get("bare")),
        "ratio_tls_over_bare": ratios(variants.get("roundtable+tls"), variants.get("bare")),
        "ratio_tls_over_roundtable": ratios(variants.get("roundtable+tls"), variants.get("roundtable")),
    }


def ratios(side: dict[str, Any] | None, base: dict[str, Any] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    if side and base:
        for p in ("p50", "p99"):
            out[f"hop_{p}"] = ratio(side["hop_ms"][p], base["hop_ms"][p])
        for mode in FLOOD_MODES:
            out[f"flood_{mode}"] = ratio(side["flood"][mode]["rate"], base["flood"][mode]["rate"])
    return out
