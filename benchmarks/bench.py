"""`benchmarks/run`: every measurement in one run, a table on stdout, JSON and PNG plots.

    benchmarks/run --quick            # CI smoke: small counts, the small model, under 3 minutes
    benchmarks/run --publish          # full run; plots into docs/benchmarks/

Exit code: 1 if a measurement failed, or a message was lost or duplicated where none may be
(concurrent conversations; messages published while the host was down); with --strict,
also if a target was missed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from . import bus, conversations, hop, plots, recovery, report, revisions, soak, startup, streaming
from ._procs import REPO
from .settings import FULL, QUICK, Settings

MEASUREMENTS = ("hop", "conversations", "bus", "streaming", "startup", "recovery", "revisions", "soak")
DEFAULT_JSON = REPO / "benchmarks" / "results" / "latest.json"
PUBLISHED_PLOTS = REPO / "docs" / "benchmarks"


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip()


def _load() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "missing"


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        )
    except (OSError, StopIteration):
        pass
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--", "src"))
    return {
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_model": cpu,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_before": _load(),
        "python": platform.python_version(),
        "commit": commit + (" + uncommitted src changes" if dirty else ""),
        "versions": {p: _version(p) for p in ("autogen-core", "autogen-ext", "grpcio", "llama_cpp_python", "pydantic")},
    }


def _clean(value: Any) -> Any:
    """NaN is not JSON: write null instead."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def attempt(name: str, step: Callable[[], Any]) -> Any:
    began = time.monotonic()
    load = _load()
    print(f"-- {name} ...", file=sys.stderr, flush=True)
    try:
        result = step()
    except Exception as error:  # one failed measurement must not lose the others
        traceback.print_exc(file=sys.stderr)
        result = {"error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"}
    print(f"-- {name}: {time.monotonic() - began:.0f} s", file=sys.stderr, flush=True)
    if isinstance(result, dict):
        result["load"] = f"{load} -> {_load()}"  # the 1-minute load average: how shared the machine was
    return result


def run(settings: Settings, only: set[str], log_dir: Path, profile: bool) -> dict[str, Any]:
    results: dict[str, Any] = {"meta": machine() | {"mode": settings.mode}, "settings": settings.as_dict()}
    began = time.monotonic()
    if "hop" in only:
        results["hop"] = attempt("hop latency and one-way throughput", lambda: hop.run(settings, log_dir))
    if "conversations" in only:
        results["conversations"] = attempt(
            "turn overhead and concurrent conversations", lambda: conversations.run(settings, log_dir, profile)
        )
    if "bus" in only:
        results["bus"] = attempt("the NATS bus against the gRPC host", lambda: bus.run(settings, log_dir))
    if "streaming" in only:
        results["streaming"] = []
        for model in settings.stream_models:

            def measure(model: str = model) -> dict[str, Any]:
                return streaming.run(settings, log_dir, model, profile)

            result = attempt(f"streaming, {model} model", measure)
            results["streaming"].append(result | ({"model": model} if "error" in result else {}))
    if "startup" in only:
        results["startup"] = attempt("start-up and memory", lambda: startup.run(settings, log_dir))
    if "recovery" in only:
        results["recovery"] = attempt("host restart", lambda: recovery.run(settings, log_dir))
    if "revisions" in only:
        results["revisions"] = attempt(
            "revisions on the default model (quality)", lambda: revisions.run(settings, log_dir)
        )
    if "soak" in only:
        results["soak"] = attempt(
            f"soak, {settings.soak_conversations:,} conversations", lambda: soak.run(settings, log_dir)
        )
    results["meta"]["load_after"] = _load()
    results["meta"]["seconds"] = round(time.monotonic() - began, 1)
    return results


def failed(results: dict[str, Any], strict: bool) -> bool:
    errors = [v for k, v in results.items() if k in MEASUREMENTS and isinstance(v, dict) and "error" in v]
    errors += [s for s in results.get("streaming") or [] if "error" in s]
    rows = report.targets(results)
    lost = any(row[0].endswith("concurrent conversations") and row[3] == "MISS" for row in rows)
    lost = lost or report.recovery_lost(results)
    missed = any(row[3] == "MISS" for row in rows)
    return bool(errors) or lost or (strict and missed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks/run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="CI smoke: small counts, the small model only")
    parser.add_argument("--publish", action="store_true", help="draw the plots into docs/benchmarks/")
    parser.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, help=f"where to write results (default {DEFAULT_JSON})"
    )
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(MEASUREMENTS)}")
    parser.add_argument(
        "--profile", action="store_true", help="also profile the turn benchmark's processes with py-spy"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--render", type=Path, metavar="JSON", help="only print the table and draw the plots of a results file"
    )
    args = parser.parse_args(argv)
    plot_dir = PUBLISHED_PLOTS if args.publish else None
    if args.render is not None:
        results = json.loads(args.render.read_text(encoding="utf-8"))
        print(report.render(results))
        made = plots.draw(results, plot_dir or args.render.resolve().parent, report.AGENT_MEMORY_LIMIT_MB)
        print(f"\nplots: {', '.join(str(p) for p in made)}")
        return 0

    only = set(args.only.split(",")) if args.only else set(MEASUREMENTS)
    unknown = only - set(MEASUREMENTS)
    if unknown:
        parser.error(f"unknown measurement(s): {', '.join(sorted(unknown))} (expected: {', '.join(MEASUREMENTS)})")
    settings = QUICK if args.quick else FULL
    out_dir = args.json.resolve().parent
    log_dir = out_dir / "logs"
    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.mkdir(parents=True, exist_ok=True)

    results = run(settings, only, log_dir, args.profile)
    args.json.write_text(json.dumps(_clean(results), indent=1) + "\n", encoding="utf-8")
    print(report.render(results))
    made = plots.draw(results, plot_dir or out_dir, report.AGENT_MEMORY_LIMIT_MB)
    print(f"\nresults: {args.json}\nplots: {', '.join(str(p) for p in made)}\nlogs: {log_dir}")
    print(f"took {results['meta']['seconds']:.0f} s")
    return 1 if failed(results, args.strict) else 0


if __name__ == "__main__":
    sys.exit(main())
