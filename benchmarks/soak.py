"""Measurement 8 (soak): many short conversations through one host and one manager. Does
anything grow with age?

A host, a manager and two scripted agents (one-word replies), each its own process, and a
driver that runs two-round conversations `concurrency` at a time. After every `every`
conversations, with nothing else running, it samples: the RSS of the host and the manager,
the turn times of a few conversations run one after another, and how long the host takes to
add and remove a subscription. Each should stay flat: within 10% of the first sample
(report.SOAK_FLAT).

The conversations start only once the host's first `HOLD_AFTER_START` seconds are over. In
those seconds a freshly started host keeps events for workers that have not subscribed again
yet (up to `HELD_BYTES_LIMIT`), and a subscription change hands them over: that costs memory
and time by design, bounded, and only at start. A quick soak's conversations would all fall
inside the window and measure it instead of age.

For comparison, in this process: the cost of one subscription change in AutoGen's own routing
table (`SubscriptionManager`, which the host and every worker used to keep) against
roundtable's (`routing.Routes`), as the same topics come and go.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

from autogen_core import TopicId, TypeSubscription
from autogen_core._runtime_impl_helpers import SubscriptionManager  # the stock table, to compare with

from roundtable.host import HOLD_AFTER_START
from roundtable.routing import Routes

from ._procs import free_port, memory_kb, processes
from .conversations import READY_LINE, start_agents, start_manager, write_config
from .settings import Settings

ROUNDS = 2
PAIR = "word"
#: The topic types one conversation uses, and who subscribes to them, as in a deployment.
TOPIC_TYPES = ("control", "group_chat", "stream", "turn.writer", "turn.editor")
SUBSCRIBERS = {"control": ["manager"], "group_chat": ["ui", "chat"], "stream": ["ui", "chat"]} | {
    "turn.writer": ["writer"],
    "turn.editor": ["editor"],
}


def run(settings: Settings, log_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"every": settings.soak_every, "concurrency": settings.soak_concurrency}
    logs = log_dir / "soak"
    with processes(logs) as procs:
        address = f"127.0.0.1:{free_port()}"
        config = write_config(logs / "roundtable.yaml", address)
        host = procs.roundtable("host", "host", "--config", str(config))
        host.wait_for(READY_LINE, 60)
        host_ready = time.monotonic()
        start_agents(procs, config, PAIR)
        manager = start_manager(procs, config, ROUNDS, PAIR)
        driver = procs.python("driver-soak", "benchmarks._conversations", "--host", address, "--mode", "concurrent")
        driver.ready(60)
        time.sleep(max(0.0, host_ready + HOLD_AFTER_START + 0.5 - time.monotonic()))
        samples = []
        began = time.monotonic()
        for done in range(settings.soak_every, settings.soak_conversations + 1, settings.soak_every):
            timeout = 120.0
            command = {
                "cmd": "soak",
                "count": settings.soak_every,
                "concurrency": settings.soak_concurrency,
                "sample": settings.soak_sample,
                "changes": settings.soak_changes,
                "timeout": timeout,
            }
            block = driver.request(command, timeout * (2 + settings.soak_every / settings.soak_concurrency))
            samples.append(
                {
                    "conversations": done,
                    "seconds": round(time.monotonic() - began, 1),
                    "host_kb": memory_kb(host.pid).get("VmRSS"),
                    "manager_kb": memory_kb(manager.pid).get("VmRSS"),
                    "turn_p50_ms": statistics.median(block["turn_ms"]) if block["turn_ms"] else None,
                    "change_p50_ms": statistics.median(block["change_ms"]) if block["change_ms"] else None,
                    "unfinished": block["unfinished"],
                    "failed": block["failed"],
                }
            )
            print(f"   soak: {done} conversations, {samples[-1]}", flush=True)
        procs.stop(driver)
    out["samples"] = samples
    out["flat"] = flatness(samples)
    out["routing_tables"] = asyncio.run(compare_tables(settings.soak_conversations, settings.soak_every))
    return out


def flatness(samples: list[dict[str, Any]]) -> dict[str, float | None]:
    """Each measure's last sample over its first (1.0: flat)."""
    ratios: dict[str, float | None] = {}
    for key in ("host_kb", "manager_kb", "turn_p50_ms", "change_p50_ms"):
        first, last = samples[0].get(key) if samples else None, samples[-1].get(key) if samples else None
        ratios[key] = round(last / first, 3) if first and last else None
    return ratios


async def compare_tables(conversations: int, every: int) -> list[dict[str, Any]]:
    """One subscription change (add, then remove) in each table, after each `every`
    conversations' topics have been routed through both."""
    stock, ours = SubscriptionManager(), Routes()
    for topic_type, agents in SUBSCRIBERS.items():
        for agent in agents:
            await stock.add_subscription(TypeSubscription(topic_type, agent))
            await ours.add_subscription(TypeSubscription(topic_type, agent))
    rows = []
    for done in range(every, conversations + 1, every):
        for i in range(done - every, done):
            for topic_type in TOPIC_TYPES:
                topic = TopicId(topic_type, f"conversation-{i}")
                await stock.get_subscribed_recipients(topic)
                await ours.get_subscribed_recipients(topic)
        row: dict[str, Any] = {"conversations": done, "topics": done * len(TOPIC_TYPES)}
        # AutoGen's takes seconds by the end, so once; ours the median of five.
        for name, table, reps in (("autogen_ms", stock, 1), ("roundtable_ms", ours, 5)):
            times = []
            for rep in range(reps):
                probe = TypeSubscription(f"probe-{done}-{rep}", "probe")
                began = time.perf_counter()
                await table.add_subscription(probe)
                await table.remove_subscription(probe.id)
                await table.get_subscribed_recipients(TopicId("control", "conversation-0"))  # routing again
                times.append((time.perf_counter() - began) * 1e3)
            row[name] = round(statistics.median(times), 4)
        rows.append(row)
    return rows
