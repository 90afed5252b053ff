"""Time-bounded retries shared by the network stores.

Retries run on a budget of seconds rather than a count of attempts: what a
caller can afford is time, and a count that suits a brief blip gives up long
before a minute of throttling is over, while the same count with long waits
would park a task on an endpoint that is simply down.
"""

from __future__ import annotations

import math
import random
import time

__all__ = [
    "DEFAULT_RETRY_BUDGET",
    "DEFAULT_TIMEOUT",
    "UNREACHABLE_ATTEMPTS",
    "RetryClock",
    "check_budget",
]

DEFAULT_TIMEOUT = 30.0
"""Seconds one request of a network store may take (the connection gets at most 10 of them)."""

DEFAULT_RETRY_BUDGET = 120.0
"""Seconds a call keeps retrying throttling, server errors or lost races before giving up."""

UNREACHABLE_ATTEMPTS = 3
"""Attempts before giving up on an endpoint that refuses connections or never answers.

Kept separate from the budget: such an endpoint is more likely down or
misconfigured than busy, and a connection test should say so within a few
timeouts rather than after minutes.
"""


def check_budget(value: float, who: str) -> float:
    """``value`` as a float, or ``ValueError`` naming ``who`` when not a finite number >= 0."""
    budget = float(value)
    if not math.isfinite(budget) or budget < 0:
        raise ValueError(f"{who}: retry_budget must be a finite number >= 0, got {value}")
    return budget


class RetryClock:
    """The deadline of one call and the waits between its attempts.

    Waits use "full jitter" (uniform between 0 and an exponentially growing
    cap): writers that failed together spread out over the whole interval
    instead of retrying in lockstep, which matters most when many tasks race
    for one S3 object or hit a recovering server at once.
    """

    def __init__(self, budget: float, base: float, cap: float) -> None:
        self.started = time.monotonic()
        self.deadline = self.started + budget
        self._base = base
        self._cap = cap

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def backoff(self, attempt: int) -> float:
        """A random wait before attempt ``attempt + 1``."""
        # min() before the power would overflow for long losing streaks.
        ceiling = self._cap if attempt > 60 else min(self._cap, self._base * 2 ** (attempt - 1))
        return random.uniform(0.0, ceiling)

    def sleep(self, seconds: float, *, clamp: bool = True) -> bool:
        """Wait before the next attempt; False (without waiting) when the budget is spent.

        With ``clamp`` a wait running past the deadline is cut short so one
        last attempt happens at the deadline; without it (a server's
        ``Retry-After``, which an earlier attempt would only violate) such a
        wait gives up at once.
        """
        remaining = self.remaining()
        if remaining <= 0 or (seconds > remaining and not clamp):
            return False
        time.sleep(min(max(seconds, 0.0), remaining))
        return True
