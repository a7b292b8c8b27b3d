"""People as participants (`agents[].kind: human`), with real processes: a human seat picked by
round robin and answered from a terminal (`roundtable chat --as NAME`) and from the page in
headless Chromium. The logic (who may answer, the timeout, asides) is in test_inprocess.py."""

from __future__ import annotations

from pathlib import Path

from harness import free_port, processes, scripted_agent, start_cluster, write_config
from playwright.sync_api import Browser
from test_ui import Tab, browser, start_page  # noqa: F401  (the module's browser fixture)


def people_config(tmp_path: Path, people: list[str], turn_timeout: float = 60) -> Path:
    data = {
        "host": {"address": f"127.0.0.1:{free_port()}", "connect_timeout": 10},
        "model": {"provider": "scripted", "script": ["(default)"]},
        "agents": [
            scripted_agent("writer", "Draft {n} after: {last}", delay=0.01),
            {"name": "ana", "kind": "human", "people": people, "description": "the person who decides"},
        ],
        "manager": {"turn_timeout": turn_timeout, "termination": {"max_rounds": 3, "timeout": 120}},
        "ui": {"port": free_port()},
    }
    return write_config(tmp_path / "roundtable.yaml", data)


def test_a_person_takes_a_human_seats_turn_from_the_terminal(tmp_path: Path) -> None:
    cfg = people_config(tmp_path, ["ana"])
    with processes(tmp_path) as procs:
        start_cluster(procs, cfg, ["writer"])
        chat = procs.roundtable(
            "chat", "chat", "Write about rain", "--as", "ana", "--config", str(cfg), "--timeout", "90", stdin=True
        )
        chat.wait_for("your turn (ana):", 60)
        chat.type("Make it about the sea.")
        assert chat.wait_exit(90) == 0, chat.output
    out = chat.output
    assert "· ana speaks next" in out, out
    assert "ana: Make it about the sea.\n" in out, out
    assert "writer: Draft 2 after: Make it about the sea.\n" in out, out  # the writer heard her
    assert "· conversation ended: max_rounds reached (3 rounds)" in out, out


def test_up_starts_no_process_for_a_human_seat_and_agent_refuses_one(tmp_path: Path) -> None:
    from roundtable.config import load_config
    from roundtable.launcher import plan

    cfg = people_config(tmp_path, [])
    names = [role.name for stage in plan(load_config(str(cfg)), str(cfg), with_ui=False) for role in stage]
    assert "writer" in names and "ana" not in names, names
    with processes(tmp_path) as procs:
        agent = procs.roundtable("ana", "agent", "--name", "ana", "--config", str(cfg))
        assert agent.wait_exit(60) == 2, agent.output
    assert "roundtable: error: ana is a human seat: people answer from the page" in agent.output, agent.output
    cfg = people_config(tmp_path, ["ana"])
    with processes(tmp_path) as procs:
        bo = procs.roundtable("bo", "chat", "x", "--as", "bo", "--config", str(cfg))
        assert bo.wait_exit(60) == 2, bo.output
    assert "roundtable: error: --as bo: no human seat takes answers from that name (human seats: ana)" in bo.output


def test_a_person_takes_a_human_seats_turn_from_the_page(tmp_path: Path, browser: Browser) -> None:  # noqa: F811
    cfg = people_config(tmp_path, [])  # anyone on the page may answer for ana
    with processes(tmp_path) as procs:
        start_cluster(procs, cfg, ["writer"])
        tab = Tab(browser, start_page(procs, cfg))
        tab.send("Write about rain")
        tab.wait_for_text("ana speaks next")
        tab.send("Make it about the sea.")
        tab.wait_for_end()
        tab.wait_for_text("Draft 2 after: Make it about the sea.")  # the writer heard the answer
        texts = [m["text"] for m in tab.transcript()]
        tab.close()
    assert any(t.startswith("Conversation ended: max_rounds reached (3 rounds)") for t in texts), texts
    assert "did not answer" not in " ".join(texts), texts


def test_a_human_seat_no_one_answers_on_the_page_is_skipped_with_a_note(
    tmp_path: Path,
    browser: Browser,  # noqa: F811
) -> None:
    cfg = people_config(tmp_path, [], turn_timeout=3)
    with processes(tmp_path) as procs:
        start_cluster(procs, cfg, ["writer"])
        tab = Tab(browser, start_page(procs, cfg))
        tab.send("Write about rain")
        tab.wait_for_text("ana speaks next (a person's turn: type the answer)")
        tab.wait_for_text("writer speaks next (ana did not answer within 3 s; skipped)")
        tab.wait_for_end()
        tab.close()
