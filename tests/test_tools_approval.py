"""Calls a person approves first: the call waits (bounded) for y/n in `roundtable chat`, a
denial goes back to the agent as the tool's result, the wait survives a restart of the
manager and of the agent, and code execution asks by default. The page's Approve and Deny
buttons are tested in test_ui.py."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

from harness import Procs, processes, start_cluster
from test_tools import TOOLKIT, counted, env, tool_config

APPROVE = "approve? [y/n]"


def json_arg(program: str) -> str:
    return json.dumps({"code": program})


def approving_writer(*script: str, **policy: Any) -> dict[str, Any]:
    return {
        "name": "writer",
        "model": {"provider": "scripted", "script": list(script)},
        "tools": [{"function": "toolkit.counting:count", "approval": "always", **policy}],
    }


def terminal(procs: Procs, cfg: Path, task: str = "Count the ships") -> Any:
    return procs.roundtable("chat", "chat", task, "--config", str(cfg), "--timeout", "120", stdin=True)


def test_a_call_waits_for_yes_in_the_terminal_and_a_no_goes_back_to_the_agent(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PYTHONPATH", TOOLKIT)
    cfg = tool_config(tmp_path, approving_writer('CALL count {"label": "ships"}', "Result: {last}"), rounds=3)
    with processes(tmp_path) as procs:
        os.environ.update(env(tmp_path))
        start_cluster(procs, cfg, ["writer", "editor"])
        chat = terminal(procs, cfg)
        out = chat.wait_for(APPROVE, timeout=60)
        assert '? writer: count(label="ships") needs approval.' in out, out
        time.sleep(1)  # the agent asks again while it waits; nothing runs
        assert counted(tmp_path) == []
        chat.type("y")
        chat.wait_for(APPROVE, timeout=60, count=2)
        chat.type("n")
        assert chat.wait_exit(90) == 0, chat.output
    out = chat.output
    assert re.search(r'⚙ writer: count\(label="ships"\) \.\.\. approved by .+ \(terminal\)', out), out
    assert '⚙ writer: count(label="ships") -> ships is now 1' in out, out
    assert "writer: Result: ships is now 1" in out, out
    assert re.search(r'⊘ writer: count\(label="ships"\) not run: denied by .+ \(terminal\)', out), out
    assert re.search(r"writer: Result: denied by .+ \(terminal\)", out), out
    assert [e["label"] for e in counted(tmp_path)] == ["ships"]


def test_an_unanswered_call_is_denied_when_its_wait_runs_out(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PYTHONPATH", TOOLKIT)
    writer = approving_writer('CALL count {"label": "gulls"}', "Result: {last}", approval_timeout=3)
    cfg = tool_config(tmp_path, writer)
    with processes(tmp_path) as procs:
        os.environ.update(env(tmp_path))
        start_cluster(procs, cfg, ["writer", "editor"])
        chat = procs.roundtable("chat", "chat", "Count gulls", "--config", str(cfg), "--timeout", "90")
        assert chat.wait_exit(90) == 0, chat.output
    out = chat.output
    assert "no terminal input: approve or deny it on the page" in out, out
    assert '⊘ writer: count(label="gulls") not run: denied: no one answered within 3 s' in out, out
    assert "writer: Result: denied: no one answered within 3 s" in out, out
    assert counted(tmp_path) == []


def test_a_waiting_call_survives_a_restart_of_the_manager_and_of_the_agent(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PYTHONPATH", TOOLKIT)
    cfg = tool_config(tmp_path, approving_writer('CALL count {"label": "terns"}', "Result: {last}"))
    with processes(tmp_path) as procs:
        os.environ.update(env(tmp_path))
        started = start_cluster(procs, cfg, ["writer", "editor"])
        chat = terminal(procs, cfg)
        chat.wait_for(APPROVE, timeout=60)
        for name in ("manager", "writer"):
            started[name].stop(signal.SIGKILL)
            args = (
                ("manager", "--config", str(cfg))
                if name == "manager"
                else ("agent", "--config", str(cfg), "--name", name)
            )
            again = procs.roundtable(f"{name}-again", *args)
            again.wait_for("roundtable ready", timeout=60)
            if name == "writer":
                # The turn is asked again; the new run of it waits for the same approval.
                again.wait_for("speaking in", timeout=60)
        assert counted(tmp_path) == []
        chat.type("y")
        assert chat.wait_exit(90) == 0, chat.output
    assert "writer: Result: terns is now 1" in chat.output, chat.output
    assert chat.output.count(APPROVE) == 1, chat.output  # asked once, whatever was restarted
    assert [e["label"] for e in counted(tmp_path)] == ["terns"]


def test_a_call_interrupted_by_a_crash_is_run_again_only_if_a_person_says_so(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PYTHONPATH", TOOLKIT)
    writer = {
        "name": "writer",
        "model": {"provider": "scripted", "script": ['CALL count {"label": "crabs"}', "Result: {last}"]},
        "tools": [{"function": "toolkit.counting:count", "on_interrupted": "ask"}],
    }
    cfg = tool_config(tmp_path, writer)
    with processes(tmp_path) as procs:
        os.environ.update(env(tmp_path, COUNTER_DELAY="30"))  # the call is still running when its agent dies
        started = start_cluster(procs, cfg, ["writer", "editor"])
        chat = terminal(procs, cfg)
        started["writer"].wait_for("speaking in", timeout=60)
        time.sleep(1.5)  # the call has been recorded as started
        started["writer"].stop(signal.SIGKILL)
        os.environ["COUNTER_DELAY"] = "0"
        procs.roundtable("writer-again", "agent", "--config", str(cfg), "--name", "writer").wait_for(
            "roundtable ready", timeout=60
        )
        out = chat.wait_for(APPROVE, timeout=60)
        assert "interrupted before, result unknown: run it again? (on_interrupted: ask)" in out, out
        chat.type("y")
        assert chat.wait_exit(90) == 0, chat.output
    assert "writer: Result: crabs is now 1" in chat.output, chat.output
    assert [e["label"] for e in counted(tmp_path)] == ["crabs"]


def test_code_runs_in_the_conversations_own_directory_once_approved(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PYTHONPATH", TOOLKIT)
    program = "import os, pathlib; pathlib.Path('note.txt').write_text('hi'); print(sum(range(10)), os.getcwd())"
    analyst = {
        "name": "writer",
        "model": {"provider": "scripted", "script": ["CALL run_python " + json_arg(program), "Ran: {last}"]},
        "tools": [{"code": {"timeout": 20, "work_dir": str(tmp_path / "work")}}],
    }
    cfg = tool_config(tmp_path, analyst)
    with processes(tmp_path) as procs:
        start_cluster(procs, cfg, ["writer", "editor"])
        chat = terminal(procs, cfg)
        out = chat.wait_for(APPROVE, timeout=60)  # code asks by default, showing the whole program
        assert f"    code: {program}\n  approve? [y/n]" in out, out
        assert not list((tmp_path / "work").rglob("note.txt"))
        chat.type("yes")
        assert chat.wait_exit(90) == 0, chat.output
    ran = re.search(r"writer: Ran: 45 (\S+)", chat.output)
    assert ran, chat.output
    workdir = Path(ran.group(1))
    assert workdir.parent == tmp_path / "work" / "writer", workdir
    assert (workdir / "note.txt").read_text() == "hi"


def test_code_that_runs_too_long_is_stopped_and_the_agent_is_told(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    analyst = {
        "name": "writer",
        "model": {
            "provider": "scripted",
            "script": ["CALL run_python " + json_arg("import time; time.sleep(60)"), "{last}"],
        },
        "tools": [{"code": {"timeout": 2, "work_dir": str(tmp_path / "work")}, "approval": "never"}],
    }
    cfg = tool_config(tmp_path, analyst)
    with processes(tmp_path) as procs:
        start_cluster(procs, cfg, ["writer", "editor"])
        chat = procs.roundtable("chat", "chat", "Wait", "--config", str(cfg), "--timeout", "90")
        assert chat.wait_exit(90) == 0, chat.output
    assert "✗ writer: run_python(" in chat.output, chat.output
    assert "writer: the program ran longer than 2 s and was stopped" in chat.output, chat.output
