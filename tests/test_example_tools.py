"""examples/tools: its config loads, and its researcher's real filesystem MCP server (installed
by scripts/setup, started with node over stdio) reads the example's data through roundtable's
own path, while its writing tools wait for a person; a scripted model stands in for the embedded one."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from harness import REPO, Procs, free_port, processes, start_cluster, write_config

from roundtable.config import Config, load_config

EXAMPLE = REPO / "examples" / "tools"
CONFIG = EXAMPLE / "config.yaml"
#: Where scripts/setup installs the example's npm packages.
NPM_DIR = REPO / ".roundtable" / "npm"
#: The tools the pinned server offers that change files: a person approves each call.
WRITES = {"write_file", "edit_file", "create_directory", "move_file"}


def example() -> Config:
    return load_config(CONFIG)


def test_the_example_has_a_researcher_that_reads_files_and_an_analyst_that_runs_approved_code() -> None:
    config = example()
    assert [a.name for a in config.agents] == ["researcher", "analyst"]
    assert config.model_for(config.agent("researcher")).provider == "local"
    assert config.model_for(config.agent("analyst")).provider == "local"
    (files,) = config.agent("researcher").tools
    assert files.mcp is not None and files.mcp.command == "node", files
    assert files.mcp.args[1:] == ["examples/tools/data"], files.mcp.args
    assert not files.needs_approval("read_text_file")
    assert all(files.needs_approval(name) for name in WRITES)
    (code,) = config.agent("analyst").tools
    assert code.code is not None and code.code.timeout == 60, code
    assert code.needs_approval("run_python")


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _gone(pids: list[int], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{pid}").exists() for pid in pids):
            return True
        time.sleep(0.1)
    return False


def researcher_config(tmp_path: Path, script: list[str], directory: Path | None = None) -> Path:
    """The example's researcher and its tools, exactly as configured (the server started from
    the repository's root, where the example's relative paths hold), on a scripted model;
    with `directory`, the server is given that one instead of the example's data."""
    (files,) = example().agent("researcher").tools
    tool: dict[str, Any] = files.model_dump(mode="json", exclude_none=True)
    tool["mcp"]["cwd"] = str(REPO)
    if directory is not None:
        tool["mcp"]["args"][1:] = [str(directory)]
    data = {
        "host": {"address": f"127.0.0.1:{free_port()}", "connect_timeout": 5},
        "agents": [
            {"name": "researcher", "model": {"provider": "scripted", "script": script}, "tools": [tool]},
            {"name": "analyst", "model": {"provider": "scripted", "script": ["The analyst read: {last}"]}},
        ],
        "manager": {"termination": {"max_rounds": 2}, "turn_timeout": 60},
        "data_dir": str(tmp_path / "data"),
    }
    return write_config(tmp_path / "roundtable.yaml", data)


def chat(procs: Procs, cfg: Path, task: str) -> str:
    terminal = procs.roundtable("chat", "chat", task, "--config", str(cfg), "--timeout", "90")
    assert terminal.wait_exit(120) == 0, terminal.output
    return terminal.output


def needs_the_server() -> None:
    if shutil.which("node") is None or not NPM_DIR.is_dir():
        pytest.skip("needs Node.js and the filesystem MCP server in .roundtable/npm: run scripts/setup")
    (files,) = example().agent("researcher").tools
    assert files.mcp is not None
    assert (REPO / files.mcp.args[0]).is_file(), f"{files.mcp.args[0]} is not installed: run scripts/setup"


def test_the_researcher_reads_the_example_data_through_the_real_filesystem_server(tmp_path: Path) -> None:
    needs_the_server()
    (files,) = example().agent("researcher").tools
    sales = (EXAMPLE / "data" / "sales.csv").read_text(encoding="utf-8").strip()
    script = ["CALL list_allowed_directories {}", 'CALL read_text_file {"path": "sales.csv"}', "{last}"]
    cfg = researcher_config(tmp_path, script)
    with processes(tmp_path) as procs:
        started = start_cluster(procs, cfg, ["researcher", "analyst"])
        ready = re.search(r"tools: ([^)]*)\)", started["researcher"].output)
        assert ready, started["researcher"].output
        servers = _children(started["researcher"].popen.pid)
        assert servers, "the researcher started no MCP server"
        out = chat(procs, cfg, "What is in sales.csv?")
    # The server lists what the config expects: the read_only list names every tool but the writes.
    assert set(ready[1].split(", ")) == set(files.read_only) | WRITES, ready[1]
    allowed = EXAMPLE / "data"
    assert f"⚙ researcher: list_allowed_directories() -> Allowed directories: {allowed}\n" in out, out
    assert '⚙ researcher: read_text_file(path="sales.csv") -> region,quarter,revenue North,Q1,120 ' in out, out
    assert f"researcher: {sales}\n" in out, out  # the file, as the model got it back
    assert f"analyst: The analyst read: {sales}\n" in out, out
    assert "· conversation ended: max_rounds reached" in out, out
    assert _gone(servers), f"the MCP server outlived the researcher: {servers}"


def test_the_researcher_changes_a_file_only_if_a_person_approves(tmp_path: Path) -> None:
    needs_the_server()
    data = tmp_path / "files"  # a copy: were approval to fail, the example's own data stays whole
    shutil.copytree(EXAMPLE / "data", data)
    before = (data / "sales.csv").read_text(encoding="utf-8")
    cfg = researcher_config(tmp_path, ['CALL write_file {"path": "sales.csv", "content": "gone"}', "{last}"], data)
    with processes(tmp_path) as procs:
        start_cluster(procs, cfg, ["researcher", "analyst"])
        terminal = procs.roundtable(
            "chat", "chat", "Empty sales.csv", "--config", str(cfg), "--timeout", "90", stdin=True
        )
        asked = terminal.wait_for("approve? [y/n]", timeout=60)
        assert '? researcher: write_file(content="gone", path="sales.csv") needs approval.' in asked, asked
        assert (data / "sales.csv").read_text(encoding="utf-8") == before
        terminal.type("n")
        assert terminal.wait_exit(90) == 0, terminal.output
    out = terminal.output
    assert re.search(r"⊘ researcher: write_file\(.*\) not run: denied by .+ \(terminal\)", out), out
    assert (data / "sales.csv").read_text(encoding="utf-8") == before
