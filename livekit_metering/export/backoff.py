"""Exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter")."""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["Backoff"]


class Backoff:
    """Delay before retry n: uniform in [0, min(cap, base * 2**n)], and at least the server's Retry-After.

    Full jitter spreads the retries of many workers coming back after the same outage, so a
    recovering collector is not hit by all of them in the same instant.
    """

    def __init__(
        self,
        base: float = 0.5,
        cap: float = 30.0,
        *,
        max_retry_after: float = 300.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if base <= 0 or cap < base:
            raise ValueError(f"backoff needs 0 < base <= cap, got base={base} cap={cap}")
        self.base = base
        self.cap = cap
        self.max_retry_after = max_retry_after
        self.attempt = 0
        self._rng = rng

    def next(self, retry_after: float | None = None) -> float:
        ceiling: float = min(self.cap, self.base * 2.0 ** min(self.attempt, 62))
        self.attempt += 1
        delay: float = self._rng() * ceiling
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_retry_after))
        return delay

    def reset(self) -> None:
        self.attempt = 0
