"""Agents that act: tools from the config, every call recorded by the manager, shown, and run
once per turn whatever process dies (the exactly-once chaos test is in test_tools_chaos.py)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from harness import REPO, Procs, free_port, processes, start_cluster, write_config

TOOLKIT = str(REPO / "tests")


def tool_config(tmp_path: Path, writer: dict[str, Any], rounds: int = 2, **extra: Any) -> Path:
    data = {
        "host": {"address": f"127.0.0.1:{free_port()}", "connect_timeout": 5},
        "agents": [writer, {"name": "editor", "model": {"provider": "scripted", "script": ["Noted: {last}"]}}],
        "manager": {"termination": {"max_rounds": rounds}, "turn_timeout": 20},
        "data_dir": str(tmp_path / "data"),
        **extra,
    }
    return write_config(tmp_path / "roundtable.yaml", data)


def counting_writer(*script: str, on_interrupted: str = "skip") -> dict[str, Any]:
    return {
        "name": "writer",
        "model": {"provider": "scripted", "script": list(script)},
        "tools": [{"function": "toolkit.counting:count", "on_interrupted": on_interrupted}],
    }


def env(tmp_path: Path, **more: str) -> dict[str, str]:
    return {"PYTHONPATH": TOOLKIT, "COUNTER_FILE": str(tmp_path / "counter.jsonl"), **more}


def counted(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "counter.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def start(procs: Procs, cfg: Path, tmp_path: Path, **more: str) -> None:
    os.environ.update(env(tmp_path, **more))  # the harness's processes inherit it
    start_cluster(procs, cfg, ["writer", "editor"])


def chat(procs: Procs, cfg: Path, task: str = "Count the ships") -> str:
    terminal = procs.roundtable("chat", "chat", task, "--config", str(cfg), "--timeout", "90")
    assert terminal.wait_exit(120) == 0, terminal.output
    return terminal.output


def test_a_python_tool_runs_once_per_call_and_the_terminal_shows_it(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PYTHONPATH", TOOLKIT)
    cfg = tool_config(tmp_path, counting_writer('CALL count {"label": "ships"}', "I counted: {last}"), rounds=3)
    with processes(tmp_path) as procs:
        start(procs, cfg, tmp_path)
        out = chat(procs, cfg)
    assert re.findall(r'^⚙ writer: count\(label="ships"\) -> (.*)$', out, re.MULTILINE) == [
        "ships is now 1",
        "ships is now 2",
    ], out
    assert "writer: I counted: ships is now 1" in out
    effects = counted(tmp_path)
    assert len(effects) == 2
    assert len({e["key"] for e in effects}) == 2 and all(e["key"] for e in effects), effects


def test_status_counts_tokens_and_tool_calls_per_agent(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PYTHONPATH", TOOLKIT)
    cfg = tool_config(tmp_path, counting_writer('CALL count {"label": "a"}', "done: {last}"), rounds=3)
    with processes(tmp_path) as procs:
        start(procs, cfg, tmp_path)
        chat(procs, cfg)
        status = procs.roundtable("status", "status", "--config", str(cfg))
        assert status.wait_exit(60) == 0, status.output
    assert "usage per agent (all conversations):" in status.output
    # The scripted model counts words as tokens: each writer turn reads the task and the
    # count's result, and writes its call and its reply.
    assert re.search(r"writer: [1-9][\d,]* tokens, 2 tool calls \(2 done\)", status.output), status.output
    assert re.search(r"editor: [1-9][\d,]* tokens, 0 tool calls", status.output), status.output


def test_a_failing_tool_is_shown_and_the_conversation_carries_on(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PYTHONPATH", TOOLKIT)
    writer = {
        "name": "writer",
        "model": {"provider": "scripted", "script": ['CALL fail {"reason": "the sea is closed"}', "Could not: {last}"]},
        "tools": [{"function": "toolkit.counting:fail"}],
    }
    cfg = tool_config(tmp_path, writer)
    with processes(tmp_path) as procs:
        start(procs, cfg, tmp_path)
        out = chat(procs, cfg)
    assert '✗ writer: fail(reason="the sea is closed") failed: the sea is closed' in out, out
    assert "writer: Could not: the sea is closed" in out, out
    assert "editor: Noted:" in out


def test_your_own_assistant_agent_from_a_factory_uses_the_journaled_tools(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PYTHONPATH", TOOLKIT)
    writer = counting_writer('CALL count {"label": "gulls"}', "My own agent counted: {last}")
    writer["factory"] = "toolkit.agents:counting_assistant"
    cfg = tool_config(tmp_path, writer)
    with processes(tmp_path) as procs:
        start(procs, cfg, tmp_path)
        out = chat(procs, cfg)
    assert '⚙ writer: count(label="gulls") -> gulls is now 1' in out, out
    assert "writer: My own agent counted: gulls is now 1" in out, out
    assert [e["label"] for e in counted(tmp_path)] == ["gulls"]


def test_a_custom_agent_given_on_the_command_line_takes_its_turns(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PYTHONPATH", TOOLKIT)
    cfg = tool_config(tmp_path, {"name": "writer", "model": {"provider": "scripted", "script": ["calm seas"]}})
    with processes(tmp_path) as procs:
        start_cluster(procs, cfg, ["editor"])
        procs.roundtable(
            "writer", "agent", "--name", "writer", "--factory", "toolkit.agents:shouter", "--config", str(cfg)
        ).wait_for("roundtable ready")
        out = chat(procs, cfg, "quiet harbour")
    assert "writer: QUIET HARBOUR!" in out, out


def test_a_factory_that_returns_no_agent_is_refused_at_start(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PYTHONPATH", TOOLKIT)
    cfg = tool_config(tmp_path, {"name": "writer", "factory": "toolkit.agents:not_an_agent"})
    with processes(tmp_path) as procs:
        agent = procs.roundtable("writer", "agent", "--name", "writer", "--config", str(cfg))
        assert agent.wait_exit(60) == 2, agent.output
    assert (
        "roundtable: error: agents.writer.factory: toolkit.agents:not_an_agent returned str, not an AgentChat agent"
        in agent.output
    )
    assert "Traceback" not in agent.output


def test_a_tool_path_that_does_not_import_is_one_line_at_start(tmp_path: Path) -> None:
    writer = {"name": "writer", "tools": [{"function": "no_such_module:tool"}]}
    cfg = tool_config(tmp_path, writer)
    with processes(tmp_path) as procs:
        agent = procs.roundtable("writer", "agent", "--name", "writer", "--config", str(cfg))
        assert agent.wait_exit(60) == 2, agent.output
    assert "roundtable: error: agents.writer.tools[0].function: cannot import 'no_such_module'" in agent.output
    assert "Traceback" not in agent.output
