"""PNG plots of a results file, one per measurement, with matplotlib (no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLORS = {
    "bare": "#7f7f7f",
    "roundtable": "#1f77b4",
    "roundtable+tls": "#2ca02c",
    "raw": "#7f7f7f",
    "server": "#ff7f0e",
}
LABELS = {"sentence": "14-word replies", "word": "1-word replies"}


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def hop(data: dict[str, Any], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, variant in data["variants"].items():
        if not variant:
            continue
        samples = sorted(variant["hop_samples_ms"])
        fractions = [(i + 1) / len(samples) for i in range(len(samples))]
        ax.plot(samples, fractions, label=f"{name} (p50 {variant['hop_ms']['p50']:.2f} ms)", color=COLORS.get(name))
    ax.set_xscale("log")
    ax.set_xlabel("hop latency, worker -> host -> worker (ms, log scale)")
    ax.set_ylabel("fraction of hops")
    ax.set_title("Hop latency: stock AutoGen vs roundtable's runtime, plain and TLS + token")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, out / "hop.png")


def turns(data: dict[str, Any], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4))
    for pair, turn in data["turns"].items():
        series = turn["series_ms"]
        chunks = turn.get("chunks_per_turn", float("nan"))
        label = f"{LABELS.get(pair, pair)} ({chunks:.1f} chunks/turn)"
        ax.plot(range(1, len(series) + 1), series, lw=0.9, label=label)
    ax.axhline(2.0, color="green", ls="--", lw=0.8, label="target p50 2 ms")
    ax.axhline(10.0, color="red", ls="--", lw=0.8, label="target p99 10 ms")
    ax.set_xlabel("turn in the conversation (the history grows with it; an ask carries only what is new)")
    ax.set_ylabel("ChatMessage to ChatMessage at the observer (ms)")
    ax.set_title("Turn time, scripted agents answering at once")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out / "turns.png")


def concurrency(data: dict[str, Any], out: Path) -> Path:
    runs = data["concurrent"]["runs"]
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = [str(r["count"]) for r in runs]
    bars = ax.bar(labels, [r["seconds"] for r in runs], color=COLORS["roundtable"])
    for bar, run in zip(bars, runs, strict=True):
        note = f"{run['seconds']:.2f} s\nlost {run['lost']}, dup {run['duplicated']}"
        ax.annotate(note, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_xlabel("conversations started at once")
    ax.set_ylabel("seconds until all ended")
    ax.set_title(f"Concurrent conversations, {data['concurrent']['rounds']} rounds each")
    ax.margins(y=0.25)
    return _save(fig, out / "concurrency.png")


def streaming(streams: list[dict[str, Any]], out: Path) -> Path:
    good = [s for s in streams if "error" not in s]
    fig, axes = plt.subplots(2, max(len(good), 1), figsize=(6 * max(len(good), 1), 7), squeeze=False)
    for col, stream in enumerate(good):
        ax = axes[0][col]
        for name, side in stream["sides"].items():
            times = [t * 1e3 for t, _ in side["timeline"]]
            counts = [i + 1 for _, i in side["timeline"]]
            ax.plot(times, counts, label=f"{name}: {side['e2e']:.0f} tok/s", color=COLORS.get(name))
        ax.set_xlabel("ms since the request")
        ax.set_ylabel("tokens received")
        ax.set_title(f"{stream['model']} model: tokens as they arrive (each side's best run)")
        ax.grid(True, alpha=0.3)
        ax.legend()
        ax = axes[1][col]
        ax.hist(stream["latency_samples_ms"], bins=40, color=COLORS["roundtable"])
        latency = stream["latency_ms"]
        ax.set_xlabel(f"server sent -> observer has it (ms); p50 {latency['p50']:.2f}, p95 {latency['p95']:.2f}")
        ax.set_ylabel("tokens")
        ax.set_title("Token latency through agent, host and observer")
    return _save(fig, out / "streaming.png")


def memory(data: dict[str, Any], out: Path, limit_mb: float) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4))
    kinds = list(data)
    names: list[str] = []
    for kind in kinds:
        names += [n for n in data[kind]["memory_at_ready_kb"] if n not in names]
    width = 0.8 / max(len(kinds), 1)
    for k, kind in enumerate(kinds):
        snapshot = data[kind]["memory_after_chat_kb"]
        values = [snapshot.get(n, {}).get("VmRSS", 0) / 1024 for n in names]
        ax.barh(
            [i + k * width for i in range(len(names))], values, height=width, label=f"{kind}, after one conversation"
        )
    ax.axvline(limit_mb, color="red", ls="--", lw=0.8, label=f"agent target {limit_mb:.0f} MB")
    ax.set_yticks([i + width * (len(kinds) - 1) / 2 for i in range(len(names))], names)
    ax.set_xlabel("RSS (MB)")
    ax.set_title("Memory of each process `roundtable up` starts")
    ax.legend(fontsize=8)
    return _save(fig, out / "memory.png")


def recovery(data: dict[str, Any], out: Path) -> Path:
    """Each restart of roundtable's host: from its ready line to the first and to the last
    of the messages published while it was down; stock AutoGen's never come."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    rt = data["variants"].get("roundtable")
    top = 1.3
    if rt:
        runs = rt["runs"]
        xs = range(1, len(runs) + 1)
        last = [r["recovery_s"] if r["recovery_s"] is not None else float("nan") for r in runs]
        first = [r["first_s"] if r["first_s"] is not None else float("nan") for r in runs]
        ax.vlines(xs, first, last, color=COLORS["roundtable"], lw=2)
        ax.plot(xs, last, "o", color=COLORS["roundtable"], label=f"roundtable: all {rt['n']} messages there")
        ax.plot(xs, first, "_", color=COLORS["roundtable"], ms=12, label="roundtable: the first one")
        top = max([top, *[v * 1.1 for v in last if v == v]])
        ax.set_xticks(list(xs))
    ax.axhline(1.0, color="red", ls="--", lw=0.8, label="README: within 1 s")
    bare = data["variants"].get("bare")
    if bare:
        ax.annotate(
            f"stock AutoGen, {bare['reps']} restart(s): {bare['published'] - bare['lost']} of {bare['published']}"
            f" messages arrived within {bare['wait_s']:g} s",
            (0.02, 0.93),
            xycoords="axes fraction",
            fontsize=8,
            color=COLORS["bare"],
        )
    ax.set_xlabel("restart")
    ax.set_ylabel("seconds after the new host's ready line")
    ax.set_title("Host killed and started again: messages published while it was down")
    ax.set_ylim(0, top)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="center right")
    return _save(fig, out / "recovery.png")


def soak(data: dict[str, Any], out: Path) -> Path:
    """Every sample of the soak, each measure over its first sample; below, one subscription
    change in AutoGen's routing table and in roundtable's, as topics come and go."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.5))
    samples = data["samples"]
    xs = [s["conversations"] for s in samples]
    for key, label in (
        ("host_kb", "host RSS"),
        ("manager_kb", "manager RSS"),
        ("turn_p50_ms", "turn p50"),
        ("change_p50_ms", "subscription change p50"),
    ):
        values = [s[key] for s in samples]
        first = values[0] if values and values[0] else None
        if first:
            top.plot(xs, [v / first if v else float("nan") for v in values], "o-", ms=3, label=label)
    top.axhspan(0.9, 1.1, color="green", alpha=0.08, label="within 10% of the first sample")
    top.set_xlabel("conversations through one host and one manager")
    top.set_ylabel("over the first sample")
    top.set_title("Soak: does anything grow with age?")
    top.grid(True, alpha=0.3)
    top.legend(fontsize=8)
    tables = data.get("routing_tables") or []
    if tables:
        topics = [r["topics"] for r in tables]
        for key, color, label in (
            ("autogen_ms", COLORS["bare"], "AutoGen SubscriptionManager"),
            ("roundtable_ms", COLORS["roundtable"], "roundtable Routes"),
        ):
            bottom.plot(topics, [r[key] for r in tables], color=color, label=label)
        bottom.set_yscale("log")
        bottom.set_xlabel("topics that have come and gone")
        bottom.set_ylabel("one subscription change (ms, log)")
        bottom.set_title("Routing table, in process: the cost of a change as topics accumulate")
        bottom.grid(True, which="both", alpha=0.3)
        bottom.legend(fontsize=8)
    return _save(fig, out / "soak.png")


def draw(results: dict[str, Any], out: Path, limit_mb: float) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    if results.get("hop") and "error" not in results["hop"]:
        made.append(hop(results["hop"], out))
    conversations = results.get("conversations")
    if conversations and "error" not in conversations:
        made += [turns(conversations, out), concurrency(conversations, out)]
    if results.get("streaming"):
        made.append(streaming(results["streaming"], out))
    if results.get("startup") and "error" not in results["startup"]:
        made.append(memory(results["startup"]["configs"], out, limit_mb))
    if results.get("recovery") and "error" not in results["recovery"]:
        made.append(recovery(results["recovery"], out))
    if results.get("soak") and "error" not in results["soak"]:
        made.append(soak(results["soak"], out))
    return made
