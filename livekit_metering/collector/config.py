"""Collector limits and settings, all configurable (``serve`` options name each one)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

__all__ = ["MIN_SECRET_LENGTH", "Limits"]

# LiveKit's generated API secrets are 43 characters or more; a short secret can be guessed offline
# from one signed request.
MIN_SECRET_LENGTH = 32


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 8 * 1024 * 1024  # compressed, as sent
    max_inflated_bytes: int = 32 * 1024 * 1024  # after gunzip: stops zip bombs
    max_batch: int = 5000
    # JSON values (commas and brackets) a batch may hold per record: a record has about 20 fields,
    # attributes and meta entries included, so this only refuses bodies that are not records.
    max_values_per_record: int = 64
    max_past: timedelta = timedelta(days=35)
    max_future: timedelta = timedelta(minutes=5)
    max_query_limit: int = 1000
    # A body must arrive within this time once its headers are in (8 MiB at 2.3 Mbit/s).
    body_timeout: timedelta = timedelta(seconds=30)
    # The longest a token may be valid, from its nbf (or iat): a leaked token is useful that long.
    max_token_lifetime: timedelta = timedelta(minutes=10)
    # How long the dashboard stays signed in after its short-lived link token is exchanged.
    dashboard_session: timedelta = timedelta(hours=8)
