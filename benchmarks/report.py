"""The printed report: one table per measurement, then the targets with PASS or MISS."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

AGENT_ROLES = ("writer", "editor", "terse_writer", "terse_editor")
AGENT_MEMORY_LIMIT_MB = 150.0
#: The soak's measures count as flat within this fraction of their first sample.
SOAK_FLAT = 0.10


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _x(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}x"


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in header]] + [[c if isinstance(c, str) else _fmt(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [title]
    for n, row in enumerate(cells):
        lines.append(
            "  "
            + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        )
        if n == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _mb(kb: dict[str, int] | None) -> float | None:
    return kb["VmRSS"] / 1024 if kb and "VmRSS" in kb else None


def hop_tables(hop: dict[str, Any]) -> list[str]:
    variants = hop["variants"]
    names = list(variants)
    plain = hop["ratio_roundtable_over_bare"]
    tls = hop.get("ratio_tls_over_bare") or {}

    def per_variant(get: Any) -> list[Any]:
        return [get(variants[n]) if variants[n] else None for n in names]

    def x(key: str) -> list[str]:
        return [_x(plain.get(key)), _x(tls.get(key))]

    header = ["", *names, "roundtable / bare", "roundtable+tls / bare"]
    latency = [
        ["p50 (ms)", *per_variant(lambda v: v["hop_ms"]["p50"]), *x("hop_p50")],
        ["p99 (ms)", *per_variant(lambda v: v["hop_ms"]["p99"]), *x("hop_p99")],
        ["samples", *per_variant(lambda v: v["hop_ms"]["n"]), "", ""],
        [
            "message: JSON / gRPC bytes",
            *per_variant(lambda v: f"{v['message']['payload_bytes']} / {v['message']['envelope_bytes']}"),
            "",
            "",
        ],
    ]
    bare = variants["bare"]["flood"]
    rate = [
        [
            f"burst of {bare['burst']['n']:,}: publish in a loop",
            *per_variant(lambda v: v["flood"]["burst"]["rate"]),
            *x("flood_burst"),
        ],
        [
            f"{bare['yield']['n']:,}, sleep(0) after each publish",
            *per_variant(lambda v: v["flood"]["yield"]["rate"]),
            *x("flood_yield"),
        ],
        [
            f"burst of {bare['burst-large']['n']:,} (over the outbox limit)",
            *per_variant(lambda v: v["flood"]["burst-large"]["rate"]),
            *x("flood_burst-large"),
        ],
        [
            "lost / duplicated, all runs",
            *per_variant(
                lambda v: (
                    f"{sum(f['lost'] for f in v['flood'].values())} / "
                    f"{sum(f['duplicated'] for f in v['flood'].values())}"
                )
            ),
            "",
            "",
        ],
    ]
    tls_variant = variants.get("roundtable+tls") or {}
    note = ""
    if tls_variant.get("tls"):
        refused = tls_variant["message"].get("refused_without_token", "")
        note = f"\n  roundtable+tls: {tls_variant['tls']} with the dev CA; " + (
            "the same worker without the token is refused" if refused else "token refusal NOT checked"
        )
    return [
        table("1. Hop latency, worker -> host -> worker (half a round trip, ms)", header, latency) + note,
        table("3a. One-way throughput through the host (messages/s)", header, rate),
    ]


def turn_table(turns: dict[str, Any]) -> str:
    pairs = list(turns)
    header = ["", *[{"sentence": "14-word replies", "word": "1-word replies"}.get(p, p) for p in pairs]]

    def row(label: str, get: Any) -> list[Any]:
        return [label, *[get(turns[p]) for p in pairs]]

    def cpu(t: dict[str, Any]) -> str:
        parts = t["cpu_ms_per_turn"]
        speakers = sum(v for k, v in parts.items() if k not in ("host", "manager", "observer"))
        return f"{parts['host']:.1f} / {parts['manager']:.1f} / {speakers:.1f} / {parts['observer']:.1f}"

    rows = [
        row(
            "stream chunks per turn (at the host)",
            lambda t: f"{t.get('chunks_per_turn', t['tokens_per_turn'] + 1):.1f}",
        ),
        row("turn p50 at the observer (ms)", lambda t: t["turn_ms"]["p50"]),
        row("turn p99 at the observer (ms)", lambda t: t["turn_ms"]["p99"]),
        row(
            "turn p50 / p99 at the host (ms)",
            lambda t: f"{t['turn_at_host_ms']['p50']:.2f} / {t['turn_at_host_ms']['p99']:.2f}",
        ),
        row("SpeakerSelected -> ChatMessage p50 (ms)", lambda t: t["speaker_to_message_ms"]["p50"]),
        row(
            "observer lag behind host p50 / p99 (ms)",
            lambda t: f"{t['observer_lag_ms']['p50']:.2f} / {t['observer_lag_ms']['p99']:.2f}",
        ),
        row(
            "first half / second half p50 (ms)",
            lambda t: f"{t['turn_first_half_ms']['p50']:.2f} / {t['turn_second_half_ms']['p50']:.2f}",
        ),
        row(
            "messages per turn: published / delivered",
            lambda t: (
                f"{t['traffic']['published']['per_turn']['messages']:.1f} / "
                f"{t['traffic']['delivered']['per_turn']['messages']:.1f}"
            ),
        ),
        row(
            "gRPC bytes per turn: published / delivered",
            lambda t: (
                f"{t['traffic']['published']['per_turn']['envelope_bytes']:,.0f} / "
                f"{t['traffic']['delivered']['per_turn']['envelope_bytes']:,.0f}"
            ),
        ),
        row("CPU ms per turn: host / manager / agents / observer", cpu),
        row("turns, all numbered 1..N once", lambda t: f"{t['rounds']}, {'yes' if t['seqs_ok'] else 'NO'}"),
    ]
    return table("2. Turn overhead: scripted agents that answer at once (one long conversation)", header, rows)


def agentchat_ratio(conversations: dict[str, Any], mode: str = "streaming") -> float | None:
    """Our turn p50 (14-word replies) over AgentChat's in-process one, same run, same replies."""
    ours = (conversations.get("turns") or {}).get("sentence")
    theirs = (conversations.get("agentchat") or {}).get(mode)
    if not ours or not theirs or not theirs.get("p50"):
        return None
    return float(ours["turn_ms"]["p50"]) / float(theirs["p50"])


def agentchat_table(conversations: dict[str, Any]) -> str:
    ours = conversations["turns"]["sentence"]["turn_ms"]
    theirs = conversations["agentchat"]
    rows = [
        ["roundtable, distributed (processes, gRPC host)", _ms(ours["p50"]), _ms(ours["p99"]), "-"],
        *[
            [
                f"AgentChat RoundRobinGroupChat, one process, {mode.replace('_', ' ')}",
                _ms(theirs[mode]["p50"]),
                _ms(theirs[mode]["p99"]),
                _x(agentchat_ratio(conversations, mode)),
            ]
            for mode in ("streaming", "not_streaming")
        ],
    ]
    header = ["14-word scripted replies, same run", "turn p50", "turn p99", "roundtable p50 / this"]
    return table("2b. Turn overhead against AutoGen AgentChat's in-process group chat", header, rows)


def concurrent_table(concurrent: dict[str, Any]) -> str:
    rounds = concurrent["rounds"]
    rows = []
    for run in concurrent["runs"]:
        turns = run["count"] * rounds
        rows.append(
            [
                run["count"],
                run["seconds"],
                turns / run["seconds"] if run["seconds"] else float("nan"),
                run["lost"],
                run["duplicated"],
                run["unfinished"] + run["failed"],
                run["start_retries"],
            ]
        )
    header = ["conversations", "seconds", "turns/s", "lost", "duplicated", "unfinished", "start retries"]
    return table(
        f"3b. Concurrent conversations through one host ({rounds} rounds each, 2 scripted agents)", header, rows
    )


def streaming_table(stream: dict[str, Any]) -> str:
    sides = stream["sides"]
    labels = {
        "raw": "llama_cpp.Llama in process",
        "server": "llama.cpp server -> plain HTTP client",
        "roundtable": "server -> agent -> host -> observer",
    }
    rows = []
    for key in ("raw", "server", "roundtable"):
        side = sides[key]
        cpu = stream.get("cpu_ms_per_token", {}).get(key, {})
        rows.append(
            [
                labels[key],
                side["e2e"],
                side["e2e_median"],
                side["decode"],
                side["ttft_ms"],
                _x(side["e2e"] / sides["raw"]["e2e"]) if sides["raw"]["e2e"] else "n/a",
                side["gap_ms"]["p95"],
                sum(v for k, v in cpu.items()),
            ]
        )
    header = ["", "tokens/s (best)", "median", "decode tok/s", "first token ms", "vs raw", "gap p95 ms", "CPU ms/token"]
    latency = stream["latency_ms"]
    title = (
        f"4. Streaming, {stream['model']} model ({stream['model_file']}, "
        f"{stream['sides']['raw']['tokens']:.0f} tokens, n_threads {stream['n_threads']}, greedy)"
    )
    note = (
        f"  token latency, server sent -> observer has it: p50 {latency['p50']:.2f} ms, p95 {latency['p95']:.2f} ms,"
        f" p99 {latency['p99']:.2f} ms ({latency['n']} tokens); same text on every side: "
        f"{'yes' if stream['same_text'] else 'NO'}"
    )
    if "chunks" in sides["roundtable"]:
        note += (
            f"\n  the agent sent its {sides['roundtable']['tokens']:.0f} tokens in {sides['roundtable']['chunks']:.0f}"
            " StreamChunks (median); tokens are counted, each arriving with its chunk"
        )
    return table(title, header, rows) + "\n" + note


def streaming_cpu_note(stream: dict[str, Any]) -> str:
    cpu = stream.get("cpu_ms_per_token", {}).get("roundtable", {})
    parts = ", ".join(f"{name} {ms:.2f}" for name, ms in cpu.items() if name != "raw llama")
    return f"  CPU ms per token on the roundtable side: {parts}"


def diagnostics(conversations: dict[str, Any]) -> list[str]:
    parts: list[str] = []
    what_if = conversations.get("what_if")
    if what_if:
        rows = [[name, r["p50"], r["mean"], r["host"], r["manager"]] for name, r in what_if.items()]
        header = ["14-word replies", "turn p50 ms", "turn mean ms", "host CPU ms/turn", "manager CPU ms/turn"]
        parts.append(table("Diagnosis: turn time with a cost taken away (same run, taking turns)", header, rows))
    if conversations.get("profile"):
        parts.append(profile_lines("during turns", conversations["profile"]))
    return parts


def profile_lines(when: str, profile: dict[str, Any]) -> str:
    lines = [f"Diagnosis: where each process's event loop is busy {when} (py-spy, share of busy samples)"]
    for name, summary in profile.items():
        if "by_package" not in summary:
            continue
        top = ", ".join(f"{package} {share:.0%}" for package, share in summary["by_package"][:5])
        lines.append(f"  {name:<12} busy {summary['busy_share']:.0%} of loop samples: {top}")
    return "\n".join(lines)


def bus_table(data: dict[str, Any]) -> str:
    def row(label: str, key: str) -> list[Any]:
        return [label, _ms(data["grpc"]["turn_ms"][key]), _ms(data["nats"]["turn_ms"][key])]

    rows = [
        row("turn p50 at the observer", "p50"),
        row("turn p99 at the observer", "p99"),
        ["turns, each numbered once", *("yes" if data[s]["all_turns_once"] else "NO" for s in ("grpc", "nats"))],
    ]
    title = (
        f"NATS bus against the gRPC host ({data['rounds']}-turn conversation, {data['reps']} run(s) a side, "
        f"taking turns): NATS/gRPC p50 {_x(data['ratio_p50'])}"
    )
    text = table(title, ["", "gRPC host", "NATS bus"], rows)
    curve = data.get("replicas") or {}
    if curve:
        lines = [
            [
                f"{n} writer process{'es' if int(n) > 1 else ''}",
                f"{r['turns_per_s']:.1f}",
                _x(r["x_one"]),
                " / ".join(str(t) for t in r.get("turns_per_writer", [])),
                f"{r['lost']} / {r['duplicated']} / {r['unfinished']}",
            ]
            for n, r in curve.items()
        ]
        title = (
            f"Throughput on the NATS bus: {data['conversations']} four-turn conversations at once, "
            f"each writer turn costing {data['cpu_ms']:g} ms of CPU"
        )
        text += "\n\n" + table(title, ["", "turns/s", "x one", "turns taken by each", "lost / dup / unfinished"], lines)
    recovery = data.get("recovery") or {}
    if recovery:
        sides = ("grpc", "nats")
        rows = [
            ["killed", *(recovery[s]["killed"] for s in sides)],
            ["longest stall at the observer", *(_ms(recovery[s]["stall_ms"]) for s in sides)],
            ["turn p50 (for scale)", *(_ms(recovery[s]["turn_ms_p50"]) for s in sides)],
            ["turns, each numbered once", *("yes" if recovery[s]["all_turns_once"] else "NO" for s in sides)],
        ]
        stall = _x(recovery["ratio_stall"])
        title = f"Recovery: the router under the manager killed mid-conversation; NATS/gRPC stall {stall}"
        text += "\n\n" + table(title, ["", "gRPC host", "NATS bus (3 nodes)"], rows)
    return text


def startup_table(startup: dict[str, Any]) -> str:
    rows = []
    names: list[str] = []
    for data in startup["configs"].values():
        for name in data["memory_at_ready_kb"]:
            if name not in names:
                names.append(name)
    for kind, data in startup["configs"].items():
        ready, after = data["memory_at_ready_kb"], data["memory_after_chat_kb"]
        cells = []
        for name in names:
            a, b = _mb(ready.get(name)), _mb(after.get(name))
            cells.append("-" if a is None else f"{a:.0f} / {b:.0f}" if b is not None else f"{a:.0f}")
        rows.append([kind, data["ready_seconds"], "yes" if data["clean_shutdown"] else "NO", *cells])
    header = ["config", "ready s", "clean stop", *[f"{n} MB" for n in names]]
    return table("5. `roundtable up --no-ui`: start-up, and RSS at ready / after one conversation", header, rows)


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def recovery_outcome(side: dict[str, Any]) -> str:
    """'p50 / max' seconds, or 'never (lost N of N)' when no restart was recovered from."""
    if side["recovered_reps"] == 0:
        return f"never (lost {side['lost']:,} of {side['published']:,})"
    shown = f"{_seconds(side['recovery_s']['p50'])} / {_seconds(side['recovery_s']['max'])}"
    if side["recovered_reps"] < side["reps"]:
        shown += f" ({side['reps'] - side['recovered_reps']} of {side['reps']} never)"
    return shown


def recovery_table(data: dict[str, Any]) -> str:
    sides = data["variants"]
    names = list(sides)
    rt = sides.get("roundtable") or {}
    n = rt.get("n") or next(iter(sides.values()))["n"]
    wait = next(iter(sides.values()))["wait_s"]

    def row(label: str, get: Any) -> list[Any]:
        return [label, *[get(sides[name]) for name in names]]

    rows = [
        row("restarts", lambda s: s["reps"]),
        row(f"ready line -> all {n} at the subscriber, p50 / max (s)", recovery_outcome),
        row(
            "ready line -> first one, p50 / max (s)",
            lambda s: f"{_seconds(s['first_s']['p50'])} / {_seconds(s['first_s']['max'])}",
        ),
        row("lost / duplicated, all restarts", lambda s: f"{s['lost']:,} / {s['duplicated']:,}"),
        row("earlier message sent again (at least once)", lambda s: s["earlier_resent"]),
        row("kill -> new host's ready line, median (s)", lambda s: _seconds(s["down_s"])),
    ]
    header = ["", *[("bare AutoGen" if name == "bare" else name) for name in names]]
    title = (
        f"6. Host restart: SIGKILL the host, publish {n} messages while it is down, start a new one on the"
        f" same address {data['down_seconds']:g} s after the kill (bounded wait {wait:g} s)"
    )
    lines = [table(title, header, rows)]
    bursts = rt.get("mid_burst") or []
    if bursts:
        lost = ", ".join(f"{b['lost']:,}" for b in bursts)
        dup = sum(b["duplicated"] for b in bursts)
        lines.append(
            f"  context, not a target: killed 50 ms into a burst of {bursts[0]['n']:,} (roundtable), lost {lost}"
            f" ({len(bursts)} kill{'s' if len(bursts) > 1 else ''}), duplicated {dup}: what the host held or a"
            " dead socket swallowed at the kill"
        )
    return "\n".join(lines)


def soak_table(data: dict[str, Any]) -> str:
    rows = [
        [
            f"{sample['conversations']:,}",
            f"{sample['seconds']:.0f}",
            _fmt(_mb({"VmRSS": sample["host_kb"]}) if sample["host_kb"] else None, 1),
            _fmt(_mb({"VmRSS": sample["manager_kb"]}) if sample["manager_kb"] else None, 1),
            _ms(sample["turn_p50_ms"]),
            _ms(sample["change_p50_ms"]),
            f"{sample['unfinished'] + sample['failed']}",
        ]
        for sample in data["samples"]
    ]
    header = ["conversations", "seconds", "host MB", "manager MB", "turn p50", "sub change p50", "unfinished"]
    title = (
        f"8. Soak: 2-round conversations through one host and one manager, {data['concurrency']} at a time;"
        f" a sample after every {data['every']:,}"
    )
    lines = [table(title, header, rows)]
    flat = data["flat"]
    lines.append(
        "  last / first sample: "
        + ", ".join(f"{key.removesuffix('_kb').removesuffix('_ms')} {_x(value, 2)}" for key, value in flat.items())
    )
    tables = data.get("routing_tables") or []
    if tables:
        shown = sorted({round(i * (len(tables) - 1) / 4) for i in range(5)})  # five rows, first to last
        rows = [
            [
                f"{r['conversations']:,}",
                f"{r['topics']:,}",
                f"{r['autogen_ms']:.3f}",
                f"{r['roundtable_ms']:.4f}",
                _x(r["autogen_ms"] / r["roundtable_ms"] if r["roundtable_ms"] else None, 0),
            ]
            for r in (tables[i] for i in shown)
        ]
        lines.append(
            table(
                "   one subscription change, in process: AutoGen's SubscriptionManager vs roundtable's Routes",
                ["conversations", "topics seen", "AutoGen ms", "roundtable ms", "AutoGen / roundtable"],
                rows,
            )
        )
    return "\n".join(lines)


def soak_flat(data: dict[str, Any], key: str) -> float | None:
    value = (data.get("flat") or {}).get(key)
    return None if value is None else float(value)


def recovery_lost(results: dict[str, Any]) -> bool:
    """A message published while roundtable's host was down that never came, or came twice."""
    side: dict[str, Any] = ((results.get("recovery") or {}).get("variants") or {}).get("roundtable") or {}
    return bool(side) and (side["lost"] > 0 or side["duplicated"] > 0)


def agent_memory_mb(results: dict[str, Any]) -> float | None:
    values: list[float] = []
    for data in (results.get("startup") or {}).get("configs", {}).values():
        for snapshot in (data.get("memory_at_ready_kb", {}), data.get("memory_after_chat_kb", {})):
            values += [mb for name, kb in snapshot.items() if name in AGENT_ROLES and (mb := _mb(kb)) is not None]
    after = (results.get("conversations") or {}).get("memory_after_conversations", {}).get("kb", {})
    values += [mb for name, kb in after.items() if name in AGENT_ROLES and (mb := _mb(kb)) is not None]
    return max(values) if values else None


def targets(results: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []

    def add(name: str, measured: float | None, goal: str, ok: bool | None, shown: str | None = None) -> None:
        status = "n/a" if ok is None or measured is None else ("PASS" if ok else "MISS")
        rows.append([name, shown if shown is not None else _fmt(measured), goal, status])

    turns = (results.get("conversations") or {}).get("turns", {})
    for pair, label in (("sentence", "14-word replies"), ("word", "1-word replies")):
        t = turns.get(pair)
        p50 = t["turn_ms"]["p50"] if t else None
        p99 = t["turn_ms"]["p99"] if t else None
        add(f"turn overhead p50, {label}", p50, "<= 2 ms", None if p50 is None else p50 <= 2.0, _ms(p50))
        add(f"turn overhead p99, {label}", p99, "<= 10 ms", None if p99 is None else p99 <= 10.0, _ms(p99))
    value = agentchat_ratio(results.get("conversations") or {})
    add(
        "turn p50 / AgentChat in-process (streaming)",
        value,
        "<= 1.0x",
        None if value is None else value <= 1.0,
        _x(value),
    )
    hop = results.get("hop")
    for p in ("p50", "p99"):
        value = hop["ratio_roundtable_over_bare"].get(f"hop_{p}") if hop and "error" not in hop else None
        ok = None if value is None else value <= 1.2
        add(f"roundtable hop {p} / bare AutoGen", value, "<= 1.2x", ok, _x(value, 3))
    for p in ("p50", "p99"):
        value = (hop.get("ratio_tls_over_bare") or {}).get(f"hop_{p}") if hop and "error" not in hop else None
        rows.append([f"roundtable+TLS+token hop {p} / bare", _x(value, 3), "none set", "-"])
    for stream in results.get("streaming") or []:
        if "error" in stream:
            add(f"streaming tokens/s / raw ({stream.get('model')})", None, ">= 0.9x", None)
            continue
        value = stream["ratio_e2e"]
        shown = f"{_x(value, 3)} (median {_x(stream['ratio_e2e_median'], 3)})"
        add(f"streaming tokens/s / raw, {stream['model']} model", value, ">= 0.9x", value >= 0.9, shown)
    concurrent = (results.get("conversations") or {}).get("concurrent")
    if concurrent:
        biggest = max(concurrent["runs"], key=lambda r: r["count"])
        bad = biggest["lost"] + biggest["duplicated"] + biggest["unfinished"] + biggest["failed"]
        unfinished = biggest["unfinished"] + biggest["failed"]
        shown = f"{biggest['lost']} lost, {biggest['duplicated']} dup, {unfinished} unfinished"
        add(f"{biggest['count']} concurrent conversations", float(bad), "0 lost or duplicated", bad == 0, shown)
    else:
        add("100 concurrent conversations", None, "0 lost or duplicated", None)
    restart = (results.get("recovery") or {}).get("variants", {}).get("roundtable")
    if restart:
        worst = restart["recovery_s"]["max"]
        clean = restart["lost"] == 0 and restart["duplicated"] == 0 and restart["recovered_reps"] == restart["reps"]
        shown = (
            f"p50 {_seconds(restart['recovery_s']['p50'])} s, max {_seconds(worst)} s, "
            f"{restart['lost']} lost, {restart['duplicated']} dup"
        )
        ok = clean and worst is not None and worst <= 1.0
        measured = math.inf if worst is None else worst
        add("host restart: all messages through again", measured, "<= 1 s, 0 lost", ok, shown)
    else:
        add("host restart: all messages through again", None, "<= 1 s, 0 lost", None)
    revised = results.get("revisions") or {}
    if "revised_share" in revised:
        share = revised["revised_share"]
        shown = f"{revised['writer_revised']}/{revised['writer_rounds']} rounds over {revised['tasks']} tasks"
        add("writer revises its draft (default model)", share, ">= 0.8 of rounds", share >= 0.8, shown)
        cut = float(revised["mid_sentence"])
        add("replies ending mid-sentence", cut, "0", cut == 0, f"{revised['mid_sentence']}/{revised['replies']}")
    soaked = results.get("soak") or {}
    if "flat" in soaked:
        n = soaked["samples"][-1]["conversations"] if soaked["samples"] else 0
        for key, label in (
            ("host_kb", "host RSS"),
            ("manager_kb", "manager RSS"),
            ("turn_p50_ms", "turn p50"),
            ("change_p50_ms", "subscription change p50"),
        ):
            ratio = soak_flat(soaked, key)
            ok = None if ratio is None else ratio <= 1.0 + SOAK_FLAT
            add(f"soak, {n:,} conversations: {label}, last / first", ratio, f"<= {1 + SOAK_FLAT:.1f}x", ok, _x(ratio))
        bad = sum(s["unfinished"] + s["failed"] for s in soaked["samples"])
        add(f"soak, {n:,} conversations: unfinished", float(bad), "0", bad == 0, str(bad))
    memory = agent_memory_mb(results)
    add(
        "agent process RSS, largest seen",
        memory,
        f"<= {AGENT_MEMORY_LIMIT_MB:.0f} MB",
        None if memory is None else memory <= AGENT_MEMORY_LIMIT_MB,
        None if memory is None else f"{memory:.0f} MB",
    )
    return rows


def _load_note(section: dict[str, Any]) -> str:
    return (
        f"\n  (machine load, 1-minute average, over this measurement: {section['load']})" if "load" in section else ""
    )


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} ms"


def render(results: dict[str, Any]) -> str:
    meta = results["meta"]
    parts = [
        f"roundtable benchmarks - {meta['mode']} mode - {meta['started']} - {meta['cpus']} cores, shared"
        f" (load {meta['load_before']} -> {meta['load_after']}) - commit {meta['commit']}"
    ]
    if results.get("hop") and "error" not in results["hop"]:
        parts += hop_tables(results["hop"])
        parts[-1] += _load_note(results["hop"])
    conversations = results.get("conversations")
    if conversations and "error" not in conversations:
        parts.append(turn_table(conversations["turns"]))
        if "agentchat" in conversations and "sentence" in conversations["turns"]:
            parts.append(agentchat_table(conversations))
        parts.append(concurrent_table(conversations["concurrent"]) + _load_note(conversations))
        parts += diagnostics(conversations)
    if results.get("bus") and "error" not in results["bus"]:
        parts.append(bus_table(results["bus"]) + _load_note(results["bus"]))
    for stream in results.get("streaming") or []:
        if "error" not in stream:
            parts.append(streaming_table(stream) + "\n" + streaming_cpu_note(stream) + _load_note(stream))
            if stream.get("profile"):
                parts.append(profile_lines(f"while streaming ({stream['model']} model)", stream["profile"]))
    if results.get("startup") and "error" not in results["startup"]:
        parts.append(startup_table(results["startup"]) + _load_note(results["startup"]))
    if results.get("recovery") and "error" not in results["recovery"]:
        parts.append(recovery_table(results["recovery"]) + _load_note(results["recovery"]))
    if results.get("soak") and "error" not in results["soak"]:
        parts.append(soak_table(results["soak"]) + _load_note(results["soak"]))
    errors = [
        f"  {name}: {value['error']}"
        for name, value in _sections(results)
        if isinstance(value, dict) and "error" in value
    ]
    if errors:
        parts.append("Errors\n" + "\n".join(errors))
    parts.append(table("Targets", ["target", "measured", "goal", "result"], targets(results)))
    return "\n\n".join(parts)


def _sections(results: dict[str, Any]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for name in ("hop", "conversations", "bus", "startup", "recovery", "revisions", "soak"):
        out.append((name, results.get(name)))
    for stream in results.get("streaming") or []:
        out.append((f"streaming {stream.get('model')}", stream))
    return out
