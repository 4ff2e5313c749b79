"""Ingest: turn a request body into checked records, each with its own verdict.

Whole-request problems (not gzip, not JSON, wrong shape, too large) raise :class:`BadRequest`;
a bad record only rejects that record, and the rest of its batch is stored.
"""

from __future__ import annotations

import json
import zlib
from datetime import datetime, timezone
from typing import Any, NamedTuple

from pydantic import BaseModel, ValidationError

from ..rates import check_record
from ..records import InvalidRecord, MeterRecord
from .config import Limits
from .store.base import Stored, epoch_ms

__all__ = ["BadRequest", "Checked", "check_batch", "inflate"]


class BadRequest(Exception):
    """The whole request is unusable; ``status`` is the HTTP status (400, 413, 415)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Checked(NamedTuple):
    id: str
    item: Stored | None  # None: rejected
    reason: str = ""


class _Batch(BaseModel):
    records: list[MeterRecord]


def inflate(body: bytes, encoding: str | None, limits: Limits) -> bytes:
    """The body as JSON bytes: gunzipped when ``Content-Encoding: gzip``, never beyond the inflated limit."""
    enc = (encoding or "identity").strip().lower()
    if enc in ("", "identity"):
        return body
    if enc != "gzip":
        raise BadRequest(415, f"unsupported Content-Encoding {encoding!r}: send identity or gzip")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limits.max_inflated_bytes + 1)
    except zlib.error as exc:
        raise BadRequest(400, f"the body is not valid gzip ({exc})") from None
    if len(out) > limits.max_inflated_bytes:
        raise BadRequest(413, f"the body inflates to more than {limits.max_inflated_bytes} bytes; send smaller batches")
    if not inflater.eof:
        raise BadRequest(400, "the gzip body is truncated")
    return out


def check_batch(data: bytes, limits: Limits, now: datetime | None = None) -> list[Checked]:
    """Validate every record of a ``{"records": [...]}`` body; raise BadRequest for the whole request."""
    now = now or datetime.now(timezone.utc)
    window = (epoch_ms(now - limits.max_past), epoch_ms(now + limits.max_future), limits)
    try:
        # Fast path: one pass in pydantic's Rust core when the whole batch is well formed.
        records: list[Any] = _Batch.model_validate_json(data).records
        parsed = True
    except ValidationError:
        records = _loose(data)
        parsed = False
    if len(records) > limits.max_batch:
        raise BadRequest(413, f"the batch has {len(records)} records; the limit is {limits.max_batch}, split it")
    out: list[Checked] = []
    for entry in records:
        if parsed:
            record = entry
        else:
            rid = entry.get("id") if isinstance(entry, dict) else None
            rid = rid if isinstance(rid, str) else ""
            try:
                record = MeterRecord.from_json(entry)
            except InvalidRecord as exc:
                out.append(Checked(rid, None, str(exc)))
                continue
        item = Stored(record)
        reason = _check(item, *window)
        out.append(Checked(record.id, None, reason) if reason else Checked(record.id, item))
    return out


def _loose(data: bytes) -> list[Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(400, f"the body is not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or "records" not in doc:
        raise BadRequest(400, 'the body must be a JSON object {"records": [<record>, ...]}')
    records = doc["records"]
    if not isinstance(records, list):
        raise BadRequest(400, f'"records" must be a JSON array, not {type(records).__name__}')
    return records


def _check(item: Stored, earliest_ms: int, latest_ms: int, limits: Limits) -> str:
    record = item.record
    why = check_record(record)  # the same check a records file gets in `report` and `invoice`
    if why:
        return why
    if item.start_ms < earliest_ms:
        return f"start {record.start.isoformat()} is more than {limits.max_past.days} days in the past"
    if item.end_ms > latest_ms:
        return f"end {record.end.isoformat()} is more than {int(limits.max_future.total_seconds())} s in the future"
    return ""
