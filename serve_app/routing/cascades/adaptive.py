"""What `auto` runs for one request, from the load on each tier: the load-adaptive cascade.

The speculative cascade serves the strong tier's own answer at its time to first token, but each of
its rounds costs the strong tier a verification pass and the cheap tier a draft. While the strong
tier has headroom those passes ride in a batch with room to spare; as its batch fills, every pass
takes a place a whole answer could use, and speculation stops paying (vLLM turns drafting off by
batch size; TurboSpec, arXiv 2406.14066, picks each request's speculation length down to zero from
measured goodput). So, per request:

    busy = strong tier's requests in flight / its batch
    busy <  speculate_below                  speculative, drafts of `draft_tokens`
    busy <  strong_alone_at                  speculative, drafts shrinking linearly to 1 token
    otherwise                                the strong tier alone
    ... and the strong tier alone whenever a newcomer would queue there for over half the TTFT target
    (its expected wait beyond an unqueued request's TTFT, from its measured step times), or the cheap
    tier's batch is full.

With `confidence_when_full`, a request that finds the strong tier's batch full goes to the confidence
cascade instead (the cheap tier answers; only unsure answers reach the strong tier). At alpha = 0 and
temperature 0 every other choice serves the strong tier's own answer; this one does not, which is why
it is the operator's to allow. Pure: the loads are handed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from serve_app.config import AdaptiveCascade

PlanMode = Literal["speculative", "strong", "confidence", "verified"]


@dataclass(frozen=True, slots=True)
class TierState:
    """A tier's load as the plan sees it (serve_app.routing.admission.TierLoad)."""

    in_flight: int
    batch: int
    expected_wait_s: float
    """A newcomer's expected time to first token."""
    ttft_s: float = 0.0
    """An unqueued request's recent time to first token (0 when unknown): the wait beyond it is queueing."""


@dataclass(frozen=True, slots=True)
class Plan:
    mode: PlanMode
    draft_tokens: int = 0
    """Speculative: the draft length; 0 otherwise."""
    reason: str = ""

    @property
    def label(self) -> str:
        """Its name in metrics and in the response's `routing.plan`: speculative-<draft length>, strong, confidence."""
        return f"speculative-{self.draft_tokens}" if self.mode == "speculative" else self.mode


def plan(settings: AdaptiveCascade, draft_tokens: int, strong: TierState, cheap: TierState,
         ttft_target_s: float | None) -> Plan:
    """The choice for a request arriving now (`settings.enabled` is the caller's to check)."""
    busy = strong.in_flight / max(1, strong.batch)
    load = f"strong tier {strong.in_flight}/{strong.batch} busy"
    queueing_s = strong.expected_wait_s - strong.ttft_s
    if busy >= settings.strong_alone_at or (ttft_target_s is not None and queueing_s > ttft_target_s / 2):
        if settings.confidence_when_full and strong.in_flight >= strong.batch:
            return Plan("confidence", reason=f"{load}: the cheap tier answers, unsure answers escalate")
        return Plan("strong", reason=f"{load}, expected queueing {queueing_s:.1f} s: no drafts")
    if cheap.in_flight >= cheap.batch:
        return Plan("strong", reason=f"cheap tier {cheap.in_flight}/{cheap.batch} busy: no drafts")
    if busy < settings.speculate_below:
        return Plan("speculative", draft_tokens, reason=load)
    # Here speculate_below <= busy < strong_alone_at, so the span is positive.
    share = (settings.strong_alone_at - busy) / (settings.strong_alone_at - settings.speculate_below)
    return Plan("speculative", max(1, round(draft_tokens * share)), reason=f"{load}: shorter drafts")
