"""The cascade modes of the `auto` route, by the name `cascade.mode` gives (serve_app.config.CascadeMode).

- `confidence`: the cheap tier answers in full; its answer is kept or escalated by a scorer of its own
  log-probabilities (confidence.py).
- `verified`: the same, judged by the strong tier's verdict on the cheap answer, one prefill (verified.py).
- `speculative`: the cheap tier drafts blocks that the strong tier verifies as the answer streams
  (speculative.py).
"""

from serve_app.routing.cascades import confidence, speculative, verified
from serve_app.routing.cascades.base import CascadeCall, CascadeMode

MODES: dict[str, CascadeMode] = {
    "confidence": confidence.open_answer,
    "verified": verified.open_answer,
    "speculative": speculative.open_answer,
}

__all__ = ["MODES", "CascadeCall", "CascadeMode"]
