"""Bad input gets one clear line and the right exit code, within a bounded time, never a hang."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fakeopenai import FakeOpenAI
from harness import READY, free_port, processes, scripted_agent, start_cluster, write_config

from roundtable.config import ConfigError, load_config


def run(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "roundtable", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin,
        env={**os.environ, **(env or {})},
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("roundtable: error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_unknown_provider_names_file_field_and_choices(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "roundtable.yaml",
        {"agents": [{"name": "writer"}, {"name": "editor", "model": {"provider": "opnai"}}]},
    )
    result = run("manager", "--config", str(cfg))
    assert result.returncode == 2
    line = one_error_line(result)
    assert f"{cfg}: agents[1].model.provider: unknown provider 'opnai'" in line
    assert "expected one of: local, openai, azure, openai-compatible, scripted" in line


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("agents: [\n  - name: writer\n  bad", "line"),
        (
            "manager:\n  termination:\n    max_rounds: -1\n",
            "manager.termination.max_rounds: Input should be greater than 0",
        ),
        ("agents:\n  - name: 'has space'\n", "agents[0].name"),
        ("agents:\n  - {name: a}\n  - {name: a}\n", "agent names must be unique, repeated: a"),
        ("manager: {strategy: cleverest}\n", "manager.strategy: unknown strategy 'cleverest'"),
        ("colour: blue\n", "colour: unknown field"),
        ("- just\n- a list\n", "expected a mapping"),
    ],
)
def test_bad_config_files_get_one_line_naming_the_problem(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(str(path)), message
    assert expected in message
    assert "\n" not in message


def test_missing_config_file(tmp_path: Path) -> None:
    result = run("host", "--config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "nope.yaml: no such file" in one_error_line(result)


def test_unreachable_host_fails_fast_with_a_clear_message() -> None:
    result = run(
        "agent", "--host", f"127.0.0.1:{free_port()}", "--name", "writer", "--provider", "scripted", timeout=30
    )
    assert result.returncode == 1
    assert "cannot reach the roundtable host at 127.0.0.1:" in one_error_line(result)


def test_openai_without_a_key_is_refused(tmp_path: Path) -> None:
    result = run("agent", "--name", "writer", "--provider", "openai", env={"OPENAI_API_KEY": ""})
    assert result.returncode == 2
    assert "needs an API key" in one_error_line(result)


def test_chat_without_a_manager_gives_up_with_a_reason(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    with processes(tmp_path) as procs:
        procs.roundtable("host", "host", "--address", address).wait_for(READY)
        result = run("chat", "hello", "--host", address, "--start-timeout", "3", timeout=30)
    assert result.returncode == 1
    assert "no manager took the conversation within 3 s" in one_error_line(result)


def test_oversized_task_is_refused_before_sending(tmp_path: Path) -> None:
    result = run("chat", "-", "--host", f"127.0.0.1:{free_port()}", stdin="x" * 200_001)
    assert result.returncode == 2
    assert "the task is too long: 200001 characters" in one_error_line(result)


def test_a_wrong_api_key_ends_the_conversation_with_that_reason(tmp_path: Path) -> None:
    with FakeOpenAI(status=401) as fake:
        cfg = write_config(
            tmp_path / "roundtable.yaml",
            {
                "host": {"address": f"127.0.0.1:{free_port()}"},
                "agents": [
                    {
                        "name": "writer",
                        "model": {"provider": "openai", "api_key": "sk-wrong", "base_url": fake.base_url},
                    },
                    scripted_agent("editor", "ok"),
                ],
            },
        )
        with processes(tmp_path) as procs:
            start_cluster(procs, cfg, ["writer", "editor"])
            result = run("chat", "hello", "--config", str(cfg), timeout=60)
            writer_log = procs.all[1].output
    assert result.returncode == 1
    assert "writer: the model server rejected the API key (401)" in result.stdout
    assert "sk-wrong" not in result.stdout + result.stderr + writer_log


def test_a_config_without_agents_is_refused_by_up_and_the_manager(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "empty.yaml", {"agents": []})
    for command in ("up", "manager"):
        result = run(command, "--config", str(cfg), timeout=30)
        assert result.returncode == 2, result.stderr
        assert f"{cfg}: agents: there are none" in one_error_line(result)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["host", "--address", "not-an-address"], "--address 'not-an-address': expected HOST:PORT"),
        (["host", "--address", "127.0.0.1:99999"], "the port '99999' is not a number from 1 to 65535"),
        (["host", "--address", "::1:5000"], "an IPv6 address needs brackets"),
        (["status", "--host", "localhost:"], "--host 'localhost:': the port '' is not a number"),
        (["chat", "hi", "--host", "bad host:1"], "'bad host' is not a host name or IP address"),
    ],
)
def test_a_bad_address_gets_our_one_line_and_no_grpc_noise(argv: list[str], expected: str) -> None:
    result = run(*argv, timeout=30)
    assert result.returncode == 2, result.stderr
    assert expected in one_error_line(result)
    assert result.stderr.strip().count("\n") == 0, f"more than our one line: {result.stderr!r}"


def test_a_second_host_on_a_taken_port_is_refused_not_shared(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    with processes(tmp_path) as procs:
        procs.roundtable("host", "host", "--address", address).wait_for(READY)
        result = run("host", "--address", address, timeout=30)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"cannot listen on {address}: the port is in use" in one_error_line(result)
    assert result.stderr.strip().count("\n") == 0, f"more than our one line: {result.stderr!r}"
