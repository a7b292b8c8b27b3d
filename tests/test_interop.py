"""AutoGen's wire contract both ways: our workers on a stock AutoGen host (the other direction,
stock workers on our host, is the tutorial's Exercise 3 agent in test_tutorial.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from harness import READY, free_port, processes, scripted_agent, terminal_messages, write_config

STOCK_HOST = Path(__file__).resolve().parent / "stock_host.py"


def test_a_conversation_runs_with_our_workers_on_a_stock_autogen_host(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    cfg = write_config(
        tmp_path / "roundtable.yaml",
        {
            "host": {"address": address, "connect_timeout": 10},
            "agents": [scripted_agent("writer", "Draft {n}"), scripted_agent("editor", "Feedback {n}")],
            "manager": {"termination": {"max_rounds": 4}, "turn_timeout": 20},
        },
    )
    with processes(tmp_path) as procs:
        procs.start("stock-host", sys.executable, str(STOCK_HOST), address).wait_for(READY)
        for name, args in {
            "manager": ("manager",),
            "writer": ("agent", "--name", "writer"),
            "editor": ("agent", "--name", "editor"),
        }.items():
            procs.roundtable(name, *args, "--config", str(cfg)).wait_for(READY, timeout=60)
        terminal = procs.roundtable("chat", "chat", "Write about rain", "--config", str(cfg), "--timeout", "60")
        assert terminal.wait_exit(90) == 0, terminal.output
        output = terminal.output
    assert "max_rounds reached (4 rounds)" in output
    assert [(author, text.split()[0]) for author, text in terminal_messages(output)] == [
        ("writer", "Draft"),
        ("editor", "Feedback"),
        ("writer", "Draft"),
        ("editor", "Feedback"),
    ]
