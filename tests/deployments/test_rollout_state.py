"""A router replica's side of the shared rollbacks, over the real RollbackBook behind a stand-in for
its actor (no Ray started): what holds, what a later replica adopts, and what happens when the actor
cannot be reached."""

import asyncio

from deployments.rollout_state import SharedRollbacks
from serve_app.routing.rollout import RollbackBook, RolledBack


class Method:
    def __init__(self, function):
        self.function = function

    def remote(self, *args):
        async def call():
            return self.function(*args)

        return call()


class Actor:
    def __init__(self, book: RollbackBook):
        self.apply, self.record, self.rollbacks = Method(book.apply), Method(book.record), Method(book.rollbacks)


def replica(book: RollbackBook | None) -> SharedRollbacks:
    async def find(name):
        assert name == "rollouts:llm"
        if book is None:
            raise ConnectionError("the actor is gone")
        return Actor(book)

    return SharedRollbacks("llm", find)


def test_the_first_verdict_holds_and_a_replica_started_later_adopts_it():
    book = RollbackBook()
    first, second = replica(book), replica(book)
    mine, theirs = RolledBack("v2", "error rate 40 %", 1.0), RolledBack("v2", "median TTFT 3 s", 2.0)

    async def story():
        assert await first.apply({"strong": "abc"}) == {}
        assert await second.apply({"strong": "abc"}) == {}
        assert await first.record("strong", "abc", mine) == mine
        assert await second.record("strong", "abc", theirs) == mine  # the first verdict holds
        assert await replica(book).apply({"strong": "abc"}) == {"strong": mine}  # a restart starts rolled back
        assert await first.current() == {"strong": ("abc", mine)}
        assert await replica(book).apply({"strong": "new"}) == {}  # a changed rollout starts clean
        assert await first.record("strong", "abc", mine) is None  # and the old one's rollback is stale

    asyncio.run(story())


def test_without_the_actor_a_replica_keeps_its_own_verdict_and_serves_on():
    alone = replica(None)
    rollback = RolledBack("v2", "error rate 40 %", 1.0)

    async def story():
        assert await alone.apply({"strong": "abc", "cheap": "def"}) == {}
        assert await alone.record("strong", "abc", rollback) == rollback
        assert await alone.current() == {}

    asyncio.run(story())
