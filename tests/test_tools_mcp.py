"""MCP tools: an agent gets the tools of a real MCP server (tests/toolkit/mcp_server.py) over
stdio or streamable HTTP, the terminal shows each call, and a server that fails, cannot be
reached or dies is named in one line or answered with an error, never a hung turn."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from harness import Procs, free_port, processes, start_cluster
from test_tools import TOOLKIT, chat, tool_config

#: The MCP server's tools, in the order it lists them.
TOOLS = "add, shout, fail"
#: Seconds an MCP call may take here: a dead server's call fails well within the turn timeout.
CALL_TIMEOUT = 10


def mcp_server(procs: Procs, transport: str, tmp_path: Path) -> dict[str, Any]:
    """The `mcp` entry of a tool config for the test server; over HTTP the test starts it."""
    if transport == "stdio":
        return {
            "command": sys.executable,
            "args": ["-m", "toolkit.mcp_server", "--transport", "stdio"],
            # A stdio server gets only a minimal environment unless the config names more.
            "env": {"PYTHONPATH": TOOLKIT, "MCP_SERVER_PID_FILE": str(tmp_path / "mcp-server.pid")},
            "timeout": CALL_TIMEOUT,
        }
    port = free_port()
    server = procs.start(
        "mcp-server",
        *(sys.executable, "-m", "toolkit.mcp_server", "--transport", "http", "--port", str(port)),
        env={"PYTHONPATH": TOOLKIT, "MCP_SERVER_PID_FILE": str(tmp_path / "mcp-server.pid")},
    )
    server.wait_for("Uvicorn running on", timeout=60)
    return {"url": f"http://127.0.0.1:{port}/mcp", "timeout": CALL_TIMEOUT}


def mcp_writer(server: dict[str, Any], *script: str) -> dict[str, Any]:
    return {"name": "writer", "model": {"provider": "scripted", "script": list(script)}, "tools": [{"mcp": server}]}


def kill(pid: int, timeout: float = 30.0) -> None:
    """SIGKILL `pid` and wait until it is gone (or a zombie its parent has yet to reap)."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except FileNotFoundError:
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} did not die within {timeout} s")


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_an_agent_calls_an_mcp_servers_tools_and_the_terminal_shows_the_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    monkeypatch.setenv("PYTHONPATH", TOOLKIT)
    with processes(tmp_path) as procs:
        server = mcp_server(procs, transport, tmp_path)
        # The second call's arguments carry the first call's result ({last}), as a model's would.
        writer = mcp_writer(server, 'CALL add {"a": 1, "b": 2}', 'CALL shout {"text": "the sum is {last}"}', "{last}")
        cfg = tool_config(tmp_path, writer)
        started = start_cluster(procs, cfg, ["writer", "editor"])
        assert f"tools: {TOOLS})" in started["writer"].output, started["writer"].output
        out = chat(procs, cfg, "Add one and two, loudly")
    assert "⚙ writer: add(a=1, b=2) -> 3\n" in out, out
    assert '⚙ writer: shout(text="the sum is 3") -> THE SUM IS 3!\n' in out, out
    assert "writer: THE SUM IS 3!\n" in out, out
    assert "editor: Noted: THE SUM IS 3!\n" in out, out


def test_a_failing_mcp_tool_is_shown_and_the_model_hears_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", TOOLKIT)
    with processes(tmp_path) as procs:
        writer = mcp_writer(
            mcp_server(procs, "stdio", tmp_path), 'CALL fail {"reason": "the sea is closed"}', "The tool said: {last}"
        )
        cfg = tool_config(tmp_path, writer)
        start_cluster(procs, cfg, ["writer", "editor"])
        out = chat(procs, cfg, "Sail")
    error = "Error executing tool fail: the sea is closed"  # FastMCP's words for the exception
    assert f'✗ writer: fail(reason="the sea is closed") failed: {error}\n' in out, out
    assert f"writer: The tool said: {error}\n" in out, out
    assert f"editor: Noted: The tool said: {error}\n" in out, out
    assert "· conversation ended: max_rounds reached" in out, out


def _unavailable(tmp_path: Path, case: str) -> tuple[dict[str, Any], str]:
    """An MCP server entry that cannot be used, and what the error names as the reason."""
    if case == "missing-command":
        return {"command": str(tmp_path / "no-such-server")}, "FileNotFoundError"
    if case == "exits-at-once":
        return {"command": sys.executable, "args": ["-c", "raise SystemExit(3)"]}, "Connection closed"
    return {"url": f"http://127.0.0.1:{free_port()}/mcp"}, "ConnectError"  # nobody listens there


@pytest.mark.parametrize("case", ["missing-command", "exits-at-once", "nobody-listens"])
def test_an_agent_whose_mcp_server_is_not_available_exits_with_one_line(tmp_path: Path, case: str) -> None:
    server, reason = _unavailable(tmp_path, case)
    cfg = tool_config(tmp_path, mcp_writer(server, "hello"))
    with processes(tmp_path) as procs:
        # No host: the tools are started before the agent connects.
        agent = procs.roundtable("agent-writer", "agent", "--config", str(cfg), "--name", "writer")
        assert agent.wait_exit(60) == 1, agent.output
    lines = agent.output.splitlines()
    assert len(lines) == 1, agent.output  # no traceback, no log lines around it
    assert re.fullmatch(r"roundtable: error: writer: MCP server .+ is not available: .+", lines[0]), lines[0]
    assert reason in lines[0], lines[0]  # the real reason, not a time-out


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_an_mcp_server_that_dies_gives_the_next_call_an_error_and_the_chat_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    monkeypatch.setenv("PYTHONPATH", TOOLKIT)
    with processes(tmp_path) as procs:
        writer = mcp_writer(mcp_server(procs, transport, tmp_path), 'CALL add {"a": 1, "b": 2}', "The sum is {last}")
        cfg = tool_config(tmp_path, writer)
        started = start_cluster(procs, cfg, ["writer", "editor"])
        before = chat(procs, cfg, "Add before")
        assert "⚙ writer: add(a=1, b=2) -> 3\n" in before, before
        kill(int((tmp_path / "mcp-server.pid").read_text()))
        after = procs.roundtable("chat-after", "chat", "Add after", "--config", str(cfg), "--timeout", "90")
        assert after.wait_exit(120) == 0, after.output
        assert started["writer"].popen.poll() is None, started["writer"].output
    out = after.output
    failed = re.search(r"^✗ writer: add\(a=1, b=2\) failed: (.+)$", out, re.MULTILINE)
    assert failed, out
    assert f"writer: The sum is {failed[1]}\n" in out, out  # the model heard the error
    assert f"editor: Noted: The sum is {failed[1]}\n" in out, out
    assert "· conversation ended: max_rounds reached" in out, out
    assert "Traceback" not in started["writer"].output, started["writer"].output
