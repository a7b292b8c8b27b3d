"""Which agents a topic reaches: a routing table whose cost does not grow with age.

AutoGen's runtimes (the host's servicer and each worker) keep a `SubscriptionManager` that
remembers every topic it has ever routed and, on each subscription change, recomputes the
recipients of all of them while nothing else runs. Every conversation brings new topics, so a
host that runs for weeks slows down by itself: after 20,000 topics, one change stalled routing
for 12 to 16 s, and the table only grows.

`Routes` answers the same questions. A topic's recipients are worked out when they are first
needed and kept in a bounded cache, most recently used last. A subscription change only starts
a new generation: an answer from an older one is worked out again when next asked for. Memory is
bounded by the cache, and a change costs the same whatever the number of topics, in use or gone.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from autogen_core import AgentId, Subscription, TopicId

#: Topics whose recipients are kept. A conversation uses about five; a host with this many
#: topics in use at once still routes correctly, only working some of them out again.
ROUTE_CACHE_SIZE = 8192


class Routes:
    """The host's and the worker's routing table; it answers as AutoGen's SubscriptionManager does."""

    def __init__(self, cache_size: int = ROUTE_CACHE_SIZE) -> None:
        self._subscriptions: list[Subscription] = []
        self._generation = 0  # of the subscriptions; one more with each change
        self._cache: OrderedDict[TopicId, tuple[int, list[AgentId]]] = OrderedDict()
        self._cache_size = cache_size

    @property
    def subscriptions(self) -> Sequence[Subscription]:
        return self._subscriptions

    @property
    def cached(self) -> int:
        """How many topics' recipients are kept now (of any generation)."""
        return len(self._cache)

    def add(self, subscription: Subscription) -> None:
        if any(existing == subscription for existing in self._subscriptions):
            raise ValueError("Subscription already exists")
        self._subscriptions.append(subscription)
        self._generation += 1

    def remove(self, id: str) -> bool:
        """Remove the subscription `id`; False if there was none."""
        kept = [existing for existing in self._subscriptions if existing.id != id]
        if len(kept) == len(self._subscriptions):
            return False
        self._subscriptions = kept
        self._generation += 1
        return True

    def recipients(self, topic: TopicId) -> list[AgentId]:
        kept = self._cache.get(topic)
        if kept is not None:
            self._cache.move_to_end(topic)
            if kept[0] == self._generation:
                return kept[1]
        recipients = [s.map_to_agent(topic) for s in self._subscriptions if s.is_match(topic)]
        self._cache[topic] = (self._generation, recipients)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return recipients

    # AutoGen's SubscriptionManager's names, so a test can check both give the same answers.

    async def add_subscription(self, subscription: Subscription) -> None:
        self.add(subscription)

    async def remove_subscription(self, id: str) -> None:
        if not self.remove(id):
            raise ValueError("Subscription does not exist")

    async def get_subscribed_recipients(self, topic: TopicId) -> list[AgentId]:
        return self.recipients(topic)
