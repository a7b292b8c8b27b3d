"""Managers that fail over (lease.py), with real processes on a real NATS server: two managers,
one leading and one standing by, sharing the store. The leader killed with SIGKILL mid-conversation,
or paused (SIGSTOP) past its lease and then resumed: the other takes over and the conversation
ends whole, each turn once, never driven by two managers at once."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from fakeclock import held
from harness import READY, Proc, Procs, processes, terminal_messages, write_config
from test_nats import cluster_address, nats_config, start_bus
from test_reliability import assert_complete, assert_shown_once, chat, stored
from test_ui import yaml_port

from roundtable.lease import Lease, LeaseLost
from roundtable.store import TranscriptStore

LEASE = 6.0  # s: the default (a shorter one lapsed under load, with three JetStream nodes writing to the same disk)
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
        before_pause = len(a.output)
        try:
            b.wait_for(READY, timeout=LEASE + 30)
            terminal.wait_for("editor: ", timeout=60, count=2)  # b drives it now
        finally:
            os.kill(a.popen.pid, signal.SIGCONT)
        # a wakes up with events queued for it (b's turns went through the bus meanwhile), its
        # timers and its lease renewal overdue. Whichever comes first, it stores and publishes
        # nothing (the fence refuses it: "manager lease not held by this process"; see
        # test_inprocess's lapsed-lease test), and leaves once the renewal finds the lease taken.
        # Nothing a did twice would show below: the terminal shows each turn once, the store
        # holds each once.
        assert a.wait_exit(LEASE + 30) == 1, a.output
        assert "the manager lease was taken by" in a.output[before_pause:], a.output
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


class Stalls:
    """The longest time any unfinished conversation went without a new message, sampled."""

    def __init__(self, terminals: list[Proc]) -> None:
        self.terminals = terminals
        self.longest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        seen = {t.name: (0, time.monotonic()) for t in self.terminals}
        while not self._stop.wait(0.1):
            now = time.monotonic()
            for terminal in self.terminals:
                if terminal.popen.poll() is not None:
                    continue
                count = len(terminal_messages(terminal.output))
                if count != seen[terminal.name][0]:
                    seen[terminal.name] = (count, now)
                self.longest = max(self.longest, now - seen[terminal.name][1])

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(5)
        return self.longest


def test_chaos_on_a_three_node_cluster_loses_and_repeats_no_turn(tmp_path: Path) -> None:
    """Three conversations on a three-node cluster with two managers, two writer processes and
    the page; killed with SIGKILL in a random order while they run, and each started again: a
    NATS node, a writer, the leading manager, the page. Every conversation ends whole, each turn
    stored and shown once."""
    seed = int(os.environ.get("CHAOS_SEED", str(time.time_ns() % 1_000_000)))
    rng = random.Random(seed)
    print(f"chaos seed {seed} (CHAOS_SEED={seed} kills in the same order)")
    rounds = 12
    cfg = nats_config(tmp_path, rounds=rounds, lease=LEASE)
    write_config(cfg, {**yaml.safe_load(cfg.read_text()), "bus": cluster_address()})
    with processes(tmp_path) as procs:
        nodes = [procs.roundtable(f"bus{n}", "bus", "--node", str(n), "--config", str(cfg)) for n in range(3)]
        for node in nodes:
            node.wait_for(READY, timeout=30)
        leader = procs.roundtable("manager-0", "manager", "--config", str(cfg))
        leader.wait_for(READY, timeout=60)
        standby = procs.roundtable("manager-1", "manager", "--config", str(cfg))
        standby.wait_for(STANDING_BY, timeout=60)

        def writer(n: int, life: int) -> Proc:
            own = {"ROUNDTABLE_DATA_DIR": str(tmp_path / f"writer{n}")}  # each replica keeps its own outbox
            args = ("agent", "--config", str(cfg), "--name", "writer")
            return procs.roundtable(f"writer{n}-{life}", *args, env=own)

        port = yaml_port(cfg)

        def page(life: int) -> Proc:
            return procs.roundtable(f"page-{life}", "ui", "--config", str(cfg), "--port", str(port))

        pages = [page(0)]
        writers = [writer(0, 0), writer(1, 0)]
        agents = [*writers, procs.roundtable("editor", "agent", "--config", str(cfg), "--name", "editor")]
        for agent in [*agents, *pages]:
            agent.wait_for(READY, timeout=60)
        tasks = ("Write about rain", "Write about the sea", "Write about snow")
        terminals = [chat(procs, cfg, name=f"chat{i}", task=task) for i, task in enumerate(tasks)]
        stalls = Stalls(terminals)
        victims = ["node", "writer", "manager", "page"]
        rng.shuffle(victims)
        for life, victim in enumerate(victims, start=1):
            deadline = time.monotonic() + 90
            while sum(len(terminal_messages(t.output)) for t in terminals) < 4 * life:
                assert time.monotonic() < deadline, [t.output[-1000:] for t in terminals]
                time.sleep(0.05)
            if victim == "node":
                n = rng.randrange(3)
                nodes[n].stop(signal.SIGKILL)
                nodes[n] = procs.roundtable(f"bus{n}-{life}", "bus", "--node", str(n), "--config", str(cfg))
                nodes[n].wait_for(READY, timeout=30)
            elif victim == "writer":
                n = rng.randrange(2)
                writers[n].stop(signal.SIGKILL)
                writers[n] = writer(n, life)
                writers[n].wait_for(READY, timeout=60)
            elif victim == "page":
                pages[-1].stop(signal.SIGKILL)
                pages.append(page(life))
                pages[-1].wait_for(READY, timeout=60)
            else:
                leader.stop(signal.SIGKILL)
                standby.wait_for(READY, timeout=LEASE + 30)
                leader, standby = standby, procs.roundtable(f"manager-{life + 1}", "manager", "--config", str(cfg))
                standby.wait_for(STANDING_BY, timeout=60)
        for terminal in terminals:
            assert terminal.wait_exit(180) == 0, terminal.output[-3000:]
        longest = stalls.stop()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            assert response.status == 200  # the page started again serves
    conversations = stored(tmp_path)
    assert sorted(c.task for c in conversations) == sorted(tasks), conversations
    for conversation in conversations:
        assert_complete(conversation, rounds)
    for terminal in terminals:
        assert_shown_once(terminal.output, rounds)
    print(f"chaos seed {seed}: killed {', '.join(victims)}; longest stall {longest:.1f} s; lost 0, duplicated 0")
