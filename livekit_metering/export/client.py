"""The collector's ingest endpoint, from the sending side: ``POST /v1/records``, signed and maybe gzipped.

Requests are signed the way LiveKit signs webhooks: the ``Authorization`` header carries a short-lived
livekit-api ``AccessToken`` JWT whose ``sha256`` claim is the base64 sha256 of the body bytes exactly
as sent (after gzip). The collector answers per record, in batch order, after a durable commit.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import gzip
import hashlib
import json
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, NamedTuple

import aiohttp

from .gil import EVERY, hand_over

__all__ = [
    "BatchRefused",
    "CollectorClient",
    "CollectorError",
    "RecordResult",
    "RetryableError",
    "ingest_url",
    "sign_body",
]

RESULT_STATUSES = frozenset({"accepted", "duplicate", "conflict", "rejected"})


class CollectorError(Exception):
    """Sending a batch failed as a whole; nothing in it is known to be stored."""


class RetryableError(CollectorError):
    """The collector was unreachable, overloaded or failing (connection error, timeout, 408, 429, 5xx)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BatchRefused(CollectorError):
    """The collector refused the request itself (400 malformed, 401/403 signature, 413 too large)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class RecordResult(NamedTuple):
    id: str
    status: str  # accepted | duplicate | conflict | rejected
    reason: str = ""


def ingest_url(url: str) -> str:
    """Accept the collector's base URL (``http://host:8080``) or the full ingest URL."""
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"collector URL {url!r} must start with http:// or https:// (LIVEKIT_METERING_URL)")
    return url if url.endswith("/v1/records") else url + "/v1/records"


def sign_body(body: bytes | None, api_key: str, api_secret: str, *, ttl: timedelta = timedelta(minutes=5)) -> str:
    """A JWT for the collector, the scheme LiveKit uses for webhooks: with the sha256 of ``body`` as
    sent (ingest), or without one (``body=None``: queries)."""
    from livekit.api import AccessToken

    token = AccessToken(api_key, api_secret).with_ttl(ttl)
    if body is not None:
        token = token.with_sha256(base64.b64encode(hashlib.sha256(body).digest()).decode())
    jwt: str = token.to_jwt()
    return jwt


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class CollectorClient:
    """Posts batches of record JSON to the collector. Use it from one event loop (the sender's)."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        api_secret: str | None = None,
        gzip_min_bytes: int = 32 * 1024,
        timeout: float = 10.0,
    ) -> None:
        self.url = ingest_url(url)
        self._key = api_key
        self._secret = api_secret
        self.gzip_min_bytes = gzip_min_bytes
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    @property
    def signs(self) -> bool:
        return bool(self._key and self._secret)

    def encode(self, bodies: Sequence[str]) -> tuple[bytes, dict[str, str]]:
        """The request body (records are already JSON) and headers, gzipped above the threshold."""
        body = b'{"records":[' + ",".join(bodies).encode() + b"]}"
        headers = {"Content-Type": "application/json"}
        if len(body) >= self.gzip_min_bytes:
            body = gzip.compress(body, compresslevel=1, mtime=0)  # level 5 takes 2.4x the CPU for 13% less
            headers["Content-Encoding"] = "gzip"
        if self._key and self._secret:
            headers["Authorization"] = sign_body(body, self._key, self._secret)
        return body, headers

    async def send(self, ids: Sequence[str], bodies: Sequence[str]) -> list[RecordResult]:
        """Post one batch; return the collector's answer per record, in batch order."""
        body, headers = self.encode(bodies)
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        try:
            async with self._session.post(self.url, data=body, headers=headers) as response:
                text = await response.text()
                status = response.status
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise RetryableError(f"cannot reach the collector at {self.url}: {type(exc).__name__}: {exc}") from None
        if status == 200:
            return _parse_results(text, ids)
        detail = _error_detail(text)
        if status in (408, 425, 429) or status >= 500:
            raise RetryableError(f"collector answered {status}: {detail}", retry_after=retry_after)
        raise BatchRefused(f"collector refused the batch with {status}: {detail}", status=status)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _error_detail(text: str) -> str:
    try:
        data = json.loads(text)
    except ValueError:
        return text[:200] or "(no body)"
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return str(data["error"])[:500]
    return text[:200]


def _parse_results(text: str, ids: Sequence[str]) -> list[RecordResult]:
    # A 200 we cannot read is treated as retryable: re-sending is safe (the collector deduplicates).
    try:
        data: Any = json.loads(text)  # one C call: no thread gets the GIL until it returns
        raw = data["results"]
    except (ValueError, KeyError, TypeError):
        raise RetryableError(f"collector answered 200 without a readable results list: {text[:200]!r}") from None
    if not isinstance(raw, list) or len(raw) != len(ids):
        raise RetryableError(f"collector answered {len(raw) if isinstance(raw, list) else '?'} results for {len(ids)}")
    results = []
    for n, (expected, item) in enumerate(zip(ids, raw, strict=True)):
        if n % EVERY == 0:
            hand_over()  # runs in the sender's thread: let the agent's thread have the GIL now and then
        if not isinstance(item, dict) or item.get("id") != expected or item.get("status") not in RESULT_STATUSES:
            raise RetryableError(f"collector result {item!r} does not answer record {expected!r}")
        results.append(RecordResult(expected, item["status"], str(item.get("reason") or "")))
    return results
