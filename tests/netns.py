"""Test hosts on one machine: network namespaces joined by veth pairs to a bridge.

Each host gets its own address on a private subnet that exists only inside this
test; everything made is removed again, even when the test fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from types import TracebackType

import pytest


def skip_reason() -> str | None:
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "network namespaces need iproute2 (the `ip` command)"
    return None


def require_netns() -> None:
    reason = skip_reason()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the multi-host tests, but {reason}")
    pytest.skip(reason)


def ip(*args: str, check: bool = True) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


class Network:
    """`hosts` named hosts at 10.213.<net>.1, .2, ... ; the bridge itself is .254, so this
    process (and a browser it starts) can reach them too."""

    def __init__(self, hosts: Sequence[str]) -> None:
        tag = os.getpid() % 10_000
        self.net = 1 + os.getpid() % 250
        self._prefix = f"rt{tag}"
        self.bridge = f"{self._prefix}br"
        self.hosts = {name: f"{self._prefix}{name}" for name in hosts}
        self.addresses = {name: f"10.213.{self.net}.{i + 1}" for i, name in enumerate(hosts)}
        self._links = {name: f"{self._prefix}v{i}" for i, name in enumerate(hosts)}

    def __enter__(self) -> Network:
        try:
            ip("link", "add", self.bridge, "type", "bridge")
            ip("addr", "add", f"10.213.{self.net}.254/24", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
            for name, namespace in self.hosts.items():
                link, peer = self._links[name], self._links[name] + "p"
                ip("netns", "add", namespace)
                ip("link", "add", link, "type", "veth", "peer", "name", peer)
                ip("link", "set", link, "netns", namespace)
                ip("link", "set", peer, "master", self.bridge)
                ip("link", "set", peer, "up")
                ip("-n", namespace, "addr", "add", f"{self.addresses[name]}/24", "dev", link)
                ip("-n", namespace, "link", "set", link, "up")
                ip("-n", namespace, "link", "set", "lo", "up")
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.remove()

    def remove(self) -> None:
        for namespace in self.hosts.values():
            ip("netns", "del", namespace, check=False)  # takes its end of the veth pair with it
        for link in self._links.values():
            ip("link", "del", link + "p", check=False)
        ip("link", "del", self.bridge, check=False)

    def run(self, host: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.hosts[host], *argv]

    def cut(self, host: str) -> None:
        ip("-n", self.hosts[host], "link", "set", self._links[host], "down")

    def heal(self, host: str) -> None:
        ip("-n", self.hosts[host], "link", "set", self._links[host], "up")

    def leftovers(self) -> list[str]:
        """Anything of ours still there (should be nothing after `remove`)."""
        namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, timeout=10).stdout
        return [line for line in (namespaces + links).splitlines() if self._prefix in line]
