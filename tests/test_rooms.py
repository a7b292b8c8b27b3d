"""Shared rooms on the page, with real processes and three headless Chromium contexts as three
named people: one conversation seen live by all, each person's words under their name (on the
page and in what the agents see), who is watching, a late joiner's catch-up, and who may stop."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from harness import free_port, processes, scripted_agent, start_cluster, write_config
from playwright.sync_api import Browser, expect
from test_ui import (  # noqa: F401  (the module's browser fixture)
    RECORD_LENGTHS_JS,
    WAIT,
    Tab,
    browser,
    data_dir,
    recorded_inputs,
    screenshot,
    start_page,
)

LINE = "Draft {n}: the harbour wakes, gulls lift, and the first boat slips out past the breakwater."
LINK = re.compile(r"http://127\.0\.0\.1:\d+/\?room=[0-9A-Za-z_-]+")


def room_config(tmp_path: Path, delay: float, rounds: int, **ui: Any) -> Path:
    # The writer is given the history as one prompt, "author: words" a line, as a model would be.
    writer = {**scripted_agent("writer", LINE, delay=delay, record=tmp_path / "writer.jsonl"), "prompt": "{history}"}
    data = {
        "host": {"address": f"127.0.0.1:{free_port()}", "connect_timeout": 10},
        "model": {"provider": "scripted", "script": ["(default)"]},
        "agents": [writer, scripted_agent("editor", "Note {n}: shorter, please.", delay=delay)],
        "manager": {"turn_timeout": 60, "termination": {"max_rounds": rounds, "timeout": 300}},
        "ui": {"port": free_port(), **ui},
    }
    return write_config(tmp_path / "roundtable.yaml", data)


def room_link(tab: Tab) -> str:
    """The link the room's side panel offers."""
    panel = tab.page.locator("#side-view-content").get_by_text(LINK)
    expect(panel).to_be_visible(timeout=WAIT)
    match = LINK.search(panel.inner_text())
    assert match, panel.inner_text()
    return match.group(0)


def watching(tab: Tab, names: list[str]) -> None:
    """The side panel lists exactly these people as watching, the one who started it first."""
    expected = [f"{name} (started it)" if i == 0 else name for i, name in enumerate(names)]
    items = tab.page.locator("#side-view-content li")
    expect(items).to_have_text(expected, timeout=WAIT)


def said(tab: Tab) -> list[tuple[str | None, str]]:
    """Who said what, in order, as this tab shows it (a person's own words have no author drawn)."""
    return [(m["author"], m["text"]) for m in tab.transcript() if m["author"] != "roundtable"]


def test_three_people_share_one_room_live_under_their_names_and_a_late_joiner_catches_up(
    tmp_path: Path,
    browser: Browser,  # noqa: F811
) -> None:
    cfg = room_config(tmp_path, delay=0.12, rounds=6)
    with processes(tmp_path) as procs:
        start_cluster(procs, cfg, ["writer", "editor"])
        url = start_page(procs, cfg)
        ana = Tab(browser, url, name="ana")
        assert len(ana.asked) == 1 and "Your name" in ana.asked[0], ana.asked
        ana.page.evaluate(RECORD_LENGTHS_JS)
        ana.send("Write about a harbour at dawn")
        link = room_link(ana)

        bo = Tab(browser, link, name="bo")
        bo.page.evaluate(RECORD_LENGTHS_JS)
        bo.wait_for_text("Write about a harbour at dawn")  # what came before bo: ana's task
        watching(ana, ["ana", "bo"])
        watching(bo, ["ana", "bo"])
        bo.send("Make it rhyme")
        ana.wait_for_text("Make it rhyme")
        ana.wait_for_end()
        bo.wait_for_end()
        screenshot(bo.page, "room.png")

        cy = Tab(browser, link, name="cy")  # after the end: all of it, from the room's memory
        cy.wait_for_end()
        watching(cy, ["ana", "bo", "cy"])
        views = {name: said(tab) for name, tab in (("ana", ana), ("bo", bo), ("cy", cy))}
        lengths = {
            name: tab.page.evaluate("() => Object.values(window.lengthsSeen).map((seen) => seen.length)")
            for name, tab in (("ana", ana), ("bo", bo))
        }
        for tab in (ana, bo, cy):
            tab.close()

    # One conversation, the same for all three: each person's words under their name, but for
    # one's own, which Chainlit draws as one's own.
    agents = [(a, t) for a, t in views["ana"] if a in ("writer", "editor")]
    assert [a for a, _ in agents] == ["writer", "editor"] * 3, views["ana"]
    for name, view in views.items():
        assert [(a, t) for a, t in view if a in ("writer", "editor")] == agents, (name, view)
    assert ("bo", "Make it rhyme") in views["ana"] and ("bo", "Make it rhyme") in views["cy"], views
    assert ("ana", "Write about a harbour at dawn") in views["bo"], views["bo"]
    assert ("ana", "Write about a harbour at dawn") in views["cy"], views["cy"]
    assert (None, "Make it rhyme") in views["bo"] and (None, "Write about a harbour at dawn") in views["ana"], views
    # ana and bo each saw the agents' words arrive a few at a time, not whole.
    for name, seen in lengths.items():
        assert max(seen) >= 5, (name, seen)
    # What the agents were given names the person who said it.
    assert any("bo: Make it rhyme" in text for text in recorded_inputs(tmp_path / "writer.jsonl"))


def test_only_the_one_who_started_may_stop_when_so_configured_and_a_bad_link_says_what_is_wrong(
    tmp_path: Path,
    browser: Browser,  # noqa: F811
) -> None:
    cfg = room_config(tmp_path, delay=0.2, rounds=40, stop="owner")
    with processes(tmp_path) as procs:
        start_cluster(procs, cfg, ["writer", "editor"])
        url = start_page(procs, cfg)
        ana = Tab(browser, url, name="ana")
        ana.send("Write about the tide")
        bo = Tab(browser, room_link(ana), name="bo")
        bo.wait_for_text("Draft 1")

        bo.page.get_by_role("button", name="Stop").last.click()
        expect(bo.page.get_by_text("Only ana, who started this conversation, may stop it.")).to_be_visible(timeout=WAIT)
        bo.wait_for_text("editor speaks next")  # it went on

        ana.page.get_by_role("button", name="Stop").last.click()
        ana.wait_for_text("Conversation ended: stopped by ana")
        bo.wait_for_text("Conversation ended: stopped by ana")

        stranger = Tab(browser, f"{url}/?room=no$such", name="cy")
        stranger.wait_for_text("this room link names no conversation: 'no$such' is not a conversation id")
        for tab in (ana, bo, stranger):
            tab.close()
