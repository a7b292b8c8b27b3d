"""The real default model calls a tool: real processes, the model's own words, the call in
the journal and its result in the reply. The parsing itself is tested in test_texttools.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from harness import free_port, processes, start_cluster, write_config
from observe import converse, observing
from test_real_model import start_model
from test_tools import TOOLKIT
from toolkit.harbour import CODE_WORD

from roundtable.store import StoredToolCall, TranscriptStore

TASK = "What entry code must the Sea Lark radio to enter Port Elsewhere today?"


def pilot_config(tmp_path: Path, host_port: int, model_port: int) -> Path:
    pilot = {
        "name": "pilot",
        "description": "Answers a ship's questions about harbours.",
        "system_message": "You are a helpful harbour assistant. Answer in one or two sentences.",
        # Temperature 0: the same words every run, as far as llama.cpp on one CPU allows.
        "model": {"provider": "local", "temperature": 0, "max_tokens": 128, "repeat_penalty": 1.0},
        "tools": [{"function": "toolkit.harbour:entry_code"}],
    }
    return write_config(
        tmp_path / "roundtable.yaml",
        {
            "host": {"address": f"127.0.0.1:{host_port}"},
            "local_model": {"model": "default", "port": model_port},
            "agents": [pilot],
            "manager": {"termination": {"max_rounds": 1, "timeout": 600}, "turn_timeout": 420},
            "data_dir": str(tmp_path / "data"),
        },
    )


async def recorded_calls(tmp_path: Path, conversation_id: str) -> list[StoredToolCall]:
    store = TranscriptStore(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'transcripts.db'}")
    try:
        return await store.tool_calls(conversation_id)
    finally:
        await store.close()


@pytest.mark.slow
@pytest.mark.timeout(1500)  # model start and the conversation have their own, shorter, limits
async def test_default_model_calls_a_python_tool_and_answers_with_its_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", TOOLKIT)  # the agent process imports toolkit.harbour
    host_port = free_port()
    cfg = pilot_config(tmp_path, host_port, free_port())
    with processes(tmp_path) as procs:
        start_model(procs, cfg)
        start_cluster(procs, cfg, ["pilot"])
        async with observing(f"127.0.0.1:{host_port}") as (runtime, seen):
            conversation = await converse(runtime, seen, TASK, timeout=600)
    assert seen.ended[conversation].ok, seen.ended[conversation]
    (reply,) = [m for m in seen.in_conversation(conversation) if m.kind == "agent"]
    print(f"pilot: {reply.content}")
    calls = await recorded_calls(tmp_path, conversation)
    assert [(c.agent, c.tool, c.status) for c in calls] == [("pilot", "entry_code", "done")], calls
    assert "Elsewhere" in json.loads(calls[0].arguments)["harbour"]
    assert CODE_WORD in (calls[0].result or "")
    assert CODE_WORD in reply.content, f"the reply does not use the tool's result: {reply.content!r}"
    # The call went to the tool, not to the page: its JSON was never streamed as text.
    streamed = "".join(seen.tokens(reply.id))
    assert "tool_call" not in streamed and '"arguments"' not in streamed, streamed
