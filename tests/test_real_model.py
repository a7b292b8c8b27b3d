"""The real embedded model, end to end through the host: no scripted stand-in here."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import READY, Procs, free_port, processes, start_cluster, write_config
from observe import Collector, converse, observing

from roundtable.config import default_config_data


def local_config(tmp_path: Path, model: str, max_rounds: int) -> Path:
    """The built-in writer and editor, on free ports, with the given local model."""
    data: dict[str, Any] = default_config_data()
    data["host"] = {"address": f"127.0.0.1:{free_port()}"}
    data["local_model"] = {**data["local_model"], "model": model, "port": free_port()}
    data["manager"] = {"termination": {"max_rounds": max_rounds, "timeout": 600}, "turn_timeout": 300}
    return write_config(tmp_path / "roundtable.yaml", data)


def start_model(procs: Procs, cfg: Path) -> None:
    procs.roundtable("model", "model", "--config", str(cfg)).wait_for(READY, timeout=300)


async def one_conversation(tmp_path: Path, cfg: Path, task: str, timeout: float) -> tuple[Collector, str]:
    """The model server, a host, the writer, the editor and a manager; one conversation, followed."""
    with processes(tmp_path) as procs:
        start_model(procs, cfg)
        start_cluster(procs, cfg, ["writer", "editor"])
        address = procs.all[1].output.split("host on ")[1].split()[0]
        async with observing(address) as (runtime, seen):
            conversation = await converse(runtime, seen, task, timeout=timeout)
    return seen, conversation


async def test_small_model_streams_token_by_token_through_the_host(tmp_path: Path) -> None:
    cfg = local_config(tmp_path, "small", max_rounds=2)
    seen, conversation = await one_conversation(tmp_path, cfg, "Write one sentence about a red kite.", 240)
    assert seen.ended[conversation].ok, seen.ended[conversation]
    replies = [m for m in seen.in_conversation(conversation) if m.kind == "agent"]
    assert [m.author for m in replies] == ["writer", "editor"]
    for reply in replies:
        tokens = seen.tokens(reply.id)
        assert len(tokens) >= 3, f"{reply.author} did not stream: {tokens}"
        assert "".join(tokens).strip() == reply.content
        # Every chunk arrived before the finished message did.
        token_times = [e[3] for e in seen.events if e[0] == "token" and e[1] == reply.id]
        message_time = next(e[2] for e in seen.events if e[0] == "message" and e[1] is reply)
        assert max(token_times) <= message_time  # type: ignore[operator]
        # ... and one by one, not in a single burst at the end.
        assert len({round(float(t), 3) for t in token_times}) > 1  # type: ignore[arg-type]


def ends_a_sentence(text: str) -> bool:
    return re.search(r"[.!?…][\"'”’»)\]]*$", text.strip()) is not None


@pytest.mark.slow
async def test_default_model_holds_a_six_turn_conversation_without_echoing(tmp_path: Path) -> None:
    """What any healthy run satisfies, on any CPU: sampling differs from one to another, so
    the writer must revise at least once (benchmarks/run measures how often: docs/benchmarks.md)."""
    cfg = local_config(tmp_path, "default", max_rounds=6)
    task = "Write a two-sentence opening for a story about a lighthouse keeper."
    seen, conversation = await one_conversation(tmp_path, cfg, task, 900)
    assert seen.ended[conversation].ok, seen.ended[conversation]
    replies = [m for m in seen.in_conversation(conversation) if m.kind == "agent"]
    (tmp_path / "transcript.txt").write_text("\n\n".join(f"{m.author}: {m.content}" for m in replies))
    print("\n\n".join(f"{m.author}: {m.content}" for m in replies))
    assert [m.author for m in replies] == ["writer", "editor"] * 3
    for before, after in itertools.pairwise(replies):
        assert after.content.strip(), f"{after.author} said nothing"
        assert after.content.strip() != before.content.strip(), f"{after.author} echoed: {after.content!r}"
    for reply in replies:
        assert ends_a_sentence(reply.content), f"{reply.author} stopped mid-sentence: {reply.content!r}"
    writer_texts = [m.content.strip() for m in replies if m.author == "writer"]
    assert len(set(writer_texts)) >= 2, f"the writer never revised its first draft: {writer_texts[0]!r}"


@pytest.mark.slow
async def test_default_model_cut_by_its_token_limit_ends_at_a_full_sentence(tmp_path: Path) -> None:
    """Ask for far more than 24 tokens: the stream stops mid-sentence, the stored reply does not."""
    cfg = local_config(tmp_path, "default", max_rounds=1)
    data = yaml.safe_load(cfg.read_text())
    writer = next(a for a in data["agents"] if a["name"] == "writer")
    writer["model"] = {**writer["model"], "max_tokens": 24, "stop": None}
    writer["first_prompt"] = "Task: {task}\nWrite at least six full sentences."
    write_config(cfg, data)
    task = "Describe a lighthouse at night in great detail, sentence after sentence."
    seen, conversation = await one_conversation(tmp_path, cfg, task, 600)
    (reply,) = [m for m in seen.in_conversation(conversation) if m.kind == "agent"]
    streamed = "".join(seen.tokens(reply.id)).strip()
    assert ends_a_sentence(reply.content), f"stopped mid-sentence: {reply.content!r}"
    assert len(reply.content) < len(streamed) and streamed.startswith(reply.content.removesuffix("…")), (
        f"the limit should have cut the stream ({streamed!r}) back to a full sentence ({reply.content!r})"
    )
