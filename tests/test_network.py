"""Across machines: the host, the writer, the editor, and the manager with the terminal each on
their own network host (a namespace), over TLS with the token; then a partition heals."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import READY, Proc, Procs, free_port, processes, scripted_agent, terminal_messages, write_config
from netns import Network, require_netns

from roundtable.security import write_dev_certificates
from roundtable.store import TranscriptStore

LONG = " ".join(f"w{i}" for i in range(25))


@pytest.fixture
def network() -> Iterator[Network]:
    require_netns()
    net = Network(["host", "writer", "editor", "desk"])
    with net:
        yield net
    assert net.leftovers() == [], "the harness must remove every namespace and link it made"


def start(procs: Procs, net: Network, where: str, name: str, *args: str) -> Proc:
    return procs.start(name, *net.run(where, sys.executable, "-m", "roundtable", *args))


def cluster(tmp_path: Path, net: Network, rounds: int) -> Path:
    certs = tmp_path / "certs"
    write_dev_certificates(certs, [net.addresses["host"]])
    return write_config(
        tmp_path / "roundtable.yaml",
        {
            "host": {
                "address": f"{net.addresses['host']}:{free_port()}",
                "heartbeat": 0.5,
                "security": {
                    "ca": str(certs / "ca.pem"),
                    "cert": str(certs / "server.pem"),
                    "key": str(certs / "server.key"),
                    "token_file": str(certs / "token"),
                },
            },
            "agents": [
                scripted_agent("writer", f"Draft {{n}}: {LONG}", delay=0.04),
                scripted_agent("editor", f"Feedback {{n}}: {LONG}", delay=0.04),
            ],
            "manager": {"termination": {"max_rounds": rounds, "timeout": 300}, "turn_timeout": 60},
        },
    )


def run_cluster(procs: Procs, net: Network, cfg: Path) -> dict[str, Proc]:
    started = {"host": start(procs, net, "host", "host", "host", "--config", str(cfg))}
    started["host"].wait_for(READY)
    for name in ("writer", "editor"):
        started[name] = start(procs, net, name, name, "agent", "--name", name, "--config", str(cfg))
    started["manager"] = start(procs, net, "desk", "manager", "manager", "--config", str(cfg))
    for proc in started.values():
        proc.wait_for(READY, timeout=60)
    return started


def transcript_agents(tmp_path: Path) -> list[tuple[int, str]]:
    async def read() -> list[tuple[int, str]]:
        store = TranscriptStore(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'transcripts.db'}")
        try:
            [summary] = await store.recent()
            conversation = await store.get(summary.id)
            assert conversation is not None and conversation.status == "ended"
            return [(m.seq, m.author) for m in conversation.transcript]
        finally:
            await store.close()

    return asyncio.run(read())


def test_a_conversation_across_four_network_hosts_over_tls(tmp_path: Path, network: Network) -> None:
    cfg = cluster(tmp_path, network, rounds=4)
    with processes(tmp_path) as procs:
        run_cluster(procs, network, cfg)
        terminal = start(procs, network, "desk", "chat", "chat", "Write about the sea", "--config", str(cfg))
        assert terminal.wait_exit(120) == 0, terminal.output
        assert "max_rounds reached (4 rounds)" in terminal.output
    assert [a for _, a in transcript_agents(tmp_path)] == ["user", "writer", "editor", "writer", "editor"]


def test_a_partition_heals_and_nothing_is_lost_or_doubled(tmp_path: Path, network: Network) -> None:
    cfg = cluster(tmp_path, network, rounds=6)
    with processes(tmp_path) as procs:
        run_cluster(procs, network, cfg)
        terminal = start(procs, network, "desk", "chat", "chat", "Write about the sea", "--config", str(cfg))
        terminal.wait_for("writer speaks next", timeout=60)
        network.cut("writer")
        try:
            terminal.wait_for("writer is unreachable", timeout=30)
            time.sleep(2)
        finally:
            network.heal("writer")
        terminal.wait_for("writer is reachable again", timeout=60)
        assert terminal.wait_exit(180) == 0, terminal.output
        output = terminal.output
    shown = terminal_messages(output)
    assert [author for author, _ in shown] == ["writer", "editor"] * 3, output
    assert all(text.endswith("w24") for _, text in shown), output
    seqs_and_authors = transcript_agents(tmp_path)
    assert [s for s, _ in seqs_and_authors] == list(range(1, 8))
    assert [a for _, a in seqs_and_authors][1:] == ["writer", "editor"] * 3


@pytest.fixture
def nats_network() -> Iterator[Network]:
    require_netns()
    net = Network(["n0", "n1", "n2", "desk"])
    with net:
        yield net
    assert net.leftovers() == [], "the harness must remove every namespace and link it made"


def test_a_nats_cluster_across_three_network_hosts_carries_on_through_partitions(
    tmp_path: Path, nats_network: Network
) -> None:
    """NATS's own servers on three network hosts (as docs/deploy.md runs them), the manager, the
    agents and the terminal on a fourth. Two nodes are cut off in turn mid-conversation, each
    healed again: whoever was connected to a cut node notices within seconds (pings), moves to
    another, and the conversation ends whole."""
    from roundtable.natsbus import server_binary, server_config

    net = nats_network
    servers = [f"nats://{net.addresses[node]}:4222" for node in ("n0", "n1", "n2")]
    cfg = write_config(
        tmp_path / "roundtable.yaml",
        {
            "bus": ",".join(servers),
            "host": {"connect_timeout": 10, "heartbeat": 0.5},
            "agents": [
                scripted_agent("writer", f"Draft {{n}}: {LONG}", delay=0.04),
                scripted_agent("editor", f"Feedback {{n}}: {LONG}", delay=0.04),
            ],
            "manager": {"termination": {"max_rounds": 12, "timeout": 300}, "turn_timeout": 60},
        },
    )
    with processes(tmp_path) as procs:
        for n in range(3):
            conf = server_config(servers, n, tmp_path / f"n{n}")
            node = procs.start(f"n{n}", *net.run(f"n{n}", server_binary(), "-c", str(conf)))
            node.wait_for("Server is ready", timeout=30)
        others = [start(procs, net, "desk", "manager", "manager", "--config", str(cfg))]
        for name in ("writer", "editor"):
            others.append(start(procs, net, "desk", name, "agent", "--name", name, "--config", str(cfg)))
        for proc in others:
            proc.wait_for(READY, timeout=60)
        terminal = start(procs, net, "desk", "chat", "chat", "Write about the sea", "--config", str(cfg))
        for node, after in (("n0", 1), ("n1", 4)):
            terminal.wait_for("editor: ", timeout=90, count=after)
            net.cut(node)
            try:
                # It goes on while the node is cut off: whoever was on it gave it up (its pings
                # went unanswered) and moved to another.
                terminal.wait_for("editor: ", timeout=45, count=after + 2)
            finally:
                net.heal(node)
        assert terminal.wait_exit(180) == 0, terminal.output
        output = terminal.output
    shown = terminal_messages(output)
    assert [author for author, _ in shown] == ["writer", "editor"] * 6, output
    assert all(text.endswith("w24") for _, text in shown), output
    assert [s for s, _ in transcript_agents(tmp_path)] == list(range(1, 14))
