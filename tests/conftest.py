"""Which event loop each async test runs on: a fake clock (tests/fakeclock.py) for the tests
marked `fake_clock`, asyncio's own for the rest; and the fixtures several test files share."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from fakeclock import FakeClockLoop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    marker = item.get_closest_marker("fake_clock")  # `fake_clock(False)` opts a test out
    if marker is not None and marker.args[:1] != (False,):
        return {"fake_clock": FakeClockLoop}
    return {"asyncio": asyncio.new_event_loop}


def certs_command(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "roundtable", "certs", str(directory), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def identities(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`roundtable certs --agents writer,editor`: a token per identity, and identities.yaml."""
    directory = tmp_path_factory.mktemp("identities")
    result = certs_command(directory, "--agents", "writer,editor")
    assert result.returncode == 0, result.stderr
    return directory
