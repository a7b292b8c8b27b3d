"""Exactly once under chaos: a tool with a counted side effect, many conversations, and kill -9
of the agent, the manager and the host at random points. No effect may happen twice, and
every call the journal records as done must have its effect.

The figures (duplicated, lost, skipped) are printed, and written to tool-chaos.json in the
test's directory, for the closing note and docs.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path

import yaml
from harness import processes
from test_tools import TOOLKIT, counted, counting_writer, tool_config

CONVERSATIONS = 8
ROUNDS = 4  # two writer turns, so two calls, per conversation
KILLS = 10


def journal(tmp_path: Path) -> list[dict[str, str]]:
    with sqlite3.connect(tmp_path / "data" / "transcripts.db") as db:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT conversation_id, turn_id, call, idx, status FROM rt_tool_calls").fetchall()
    return [
        {"key": f"{r['conversation_id']}:{r['turn_id']}:{r['call']}:{r['idx']}", "status": r["status"]} for r in rows
    ]


def test_tool_side_effects_happen_once_whatever_is_killed(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PYTHONPATH", TOOLKIT)
    monkeypatch.setenv("COUNTER_FILE", str(tmp_path / "counter.jsonl"))
    monkeypatch.setenv("COUNTER_DELAY", "0.3")  # a window between the call starting and its effect
    writer = counting_writer('CALL count {"label": "ships"}', "Counted: {last}")
    cfg = tool_config(tmp_path, writer, rounds=ROUNDS)
    data = yaml.safe_load(cfg.read_text())
    data["manager"]["turn_timeout"] = 8  # a turn lost with a killed agent is asked again soon
    data["host"]["connect_timeout"] = 30  # eight chats starting at once on two cores
    cfg.write_text(yaml.safe_dump(data))
    rng = random.Random(int(os.environ.get("CHAOS_SEED", "12")))
    kills: list[str] = []
    with processes(tmp_path) as procs:
        up = procs.roundtable("up", "up", "--config", str(cfg), "--no-ui")
        up.wait_for("everything is ready", timeout=90)
        terminals = []
        for i in range(CONVERSATIONS):  # one after the other: the chaos is for conversations, not for starting
            terminal = procs.roundtable(
                f"chat{i}", "chat", f"Count ships {i}", "--config", str(cfg), "--timeout", "240"
            )
            terminal.wait_for(f"(task): Count ships {i}", timeout=90)
            terminals.append(terminal)
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.3, 1.5))
            pids = dict(re.findall(r"started (\S+) \(pid (\d+)\)", up.output))
            victim = rng.choice(["writer", "writer", "manager", "host"])
            kills.append(victim)
            try:
                os.kill(int(pids[victim]), signal.SIGKILL)
            except (ProcessLookupError, KeyError):
                pass
        outcomes = [terminal.wait_exit(300) for terminal in terminals]
    effects = Counter(e["key"] for e in counted(tmp_path))
    rows = journal(tmp_path)
    done = {r["key"] for r in rows if r["status"] == "done"}
    figures = {
        "conversations": CONVERSATIONS,
        "kills": kills,
        "completed": sum(1 for code in outcomes if code == 0),
        "calls_recorded": len(rows),
        "effects": sum(effects.values()),
        "duplicated_effects": sum(n - 1 for n in effects.values() if n > 1),
        "lost_calls": len(done - set(effects)),  # recorded as done, but no effect
        "unrecorded_effects": len(set(effects) - {r["key"] for r in rows}),
        "skipped_after_interruption": sum(1 for r in rows if r["status"] == "skipped"),
        "left_started": sum(1 for r in rows if r["status"] == "started"),
    }
    (tmp_path / "tool-chaos.json").write_text(json.dumps(figures, indent=1))
    print(json.dumps(figures))
    assert figures["completed"] == CONVERSATIONS, figures
    assert figures["duplicated_effects"] == 0, figures
    assert figures["lost_calls"] == 0, figures
    assert figures["unrecorded_effects"] == 0, figures
