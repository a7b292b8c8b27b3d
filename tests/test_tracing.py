"""One trace follows a conversation across processes: terminal -> manager -> agent -> model -> back."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from harness import free_port, processes, scripted_agent, start_cluster, write_config


def spans_in(log: str) -> list[dict[str, object]]:
    """The JSON spans that the console exporter printed among the log lines."""
    spans, depth, current = [], 0, []
    for line in log.splitlines():
        if depth == 0 and line.startswith("{"):
            current = []
        if depth > 0 or line.startswith("{"):
            current.append(line)
            depth += line.count("{") - line.count("}")
            if depth == 0:
                spans.append(json.loads("\n".join(current)))
    return spans


def test_spans_from_every_process_share_the_conversations_trace(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "roundtable.yaml",
        {
            "host": {"address": f"127.0.0.1:{free_port()}"},
            "agents": [scripted_agent("writer", "Draft {n}"), scripted_agent("editor", "Feedback {n}")],
            "manager": {"termination": {"max_rounds": 2}},
            "telemetry": {"console": True},
        },
    )
    with processes(tmp_path) as procs:
        started = start_cluster(procs, cfg, ["writer", "editor"])
        result = subprocess.run(
            [sys.executable, "-m", "roundtable", "chat", "hello", "--config", str(cfg), "--timeout", "60"],
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert result.returncode == 0, result.stderr
    logs = {"chat": result.stderr, **{name: proc.output for name, proc in started.items()}}
    traces: dict[str, set[str]] = {}
    names: dict[str, set[str]] = {}
    for process, log in logs.items():
        for span in spans_in(log):
            trace_id = str(span["context"]["trace_id"])  # type: ignore[index]
            traces.setdefault(trace_id, set()).add(process)
            names.setdefault(process, set()).add(str(span["name"]))
    assert traces, "no spans were printed"
    widest = max(traces.values(), key=len)
    assert {"chat", "manager", "writer", "editor"} <= widest, traces
    assert "roundtable.agent.speak" in names["writer"]
    assert "roundtable.manager.select" in names["manager"]
    assert not re.search(r"sk-|ROUNDTABLE_TOKEN", "".join(logs.values()))
