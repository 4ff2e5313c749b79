"""Ingest: turn a request body into checked records, each with its own verdict.

Whole-request problems (not gzip, not JSON, wrong shape, too large, nested too deep) raise
:class:`BadRequest`; a bad record only rejects that record, and the rest of its batch is stored.

Every step costs time and memory bounded by the limits before it runs: the inflated size before
parsing, the number of JSON values before building them, the number of records before validating
them (pydantic's ``max_length``), the digits of a number before converting it (the record schema),
JSON depth in the parser (pydantic-core refuses nesting beyond 200 levels), and the length of every
reason.
"""

from __future__ import annotations

import functools
import zlib
from datetime import datetime, timezone
from typing import Annotated, Any, NamedTuple

from pydantic import BaseModel, Field, ValidationError

from ..rates import UnknownPolicy, get_policy, policies
from ..records import InvalidRecord, MeterRecord
from .config import Limits
from .store.base import Stored

__all__ = ["BadRequest", "Checked", "check_batch", "inflate", "short"]

MAX_REASON = 400  # characters: enough for any message of ours, far below what a hostile input could make


class BadRequest(Exception):
    """The whole request is unusable; ``status`` is the HTTP status (400, 408, 413, 415)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Checked(NamedTuple):
    id: str
    item: Stored | None  # None: rejected
    reason: str = ""


_POLICIES = policies()


def short(text: str, limit: int = MAX_REASON) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@functools.cache
def _models(max_batch: int) -> tuple[type[BaseModel], type[BaseModel]]:
    """The batch as valid records (one pass in pydantic's Rust core), and as any JSON values (to
    tell each bad record apart); both stop at ``max_batch`` + 1 records."""
    bound = Field(max_length=max_batch)

    class Batch(BaseModel):
        records: Annotated[list[MeterRecord], bound]

    class Loose(BaseModel):
        records: Annotated[list[Any], bound]

    return Batch, Loose


def inflate(body: bytes, encoding: str | None, limits: Limits) -> bytes:
    """The body as JSON bytes: gunzipped when ``Content-Encoding: gzip``, never beyond the inflated limit."""
    enc = (encoding or "identity").strip().lower()
    if enc in ("", "identity"):
        return body
    if enc != "gzip":
        raise BadRequest(415, f"unsupported Content-Encoding {short(encoding or '', 40)!r}: send identity or gzip")
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
    # Each JSON value becomes a Python object of 30 to 60 bytes: 3 MB of "{}," would be 60 MB of
    # dicts. Commas and brackets bound the number of values, and counting them costs a memchr.
    values = data.count(b",") + data.count(b"{") + data.count(b"[")
    if values > limits.max_batch * limits.max_values_per_record:
        raise BadRequest(
            413,
            f"the body holds more than {limits.max_batch * limits.max_values_per_record} JSON values "
            f"(at most {limits.max_values_per_record} a record, {limits.max_batch} records); send smaller batches",
        )
    now = now or datetime.now(timezone.utc)
    window = (now - limits.max_past, now + limits.max_future, limits)
    batch, loose = _models(limits.max_batch)
    records: list[Any]
    try:
        records = batch.model_validate_json(data).records  # type: ignore[attr-defined]
        parsed = True
    except ValidationError:
        records = _loose(loose, data, limits)
        parsed = False
    # A NUL character is valid JSON ("\u0000") but PostgreSQL cannot store it in text.
    nul = b"\\u0000" in data
    out: list[Checked] = []
    for entry in records:
        if parsed:
            record = entry
        else:
            rid = entry.get("id") if isinstance(entry, dict) else None
            rid = rid if isinstance(rid, str) and len(rid) <= 256 else ""
            try:
                record = MeterRecord.from_json(entry)
            except InvalidRecord as exc:
                out.append(Checked(rid, None, short(str(exc))))
                continue
        reason = _check(record, *window)
        if not reason and nul and _has_nul(record):
            reason = "a text field contains a NUL character (\\u0000), which the store cannot hold"
        out.append(Checked(record.id, None, short(reason)) if reason else Checked(record.id, Stored(record)))
    return out


def _loose(model: type[BaseModel], data: bytes, limits: Limits) -> list[Any]:
    try:
        return model.model_validate_json(data).records  # type: ignore[attr-defined,no-any-return]
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
    kind, where = err["type"], err["loc"]
    if kind == "too_long":
        raise BadRequest(
            413, f"the batch has more than {limits.max_batch} records; the limit is {limits.max_batch}, split it"
        )
    if kind == "json_invalid":
        raise BadRequest(400, f"the body is not valid JSON ({short(err['msg'], 200)})")
    if where == ("records",) and kind != "missing":
        raise BadRequest(400, '"records" must be a JSON array')
    raise BadRequest(400, 'the body must be a JSON object {"records": [<record>, ...]}')


def _has_nul(record: MeterRecord) -> bool:
    texts: list[Any] = [record.id, record.session_id, record.room, record.room_sid, record.agent_name]
    texts += [record.worker_id, record.customer, record.policy, record.model, record.provider, record.language]
    for mapping in (record.attributes, record.meta):
        texts += mapping.keys()
        texts += mapping.values()
    return any(isinstance(t, str) and "\x00" in t for t in texts)


def _check(record: MeterRecord, earliest: datetime, latest: datetime, limits: Limits) -> str:
    """Why the collector refuses a well-formed record: rounding not as its policy rounds, or times
    outside the accepted window. Empty when it is accepted."""
    try:
        policy = _POLICIES.get(record.policy) or get_policy(record.policy)
    except UnknownPolicy as exc:
        return str(exc)
    try:
        why = policy.check(record)
    except KeyError:
        why = f"policy {policy.id!r} has no rule for {record.resource.value}"
    if why:
        return why
    if record.start < earliest:
        return f"start {record.start.isoformat()} is more than {limits.max_past.days} days in the past"
    if record.end > latest:
        return f"end {record.end.isoformat()} is more than {int(limits.max_future.total_seconds())} s in the future"
    return ""
