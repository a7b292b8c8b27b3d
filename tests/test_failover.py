"""Managers that fail over (lease.py), with real processes on a real NATS server: two managers,
one leading and one standing by, sharing the store. The leader killed with SIGKILL mid-conversation,
or paused (SIGSTOP) past its lease and then resumed: the other takes over and the conversation
ends whole, each turn once, never driven by two managers at once."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from fakeclock import held
from harness import READY, Proc, Procs, processes
from test_nats import nats_config, start_bus
from test_reliability import assert_complete, assert_shown_once, chat, stored

from roundtable.lease import Lease, LeaseLost
from roundtable.store import TranscriptStore

LEASE = 3.0  # s: short, so that a standby takes over soon after the leader is gone
ROUNDS = 8
STANDING_BY = "roundtable: manager standing by:"


def start_pair(procs: Procs, cfg: Path) -> tuple[Proc, Proc]:
    """The bus, the two agents, a leading manager `a` and a manager `b` standing by."""
    start_bus(procs, cfg)
    agents = [procs.roundtable(f"agent-{n}", "agent", "--config", str(cfg), "--name", n) for n in ("writer", "editor")]
    a = procs.roundtable("manager-a", "manager", "--config", str(cfg))
    a.wait_for(READY, timeout=60)
    b = procs.roundtable("manager-b", "manager", "--config", str(cfg))
    b.wait_for(STANDING_BY, timeout=60)
    assert READY not in b.output, b.output
    for agent in agents:
        agent.wait_for(READY, timeout=60)
    return a, b


def test_the_standby_manager_takes_over_from_a_leader_killed_mid_conversation(tmp_path: Path) -> None:
    cfg = nats_config(tmp_path, rounds=ROUNDS, lease=LEASE)
    with processes(tmp_path) as procs:
        a, b = start_pair(procs, cfg)
        terminal = chat(procs, cfg)
        terminal.wait_for("editor: ", timeout=60)
        os.kill(a.popen.pid, signal.SIGKILL)
        b.wait_for(READY, timeout=LEASE + 30)
        assert terminal.wait_exit(120) == 0, terminal.output
    [conversation] = stored(tmp_path)
    assert_complete(conversation, ROUNDS)
    assert_shown_once(terminal.output, ROUNDS)


def test_a_leader_paused_past_its_lease_stops_acting_when_it_resumes(tmp_path: Path) -> None:
    cfg = nats_config(tmp_path, rounds=ROUNDS, lease=LEASE)
    with processes(tmp_path) as procs:
        a, b = start_pair(procs, cfg)
        terminal = chat(procs, cfg)
        terminal.wait_for("editor: ", timeout=60)
        os.kill(a.popen.pid, signal.SIGSTOP)  # as a long GC pause or a frozen VM would
        try:
            b.wait_for(READY, timeout=LEASE + 30)
            terminal.wait_for("editor: ", timeout=60, count=2)  # b drives it now
        finally:
            os.kill(a.popen.pid, signal.SIGCONT)
        # a wakes up with events queued for it (b's turns went through the bus meanwhile): it acts
        # on none of them, and leaves.
        assert a.wait_exit(LEASE + 30) == 1, a.output
        assert "could not be handled: manager lease not held by this process" in a.output, a.output
        assert "the manager lease was taken by" in a.output, a.output
        assert terminal.wait_exit(120) == 0, terminal.output
    [conversation] = stored(tmp_path)
    assert_complete(conversation, ROUNDS)
    assert_shown_once(terminal.output, ROUNDS)


@pytest.mark.fake_clock
async def test_the_lease_is_one_holders_at_a_time_and_lapses_on_the_holders_clock(tmp_path: Path) -> None:
    store = held(TranscriptStore(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"))  # its thread holds the clock
    await store.open()
    try:
        a, b = Lease(store, 6.0), Lease(store, 6.0)
        assert await a.try_take() == a.holder and a.held()
        assert await b.try_take() == a.holder and not b.held()
        store.fence = a.fence
        await asyncio.sleep(4.1)  # past two thirds of the term: a may no longer act, though the row is still a's
        assert not a.held()
        with pytest.raises(LeaseLost):
            await store.start("c1", "a task")
        assert await b.try_take() == a.holder  # not lapsed in the store yet
        await asyncio.sleep(2.0)
        assert await b.try_take() == b.holder and b.held()
        with pytest.raises(LeaseLost, match="taken by"):
            await a.keep()
        await b.release()
        assert await a.try_take() == a.holder  # a clean stop hands over at once
    finally:
        await store.close()
