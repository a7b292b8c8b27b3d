"""Crash at every point, on purpose: for each named crash point (roundtable/crashpoints.py),
a conversation runs until one process reaches it and dies there by SIGKILL; the process is
started again, and the conversation must complete with its task, every turn stored once and
in order, every message shown once in the terminal, and every tool effect at most once."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from harness import READY, Proc, Procs, processes
from test_reliability import assert_complete, assert_shown_once, chat, config, stored
from test_tools import TOOLKIT, counted

from roundtable.crashpoints import CRASH_ENV, POINTS

ROUNDS = 4
#: s between streamed words: a turn streams for a fifth of a second, so each case is quick and
#: the crash points mid-stream still fall mid-stream.
STREAM_DELAY = 0.01
#: (crash point, the process that dies there, on which pass). Passes are chosen so that the
#: crash falls mid-conversation: not the first turn only, where a restart is the easy case.
CASES = [
    ("manager.start.stored", "manager", 1),
    ("manager.ask.before_publish", "manager", 2),
    ("manager.ask.published", "manager", 2),
    ("agent.turn.begun", "editor", 1),
    ("agent.stream.chunk", "writer", 25),
    ("agent.tool.before_run", "writer", 1),
    ("agent.tool.after_run", "writer", 1),
    ("manager.tool.recorded", "manager", 1),
    ("manager.tool.result_stored", "manager", 1),
    ("agent.reply.ready", "editor", 1),
    ("agent.reply.sent", "writer", 2),
    ("manager.reply.received", "manager", 2),
    ("manager.reply.stored", "manager", 3),
    ("manager.end.stored", "manager", 1),
]


#: Model calls per turn: the writer calls its tool, then writes; the editor writes.
CALLS_PER_TURN = {"writer": 2, "editor": 1}
#: The points where the victim dies with a turn's generation begun and not finished.
CUT_OFF_MID_TURN = {"agent.stream.chunk", "agent.tool.before_run", "agent.tool.after_run"}


def test_every_crash_point_has_a_case() -> None:
    assert sorted(point for point, _, _ in CASES) == sorted(POINTS)


def crash_config(tmp_path: Path) -> Path:
    cfg = config(tmp_path, rounds=ROUNDS, turn_timeout=8)
    data = yaml.safe_load(cfg.read_text())
    # The writer counts once per turn (a side effect), then writes its draft.
    writer = data["agents"][0]
    draft = writer["model"]["script"][0]
    writer["model"]["script"] = ['CALL count {"label": "drafts"}', draft]
    writer["tools"] = [{"function": "toolkit.counting:count"}]
    for agent in data["agents"]:  # every model call, to count the work a crash wastes
        agent["model"]["record"] = str(tmp_path / f"{agent['name']}-calls.jsonl")
        agent["model"]["token_delay"] = STREAM_DELAY
    data["host"]["connect_timeout"] = 30
    cfg.write_text(yaml.safe_dump(data))
    return cfg


def arguments(cfg: Path, name: str) -> tuple[str, ...]:
    return ("manager", "--config", str(cfg)) if name == "manager" else ("agent", "--config", str(cfg), "--name", name)


def start_with_a_victim(procs: Procs, cfg: Path, victim: str, crash_at: str) -> dict[str, Proc]:
    """Host, manager, writer and editor, the victim set to die at `crash_at` (point:pass).

    All four start at once, as `up` starts them: each waits for the host within its
    connect_timeout. The processes `procs` started before are waited for as well."""
    procs.roundtable("host", "host", "--config", str(cfg))
    started = {
        name: procs.roundtable(name, *arguments(cfg, name), env={CRASH_ENV: crash_at} if name == victim else None)
        for name in ("manager", "writer", "editor")
    }
    for proc in procs.all:
        proc.wait_for(READY, timeout=60)
    return started


def start_again(procs: Procs, cfg: Path, victim: str) -> None:
    procs.roundtable(f"{victim}-again", *arguments(cfg, victim)).wait_for(READY, timeout=60)


@pytest.mark.parametrize(("point", "victim", "on_pass"), CASES, ids=[c[0] for c in CASES])
def test_a_conversation_completes_whatever_process_dies_at_a_crash_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: str, victim: str, on_pass: int
) -> None:
    monkeypatch.setenv("PYTHONPATH", TOOLKIT)
    monkeypatch.setenv("COUNTER_FILE", str(tmp_path / "counter.jsonl"))
    cfg = crash_config(tmp_path)
    with processes(tmp_path) as procs:
        started = start_with_a_victim(procs, cfg, victim, f"{point}:{on_pass}")
        terminal = chat(procs, cfg)
        dead = started[victim]
        deadline = time.monotonic() + 90
        while dead.popen.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert dead.popen.returncode == -signal.SIGKILL, f"{victim} never reached {point}:\n{dead.output[-2000:]}"
        assert f"crash point {point} (pass {on_pass})" in dead.output
        start_again(procs, cfg, victim)
        assert terminal.wait_exit(150) == 0, terminal.output
        output = terminal.output
    [conversation] = stored(tmp_path)
    assert conversation.transcript[0].kind == "task" and conversation.transcript[0].content == "Write about rain"
    assert_complete(conversation, ROUNDS)
    assert_shown_once(output, ROUNDS)
    effects = Counter(json.dumps(e["key"]) for e in counted(tmp_path))
    assert all(n == 1 for n in effects.values()), effects  # no effect twice
    assert 1 <= sum(effects.values()) <= ROUNDS // 2, effects  # one per writer turn, or its call skipped
    # No model call is wasted: a turn already stored is not answered again, and a finished reply
    # survives its agent. Only a turn cut off mid-generation is generated again, by its victim.
    turns = Counter(m.author for m in conversation.transcript if m.kind == "agent")
    calls = {name: len((tmp_path / f"{name}-calls.jsonl").read_text().splitlines()) for name in CALLS_PER_TURN}
    for name, per_turn in CALLS_PER_TURN.items():
        needed = turns[name] * per_turn
        cut_off = per_turn if name == victim and point in CUT_OFF_MID_TURN else 0
        assert needed <= calls[name] <= needed + cut_off, (name, calls, dict(turns))
    os.environ.pop(CRASH_ENV, None)
