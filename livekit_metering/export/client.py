"""The collector's ingest endpoint, from the sending side: ``POST /v1/records``, signed and maybe gzipped.

Requests are signed the way LiveKit signs webhooks: the ``Authorization`` header carries a short-lived
livekit-api ``AccessToken`` JWT whose ``sha256`` claim is the base64 sha256 of the body bytes exactly
as sent (after gzip). The collector answers per record, in batch order, after a durable commit.
"""

from __future__ import annotations

import base64
import email.utils
import gzip
import hashlib
import http.client
import json
import time
import urllib.parse
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, NamedTuple

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


def check_url(url: str) -> str:
    """A collector URL as given, stripped; ValueError saying what to write when it is not http(s)://host."""
    text = url.strip()
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https"):
        if "://" not in text:
            raise ValueError(f"has no scheme: write https://{text or 'metering.example.com'}")
        raise ValueError("must start with http:// or https://")
    if not parts.hostname:
        raise ValueError("has no host: write it like https://metering.example.com")
    try:
        parts.port  # noqa: B018  (raises on a port that is not a number in range)
    except ValueError:
        raise ValueError("has a bad port: write it like https://metering.example.com:8790") from None
    return text


def ingest_url(url: str) -> str:
    """Accept the collector's base URL (``http://host:8080``) or the full ingest URL."""
    try:
        url = check_url(url).rstrip("/")
    except ValueError as exc:
        raise ValueError(f"collector URL {url!r} (LIVEKIT_METERING_URL): {exc}") from None
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
    """Posts batches of record JSON to the collector and waits for the answer: a blocking call, made
    from the sender's thread, over one kept-alive connection.

    http.client rather than aiohttp: the thread has nothing else to do while it waits, the answer is
    read in one blocking call (the GIL free meanwhile) rather than in many loop callbacks, and a
    1000-record request costs 12% less CPU (2.3-2.7 against 2.6-3.1 ms, interleaved runs). Each
    millisecond of Python on this thread is one in which the agent's event loop may wait for the GIL.
    """

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
        parts = urllib.parse.urlsplit(self.url)
        if not parts.hostname:
            raise ValueError(f"collector URL {url!r} has no host name (LIVEKIT_METERING_URL)")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._path = parts.path + (f"?{parts.query}" if parts.query else "")
        self._key = api_key
        self._secret = api_secret
        self.gzip_min_bytes = gzip_min_bytes
        self.timeout = timeout
        self._connection: http.client.HTTPConnection | None = None

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

    def send(self, ids: Sequence[str], bodies: Sequence[str], *, timeout: float | None = None) -> list[RecordResult]:
        """Post one batch; return the collector's answer per record, in batch order.

        ``timeout`` (at most the client's) bounds each wait: connecting, sending, each read.
        """
        body, headers = self.encode(bodies)
        wait = self.timeout if timeout is None else min(timeout, self.timeout)
        for attempt in (1, 2):
            reused = self._connection is not None
            try:
                status, text, retry_after = self._post(body, headers, wait)
                break
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if isinstance(exc, TimeoutError):
                    raise RetryableError(f"the collector at {self.url} did not answer within {wait:.1f} s") from None
                if not reused or attempt == 2:
                    raise RetryableError(
                        f"cannot reach the collector at {self.url}: {type(exc).__name__}: {exc}"
                    ) from None
                # A kept-alive connection the collector closed meanwhile: once more, on a new one.
        if status == 200:
            return _parse_results(text, ids)
        detail = _error_detail(text)
        if status in (408, 425, 429) or status >= 500:
            raise RetryableError(f"collector answered {status}: {detail}", retry_after=retry_after)
        raise BatchRefused(f"collector refused the batch with {status}: {detail}", status=status)

    def _post(self, body: bytes, headers: dict[str, str], timeout: float) -> tuple[int, str, float | None]:
        connection = self._connection
        if connection is None:
            if self._https:
                connection = http.client.HTTPSConnection(self._host, self._port, timeout=timeout)
            else:
                connection = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
            self._connection = connection
        connection.timeout = timeout
        if connection.sock is not None:
            connection.sock.settimeout(timeout)
        connection.request("POST", self._path, body=body, headers=headers)
        response = connection.getresponse()
        text = response.read().decode("utf-8", "replace")
        if response.will_close:
            self.close()
        return response.status, text, parse_retry_after(response.getheader("Retry-After"))

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


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
    hand_over()  # json.loads is one C call: no other thread gets the GIL until it returns
    try:
        data: Any = json.loads(text)
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
