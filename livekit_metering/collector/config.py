"""Collector limits and settings, all configurable."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

__all__ = ["Limits"]


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 8 * 1024 * 1024  # compressed, as sent
    max_inflated_bytes: int = 32 * 1024 * 1024  # after gunzip: stops zip bombs
    max_batch: int = 5000
    max_past: timedelta = timedelta(days=35)
    max_future: timedelta = timedelta(minutes=5)
    max_query_limit: int = 1000
