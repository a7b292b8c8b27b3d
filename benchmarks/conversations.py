"""Measurement 2 (turn overhead) and the conversation half of 3 (concurrent conversations):
a host, a manager and two scripted agents that answer at once, each its own process.

The host counts what it moves, so messages and bytes per turn are exact, not estimated.
"""

from __future__ import annotations

import itertools
import statistics
from pathlib import Path
from typing import Any

import yaml

from roundtable.messages import STREAM

from . import _profile, agentchat
from ._procs import CpuMeter, Proc, Procs, free_port, memory_kb, processes
from ._stats import summary
from .settings import Settings

READY_LINE = "roundtable ready:"
TASK = "Write two sentences about a lighthouse keeper."
# Two pairs of scripted agents: one answers with a 14-word sentence, the other with one word,
# to tell the fixed cost of a turn from the cost per streamed token. (Until the agents
# coalesced tokens that come within 15 ms, that was 15 StreamChunks against 2; a scripted
# reply comes at once, so now both are 2: the first token, then the rest with the end.)
PAIRS = {
    "sentence": {
        "writer": "Draft {n}: the keeper lights the lamp and counts the ships that pass at dusk.",
        "editor": "Feedback {n}: name one ship, and say what the keeper feels as it passes.",
    },
    "word": {"terse_writer": "Drafted.", "terse_editor": "Noted."},
}


def write_config(path: Path, address: str) -> Path:
    def agent(name: str, reply: str) -> dict[str, Any]:
        model = {"provider": "scripted", "model": name, "script": [reply], "token_delay": 0}
        return {"name": name, "description": f"the {name}", "model": model}

    data = {
        "host": {"address": address, "connect_timeout": 30},
        "model": {"provider": "scripted"},
        "agents": [agent(name, reply) for pair in PAIRS.values() for name, reply in pair.items()],
        "manager": {"turn_timeout": 60, "termination": {"max_rounds": 6, "timeout": 1800}},
        "data_dir": str(path.parent / "data"),  # the manager's transcript store
    }
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def start_manager(procs: Procs, config: Path, rounds: int, pair: str, store: bool = True) -> Proc:
    """`roundtable manager` for one pair of agents; without its transcript store, for diagnosis."""
    args = ("--config", str(config), "--max-rounds", str(rounds), "--agents", ",".join(PAIRS[pair]))
    if store:
        manager = procs.roundtable("manager", "manager", *args)
    else:
        manager = procs.python("manager-without-store", "benchmarks._whatif", *args)
    manager.wait_for(READY_LINE, 60)
    return manager


def start_agents(procs: Procs, config: Path, pair: str) -> dict[str, Proc]:
    agents = {name: procs.roundtable(name, "agent", "--config", str(config), "--name", name) for name in PAIRS[pair]}
    for agent in agents.values():
        agent.wait_for(READY_LINE, 60)
    return agents


def run(settings: Settings, log_dir: Path, profile: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    logs = log_dir / "conversations"
    with processes(logs) as procs:
        address = f"127.0.0.1:{free_port()}"
        config = write_config(logs / "roundtable.yaml", address)
        host = procs.python("host", "benchmarks._counting_host", address)
        host.ready(60)
        agents = start_agents(procs, config, "sentence")

        # 3b. Concurrent conversations first: they also warm every process up for the turns.
        manager = start_manager(procs, config, settings.concurrent_rounds, "sentence")
        driver = procs.python(
            "driver-concurrent", "benchmarks._conversations", "--host", address, "--mode", "concurrent"
        )
        driver.ready(60)
        runs = []
        for count in settings.concurrent:
            timeout = 60 + 2.0 * count * settings.concurrent_rounds
            command = {
                "cmd": "concurrent",
                "count": count,
                "messages": settings.concurrent_rounds + 1,  # the task, then one per round
                "task": TASK,
                "timeout": timeout,
            }
            runs.append(driver.request(command, timeout + 30))
        out["concurrent"] = {"rounds": settings.concurrent_rounds, "runs": runs}
        out["memory_after_conversations"] = {
            "conversations": sum(settings.concurrent),
            "kb": {name: memory_kb(agents[name].pid) for name in PAIRS["sentence"]}
            | {"manager": memory_kb(manager.pid), "host": memory_kb(host.pid)},
        }
        procs.stop(driver)
        procs.stop(manager)

        # 2. Turn overhead: one long conversation per pair, watched by roundtable's own observer.
        out["turns"] = {}
        for pair in PAIRS:
            if set(agents) != set(PAIRS[pair]):
                for proc in agents.values():  # only the agents of the deployment measured
                    procs.stop(proc)
                agents = start_agents(procs, config, pair)
            manager = start_manager(procs, config, settings.turn_rounds, pair)
            driver = procs.python(
                f"driver-turns-{pair}", "benchmarks._conversations", "--host", address, "--mode", "turns"
            )
            driver.ready(60)
            speakers = {name: [agents[name].pid] for name in PAIRS[pair]}
            meter = CpuMeter({"host": [host.pid], "manager": [manager.pid], "observer": [driver.pid]} | speakers)
            out["turns"][pair] = measure_turns(host, driver, meter, settings.turn_rounds)
            if profile and pair == "sentence":
                targets = {"host": host.pid, "manager": manager.pid, "observer": driver.pid}
                targets |= {name: pids[0] for name, pids in speakers.items()}
                spies = _profile.start(procs, targets, log_dir / "profiles")
                timeout = 3 * (60 + settings.turn_rounds)
                driver.request({"cmd": "turns", "task": TASK, "timeout": timeout}, timeout + 30)
                out["profile"] = _profile.stop(procs, spies)
                procs.stop(manager)
                out["what_if"] = what_if(procs, host, driver, config, settings.turn_rounds, settings.whatif_reps)
            else:
                procs.stop(manager)
            procs.stop(driver)
    # The same turns in AgentChat's own group chat, in this process, once ours have finished.
    out["agentchat"] = agentchat.run(settings, PAIRS["sentence"], TASK)
    return out


# The host's per-message log formatting, the other cost this diagnosis used to take away,
# is gone from roundtable's host itself.
WHAT_IF = {"as it is": True, "manager without its store": False}


def what_if(procs: Procs, host: Proc, driver: Proc, config: Path, rounds: int, reps: int) -> dict[str, Any]:
    """Turn time with the transcript store taken away, taking turns with the unchanged
    set-up so that they share the machine's moods."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in WHAT_IF}
    for rep in range(reps):
        for name, store in list(WHAT_IF.items())[:: 1 if rep % 2 == 0 else -1]:
            manager = start_manager(procs, config, rounds, "sentence", store=store)
            meter = CpuMeter({"host": [host.pid], "manager": [manager.pid]})
            turns = measure_turns(host, driver, meter, rounds)
            runs[name].append(
                {"p50": turns["turn_ms"]["p50"], "mean": turns["turn_mean_ms"]} | turns["cpu_ms_per_turn"]
            )
            procs.stop(manager)
    return {
        name: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for name, results in runs.items()
        if results
    }


def measure_turns(host: Proc, driver: Proc, meter: CpuMeter, rounds: int) -> dict[str, Any]:
    timeout = 60 + rounds * 1.0
    driver.request({"cmd": "turns", "task": TASK, "timeout": timeout}, timeout + 30)  # warm-up
    host.request({"cmd": "chat_times"}, 30)
    before = host.request({"cmd": "counts"}, 30)
    with meter.measure():
        result = driver.request({"cmd": "turns", "task": TASK, "timeout": timeout}, timeout + 30)
    after = host.request({"cmd": "counts"}, 30)
    at_host = [t for t in host.request({"cmd": "chat_times"}, 30)["times"] if t[1] == result["id"]]
    turns = analyse_turns(result, at_host, rounds)
    turns["traffic"] = traffic(before, after, rounds)
    stream = turns["traffic"]["published"]["by_topic"].get(STREAM)
    turns["chunks_per_turn"] = stream[0] / rounds if stream else 0.0
    turns["cpu_ms_per_turn"] = meter.per(rounds)
    return turns


def _spacing_ms(times: list[float]) -> list[float]:
    return [(b - a) * 1e3 for a, b in itertools.pairwise(times)]


def analyse_turns(result: dict[str, Any], at_host: list[list[Any]], rounds: int) -> dict[str, Any]:
    """Turn = the time between consecutive ChatMessages, as the observer got them and as the
    host got them from the manager. The observer's lag is how much later it had each one."""
    events = result["events"]
    messages = sorted((e[2], e[1]) for e in events if e[0] == "message")  # (seq, time)
    speakers = [e[1] for e in events if e[0] == "speaker"]
    tokens = [e for e in events if e[0] == "token"]
    observed = dict(messages)
    hosted = {seq: t for t, _, seq in at_host}
    turn_ms = _spacing_ms([t for _, t in messages])
    host_turn_ms = _spacing_ms([hosted[seq] for seq in sorted(hosted)])
    lag_ms = [(observed[seq] - hosted[seq]) * 1e3 for seq in sorted(hosted) if seq in observed]
    selected_ms = [(m - s) * 1e3 for s, (_, m) in zip(speakers, messages[1:], strict=False)]
    seqs = [seq for seq, _ in messages]
    half = len(turn_ms) // 2
    wall = (messages[-1][1] - messages[0][1]) if len(messages) > 1 else float("nan")
    return {
        "rounds": rounds,
        "messages": len(messages),
        "seqs_ok": seqs == list(range(1, rounds + 2)),
        "end": result["end"][1:] if result["end"] else None,
        "turn_ms": summary(turn_ms),
        "turn_at_host_ms": summary(host_turn_ms),
        "turn_mean_ms": wall * 1e3 / max(len(turn_ms), 1),
        "observer_lag_ms": summary(lag_ms),
        "turn_first_half_ms": summary(turn_ms[:half]),
        "turn_second_half_ms": summary(turn_ms[half:]),
        "speaker_to_message_ms": summary(selected_ms),
        "tokens_per_turn": len(tokens) / max(len(turn_ms), 1),
        "series_ms": turn_ms,
        "host_series_ms": host_turn_ms,
        "lag_series_ms": lag_ms,
    }


def traffic(before: dict[str, Any], after: dict[str, Any], rounds: int) -> dict[str, Any]:
    """Per turn, from the host's own counts: published messages and the copies delivered."""

    def delta(kind: str) -> dict[str, list[int]]:
        old = before[kind]
        return {
            topic: [value - (old.get(topic) or [0, 0, 0])[i] for i, value in enumerate(values)]
            for topic, values in after[kind].items()
            if values != old.get(topic)
        }

    result: dict[str, Any] = {}
    for kind in ("published", "delivered"):
        by_topic = delta(kind)
        totals = [sum(v[i] for v in by_topic.values()) for i in range(3)]
        result[kind] = {
            "per_turn": {
                "messages": totals[0] / rounds,
                "payload_bytes": totals[1] / rounds,
                "envelope_bytes": totals[2] / rounds,
            },
            "by_topic": by_topic,
        }
    return result
