"""The managed group chat across real processes over real gRPC on 127.0.0.1, with scripted models.

Who speaks and when a conversation ends is logic: tests/test_inprocess.py checks it in one
process. These check that it holds across processes, and that conversations do not mix."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from harness import Proc, Procs, free_port, processes, scripted_agent, start_cluster, write_config


def config(tmp_path: Path, agents: list[dict[str, Any]], **manager: Any) -> Path:
    data = {
        "host": {"address": f"127.0.0.1:{free_port()}", "connect_timeout": 5},
        "model": {"provider": "scripted", "script": ["(default)"]},
        "agents": agents,
        "manager": {"turn_timeout": 20, **manager},
    }
    return write_config(tmp_path / "roundtable.yaml", data)


def speakers(output: str) -> list[str]:
    """Authors of the agents' messages, in the order the terminal printed them."""
    return re.findall(r"^(writer|editor|critic): ", output, re.MULTILINE)


def chat(procs: Procs, cfg: Path, task: str, name: str = "chat", timeout: int = 60) -> Proc:
    return procs.roundtable(name, "chat", task, "--config", str(cfg), "--timeout", str(timeout))


WRITER = scripted_agent("writer", "Draft {n} about: {last}", delay=0.005)
EDITOR = scripted_agent("editor", "Feedback {n}: more colour please, on {last}", delay=0.005)


def test_writer_and_editor_alternate_until_max_rounds(tmp_path: Path) -> None:
    cfg = config(tmp_path, [WRITER, EDITOR], termination={"max_rounds": 5})
    with processes(tmp_path) as procs:
        start_cluster(procs, cfg, ["writer", "editor"])
        terminal = chat(procs, cfg, "Write about a lighthouse")
        assert terminal.wait_exit(90) == 0, terminal.output
        out = terminal.output
    assert speakers(out) == ["writer", "editor", "writer", "editor", "writer"]
    assert "conversation ended: max_rounds reached (5 rounds)" in out
    assert re.findall(r"^writer: Draft (\d)", out, re.MULTILINE) == ["1", "2", "3"]


def test_five_concurrent_conversations_do_not_cross_talk(tmp_path: Path) -> None:
    cfg = config(tmp_path, [WRITER, EDITOR], termination={"max_rounds": 4})
    with processes(tmp_path) as procs:
        start_cluster(procs, cfg, ["writer", "editor"])
        terminals = [chat(procs, cfg, f"Topic-{i}-marker", name=f"chat{i}") for i in range(5)]
        for terminal in terminals:
            assert terminal.wait_exit(120) == 0, terminal.output
        for i, terminal in enumerate(terminals):
            out = terminal.output
            assert speakers(out) == ["writer", "editor", "writer", "editor"], out
            others = {f"Topic-{j}-marker" for j in range(5)} - {f"Topic-{i}-marker"}
            assert not any(o in out for o in others), out
            for line in out.splitlines():
                if line.startswith(("writer: ", "editor: ")):
                    assert f"Topic-{i}-marker" in line, line
