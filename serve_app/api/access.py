"""Access control policies: API keys and per-key request rates. Pure: values and a clock in,
decisions out. Keys come from an environment variable or a secrets file, never from the config
file; this module is the one place that reads them."""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from serve_app.core.errors import AuthenticationFailed, RateLimited


def load_api_keys(env_var: str | None, secrets_file: str | None) -> list[str]:
    """Keys from `env_var` (comma-separated) and `secrets_file` (one per line, # comments)."""
    keys: list[str] = []
    if env_var:
        keys += [k.strip() for k in os.environ.get(env_var, "").split(",")]
    if secrets_file:
        lines = Path(secrets_file).read_text().splitlines()
        keys += [line.strip() for line in lines if not line.lstrip().startswith("#")]
    return [k for k in keys if k]


def secret_from_env(env_var: str | None) -> str | None:
    """A credential (e.g. an external provider's key) from the environment, if named and set."""
    if not env_var:
        return None
    return os.environ.get(env_var) or None


@dataclass
class TokenBucket:
    """`rate_per_s` tokens a second, at most `burst` saved up; one token per request."""

    rate_per_s: float
    burst: float
    tokens: float = field(default=-1.0)
    updated_s: float = 0.0

    def try_take(self, now_s: float) -> float:
        """0.0 if a token was taken, else the seconds until one will be there."""
        if self.tokens < 0:
            self.tokens, self.updated_s = self.burst, now_s
        self.tokens = min(self.burst, self.tokens + (now_s - self.updated_s) * self.rate_per_s)
        self.updated_s = now_s
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate_per_s


class KeyGate:
    """Checks `Authorization: Bearer <key>` in constant time and applies each key's request rate.

    With no keys configured every caller is let in (and rate-limited as one anonymous caller).
    Limits are per router replica: with N replicas a key gets up to N times the rate.
    """

    def __init__(self, keys: list[str], requests_per_minute: float | None, burst: int | None,
                 clock: Callable[[], float]):
        # Compare digests, not keys: equal length for every candidate, and no key kept in the clear.
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys]
        self._rate = requests_per_minute / 60.0 if requests_per_minute else None
        self._burst = burst or max(1, int(requests_per_minute or 1))
        self._buckets: dict[int, TokenBucket] = {}
        self._clock = clock

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def _identify(self, authorization: str | None) -> int:
        if not self._digests:
            return -1
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise AuthenticationFailed("Missing API key: send it as 'Authorization: Bearer <key>'.")
        digest = hashlib.sha256(presented.strip().encode()).digest()
        match = -1
        for index, known in enumerate(self._digests):  # no early exit: time does not depend on which key matched
            if hmac.compare_digest(digest, known):
                match = index
        if match < 0:
            raise AuthenticationFailed("Incorrect API key provided.")
        return match

    def admit(self, authorization: str | None) -> None:
        """Raise AuthenticationFailed (401) or RateLimited (429, with the wait) or return."""
        key = self._identify(authorization)
        if self._rate is None:
            return
        bucket = self._buckets.setdefault(key, TokenBucket(self._rate, self._burst))
        wait_s = bucket.try_take(self._clock())
        if wait_s > 0:
            raise RateLimited(f"Rate limit reached for this API key; retry in {wait_s:.1f} s.", retry_after_s=wait_s)
