"""Measurement 4: tokens per second that reach a subscriber through the llama.cpp server, an
agent and the host, against `llama_cpp.Llama` iterated in process on the same file, request
and settings; and the latency from the server sending a token to the subscriber having it.
A third side, the server's SSE read by a plain HTTP client, tells the server's cost from ours.

The sides take turns run by run (ABC, CBA), so a slow moment of the shared machine falls on
all of them. Latency is measured on a second agent whose model URL goes through a timestamping
tap (see `_tap.py`); the throughput agent talks to the server directly.
"""

from __future__ import annotations

import itertools
import statistics
from pathlib import Path
from typing import Any

import yaml

from . import _profile
from ._procs import CpuMeter, descendants, free_port, processes
from ._stats import ratio, summary
from .settings import Settings

READY_LINE = "roundtable ready:"
MODEL_READY = "roundtable ready: model server"
SYSTEM = "You are a storyteller. You write long, detailed stories."
TASK = "Tell a long story about a lighthouse keeper who counts the ships that pass at night."


def write_config(path: Path, address: str, model: str, port: int, tap_port: int, max_tokens: int) -> Path:
    sampling = {
        "provider": "local",
        "temperature": 0,
        "max_tokens": max_tokens,
        "repeat_penalty": 1.0,
        "max_retries": 0,
    }
    tapped = {**sampling, "base_url": f"http://127.0.0.1:{tap_port}/v1"}
    data = {
        "host": {"address": address, "connect_timeout": 30},
        "local_model": {"model": model, "port": port},
        "model": sampling,
        "agents": [
            {"name": "streamer", "system_message": SYSTEM, "model": sampling},
            {"name": "tapped", "system_message": SYSTEM, "model": tapped},
        ],
        "data_dir": str(path.parent / "data"),
    }
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def rates(run: dict[str, Any]) -> dict[str, float]:
    """End to end (request to last token), decode (first to last token) and time to first token."""
    times = [t for t, _ in run["tokens"]]
    n = len(times)
    if n < 2:
        return {"tokens": n, "e2e": float("nan"), "decode": float("nan"), "ttft_ms": float("nan")}
    return {
        "tokens": n,
        "e2e": n / (times[-1] - run["t0"]),
        "decode": (n - 1) / (times[-1] - times[0]),
        "ttft_ms": (times[0] - run["t0"]) * 1e3,
    }


def text(run: dict[str, Any]) -> str:
    return "".join(piece for _, piece in run["tokens"])


def per_token(run: dict[str, Any], pieces: list[str]) -> dict[str, Any]:
    """What the observer got is chunks: an agent sends tokens that come within 15 ms of its
    last chunk together in the next one. Count model tokens, not chunks: each of the server's
    tokens (`pieces`, the same text) arrives with the chunk that completes it."""
    chunks = run["tokens"]
    if "".join(piece for _, piece in chunks) != "".join(pieces):
        return run | {"chunks": chunks, "per_token": False}  # analyse() reports the text mismatch
    ends = list(itertools.accumulate(len(piece) for _, piece in chunks))
    tokens: list[list[Any]] = []
    end = 0
    j = 0
    for piece in pieces:
        end += len(piece)
        while ends[j] < end:
            j += 1
        tokens.append([chunks[j][0], piece])
    return run | {"tokens": tokens, "chunks": chunks, "per_token": True}


def gaps_ms(run: dict[str, Any]) -> list[float]:
    """Between arrivals: of chunks, on the roundtable side."""
    times = [t for t, _ in run.get("chunks", run["tokens"])]
    return [(b - a) * 1e3 for a, b in itertools.pairwise(times)]


def run(settings: Settings, log_dir: Path, model: str, profile: bool = False) -> dict[str, Any]:
    from roundtable.localmodel import default_threads, resolve_model

    model_path = resolve_model(model, progress=False)
    threads = default_threads()
    n_ctx = 4096
    logs = log_dir / f"streaming-{model}"
    with processes(logs) as procs:
        address = f"127.0.0.1:{free_port()}"
        port, tap_port = free_port(), free_port()
        config = str(write_config(logs / "roundtable.yaml", address, model, port, tap_port, settings.stream_max_tokens))
        server = procs.roundtable("model", "model", "--config", config, "--threads", str(threads))
        host = procs.roundtable("host", "host", "--config", config)
        raw = procs.python(
            "raw-llama",
            "benchmarks._raw_llama",
            "--model-path",
            str(model_path),
            "--n-ctx",
            str(n_ctx),
            "--threads",
            str(threads),
        )
        tap = procs.python("tap", "benchmarks._tap", "--listen", str(tap_port), "--target", f"127.0.0.1:{port}")
        host.wait_for(READY_LINE, 60)
        server.wait_for(MODEL_READY, 600)
        tap.ready(60)
        agents = [
            procs.roundtable(name, "agent", "--config", config, "--name", name) for name in ("streamer", "tapped")
        ]
        for agent in agents:
            agent.wait_for(READY_LINE, 60)
        driver = procs.python("driver", "benchmarks._stream_driver", "--host", address)
        driver.ready(60)
        raw.ready(600)
        timeout = 60 + settings.stream_max_tokens * 2.0

        def speak(agent: str) -> dict[str, Any]:
            result = driver.request({"cmd": "speak", "agent": agent, "task": TASK, "timeout": timeout}, timeout + 30)
            if result["error"]:
                raise RuntimeError(f"{agent}: {result['error']}")
            return result

        def generate(request: Any) -> dict[str, Any]:
            return raw.request({"cmd": "generate", "request": request}, timeout + 30)

        def http(request: Any) -> dict[str, Any]:
            command = {"cmd": "http", "url": f"http://127.0.0.1:{port}/v1/chat/completions", "request": request}
            return driver.request({**command, "timeout": timeout}, timeout + 30)

        # Warm up both, and take the request the agent really sends: the raw side replays it.
        speak("tapped")
        captured = tap.request({"cmd": "take"}, 30)["request"]
        if not captured:
            raise RuntimeError("the tap saw no request from the agent")
        generate(captured)
        pieces = [piece for _, piece in http(captured)["tokens"]]  # the server's tokens, one by one
        speak("streamer")

        sides: dict[str, list[dict[str, Any]]] = {"roundtable": [], "server": [], "raw": []}
        measure = {
            "roundtable": lambda: per_token(speak("streamer"), pieces),
            "server": lambda: http(captured),
            "raw": lambda: generate(captured),
        }
        groups = {
            "model server": [server.pid, *descendants(server.pid)],
            "host": [host.pid],
            "agent": [agents[0].pid],
            "subscriber": [driver.pid],
            "raw llama": [raw.pid],
        }
        meters = {name: CpuMeter(groups) for name in sides}
        for rep in range(settings.stream_reps):
            for name in list(sides) if rep % 2 == 0 else list(sides)[::-1]:
                with meters[name].measure():
                    sides[name].append(measure[name]())
        cpu_ms_per_token = {name: meters[name].per(sum(len(r["tokens"]) for r in runs)) for name, runs in sides.items()}

        latencies: list[float] = []
        mismatched = 0
        tapped_runs = []
        for _ in range(settings.stream_latency_runs):
            tap.request({"cmd": "take"}, 30)  # start empty
            chunks = speak("tapped")
            sent = tap.request({"cmd": "take"}, 30)["tokens"]
            seen = per_token(chunks, [piece for _, piece in sent])  # each token: when its chunk arrived
            tapped_runs.append({"sent": len(sent), "received": len(seen["tokens"]), "chunks": len(chunks["tokens"])})
            for (t_sent, piece_sent), (t_seen, piece_seen) in zip(sent, seen["tokens"], strict=False):
                if piece_sent != piece_seen:
                    mismatched += 1
                latencies.append((t_seen - t_sent) * 1e3)
        profiles = None
        if profile:  # after the measurement, on runs of their own
            targets = {"agent": agents[0].pid, "host": host.pid, "observer": driver.pid}
            spies = _profile.start(procs, targets, log_dir / f"profiles-streaming-{model}")
            for _ in range(settings.stream_reps):
                speak("streamer")
            profiles = _profile.stop(procs, spies)
    result = analyse(model, model_path, threads, n_ctx, captured, sides, latencies, mismatched, tapped_runs)
    result["cpu_ms_per_token"] = cpu_ms_per_token
    if profiles is not None:
        result["profile"] = profiles
    return result


def analyse(
    model: str,
    model_path: Path,
    threads: int,
    n_ctx: int,
    request: dict[str, Any],
    runs_by_side: dict[str, list[dict[str, Any]]],
    latencies: list[float],
    mismatched: int,
    tapped_runs: list[dict[str, Any]],
) -> dict[str, Any]:
    sides: dict[str, Any] = {}
    for name, runs in runs_by_side.items():
        per_run = [rates(r) for r in runs]
        best = runs[max(range(len(runs)), key=lambda i: per_run[i]["e2e"])]
        sides[name] = {
            "runs": per_run,
            "chunks": statistics.median(len(r.get("chunks", r["tokens"])) for r in runs),
            "tokens": statistics.median(r["tokens"] for r in per_run),
            # The best run of each side: other work on a shared machine only ever slows a run down.
            "e2e": max(r["e2e"] for r in per_run),
            "decode": max(r["decode"] for r in per_run),
            "e2e_median": statistics.median(r["e2e"] for r in per_run),
            "decode_median": statistics.median(r["decode"] for r in per_run),
            "ttft_ms": statistics.median(r["ttft_ms"] for r in per_run),
            "gap_ms": summary([g for r in runs for g in gaps_ms(r)]),
            "timeline": [[t - best["t0"], i] for i, (t, _) in enumerate(best["tokens"])],  # of the best run
        }
    everything = [r for runs in runs_by_side.values() for r in runs]
    same_text = bool(everything) and all(text(r) == text(everything[0]) for r in everything)
    return {
        "model": model,
        "model_file": model_path.name,
        "n_threads": threads,
        "n_ctx": n_ctx,
        "request": {k: v for k, v in request.items() if k != "messages"},
        "prompt_messages": request.get("messages"),
        "same_text": same_text,
        "sides": sides,
        "ratio_e2e": ratio(sides["roundtable"]["e2e"], sides["raw"]["e2e"]),
        "ratio_decode": ratio(sides["roundtable"]["decode"], sides["raw"]["decode"]),
        "ratio_server_e2e": ratio(sides["server"]["e2e"], sides["raw"]["e2e"]),
        "ratio_server_decode": ratio(sides["server"]["decode"], sides["raw"]["decode"]),
        "ratio_e2e_median": ratio(sides["roundtable"]["e2e_median"], sides["raw"]["e2e_median"]),
        "latency_ms": summary(latencies),
        "latency_samples_ms": latencies,
        "latency_text_mismatches": mismatched,
        "tapped_runs": tapped_runs,
    }
