"""The web page, end to end: real processes on 127.0.0.1, the Chainlit server, headless Chromium.

Scripted models stream word by word with a small delay, so the page's streaming can be seen,
and record what they were given, so a person's words can be traced to the agents.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from harness import READY, REPO, Proc, Procs, free_port, processes, scripted_agent, start_cluster, write_config
from playwright.sync_api import Browser, BrowserContext, Dialog, Locator, Page, expect, sync_playwright
from test_crash_points import CASES, CUT_OFF_MID_TURN, STREAM_DELAY, start_again, start_with_a_victim

from roundtable.crashpoints import CRASH_ENV

pytest_plugins = ["pg"]

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SCREENSHOTS = REPO / "docs" / "screenshots"
WAIT = 30_000  # ms: the longest any one thing on the page may take to show
DELAY = 0.05  # s between streamed words

WRITER_LINE = "Draft {n}: the lighthouse keeps its lamp burning through the storm, and every ship finds its way home."
EDITOR_LINE = "Feedback {n}: give the keeper a name, and let the sky turn violet at dusk."

# Text of each message on the page, in order, with its kind and author (from the avatar Chainlit draws).
TRANSCRIPT_JS = """() => [...document.querySelectorAll('.step')]
  .filter((step) => step.querySelector('.message-content'))
  .map((step) => {
    const avatar = step.querySelector('img[alt^="Avatar for "]');
    return {
      id: step.querySelector('[id^="step-"]').id,
      type: step.dataset.stepType,
      author: avatar ? avatar.alt.slice('Avatar for '.length) : null,
      text: step.querySelector('.message-content').innerText.trim(),
    };
  })"""

# Every length each message's text has had, recorded on each change of the page.
RECORD_LENGTHS_JS = """() => {
  window.lengthsSeen = {};
  const sample = () => document.querySelectorAll('.step').forEach((step) => {
    const text = step.querySelector('.message-content');
    const anchor = step.querySelector('[id^="step-"]');
    if (!text || !anchor) return;
    const seen = (window.lengthsSeen[anchor.id] ||= []);
    const length = text.innerText.trim().length;
    if (seen[seen.length - 1] !== length) seen.push(length);
  });
  new MutationObserver(sample).observe(document.body, { subtree: true, childList: true, characterData: true });
}"""

SCROLL_TO_TOP_JS = """() => document.querySelectorAll('*').forEach((element) => {
  if (element.scrollHeight > element.clientHeight && /auto|scroll/.test(getComputedStyle(element).overflowY)) {
    element.scrollTop = 0;
  }
})"""

# An error line has an alert icon where the avatar would be.
AVATARS_LOADED_JS = """() => [...document.querySelectorAll('.ai-message')]
  .every((message) => message.querySelector('img[alt^="Avatar for "], .fill-destructive'))"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # Every process the test starts inherits it: the page's history and secret stay in tmp.
    path = tmp_path / "data"
    monkeypatch.setenv("ROUNDTABLE_DATA_DIR", str(path))
    return path


def make_config(tmp_path: Path, writer: str = WRITER_LINE, editor: str = EDITOR_LINE, **termination: Any) -> Path:
    agents = [
        scripted_agent("writer", writer, delay=DELAY, record=tmp_path / "writer.jsonl"),
        scripted_agent("editor", editor, delay=DELAY, record=tmp_path / "editor.jsonl"),
    ]
    data = {
        "host": {"address": f"127.0.0.1:{free_port()}", "connect_timeout": 5},
        "model": {"provider": "scripted", "script": ["(default)"]},
        "agents": agents,
        "manager": {"turn_timeout": 20, "termination": {"max_rounds": 4, **termination}},
        "ui": {"port": free_port()},
    }
    return write_config(tmp_path / "roundtable.yaml", data)


def start_page(procs: Procs, cfg: Path, wait: bool = True) -> str:
    """The page's process; its address once it serves (or at once, with wait=False)."""
    port = yaml_port(cfg)
    ui = procs.roundtable("ui", "ui", "--config", str(cfg), "--port", str(port))
    if wait:
        ui.wait_for(f"{READY} ui on http://127.0.0.1:{port}", timeout=60)
    return f"http://127.0.0.1:{port}"


def yaml_port(cfg: Path) -> int:
    match = re.search(r"port: (\d+)", cfg.read_text(encoding="utf-8"))
    assert match, cfg.read_text(encoding="utf-8")
    return int(match.group(1))


class Tab:
    """One browser context on the page, remembering every request it made."""

    def __init__(self, browser: Browser, url: str, name: str | None = None) -> None:
        self.context: BrowserContext = browser.new_context(viewport={"width": 1280, "height": 980})
        self.page: Page = self.context.new_page()
        # Without sign-in the page asks a person's name once: as `name`, or left blank ("user").
        self.asked: list[str] = []
        self.page.on("dialog", lambda dialog: self._answer(dialog, name))
        self.requests: list[str] = []
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.url = url
        self.page.goto(url)
        # Signing in (as the local user) reloads the page once or twice; the history sidebar
        # shows only after it, on the page that stays.
        expect(self.page.locator("#thread-history")).to_be_visible(timeout=WAIT)
        expect(self.page.locator("#chat-input")).to_be_editable(timeout=WAIT)

    def _answer(self, dialog: Dialog, name: str | None) -> None:
        self.asked.append(dialog.message)
        if name is None:
            dialog.dismiss()
        else:
            dialog.accept(name)

    def send(self, text: str) -> None:
        self.page.locator("#chat-input").fill(text)
        # The composer takes input before the socket is up; the button says when a message can go.
        submit = self.page.locator("#chat-submit")
        expect(submit).to_be_enabled(timeout=WAIT)
        submit.click()
        expect(self.page.locator(".step[data-step-type='user_message']", has_text=text)).to_be_visible(timeout=WAIT)

    def wait_for_text(self, text: str) -> None:
        expect(self.page.locator(".message-content", has_text=text).first).to_be_visible(timeout=WAIT)

    def wait_for_end(self) -> None:
        self.wait_for_text("Conversation ended")

    def transcript(self) -> list[dict[str, str]]:
        self.page.wait_for_function(AVATARS_LOADED_JS, timeout=WAIT)
        entries: list[dict[str, str]] = self.page.evaluate(TRANSCRIPT_JS)
        return entries

    def hosts(self) -> set[str]:
        return {urlsplit(url).hostname or url for url in self.requests if not url.startswith(("data:", "blob:"))}

    def close(self) -> None:
        self.context.close()


def agent_messages(transcript: list[dict[str, str]]) -> list[tuple[str, str]]:
    return [(m["author"], m["text"]) for m in transcript if m["author"] in ("writer", "editor")]


def recorded_inputs(path: Path) -> list[str]:
    return [text for line in path.read_text(encoding="utf-8").splitlines() for text in json.loads(line)["input"]]


def screenshot(page: Page, name: str) -> None:
    """The whole conversation from its first line, for docs/screenshots/."""
    page.set_viewport_size({"width": 1280, "height": 1180})
    page.evaluate(SCROLL_TO_TOP_JS)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name))
    page.set_viewport_size({"width": 1280, "height": 980})


def stored(db: Path, query: str, until: Any, timeout: float = 15.0) -> list[tuple[Any, ...]]:
    """Rows from the page's history, once `until(rows)` holds: Chainlit writes in the background."""
    deadline = time.monotonic() + timeout
    while True:
        with sqlite3.connect(db) as conn:
            rows = conn.execute(query).fetchall()
        if until(rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def test_a_task_typed_on_the_page_runs_a_conversation_that_streams_and_stays_in_the_history(
    tmp_path: Path, browser: Browser, data_dir: Path
) -> None:
    cfg = make_config(tmp_path)
    task = "Write two sentences about a lighthouse"
    aside = "Please call the keeper Ada"
    with processes(tmp_path) as procs:
        start_cluster(procs, cfg, ["writer", "editor"])
        tab = Tab(browser, start_page(procs, cfg))
        page = tab.page
        page.evaluate(RECORD_LENGTHS_JS)

        tab.send(task)
        # Join in while the writer's first draft is still streaming.
        tab.wait_for_text("Draft 1: the lighthouse")
        tab.send(aside)
        tab.wait_for_end()
        transcript = tab.transcript()

        # Both agents, in turn, under their own names, with the person's words where they typed them.
        assert [author for author, _ in agent_messages(transcript)] == ["writer", "editor", "writer", "editor"]
        texts = [text for _, text in agent_messages(transcript)]
        assert texts[0] == WRITER_LINE.format(n=1)
        assert texts[1] == EDITOR_LINE.format(n=1)
        assert [m["text"] for m in transcript if m["type"] == "user_message"] == [task, aside]
        assert "writer speaks next" in [m["text"] for m in transcript]
        assert transcript[-1]["text"].startswith("Conversation ended: max_rounds reached (4 rounds)")

        # The first draft grew on the page word by word before it was complete.
        first_draft = next(m for m in transcript if m["author"] == "writer")
        lengths = page.evaluate("(id) => window.lengthsSeen[id]", first_draft["id"])
        assert len(lengths) >= 5, lengths
        assert lengths == sorted(lengths) and lengths[-1] == len(WRITER_LINE.format(n=1)), lengths

        # What the person typed mid-conversation reached the agents' models.
        seen = recorded_inputs(tmp_path / "writer.jsonl") + recorded_inputs(tmp_path / "editor.jsonl")
        assert any(aside in text for text in seen), seen
        screenshot(page, "conversation.png")

        # The history keeps it: after a reload the sidebar lists it, and reopening shows every message.
        page.goto(tab.url)
        entry = page.locator("#thread-history a", has_text=task)
        expect(entry).to_be_visible(timeout=WAIT)
        entry.click()
        tab.wait_for_end()
        expect(page.locator(".message-content", has_text=aside)).to_be_visible(timeout=WAIT)
        reopened = [(m["type"], m["author"], m["text"]) for m in tab.transcript()]
        shown = [(m["type"], m["author"], m["text"]) for m in transcript]
        # Every message comes back, in order. The one exception is where the aside sits among
        # the lines around it: Chainlit stamps a person's message when its handler runs, which
        # may be a moment after the page drew it, so it can trade places with its neighbours.
        assert sorted(reopened, key=str) == sorted(shown, key=str), reopened
        assert [m for m in reopened if m[2] != aside] == [m for m in shown if m[2] != aside], reopened
        assert reopened.index(("user_message", None, aside)) > reopened.index(("user_message", None, task))
        assert tab.hosts() == {"127.0.0.1"}, tab.requests
        tab.close()

    # Lists and dicts (thread tags, message tags and metadata) are stored as JSON, not dropped.
    db = data_dir / "ui.db"
    threads = stored(db, "SELECT name, tags FROM threads", lambda rows: bool(rows))
    assert [(name, json.loads(tags)) for name, tags in threads] == [(task, ["roundtable"])]
    steps = stored(
        db,
        "SELECT name, tags, metadata FROM steps WHERE name IN ('writer', 'editor') ORDER BY \"createdAt\"",
        lambda rows: len(rows) == 4,
    )
    assert [(name, json.loads(tags)) for name, tags, _ in steps] == [
        ("writer", ["agent"]),
        ("editor", ["agent"]),
        ("writer", ["agent"]),
        ("editor", ["agent"]),
    ]
    seqs = [json.loads(metadata)["seq"] for _, _, metadata in steps]
    assert seqs == sorted(set(seqs)) and seqs[0] >= 2, seqs  # numbered by the manager, after the task


def test_history_on_postgresql_outlives_the_page_process(
    tmp_path: Path, browser: Browser, postgres_database: str
) -> None:
    cfg = make_config(tmp_path)
    data = yaml.safe_load(cfg.read_text(encoding="utf-8"))
    write_config(
        cfg, {**data, "store": {"url": postgres_database}, "ui": {**data["ui"], "database": postgres_database}}
    )
    task = "Write two sentences about a harbour"
    with processes(tmp_path) as procs:
        start_cluster(procs, cfg, ["writer", "editor"])
        url = start_page(procs, cfg)
        tab = Tab(browser, url)
        tab.send(task)
        tab.wait_for_end()
        before = [(m["type"], m["author"], m["text"]) for m in tab.transcript()]
        tab.close()
        # A new page process, sharing nothing with the first but the database.
        next(p for p in procs.all if p.name == "ui").stop()
        port = yaml_port(cfg)
        again = procs.roundtable("ui2", "ui", "--config", str(cfg), "--port", str(port))
        again.wait_for(f"{READY} ui on http://127.0.0.1:{port}", timeout=60)
        tab = Tab(browser, url)
        entry = tab.page.locator("#thread-history a", has_text=task)
        expect(entry).to_be_visible(timeout=WAIT)
        entry.click()
        tab.wait_for_end()
        after = [(m["type"], m["author"], m["text"]) for m in tab.transcript()]
        tab.close()
    assert after == before
    assert [author for kind, author, _ in before if author in ("writer", "editor")] == ["writer", "editor"] * 2


def test_an_agent_that_goes_silent_is_shown_unreachable_then_back(tmp_path: Path, browser: Browser) -> None:
    cfg = make_config(tmp_path)
    data = yaml.safe_load(cfg.read_text(encoding="utf-8"))
    write_config(cfg, {**data, "host": {**data["host"], "heartbeat": 0.5}})
    with processes(tmp_path) as procs:
        started = start_cluster(procs, cfg, ["writer", "editor"])
        tab = Tab(browser, start_page(procs, cfg))
        tab.send("Write about a storm")
        tab.wait_for_text("editor speaks next")
        editor = started["editor"].popen.pid
        os.kill(editor, signal.SIGSTOP)  # alive but silent, as behind a cut link
        try:
            tab.wait_for_text("editor is unreachable")
        finally:
            os.kill(editor, signal.SIGCONT)
        tab.wait_for_text("editor is reachable again")
        tab.wait_for_end()
        assert [a for a, _ in agent_messages(tab.transcript())] == ["writer", "editor", "writer", "editor"]
        tab.close()


def test_stop_ends_the_conversation_and_a_new_task_starts_another(tmp_path: Path, browser: Browser) -> None:
    cfg = make_config(tmp_path, max_rounds=50)
    with processes(tmp_path) as procs:
        start_cluster(procs, cfg, ["writer", "editor"])
        tab = Tab(browser, start_page(procs, cfg))
        tab.send("Write about the sea")
        tab.wait_for_text("Draft 1")
        stop = tab.page.get_by_role("button", name="Stop")
        expect(stop).to_be_visible(timeout=WAIT)
        stop.click()
        tab.wait_for_text("Conversation ended: stopped by the user")
        expect(stop).to_have_count(0, timeout=WAIT)

        # After the end, what the person types is a new task, not words for the old conversation.
        tab.send("Now write about the mountains")
        # At least the second conversation's first speaker (a fast scripted one may be further on).
        expect(tab.page.locator(".message-content", has_text="writer speaks next").nth(1)).to_be_visible(timeout=WAIT)
        expect(tab.page.get_by_role("button", name="Stop")).to_be_visible(timeout=WAIT)
        assert tab.hosts() == {"127.0.0.1"}, tab.requests
        tab.close()
    with sqlite3.connect(tmp_path / "data" / "transcripts.db") as db:
        tasks = dict(db.execute("SELECT task, reason FROM rt_conversations").fetchall())
        mountains_in = db.execute(
            "SELECT c.task FROM rt_messages m JOIN rt_conversations c ON c.id = m.conversation_id"
            " WHERE m.content = 'Now write about the mountains'"
        ).fetchall()
    assert set(tasks) == {"Write about the sea", "Now write about the mountains"}, tasks
    assert tasks["Write about the sea"] == "stopped by the user", tasks
    # The new words started the new conversation; nothing was added to the stopped one.
    assert mountains_in == [("Now write about the mountains",)], mountains_in


def test_a_tab_reloaded_mid_conversation_follows_it_to_the_end(tmp_path: Path, browser: Browser) -> None:
    cfg = make_config(tmp_path, max_rounds=6)
    with processes(tmp_path) as procs:
        start_cluster(procs, cfg, ["writer", "editor"])
        tab = Tab(browser, start_page(procs, cfg))
        tab.send("Write about a harbour")
        tab.wait_for_text("Feedback 1")
        # The page's address names the thread now, so a reload reopens it.
        expect(tab.page).to_have_url(re.compile(r"/thread/[0-9a-f-]+$"), timeout=WAIT)
        tab.page.reload()
        tab.wait_for_end()
        messages = agent_messages(tab.transcript())
        assert [author for author, _ in messages] == ["writer", "editor"] * 3, messages
        assert [text.split(":")[0] for _, text in messages] == [
            "Draft 1",
            "Feedback 1",
            "Draft 2",
            "Feedback 2",
            "Draft 3",
            "Feedback 3",
        ]
        assert tab.hosts() == {"127.0.0.1"}, tab.requests
        tab.close()


def assert_killed_at_crash_point(proc: Proc, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while proc.popen.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.popen.returncode == -signal.SIGKILL, proc.output[-2000:]


# Every crash point but the one mid-stream (the test after this one), with the writer's tool
# call on each of its turns, as in test_crash_points.py, which checks the store and terminal.
PAGE_CRASH_CASES = [case for case in CASES if case[0] != "agent.stream.chunk"]


@pytest.mark.parametrize(("point", "victim", "on_pass"), PAGE_CRASH_CASES, ids=[c[0] for c in PAGE_CRASH_CASES])
def test_the_page_shows_the_whole_conversation_once_whatever_process_dies_at_a_crash_point(
    tmp_path: Path, browser: Browser, monkeypatch: pytest.MonkeyPatch, point: str, victim: str, on_pass: int
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO / "tests"))  # toolkit.counting, for the writer's process
    monkeypatch.setenv("COUNTER_FILE", str(tmp_path / "counter.jsonl"))
    cfg = make_config(tmp_path)
    data = yaml.safe_load(cfg.read_text(encoding="utf-8"))
    writer = data["agents"][0]
    writer["model"]["script"] = ['CALL count {"label": "drafts"}', WRITER_LINE]
    writer["tools"] = [{"function": "toolkit.counting:count"}]
    for agent in data["agents"]:
        agent["model"]["token_delay"] = STREAM_DELAY
    write_config(cfg, data)
    with processes(tmp_path) as procs:
        url = start_page(procs, cfg, wait=False)  # waited for with the others
        started = start_with_a_victim(procs, cfg, victim, f"{point}:{on_pass}")
        tab = Tab(browser, url)
        tab.send("Write about a harbour")
        assert_killed_at_crash_point(started[victim])
        start_again(procs, cfg, victim)
        tab.wait_for_end()
        # The editor's second message is streamed, so it may trail the end.
        feedback = tab.page.locator(".message-content", has_text=EDITOR_LINE.split(": ")[1])
        expect(feedback).to_have_count(2, timeout=WAIT)
        tab.transcript()  # every avatar drawn
        order = [(e["type"], e["author"], e["text"]) for e in tab.page.evaluate(PAGE_ORDER_JS)]
        if point in CUT_OFF_MID_TURN:  # the call the writer died in is shown as not run again
            interrupted = tab.page.locator(".step[data-step-type='tool']", has_text="writer: count").first
            interrupted.locator("h3 button").click()
            expect(interrupted.locator(".message-content").last).to_contain_text("not run again", timeout=WAIT)
        tab.close()

    # The task once, then each round once: who speaks, the writer's call (completed), the message.
    # A restarted writer counts its drafts from 1 again, so only each line's words are compared.
    def numberless(text: str) -> str:
        return re.sub(r"^(Draft|Feedback) \d+:", r"\1 n:", text)

    # A dead agent's absence is noted while it lasts, as it should be; the rest is compared.
    shown = [(kind, author, numberless(text)) for kind, author, text in order if "reachable" not in text]
    writer_round = [
        ("assistant_message", "roundtable", "writer speaks next"),
        ("tool", "writer", "Used writer: count"),
        ("assistant_message", "writer", numberless(WRITER_LINE.format(n=0))),
    ]
    editor_round = [
        ("assistant_message", "roundtable", "editor speaks next"),
        ("assistant_message", "editor", numberless(EDITOR_LINE.format(n=0))),
    ]
    expected = [("user_message", None, "Write about a harbour"), *(writer_round + editor_round) * 2]
    if point in CUT_OFF_MID_TURN:
        expected[2] = ("tool", None, "Used writer: count")  # an error's icon where the avatar would be
    assert shown[:-1] == expected, order
    assert order[-1][2].startswith("Conversation ended: max_rounds reached (4 rounds)"), order


def test_a_message_cut_off_by_its_agent_dying_mid_stream_is_marked_and_the_turn_answered_again(
    tmp_path: Path, browser: Browser
) -> None:
    cfg = make_config(tmp_path)
    with processes(tmp_path) as procs:
        start_cluster(procs, cfg, ["editor"])
        # Its 25th chunk is the 6th word of its second turn.
        writer = procs.roundtable(
            "writer", "agent", "--config", str(cfg), "--name", "writer", env={CRASH_ENV: "agent.stream.chunk:25"}
        )
        writer.wait_for(READY)
        tab = Tab(browser, start_page(procs, cfg))
        tab.send("Write about a harbour")
        assert_killed_at_crash_point(writer)
        procs.roundtable("writer-again", "agent", "--config", str(cfg), "--name", "writer").wait_for(READY)
        tab.wait_for_end()
        messages = agent_messages(tab.transcript())
        cut = [text for _, text in messages if text.endswith("(interrupted)")]
        whole = [(author, text.split(":")[0]) for author, text in messages if not text.endswith("(interrupted)")]
        # The restarted writer counts its drafts from 1 again.
        expected = [("writer", "Draft 1"), ("editor", "Feedback 1"), ("writer", "Draft 1"), ("editor", "Feedback 2")]
        assert whole == expected, messages
        assert len(cut) == 1 and cut[0].startswith("Draft 2: the lighthouse"), messages
        assert [author for author, _ in messages] == ["writer", "editor", "writer", "writer", "editor"], messages
        tab.close()


def test_two_tabs_at_once_never_see_each_others_messages(tmp_path: Path, browser: Browser) -> None:
    cfg = make_config(tmp_path, writer="Draft {n} about: {last}", editor="Feedback {n} on: {last}")
    with processes(tmp_path) as procs:
        start_cluster(procs, cfg, ["writer", "editor"])
        url = start_page(procs, cfg)
        tabs = {marker: Tab(browser, url) for marker in ("Topic-A-marker", "Topic-B-marker")}
        for marker, tab in tabs.items():
            tab.send(f"Write about {marker}")
        for tab in tabs.values():
            tab.wait_for_end()
        for marker, tab in tabs.items():
            other = next(m for m in tabs if m != marker)
            transcript = tab.transcript()
            messages = agent_messages(transcript)
            assert [author for author, _ in messages] == ["writer", "editor", "writer", "editor"], transcript
            assert all(marker in text for _, text in messages), transcript
            assert not any(other in m["text"] for m in transcript), transcript
            assert tab.hosts() == {"127.0.0.1"}, tab.requests
        for tab in tabs.values():
            tab.close()


def test_the_tutorial_page_shows_the_seed_conversation_live(tmp_path: Path, browser: Browser) -> None:
    """`python3 ui.py --host-address ADDR`, as the tutorial runs it, with its two agents in seed mode."""
    address = f"127.0.0.1:{free_port()}"
    port = free_port()
    data = {
        "host": {"address": address, "connect_timeout": 5},
        "agents": [
            scripted_agent("writer_agent", "A ghost of gingerbread haunts the bakery {n}.", delay=DELAY),
            scripted_agent("editor_agent", "Make the ghost friendlier, please {n}.", delay=DELAY),
        ],
        "seed": {"task": "Write a story about gingerbread at halloween", "max_turns": 4},
    }
    cfg = write_config(tmp_path / "roundtable.yaml", data)
    with processes(tmp_path) as procs:
        procs.roundtable("host", "host", "--config", str(cfg)).wait_for(READY)
        ui = procs.start(
            "ui",
            sys.executable,
            "ui.py",
            "--host-address",
            address,
            "--port",
            str(port),
            "--config",
            str(cfg),
            cwd=REPO / "examples" / "tutorial",
        )
        ui.wait_for(f"{READY} ui on http://127.0.0.1:{port}", timeout=60)
        tab = Tab(browser, f"http://127.0.0.1:{port}")
        agents: list[Proc] = [
            procs.roundtable(f"agent-{name}", "agent", "--seed", "--config", str(cfg), "--name", name)
            for name in ("writer_agent", "editor_agent")
        ]
        for agent in agents:
            agent.wait_for(READY)
        tab.wait_for_text("Make the ghost friendlier, please 2.")
        transcript = tab.transcript()
        assert transcript[0]["type"] == "user_message"
        assert transcript[0]["text"] == "Write a story about gingerbread at halloween"
        assert [m["author"] for m in transcript[1:5]] == [
            "writer_agent",
            "editor_agent",
            "writer_agent",
            "editor_agent",
        ]
        screenshot(tab.page, "seed.png")
        assert tab.hosts() == {"127.0.0.1"}, tab.requests
        tab.close()


def test_with_auth_on_only_a_listed_user_signs_in(tmp_path: Path, browser: Browser, data_dir: Path) -> None:
    cfg = make_config(tmp_path, max_rounds=2)
    text = cfg.read_text(encoding="utf-8")
    cfg.write_text(text.replace("ui:\n", "ui:\n  auth: true\n  users: {alice: wonderland}\n"), encoding="utf-8")
    with processes(tmp_path) as procs:
        start_cluster(procs, cfg, ["writer", "editor"])
        url = start_page(procs, cfg)
        context = browser.new_context()
        page = context.new_page()
        page.goto(url)
        page.locator("#email").fill("alice")
        page.locator("#password").fill("not her password")
        page.locator("button[type='submit']").click()
        expect(page.get_by_role("alert")).to_contain_text("Unable to sign in", timeout=WAIT)
        page.locator("#password").fill("wonderland")
        page.locator("button[type='submit']").click()
        expect(page.locator("#thread-history")).to_be_visible(timeout=WAIT)
        page.locator("#chat-input").fill("Write about rabbit holes")
        expect(page.locator("#chat-submit")).to_be_enabled(timeout=WAIT)
        page.locator("#chat-submit").click()
        expect(page.get_by_text("Conversation ended")).to_be_visible(timeout=WAIT)
        context.close()
        page_log = next(proc for proc in procs.all if proc.name == "ui").output
    threads = stored(data_dir / "ui.db", 'SELECT name, "userIdentifier" FROM threads', lambda rows: bool(rows))
    assert threads == [("Write about rabbit holes", "alice")]
    secret = data_dir / "ui_auth_secret"
    assert secret.stat().st_mode & 0o777 == 0o600
    assert "wonderland" not in page_log and secret.read_text(encoding="utf-8") not in page_log


# The writer calls a tool on each of its turns: first one that counts, then one that fails.
TOOL_SCRIPT = [
    'CALL count {"label": "ships"}',
    "I counted: {last}",
    'CALL fail {"reason": "boom"}',
    "Carrying on: {last}",
]

# Messages and tool steps on the page, in order. A tool step shows only its header until opened.
PAGE_ORDER_JS = """() => [...document.querySelectorAll('.step')].map((step) => {
  const avatar = step.querySelector('img[alt^="Avatar for "]');
  const text = step.dataset.stepType === 'tool'
    ? step.querySelector('h3 button').textContent.replace(/\\s+/g, ' ')  // laid out as a row
    : step.querySelector('.message-content').innerText;
  return {
    type: step.dataset.stepType,
    author: avatar ? avatar.alt.slice('Avatar for '.length) : null,
    text: text.trim(),
    nested: step.parentElement.closest('.step') !== null,
  };
})"""


def test_a_tool_call_shows_as_a_step_before_the_reply_and_opens_to_its_arguments_and_result(
    tmp_path: Path, browser: Browser, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO / "tests"))  # toolkit.counting, for the writer's process
    monkeypatch.setenv("COUNTER_FILE", str(tmp_path / "counter.jsonl"))
    cfg = make_config(tmp_path)
    data = yaml.safe_load(cfg.read_text(encoding="utf-8"))
    writer = data["agents"][0]
    writer["model"]["script"] = TOOL_SCRIPT
    writer["tools"] = [{"function": "toolkit.counting:count"}, {"function": "toolkit.counting:fail"}]
    write_config(cfg, data)
    with processes(tmp_path) as procs:
        start_cluster(procs, cfg, ["writer", "editor"])
        tab = Tab(browser, start_page(procs, cfg))
        page = tab.page
        tab.send("Count the ships")
        tab.wait_for_end()
        tab.wait_for_text(EDITOR_LINE.format(n=2))  # streamed by the editor, so it may trail the end
        tab.transcript()  # every avatar drawn

        # Each call is a step of its own, named for agent and tool, before the reply that used its result;
        # the failed call did not stop the conversation.
        order = page.evaluate(PAGE_ORDER_JS)
        assert not any(entry["nested"] for entry in order), order
        assert [(entry["type"], entry["author"], entry["text"]) for entry in order] == [
            ("user_message", None, "Count the ships"),
            ("assistant_message", "roundtable", "writer speaks next"),
            ("tool", "writer", "Used writer: count"),
            ("assistant_message", "writer", "I counted: ships is now 1"),
            ("assistant_message", "roundtable", "editor speaks next"),
            ("assistant_message", "editor", EDITOR_LINE.format(n=1)),
            ("assistant_message", "roundtable", "writer speaks next"),
            ("tool", None, "Used writer: fail"),  # an error: an alert icon where the avatar would be
            ("assistant_message", "writer", "Carrying on: boom"),
            ("assistant_message", "roundtable", "editor speaks next"),
            ("assistant_message", "editor", EDITOR_LINE.format(n=2)),
            ("assistant_message", "roundtable", order[-1]["text"]),
        ], order
        assert order[-1]["text"].startswith("Conversation ended: max_rounds reached (4 rounds)")

        # Closed, a step shows only its name; opened, the arguments and what the tool returned.
        counted = page.locator(".step[data-step-type='tool']", has_text="writer: count")
        header = counted.get_by_role("button", name="Used writer: count")
        expect(header).to_have_attribute("aria-expanded", "false", timeout=WAIT)
        expect(counted.locator(".message-content")).to_have_count(0, timeout=WAIT)
        expect(counted.locator(".fill-destructive")).to_have_count(0, timeout=WAIT)
        header.click()
        expect(header).to_have_attribute("aria-expanded", "true", timeout=WAIT)
        expect(counted.locator("code.language-json")).to_have_text('{"label": "ships"}', timeout=WAIT)
        expect(counted.locator(".message-content").last).to_have_text("ships is now 1", timeout=WAIT)

        failed = page.locator(".step[data-step-type='tool']", has_text="writer: fail")
        expect(failed.locator(".fill-destructive")).to_be_visible(timeout=WAIT)
        failed.get_by_role("button", name="Used writer: fail").click()
        expect(failed.locator("code.language-json")).to_have_text('{"reason": "boom"}', timeout=WAIT)
        expect(failed.locator(".message-content").last).to_have_text("boom", timeout=WAIT)
        screenshot(page, "tool-call.png")

        header.click()
        expect(counted.locator(".message-content")).to_have_count(0, timeout=WAIT)
        assert tab.hosts() == {"127.0.0.1"}, tab.requests

        # The history keeps the steps where they were, as they ended (a call's start, stored first,
        # does not overwrite its end).
        expect(page).to_have_url(re.compile(r"/thread/[0-9a-f-]+$"), timeout=WAIT)
        page.reload()
        tab.wait_for_end()
        tab.transcript()
        assert page.evaluate(PAGE_ORDER_JS) == order
        failed.get_by_role("button", name="Used writer: fail").click()
        expect(failed.locator(".message-content").last).to_have_text("boom", timeout=WAIT)
        tab.close()
    # The tool ran once for its one call.
    assert len((tmp_path / "counter.jsonl").read_text(encoding="utf-8").splitlines()) == 1


def test_a_call_awaiting_approval_runs_only_once_approved_on_the_page_and_a_denial_reaches_the_agent(
    tmp_path: Path, browser: Browser, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = tmp_path / "counter.jsonl"
    monkeypatch.setenv("PYTHONPATH", str(REPO / "tests"))  # toolkit.counting, for the writer's process
    monkeypatch.setenv("COUNTER_FILE", str(counter))
    monkeypatch.setenv("COUNTER_DELAY", "2")  # s: long enough to see the approved call running
    cfg = make_config(tmp_path)
    data = yaml.safe_load(cfg.read_text(encoding="utf-8"))
    writer = data["agents"][0]
    writer["model"]["script"] = [
        'CALL count {"label": "ships"}',
        "I counted: {last}",
        'CALL count {"label": "gulls"}',
        "Carrying on: {last}",
    ]
    writer["tools"] = [{"function": "toolkit.counting:count", "approval": "always"}]
    write_config(cfg, data)

    def question(page: Page, label: str) -> Locator:
        """The page's line asking about the call that counts `label`."""
        return page.locator(".step", has_text="writer wants to run count").filter(has_text=f'"label": "{label}"')

    def counted() -> list[str]:
        lines = counter.read_text(encoding="utf-8").splitlines() if counter.exists() else []
        return [json.loads(line)["label"] for line in lines]

    with processes(tmp_path) as procs:
        start_cluster(procs, cfg, ["writer", "editor"])
        url = start_page(procs, cfg)
        tab = Tab(browser, url)
        page = tab.page
        tab.send("Count the ships")

        # The call waits: its step says so, and a line under it asks, with Approve and Deny.
        asking = question(page, "ships")
        deadline = re.compile(r"Approve it\? \(denied at \d\d:\d\d:\d\d if no one answers\)")
        expect(asking).to_contain_text(deadline, timeout=WAIT)
        expect(asking.get_by_role("button", name="Approve")).to_be_visible(timeout=WAIT)
        expect(asking.get_by_role("button", name="Deny")).to_be_visible(timeout=WAIT)
        ships = page.locator(".step[data-step-type='tool']", has_text="writer: count").first
        ships.locator("h3 button").click()
        expect(ships.locator(".message-content").last).to_contain_text("waiting for your approval", timeout=WAIT)
        tab.transcript()  # every avatar drawn
        screenshot(page, "tool-approval.png")
        time.sleep(1.5)  # the agent asks again while it waits; nothing runs
        assert counted() == []

        # A reload while the call waits brings the question and its buttons back; they still answer.
        expect(page).to_have_url(re.compile(r"/thread/[0-9a-f-]+$"), timeout=WAIT)
        page.reload()
        expect(asking.get_by_role("button", name="Approve")).to_be_visible(timeout=WAIT)
        ships.locator("h3 button").click()
        expect(ships.locator(".message-content").last).to_contain_text("waiting for your approval", timeout=WAIT)
        assert counted() == []
        asking.get_by_role("button", name="Approve").click()
        # The call runs, saying who let it; the question and its buttons are gone; then its result.
        expect(ships.locator(".message-content").last).to_have_text("approved by user", timeout=WAIT)
        expect(asking).to_have_count(0)
        expect(ships.locator(".message-content").last).to_have_text("ships is now 1", timeout=WAIT)
        tab.wait_for_text("I counted: ships is now 1")
        assert counted() == ["ships"]

        # The next call: the thread reopened in another tab asks too (and follows the conversation
        # from then on), yet the first tab's buttons still answer. Denied, the call never runs,
        # and the agent is told; a second answer is too late, and the page says so.
        asking = question(page, "gulls")
        expect(asking.get_by_role("button", name="Deny")).to_be_visible(timeout=WAIT)
        other = Tab(browser, url)
        other.page.locator("#thread-history a", has_text="Count the ships").click()
        expect(question(other.page, "gulls").get_by_role("button", name="Deny")).to_be_visible(timeout=WAIT)
        asking.get_by_role("button", name="Deny").click()
        other.wait_for_text("Carrying on: denied by user")
        expect(question(other.page, "gulls")).to_have_count(0)
        asking.get_by_role("button", name="Approve").click()
        expect(page.get_by_text("That call has been answered already")).to_be_visible(timeout=WAIT)
        other.wait_for_end()
        other.wait_for_text(EDITOR_LINE.format(n=2))  # streamed by the editor, so it may trail the end
        other.transcript()
        order = other.page.evaluate(PAGE_ORDER_JS)
        assert [(entry["type"], entry["author"], entry["text"]) for entry in order] == [
            ("user_message", None, "Count the ships"),
            ("assistant_message", "roundtable", "writer speaks next"),
            ("tool", "writer", "Used writer: count"),
            ("assistant_message", "writer", "I counted: ships is now 1"),
            ("assistant_message", "roundtable", "editor speaks next"),
            ("assistant_message", "editor", EDITOR_LINE.format(n=1)),
            ("assistant_message", "roundtable", "writer speaks next"),
            ("tool", None, "Used writer: count"),  # denied: an alert icon where the avatar would be
            ("assistant_message", "writer", "Carrying on: denied by user"),
            ("assistant_message", "roundtable", "editor speaks next"),
            ("assistant_message", "editor", EDITOR_LINE.format(n=2)),
            ("assistant_message", "roundtable", order[-1]["text"]),
        ], order
        gulls = other.page.locator(".step[data-step-type='tool']", has_text="writer: count").last
        gulls.get_by_role("button", name="Used writer: count").click()
        expect(gulls.locator(".message-content").last).to_have_text("denied by user", timeout=WAIT)
        expect(other.page.get_by_role("button", name=re.compile("^(Approve|Deny)$"))).to_have_count(0)
        assert tab.hosts() == other.hosts() == {"127.0.0.1"}, (tab.requests, other.requests)

        # The history keeps the steps as they ended, and no question is left in it.
        other.page.reload()
        other.wait_for_end()
        other.transcript()
        assert other.page.evaluate(PAGE_ORDER_JS) == order

        # A conversation stopped while a call waits takes the question with it; the call never runs.
        other.send("Count them once more")
        asking = question(other.page, "ships")
        expect(asking.get_by_role("button", name="Approve")).to_be_visible(timeout=WAIT)
        other.page.get_by_role("button", name="Stop").click()
        other.wait_for_text("Conversation ended: stopped by the user")
        expect(asking).to_have_count(0, timeout=WAIT)
        unanswered = other.page.locator(".step[data-step-type='tool']", has_text="writer: count").last
        unanswered.locator("h3 button").click()
        expect(unanswered.locator(".message-content").last).to_have_text(
            "not run: the conversation ended before anyone answered", timeout=WAIT
        )
        other.close()
        tab.close()
    assert counted() == ["ships"]


def test_a_call_awaiting_approval_survives_a_restart_of_the_page(
    tmp_path: Path, browser: Browser, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = tmp_path / "counter.jsonl"
    monkeypatch.setenv("PYTHONPATH", str(REPO / "tests"))  # toolkit.counting, for the writer's process
    monkeypatch.setenv("COUNTER_FILE", str(counter))
    cfg = make_config(tmp_path, max_rounds=2)
    data = yaml.safe_load(cfg.read_text(encoding="utf-8"))
    writer = data["agents"][0]
    writer["model"]["script"] = ['CALL count {"label": "ships"}', "I counted: {last}"]
    writer["tools"] = [{"function": "toolkit.counting:count", "approval": "always"}]
    write_config(cfg, data)
    task = "Count the ships"
    with processes(tmp_path) as procs:
        start_cluster(procs, cfg, ["writer", "editor"])
        url = start_page(procs, cfg)
        tab = Tab(browser, url)
        tab.send(task)
        approve = tab.page.locator(".step", has_text="writer wants to run count").get_by_role("button", name="Approve")
        expect(approve).to_be_visible(timeout=WAIT)
        tab.transcript()  # every avatar drawn
        before = tab.page.evaluate(PAGE_ORDER_JS)

        # The page process dies with the call waiting, its tab still open; a new one, on the same
        # history, takes over.
        next(p for p in procs.all if p.name == "ui").stop(signal.SIGKILL)
        tab.close()
        port = yaml_port(cfg)
        again = procs.roundtable("ui2", "ui", "--config", str(cfg), "--port", str(port))
        again.wait_for(f"{READY} ui on http://127.0.0.1:{port}", timeout=60)
        tab = Tab(browser, url)
        page = tab.page
        page.locator("#thread-history a", has_text=task).click()

        # Reopened, the thread asks again, with buttons that answer, and shows nothing twice.
        approve = page.locator(".step", has_text="writer wants to run count").get_by_role("button", name="Approve")
        expect(approve).to_be_visible(timeout=WAIT)
        time.sleep(1.0)  # whatever the manager sent again has arrived
        tab.transcript()
        assert page.evaluate(PAGE_ORDER_JS) == before
        assert not counter.exists()
        approve.click()
        tab.wait_for_end()
        tab.wait_for_text(EDITOR_LINE.format(n=1))  # streamed by the editor, so it may trail the end
        tab.transcript()
        order = page.evaluate(PAGE_ORDER_JS)
        assert [(entry["type"], entry["author"], entry["text"]) for entry in order] == [
            ("user_message", None, task),
            ("assistant_message", "roundtable", "writer speaks next"),
            ("tool", "writer", "Used writer: count"),
            ("assistant_message", "writer", "I counted: ships is now 1"),
            ("assistant_message", "roundtable", "editor speaks next"),
            ("assistant_message", "editor", EDITOR_LINE.format(n=1)),
            ("assistant_message", "roundtable", order[-1]["text"]),
        ], order
        assert order[-1]["text"].startswith("Conversation ended: max_rounds reached (2 rounds)"), order

        # The history has it as the page showed it, once.
        page.reload()
        tab.wait_for_end()
        tab.transcript()
        assert page.evaluate(PAGE_ORDER_JS) == order
        tab.close()
    assert [json.loads(line)["label"] for line in counter.read_text(encoding="utf-8").splitlines()] == ["ships"]


# Whether the page shows one usage line, below the message with the given text.
LIVE_LINE_BELOW_JS = """(text) => {
  const texts = [...document.querySelectorAll('.step')]
    .map((step) => step.querySelector('.message-content')?.innerText.trim() ?? '');
  const live = texts.flatMap((t, i) => (t.startsWith('Used so far:') ? [i] : []));
  const message = texts.indexOf(text);
  return live.length === 1 && message >= 0 && live[0] > message;
}"""


def test_usage_per_agent_shows_live_against_the_budgets_and_stays_with_the_ended_conversation(
    tmp_path: Path, browser: Browser, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO / "tests"))  # toolkit.counting, for the editor's process
    monkeypatch.setenv("COUNTER_FILE", str(tmp_path / "counter.jsonl"))
    cfg = make_config(tmp_path)
    data = yaml.safe_load(cfg.read_text(encoding="utf-8"))
    writer, editor = data["agents"]
    # The scripted model counts words as tokens: the writer's first turn alone uses its 10.
    writer["budget"] = {"tokens": 10}
    # The editor's second turn calls a tool that waits for approval: the conversation holds still there.
    editor["model"]["script"] = [EDITOR_LINE, 'CALL count {"label": "gulls"}', "Carrying on: {last}"]
    editor["tools"] = [{"function": "toolkit.counting:count", "approval": "always"}]
    editor["budget"] = {"tool_calls": 5}
    data["manager"]["budget"] = {"tokens": 100_000}
    write_config(cfg, data)
    with processes(tmp_path) as procs:
        start_cluster(procs, cfg, ["writer", "editor"])
        tab = Tab(browser, start_page(procs, cfg))
        page = tab.page
        tab.send("Write about a lighthouse")

        # The writer is left out once its budget is used, and the page says why.
        left_out = re.compile(r"^editor speaks next \(writer is left out: it used its budget \((\d+) of 10 tokens\)\)$")
        note = page.locator(".message-content", has_text="writer is left out").first
        expect(note).to_have_text(left_out, timeout=WAIT)
        writer_tokens = left_out.search(note.inner_text().strip())
        assert writer_tokens is not None and int(writer_tokens.group(1)) >= 10, note.inner_text()

        # While the editor's call waits, one quiet line says what each agent has used so far,
        # against its limits; it moved down with the turns, below the editor's first message.
        approve = page.get_by_role("button", name="Approve")
        expect(approve).to_be_visible(timeout=WAIT)
        live = page.locator(".step", has_text="Used so far:")
        live_text = re.compile(
            rf"^Used so far: writer {writer_tokens.group(1)} of 10 tokens, 0 tool calls; "
            r"editor [1-9][\d,]* tokens, 0 of 5 tool calls; all together [\d,]+ of 100,000 tokens, 0 tool calls$"
        )
        expect(live.locator(".message-content")).to_have_text(live_text, timeout=WAIT)
        page.wait_for_function(LIVE_LINE_BELOW_JS, arg=EDITOR_LINE.format(n=1), timeout=WAIT)
        expect(live.locator('img[alt="Avatar for roundtable"]')).to_be_visible(timeout=WAIT)
        shown = live.locator(".message-content").inner_text()

        # A reload shows it again from the history: the same line, just the one, in its place.
        expect(page).to_have_url(re.compile(r"/thread/[0-9a-f-]+$"), timeout=WAIT)
        page.reload()
        expect(approve).to_be_visible(timeout=WAIT)
        expect(live.locator(".message-content")).to_have_text(shown, timeout=WAIT)
        page.wait_for_function(LIVE_LINE_BELOW_JS, arg=EDITOR_LINE.format(n=1), timeout=WAIT)

        # At the end the line goes, and the end line says what each agent used, the call included.
        approve.click()
        tab.wait_for_end()
        tab.wait_for_text(EDITOR_LINE.format(n=4))  # streamed by the editor, so it may trail the end
        expect(live).to_have_count(0, timeout=WAIT)
        end = page.locator(".message-content", has_text="Conversation ended")
        used = re.compile(
            rf"\nUsed: writer {writer_tokens.group(1)} tokens, 0 tool calls; editor [\d,]+ tokens, 1 tool call$"
        )
        expect(end).to_have_text(re.compile(r"^Conversation ended: max_rounds reached \(4 rounds\)"), timeout=WAIT)
        expect(end).to_have_text(used, timeout=WAIT)
        tab.transcript()  # every avatar drawn
        order = [(e["type"], e["author"], e["text"]) for e in page.evaluate(PAGE_ORDER_JS)]
        assert order == [
            ("user_message", None, "Write about a lighthouse"),
            ("assistant_message", "roundtable", "writer speaks next"),
            ("assistant_message", "writer", WRITER_LINE.format(n=1)),
            ("assistant_message", "roundtable", order[3][2]),
            ("assistant_message", "editor", EDITOR_LINE.format(n=1)),
            ("assistant_message", "roundtable", order[3][2]),
            ("tool", "editor", "Used editor: count"),
            ("assistant_message", "editor", "Carrying on: gulls is now 1"),
            ("assistant_message", "roundtable", order[3][2]),
            ("assistant_message", "editor", EDITOR_LINE.format(n=4)),
            ("assistant_message", "roundtable", order[-1][2]),
        ], order
        assert left_out.match(order[3][2]), order
        assert used.search(order[-1][2]), order

        # The ended conversation keeps what was used in the history.
        page.reload()
        tab.wait_for_end()
        expect(end).to_have_text(used, timeout=WAIT)
        tab.transcript()
        assert [(e["type"], e["author"], e["text"]) for e in page.evaluate(PAGE_ORDER_JS)] == order
        assert tab.hosts() == {"127.0.0.1"}, tab.requests
        tab.close()
