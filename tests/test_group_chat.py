"""The managed group chat across real processes over real gRPC on 127.0.0.1, with scripted models."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
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


def test_text_mention_ends_the_chat_early(tmp_path: Path) -> None:
    editor = scripted_agent("editor", "Needs work.", "Much better. APPROVE")
    cfg = config(tmp_path, [WRITER, editor], termination={"max_rounds": 20, "text_mention": "APPROVE"})
    with processes(tmp_path) as procs:
        start_cluster(procs, cfg, ["writer", "editor"])
        terminal = chat(procs, cfg, "Write a haiku")
        assert terminal.wait_exit(90) == 0, terminal.output
        out = terminal.output
    assert speakers(out) == ["writer", "editor", "writer", "editor"]
    assert "conversation ended: 'APPROVE' mentioned by editor" in out


def test_selector_that_answers_garbage_falls_back_and_finishes(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        [WRITER, EDITOR],
        strategy="selector",
        model={"provider": "scripted", "script": ["banana"]},
        termination={"max_rounds": 3},
    )
    with processes(tmp_path) as procs:
        start_cluster(procs, cfg, ["writer", "editor"])
        terminal = chat(procs, cfg, "Write a slogan")
        assert terminal.wait_exit(90) == 0, terminal.output
        out = terminal.output
    assert speakers(out) == ["writer", "editor", "writer"]
    assert "falling back to round robin" in out


def test_selector_picks_the_speaker_it_names(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        [WRITER, EDITOR],
        strategy="selector",
        model={"provider": "scripted", "script": ["I think editor should go."]},
        termination={"max_rounds": 2},
    )
    with processes(tmp_path) as procs:
        start_cluster(procs, cfg, ["writer", "editor"])
        terminal = chat(procs, cfg, "Review this")
        assert terminal.wait_exit(90) == 0, terminal.output
        assert speakers(terminal.output) == ["editor", "editor"]


def test_graph_strategy_follows_allowed_transitions(tmp_path: Path) -> None:
    critic = scripted_agent("critic", "Critique {n}")
    cfg = config(
        tmp_path,
        [WRITER, EDITOR, critic],
        strategy="graph",
        graph={"writer": ["critic"], "critic": ["editor"], "editor": ["writer"]},
        termination={"max_rounds": 6},
    )
    with processes(tmp_path) as procs:
        start_cluster(procs, cfg, ["writer", "editor", "critic"])
        terminal = chat(procs, cfg, "Write a poem")
        assert terminal.wait_exit(90) == 0, terminal.output
        assert speakers(terminal.output) == ["writer", "critic", "editor", "writer", "critic", "editor"]


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


def test_a_silent_speaker_is_asked_again_then_skipped(tmp_path: Path) -> None:
    # "ghost" is in the roster but no process serves it.
    cfg = config(
        tmp_path,
        [WRITER, scripted_agent("ghost", "boo")],
        turn_timeout=1,
        turn_retries=1,
        termination={"max_rounds": 2},
    )
    with processes(tmp_path) as procs:
        start_cluster(procs, cfg, ["writer"])
        terminal = chat(procs, cfg, "Anyone there?")
        assert terminal.wait_exit(60) == 0, terminal.output
        out = terminal.output
    assert "ghost did not answer within 1 s; skipped" in out
    assert speakers(out) == ["writer", "writer"]


@pytest.mark.parametrize("strategy", ["round_robin", "random"])
def test_every_strategy_finishes(tmp_path: Path, strategy: str) -> None:
    cfg = config(tmp_path, [WRITER, EDITOR], strategy=strategy, termination={"max_rounds": 3})
    with processes(tmp_path) as procs:
        start_cluster(procs, cfg, ["writer", "editor"])
        terminal = chat(procs, cfg, "Go")
        assert terminal.wait_exit(60) == 0, terminal.output
        assert len(speakers(terminal.output)) == 3


def test_timeout_ends_a_conversation_that_would_run_on(tmp_path: Path) -> None:
    slow = scripted_agent("writer", "a b c d e f g h i j k l m n o p q r s t", delay=0.1)
    cfg = config(tmp_path, [slow, EDITOR], termination={"max_rounds": 100, "timeout": 3})
    with processes(tmp_path) as procs:
        start_cluster(procs, cfg, ["writer", "editor"])
        terminal = chat(procs, cfg, "Go on and on")
        assert terminal.wait_exit(60) == 0, terminal.output
        out = terminal.output
    assert "conversation ended: timeout after 3 s" in out
    assert 1 <= len(speakers(out)) < 100


def test_a_reply_that_runs_out_of_tokens_ends_at_its_last_full_sentence(tmp_path: Path) -> None:
    """The scripted model counts words as tokens: 12 words with max_tokens 8 stop mid-sentence."""
    writer = scripted_agent("writer", "A lamp turns. The sea is dark and the keeper counts ships")
    writer["model"]["max_tokens"] = 8
    cfg = config(tmp_path, [writer, EDITOR], termination={"max_rounds": 2})
    with processes(tmp_path) as procs:
        start_cluster(procs, cfg, ["writer", "editor"])
        terminal = chat(procs, cfg, "Write about a lighthouse")
        assert terminal.wait_exit(90) == 0, terminal.output
        out = terminal.output
    assert re.findall(r"^writer: (.*)$", out, re.MULTILINE)[-1] == "A lamp turns.", out
    assert "editor: Feedback 1: more colour please, on A lamp turns." in out, out
