"""The real embedded model, end to end through the host: no scripted stand-in here."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from harness import READY, Procs, free_port, processes, start_cluster, write_config
from observe import converse, observing

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


async def test_small_model_streams_token_by_token_through_the_host(tmp_path: Path) -> None:
    cfg = local_config(tmp_path, "small", max_rounds=2)
    with processes(tmp_path) as procs:
        start_model(procs, cfg)
        start_cluster(procs, cfg, ["writer", "editor"])
        address = procs.all[1].output.split("host on ")[1].split()[0]
        async with observing(address) as (runtime, seen):
            conversation = await converse(runtime, seen, "Write one sentence about a red kite.", timeout=240)
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


@pytest.mark.slow
async def test_default_model_holds_a_six_turn_conversation_without_echoing(tmp_path: Path) -> None:
    cfg = local_config(tmp_path, "default", max_rounds=6)
    with processes(tmp_path) as procs:
        start_model(procs, cfg)
        start_cluster(procs, cfg, ["writer", "editor"])
        address = procs.all[1].output.split("host on ")[1].split()[0]
        async with observing(address) as (runtime, seen):
            conversation = await converse(
                runtime, seen, "Write a two-sentence opening for a story about a lighthouse keeper.", timeout=900
            )
    assert seen.ended[conversation].ok, seen.ended[conversation]
    replies = [m for m in seen.in_conversation(conversation) if m.kind == "agent"]
    assert [m.author for m in replies] == ["writer", "editor"] * 3
    for before, after in itertools.pairwise(replies):
        assert after.content.strip(), f"{after.author} said nothing"
        assert after.content.strip() != before.content.strip(), f"{after.author} echoed: {after.content!r}"
    writer_texts = [m.content for m in replies if m.author == "writer"]
    assert len(set(writer_texts)) == 3, "the writer should revise, not repeat itself"
    (tmp_path / "transcript.txt").write_text("\n\n".join(f"{m.author}: {m.content}" for m in replies))
    print("\n\n".join(f"{m.author}: {m.content}" for m in replies))
