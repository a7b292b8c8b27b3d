"""The routing table that replaces AutoGen's: the same answers as the stock one for any mix of
subscription changes and topics, bounded memory, and installed where AutoGen keeps its own."""

from __future__ import annotations

import asyncio

from autogen_core import AgentId, TopicId, TypePrefixSubscription, TypeSubscription
from autogen_core._runtime_impl_helpers import SubscriptionManager  # the reference it must match
from hypothesis import given, settings
from hypothesis import strategies as st

from roundtable.host import HostServicer
from roundtable.routing import Routes
from roundtable.worker import WorkerRuntime

TYPES = ["group_chat", "control", "turn.writer", "turn.editor", "stream"]
SUBSCRIPTIONS = [TypeSubscription(t, a) for t in TYPES for a in ("manager", "writer")] + [
    TypePrefixSubscription("turn.", "observer")
]
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, len(SUBSCRIPTIONS) - 1)),
        st.tuples(st.just("remove"), st.integers(0, len(SUBSCRIPTIONS) - 1)),
        st.tuples(st.just("route"), st.sampled_from(TYPES), st.sampled_from(["c1", "c2", "c3", "c4"])),
    ),
    max_size=60,
)


async def apply(table: Routes | SubscriptionManager, steps: list[tuple[object, ...]]) -> list[object]:
    seen: list[object] = []
    for step in steps:
        try:
            if step[0] == "add":
                await table.add_subscription(SUBSCRIPTIONS[int(str(step[1]))])
            elif step[0] == "remove":
                await table.remove_subscription(SUBSCRIPTIONS[int(str(step[1]))].id)
            else:
                recipients = await table.get_subscribed_recipients(TopicId(str(step[1]), str(step[2])))
                seen.append(sorted(map(str, recipients)))
        except ValueError as error:
            seen.append(str(error))
    return seen


@settings(max_examples=200, deadline=None)
@given(STEPS, st.integers(1, 4))
def test_routes_answer_as_autogens_table_does(steps: list[tuple[object, ...]], cache_size: int) -> None:
    # A small cache, so that evicted topics are worked out again.
    assert asyncio.run(apply(Routes(cache_size), steps)) == asyncio.run(apply(SubscriptionManager(), steps))


async def test_the_table_stays_bounded_however_many_topics_come_and_go() -> None:
    routes = Routes(cache_size=100)
    await routes.add_subscription(TypeSubscription("group_chat", "manager"))
    for i in range(5_000):
        assert await routes.get_subscribed_recipients(TopicId("group_chat", f"c{i}")) == [AgentId("manager", f"c{i}")]
    assert routes.cached == 100
    await routes.add_subscription(TypeSubscription("group_chat", "writer"))  # kept answers are stale now
    assert len(await routes.get_subscribed_recipients(TopicId("group_chat", "c4999"))) == 2
    assert len(await routes.get_subscribed_recipients(TopicId("group_chat", "c1"))) == 2
    assert routes.cached == 100


def test_the_host_and_the_worker_route_through_it() -> None:
    assert isinstance(HostServicer().routes, Routes)
    assert isinstance(WorkerRuntime("127.0.0.1:1").routes, Routes)
