"""Which event loop each async test runs on: a fake clock (tests/fakeclock.py) for the tests
marked `fake_clock`, asyncio's own for the rest."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
from fakeclock import FakeClockLoop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    marker = item.get_closest_marker("fake_clock")  # `fake_clock(False)` opts a test out
    if marker is not None and marker.args[:1] != (False,):
        return {"fake_clock": FakeClockLoop}
    return {"asyncio": asyncio.new_event_loop}
