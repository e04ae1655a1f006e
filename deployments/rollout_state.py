"""Canary rollbacks shared by an application's router replicas and kept across their restarts.

A router replica's guard decides a rollback from the requests it saw. Kept in that replica alone,
the decision would be lost when it restarts, and every other replica would keep sending traffic to
the failing canary. So it goes to one small named actor per application (detached: it outlives
the router replicas, whose restarts it is there to bridge), keyed by tier and rollout identity
(`serve_app.routing.rollout.rollout_identity`): a rollout config that changes starts clean. Each replica
reads it when it applies a rollout and every few seconds after that (deployments.router.ROLLBACK_SYNC_S).

When the actor cannot be reached the router goes on with its own decisions: sharing them is worth
having, never worth failing a request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import ray

from serve_app.routing.rollout import RollbackBook, RolledBack

logger = logging.getLogger("ray.serve")
NAMESPACE = "serve_app"


RolloutDecisions = ray.remote(num_cpus=0)(RollbackBook)
"""The book as an actor: one per application, named `rollouts:<app>` in the `serve_app` namespace."""


async def _named_actor(name: str):
    return await asyncio.to_thread(lambda: RolloutDecisions.options(
        name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True).remote())


class SharedRollbacks:
    """A router replica's side of its application's `RolloutDecisions` actor."""

    def __init__(self, app_name: str, find: Callable[[str], Awaitable[Any]] | None = None):
        """`find(name)` returns the actor (by default the named, detached one, created by the first asker)."""
        self._name = f"rollouts:{app_name}"
        self._find = find or _named_actor
        self._actor = None

    async def _decisions(self):
        if self._actor is None:
            self._actor = await self._find(self._name)
        return self._actor

    async def _ask(self, what: str, call: Callable[[Any], Awaitable[Any]], fallback: Any) -> Any:
        """`call(actor)`'s answer; `fallback` (and a warning) when the actor cannot be reached."""
        try:
            return await call(await self._decisions())
        except Exception:
            logger.warning("could not %s", what, exc_info=True)
            self._actor = None
            return fallback

    async def apply(self, identities: dict[str, str]) -> dict[str, RolledBack]:
        """Announce the rollout each tier applies now; the rollbacks already decided for them."""
        kept = await self._ask("read the shared rollout decisions", lambda actor: asyncio.gather(
            *(actor.apply.remote(tier, identity) for tier, identity in identities.items())), [None] * len(identities))
        return {tier: RolledBack(**rollback) for tier, rollback in zip(identities, kept, strict=True) if rollback}

    async def record(self, tier: str, identity: str, rollback: RolledBack) -> RolledBack | None:
        """Share a rollback this replica decided; the one that holds (another replica's when it came
        first; this one when the decisions cannot be reached), or None for a stale rollout."""
        mine = dataclasses.asdict(rollback)
        kept = await self._ask(f"share the rollback of {tier}; it holds in this router replica only",
                               lambda actor: actor.record.remote(tier, identity, mine), mine)
        return RolledBack(**kept) if kept else None

    async def current(self) -> dict[str, tuple[str, RolledBack]]:
        """Per tier with a rollback: the rollout identity it belongs to and the rollback."""
        tiers = await self._ask("read the shared rollout decisions", lambda actor: actor.rollbacks.remote(), {})
        return {tier: (identity, RolledBack(**rollback)) for tier, (identity, rollback) in tiers.items() if rollback}
