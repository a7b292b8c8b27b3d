"""How much each measurement does, in quick (CI smoke) and full mode: the one place for counts."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Settings:
    mode: str
    # 1. hop latency: blocks of round trips, the variants taking turns block by block
    hop_warmup: int
    hop_blocks: int
    hop_block: int
    # 3a. one-way throughput; the large burst is above roundtable's outbox limit (10,000)
    flood_n: int
    flood_reps: int
    flood_large_n: int
    flood_timeout: float
    # 2. turn overhead: one long conversation
    turn_rounds: int
    # 3b. concurrent conversations
    concurrent: tuple[int, ...]
    concurrent_rounds: int
    # 4. streaming: models to run, generated tokens, repetitions per side
    stream_models: tuple[str, ...]
    stream_max_tokens: int
    stream_reps: int
    stream_latency_runs: int
    # 5. start-up: `roundtable up` runs per config
    startup_runs: int
    # --profile: repetitions of each what-if turn measurement
    whatif_reps: int
    bus_reps: int  # NATS bus against the gRPC host: runs of each side, taking turns
    bus_replicas: tuple[int, ...]  # writer processes on the NATS bus, for the throughput curve
    bus_conversations: int  # conversations at once for that curve ...
    bus_cpu_ms: float  # ... each writer turn costing this much CPU
    # 6. host restart: kills of roundtable's host, and of stock AutoGen's (which never
    # recovers, so each costs the whole bounded wait); messages published while it is down;
    # seconds from the kill to launching the new host; the bounded wait for the messages
    recovery_reps: int
    recovery_bare_reps: int
    recovery_messages: int
    recovery_down_seconds: float
    recovery_wait_seconds: float
    # ... and, for context, kills in the middle of a burst of this many messages
    recovery_burst_reps: int
    recovery_burst: int
    # 7. quality: tasks the built-in writer and editor run on the default model (0: skipped)
    revision_tasks: int
    # 8. soak: conversations through one host and manager, a sample after every `soak_every`
    # (turn times of `soak_sample` conversations in a row, `soak_changes` subscription changes)
    soak_conversations: int
    soak_every: int
    soak_concurrency: int
    soak_sample: int
    soak_changes: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


QUICK = Settings(
    mode="quick",
    hop_warmup=50,
    hop_blocks=10,
    hop_block=100,
    flood_n=2000,
    flood_reps=1,
    flood_large_n=12000,
    flood_timeout=90,
    turn_rounds=40,
    concurrent=(1, 10, 100),
    concurrent_rounds=4,
    stream_models=("small",),
    stream_max_tokens=64,
    stream_reps=2,
    stream_latency_runs=1,
    startup_runs=1,
    whatif_reps=1,
    bus_reps=1,
    bus_replicas=(1, 2),
    bus_conversations=20,
    bus_cpu_ms=100.0,
    recovery_reps=3,
    recovery_bare_reps=1,
    recovery_messages=200,
    recovery_down_seconds=1.0,
    recovery_wait_seconds=10.0,
    recovery_burst_reps=1,
    recovery_burst=2000,
    revision_tasks=0,
    soak_conversations=1000,
    soak_every=250,
    soak_concurrency=25,
    soak_sample=10,
    soak_changes=5,
)

FULL = Settings(
    mode="full",
    hop_warmup=200,
    hop_blocks=20,
    hop_block=250,
    flood_n=8000,
    flood_reps=3,
    flood_large_n=12000,
    flood_timeout=120,
    turn_rounds=200,
    concurrent=(1, 10, 100),
    concurrent_rounds=6,
    stream_models=("small", "default"),
    stream_max_tokens=128,
    stream_reps=5,
    stream_latency_runs=3,
    startup_runs=3,
    whatif_reps=3,
    bus_reps=3,
    bus_replicas=(1, 2, 4),
    bus_conversations=100,
    bus_cpu_ms=100.0,
    recovery_reps=10,
    recovery_bare_reps=3,
    recovery_messages=200,
    recovery_down_seconds=1.0,
    recovery_wait_seconds=10.0,
    recovery_burst_reps=3,
    recovery_burst=2000,
    revision_tasks=5,
    soak_conversations=20000,
    soak_every=1000,
    soak_concurrency=25,
    soak_sample=20,
    soak_changes=10,
)
