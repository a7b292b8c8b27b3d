"""An agent's kept replies: the reply to a turn comes back for that turn only, survives a new
Outbox on the same directory (a restarted agent), goes with its conversation, and never
escapes the directory whatever the conversation id."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from roundtable.messages import AgentReply
from roundtable.outbox import COMPACT_BYTES, Outbox


def reply(conversation_id: str, turn_id: str, content: str = "Done.") -> AgentReply:
    return AgentReply(
        conversation_id=conversation_id, turn_id=turn_id, message_id="m", author="writer", content=content
    )


def test_a_kept_reply_comes_back_for_its_turn_only_and_after_a_restart(tmp_path: Path) -> None:
    outbox = Outbox.at(tmp_path / "replies")
    assert outbox is not None
    outbox.put(reply("c1", "t1", "first"))
    outbox.put(reply("c1", "t2", "second"))  # the latest turn replaces the one before
    outbox.put(reply("c2", "t9"))
    again = Outbox.at(tmp_path / "replies")  # the agent restarted
    assert again is not None
    assert again.get("c1", "t2") == reply("c1", "t2", "second")
    assert again.get("c1", "t1") is None
    assert again.get("c3", "t1") is None
    again.drop("c1")
    assert again.get("c1", "t2") is None
    assert again.get("c2", "t9") is not None


def test_a_hostile_conversation_id_stays_inside_the_directory(tmp_path: Path) -> None:
    outbox = Outbox.at(tmp_path / "replies")
    assert outbox is not None
    outbox.put(reply("../../escape", "t1"))
    assert [p.parent for p in tmp_path.rglob("*.json")] == [tmp_path / "replies"]
    assert outbox.get("../../escape", "t1") is not None


def test_an_unreadable_kept_reply_is_ignored_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    outbox = Outbox.at(tmp_path)
    assert outbox is not None
    outbox.put(reply("c1", "t1"))
    [kept] = tmp_path.glob("*.json")
    kept.write_text("{not json")
    with caplog.at_level(logging.WARNING):
        assert outbox.get("c1", "t1") is None
    assert "ignored an unreadable kept reply" in caplog.text


def test_a_reply_cut_short_by_a_crash_is_passed_over_for_the_whole_one_before(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = Outbox.at(tmp_path)
    assert outbox is not None
    outbox.put(reply("c1", "t1", "first"))
    [kept] = tmp_path.glob("*.json")
    whole = b"\n" + reply("c1", "t2", "second").model_dump_json().encode()  # as put writes it
    with kept.open("ab") as out:
        out.write(whole[: len(whole) // 2])  # the machine went down mid-write
    with caplog.at_level(logging.WARNING):
        assert outbox.get("c1", "t1") == reply("c1", "t1", "first")
        assert outbox.get("c1", "t2") is None  # asked for again: answered anew
    assert "ignored an unreadable kept reply" in caplog.text
    outbox.put(reply("c1", "t2", "second"))
    assert outbox.get("c1", "t2") == reply("c1", "t2", "second")


def test_a_long_conversation_keeps_a_small_file(tmp_path: Path) -> None:
    outbox = Outbox.at(tmp_path)
    assert outbox is not None
    for n in range(200):
        outbox.put(reply("c1", f"t{n}", "word " * 200))  # about 1 KB a reply
    [kept] = tmp_path.glob("*.json")
    assert kept.stat().st_size <= COMPACT_BYTES + 2048
    assert outbox.get("c1", "t199") == reply("c1", "t199", "word " * 200)
    assert list(tmp_path.glob("*.part")) == []


def test_an_outbox_that_cannot_be_made_is_left_out_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING):
        assert Outbox.at(blocker / "replies") is None
    assert "replies are not kept on disk" in caplog.text
