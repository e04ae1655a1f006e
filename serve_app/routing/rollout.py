"""Traffic between the versions of a tier: the canary split, shadow copies, the canary guard.

Pure: `versions.TierVersions` asks `TierTraffic` which version serves a request and whether to mirror
it, and reports each outcome back; randomness and the clock are injected.

- Canary: a request with a session key goes to the canary when the key's hash bucket (0-100, the
  same in every router replica and across restarts) is below `canary_percent`, so a conversation
  stays on one version, and raising the percentage only moves more keys to the canary, never back.
  A request without a key is split at random.
- Guard: the canary's recent requests are compared with the stable version's over the same window;
  a canary failing more often, or with a much slower first token, is set back to 0 % until the next
  rollout config arrives. The verdict is the rollout's, not one router replica's: the deployment
  shares it (keyed by `rollout_identity`) with every other replica and with replicas started later, which
  `adopt` it.
- Shadow: a copy of a share of the requests goes to another version, bounded in number; its answer
  is compared with the primary's (`agreement`) and recorded, never returned (versions.TierVersions
  sends the copies and keeps their log).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import random
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from serve_app.config import CanaryGuardConfig, TierRollout

SHADOW_RECORDS_KEPT = 100
"""Recent shadow comparisons kept per tier for the rollout status."""


def bucket(tier: str, key: str) -> float:
    """The key's place in [0, 100): below a canary's percentage means the canary serves it."""
    digest = hashlib.sha256(f"{tier}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


def agreement(primary: str, shadow: str) -> float:
    """Similarity of two answers in [0, 1]: the matching share of their words (1: the same words)."""
    a, b = primary.lower().split(), shadow.lower().split()
    if not a and not b:
        return 1.0
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def rollout_identity(rollout: TierRollout) -> str:
    """What a shared rollback is kept under: the tier's rollout config, so that a changed one starts clean."""
    canonical = json.dumps(rollout.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Choice:
    version: str
    canary: bool


class CanaryGuard:
    """Recent outcomes of the canary and of the stable version, and the verdict on the canary."""

    def __init__(self, config: CanaryGuardConfig):
        self.config = config
        self._outcomes = {True: deque(maxlen=config.window), False: deque(maxlen=config.window)}
        """canary? -> (ok, ttft_s) of recent requests."""

    def record(self, canary: bool, ok: bool, ttft_s: float | None) -> None:
        self._outcomes[canary].append((ok, ttft_s))

    def error_rate(self, canary: bool) -> float | None:
        outcomes = self._outcomes[canary]
        return sum(not ok for ok, _ in outcomes) / len(outcomes) if outcomes else None

    def median_ttft_s(self, canary: bool) -> float | None:
        ttfts = [t for ok, t in self._outcomes[canary] if ok and t is not None]
        return statistics.median(ttfts) if ttfts else None

    def verdict(self) -> str | None:
        """Why the canary must go, or None while it may stay (or too few of its requests were seen)."""
        c = self.config
        if len(self._outcomes[True]) < c.min_requests:
            return None
        canary_errors, stable_errors = self.error_rate(True), self.error_rate(False) or 0.0
        if canary_errors - stable_errors > c.max_error_rate_increase:
            return f"error rate {canary_errors:.0%} against the stable version's {stable_errors:.0%}"
        canary_ttft, stable_ttft = self.median_ttft_s(True), self.median_ttft_s(False)
        if c.max_ttft_ratio is not None and canary_ttft is not None and stable_ttft is not None \
                and len(self._outcomes[False]) >= c.min_requests and canary_ttft > c.max_ttft_ratio * stable_ttft:
            return f"median TTFT {canary_ttft:.2f} s against the stable version's {stable_ttft:.2f} s"
        return None

    def status(self) -> dict:
        return {side: {"requests": len(self._outcomes[canary]), "error_rate": self.error_rate(canary),
                       "median_ttft_s": self.median_ttft_s(canary)}
                for side, canary in (("canary", True), ("stable", False))}


@dataclass(slots=True)
class ShadowRecord:
    """One mirrored request: how the shadow did, and how its answer compares with the primary's."""

    version: str
    outcome: str
    """ok; error (the shadow failed); shed (not sent: too many copies in flight, or the shadow busy)."""
    error: str | None = None
    ttft_s: float | None = None
    latency_s: float | None = None
    output_tokens: int = 0
    cost_usd: float = 0.0
    primary_output_tokens: int | None = None
    agreement: float | None = None
    """Word-level similarity to the primary answer (None when either did not finish)."""
    exact: bool | None = None


@dataclass(slots=True)
class RolledBack:
    version: str
    reason: str
    at_s: float


@dataclass(slots=True)
class ShadowLog:
    records: deque = field(default_factory=lambda: deque(maxlen=SHADOW_RECORDS_KEPT))
    counts: dict[str, int] = field(default_factory=lambda: {"ok": 0, "error": 0, "shed": 0})

    def add(self, record: ShadowRecord) -> None:
        self.records.append(record)
        self.counts[record.outcome] += 1

    def summary(self) -> dict:
        done = [r for r in self.records if r.agreement is not None]
        return {**self.counts,
                "mean_agreement": statistics.fmean(r.agreement for r in done) if done else None,
                "exact_share": sum(r.exact for r in done) / len(done) if done else None,
                "recent": [asdict(r) for r in list(self.records)[-10:]]}


class TierTraffic:
    """One tier's rollout as the router applies it: which version serves, mirrors and is judged."""

    def __init__(self, tier: str, default_version: str, rollout: TierRollout, rng: random.Random,
                 clock: Callable[[], float]):
        self.tier = tier
        self.config = rollout
        self.identity = rollout_identity(rollout)
        """What the rollback of this rollout is shared under (fixed: a new rollout is a new TierTraffic)."""
        self.stable = rollout.stable or default_version
        self.guard = CanaryGuard(rollout.guard)
        self.rolled_back: RolledBack | None = None
        self._rng = rng
        self._clock = clock

    @property
    def canary_percent(self) -> float:
        return 0.0 if self.rolled_back or self.config.canary is None else self.config.canary_percent

    def pick(self, session_key: str | None) -> Choice:
        share = self.canary_percent
        if share > 0:
            place = bucket(self.tier, session_key) if session_key else self._rng.random() * 100
            if place < share:
                return Choice(self.config.canary, canary=True)
        return Choice(self.stable, canary=False)

    def record(self, choice: Choice, ok: bool, ttft_s: float | None) -> RolledBack | None:
        """Note how a request went on its version; returns the rollback when this outcome triggers it."""
        if self.config.canary is None or choice.version not in (self.stable, self.config.canary):
            return None
        self.guard.record(choice.canary, ok, ttft_s)
        if not choice.canary or self.rolled_back:
            return None
        reason = self.guard.verdict()
        if reason is None:
            return None
        self.rolled_back = RolledBack(self.config.canary, reason, self._clock())
        return self.rolled_back

    def adopt(self, rollback: RolledBack) -> bool:
        """Take the rollout's rollback as the shared decisions hold it: another router replica's verdict, or
        the first one when this replica's guard decided too (the verdict is the rollout's, so every replica
        reports the same one). True if it changed anything."""
        if rollback.version != self.config.canary or self.rolled_back == rollback:
            return False
        self.rolled_back = rollback
        return True

    def wants_copy(self) -> str | None:
        """The shadow version to copy this request to (`shadow_percent` of requests, at random), or None.
        Whether a copy can be sent (the bound on copies in flight, a busy shadow) is versions.TierVersions'."""
        c = self.config
        if c.shadow is None or not c.shadow_percent or self._rng.random() * 100 >= c.shadow_percent:
            return None
        return c.shadow

    def status(self) -> dict:
        c = self.config
        return {
            "stable": self.stable, "canary": c.canary, "canary_percent": self.canary_percent,
            "configured_canary_percent": c.canary_percent,
            "rolled_back": asdict(self.rolled_back) if self.rolled_back else None,
            "guard": self.guard.status(),
            "shadow": c.shadow, "shadow_percent": c.shadow_percent,
        }


class RollbackBook:
    """Per tier: the identity of the rollout it applies and that rollout's rollback, if any. Shared by
    an application's router replicas (deployments.rollout_state keeps it in an actor); plain values in
    and out (a rollback as the dict of a `RolledBack`)."""

    def __init__(self):
        self._tiers: dict[str, tuple[str, dict | None]] = {}

    def apply(self, tier: str, identity: str) -> dict | None:
        """A router applies rollout `identity` to `tier`: its rollback so far (a new rollout has none)."""
        current = self._tiers.get(tier)
        if current is None or current[0] != identity:
            self._tiers[tier] = (identity, None)
            return None
        return current[1]

    def record(self, tier: str, identity: str, rollback: dict) -> dict | None:
        """Keep the first rollback of the tier's current rollout; returns the one kept (None: `identity`
        is no longer the tier's rollout, so the rollback is stale and dropped)."""
        current_identity, current = self._tiers.setdefault(tier, (identity, None))
        if current_identity != identity:
            return None
        if current is None:
            self._tiers[tier] = (identity, rollback)
            return rollback
        return current

    def rollbacks(self) -> dict[str, tuple[str, dict | None]]:
        return dict(self._tiers)
