"""`roundtable up`: everything starts in order, crashes are restarted, and nothing is left behind."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness import free_port, processes, scripted_agent, write_config


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def child_pids(output: str) -> dict[str, int]:
    return {name: int(pid) for name, pid in re.findall(r"started (\S+) \(pid (\d+)\)", output)}


def scripted_config(tmp_path: Path) -> Path:
    return write_config(
        tmp_path / "roundtable.yaml",
        {
            "host": {"address": f"127.0.0.1:{free_port()}"},
            "model": {"provider": "scripted"},
            "agents": [scripted_agent("writer", "Draft {n}"), scripted_agent("editor", "Feedback {n}")],
            "manager": {"termination": {"max_rounds": 2}},
        },
    )


def chat(cfg: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "roundtable", "chat", "hello", "--config", str(cfg), "--timeout", "60"],
        capture_output=True,
        text=True,
        timeout=90,
    )


def wait_until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_up_with_a_task_runs_one_conversation_and_exits_with_its_outcome(tmp_path: Path) -> None:
    cfg = scripted_config(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "roundtable", "up", "--config", str(cfg), "--no-ui", "--task", "Write a limerick"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "writer: Draft 1" in result.stdout
    assert "editor: Feedback 1" in result.stdout
    assert "conversation ended: max_rounds reached (2 rounds)" in result.stdout
    pids = child_pids(result.stdout)
    assert set(pids) == {"host", "manager", "writer", "editor"}
    assert not any(alive(pid) for pid in pids.values())


def test_a_killed_agent_is_restarted_and_sigterm_leaves_no_orphans(tmp_path: Path) -> None:
    cfg = scripted_config(tmp_path)
    with processes(tmp_path) as procs:
        up = procs.roundtable("up", "up", "--config", str(cfg), "--no-ui")
        up.wait_for("everything is ready", timeout=60)
        assert chat(cfg).returncode == 0
        pids = child_pids(up.output)
        os.kill(pids["writer"], signal.SIGKILL)
        up.wait_for("writer was killed by SIGKILL; restarting", timeout=30)
        up.wait_for("writer is back", timeout=30)
        second = chat(cfg)
        assert second.returncode == 0, second.stdout + second.stderr
        assert "writer: Draft 1" in second.stdout  # a fresh writer process: its script starts again
        all_pids = list(child_pids(up.output).values())
        up.popen.send_signal(signal.SIGTERM)
        assert up.wait_exit(30) == 0
        assert "stopped" in up.output
    wait_until(lambda: not any(alive(pid) for pid in all_pids), 10, "every child to exit")


def test_up_killed_outright_takes_its_children_with_it(tmp_path: Path) -> None:
    cfg = scripted_config(tmp_path)
    with processes(tmp_path) as procs:
        up = procs.roundtable("up", "up", "--config", str(cfg), "--no-ui")
        up.wait_for("everything is ready", timeout=60)
        pids = list(child_pids(up.output).values())
        os.kill(up.popen.pid, signal.SIGKILL)
        up.wait_exit(10)
    wait_until(lambda: not any(alive(pid) for pid in pids), 15, "the children of a killed `up` to exit")


async def test_a_child_that_keeps_crashing_is_named_and_not_restarted_for_ever() -> None:
    import io

    from roundtable.launcher import Launcher, Role
    from roundtable.runtime import READY_MARKER

    crash = (
        "import os, resource, signal, time;"
        f"print('{READY_MARKER} crasher', flush=True); time.sleep(0.2);"
        "resource.setrlimit(resource.RLIMIT_CORE, (0, 0)); os.kill(os.getpid(), signal.SIGILL)"
    )
    out = io.StringIO()
    launcher = Launcher(out=out, color=False)
    try:
        child = await launcher.start(Role("crasher", [sys.executable, "-c", crash], ready_timeout=30))
        deadline = time.monotonic() + 30
        while "not restarted again" not in out.getvalue() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        text = out.getvalue()
        assert "crasher was killed by SIGILL (illegal instruction); restarting in 0.5 s (restart 1)" in text, text
        assert "crasher was killed by SIGILL (illegal instruction); it failed 3 times within 60 s," in text, text
        assert text.count("started crasher") == 3, text
        assert child.process is not None and child.process.returncode is not None
    finally:
        await launcher.stop()
