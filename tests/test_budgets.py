"""Budgets: model tokens (the model's reported usage; the scripted model counts words) and tool
calls, per agent and per conversation. The manager checks them before it asks a speaker: an
agent that used its budget is left out, or the conversation ends, and everyone is told."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from harness import processes, start_cluster
from test_tools import TOOLKIT, chat, counted, counting_writer, env, tool_config


def run(tmp_path: Path, writer: dict[str, Any], rounds: int, **manager: Any) -> str:
    cfg = tool_config(tmp_path, writer, rounds=rounds)
    if manager:
        data = yaml.safe_load(cfg.read_text())
        data["manager"].update(manager)
        cfg.write_text(yaml.safe_dump(data))
    with processes(tmp_path) as procs:
        os.environ.update(env(tmp_path))
        start_cluster(procs, cfg, ["writer", "editor"])
        return chat(procs, cfg)


def test_an_agent_over_its_token_budget_is_left_out_and_the_others_carry_on(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    writer = {
        "name": "writer",
        "model": {"provider": "scripted", "script": ["one two three four five six seven eight nine ten"]},
        "budget": {"tokens": 10},
    }
    out = run(tmp_path, writer, rounds=4)
    speakers = re.findall(r"^(writer|editor): ", out, re.MULTILINE)
    assert speakers == ["writer", "editor", "editor", "editor"], out
    assert re.search(r"· editor speaks next \(writer is left out: it used its budget \(\d+ of 10 tokens\)\)", out), out
    assert re.search(r"· used: writer \d+ tokens, 0 tool calls; editor \d+ tokens, 0 tool calls", out), out


def test_an_agent_whose_tool_budget_runs_out_ends_the_conversation_when_so_configured(
    tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PYTHONPATH", TOOLKIT)
    writer = counting_writer('CALL count {"label": "eels"}', "Counted: {last}")
    writer["budget"] = {"tool_calls": 1, "on_exceeded": "end"}
    out = run(tmp_path, writer, rounds=6)
    assert "· conversation ended: writer used its budget (1 of 1 tool calls)" in out, out
    assert [e["label"] for e in counted(tmp_path)] == ["eels"]


def test_the_conversation_ends_when_all_agents_together_reach_its_budget(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    writer = {"name": "writer", "model": {"provider": "scripted", "script": ["a b c d e"]}}
    out = run(tmp_path, writer, rounds=20, budget={"tokens": 40})
    assert re.search(r"· conversation ended: the conversation used its budget \(\d+ of 40 tokens\)", out), out
    assert len(re.findall(r"^(?:writer|editor): ", out, re.MULTILINE)) < 20, out
