"""The records table's columns, shared by the SQLite and PostgreSQL stores.

Records are stored as columns, not as a JSON blob: building a row is a few attribute reads, and a
record is rebuilt (and validated again) only when it is read back.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ...records import MeterRecord
from .base import Stored, from_ms

__all__ = ["COLUMNS", "READ_COLUMNS", "record_row", "stored_from_row"]

# (name, PostgreSQL type). SQLite uses the same names with its own affinities.
COLUMNS: list[tuple[str, str]] = [
    ("project", "text"),
    ("id", "text"),
    ("session_id", "text"),
    ("resource", "text"),
    ("unit", "text"),
    ("model", "text"),
    ("provider", "text"),
    ("agent_name", "text"),
    ("customer", "text"),
    ("room", "text"),
    ("room_sid", "text"),
    ("worker_id", "text"),
    ("language", "text"),
    ("policy", "text"),
    ("quantity", "text"),
    ("status", "text"),
    ("start_ms", "bigint"),
    ("end_ms", "bigint"),
    ("day", "text"),
    ("billable", "bigint"),
    ("raw", "bigint"),
    ("by_webhook", "integer"),
    ("attributes", "text"),
    ("meta", "text"),
]
NAMES = [name for name, _ in COLUMNS]
READ_COLUMNS = ", ".join(NAMES[1:])  # everything but project, in stored_from_row's order


def _json(value: dict[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":")) if value else "{}"


def record_row(project: str, item: Stored) -> tuple[Any, ...]:
    r = item.record  # enums by ``_value_``, the plain attribute behind the slower ``.value`` descriptor
    return (
        project,
        r.id,
        r.session_id,
        r.resource._value_,
        r.unit._value_,
        r.model,
        r.provider,
        r.agent_name,
        r.customer,
        r.room,
        r.room_sid,
        r.worker_id,
        r.language,
        r.policy,
        format(r.quantity, "f"),
        r.status._value_,
        item.start_ms,
        item.end_ms,
        item.day,
        item.billable,
        r.raw,
        1 if item.by_webhook else 0,
        _json(r.attributes),
        _json(r.meta),
    )


def stored_from_row(row: Sequence[Any]) -> Stored:
    """A Stored from a row selected as READ_COLUMNS."""
    (rid, sid, resource, unit, model, provider, agent, customer, room, room_sid, worker, language, policy,
     quantity, status, start_ms, end_ms, _day, _billable, raw, by_webhook, attributes, meta) = row  # fmt: skip
    record = MeterRecord.model_validate(
        {
            "id": rid,
            "session_id": sid,
            "resource": resource,
            "unit": unit,
            "model": model,
            "provider": provider,
            "agent_name": agent,
            "customer": customer,
            "room": room,
            "room_sid": room_sid,
            "worker_id": worker,
            "language": language,
            "policy": policy,
            "quantity": quantity,
            "status": status,
            "start": from_ms(int(start_ms)),
            "end": from_ms(int(end_ms)),
            "raw": int(raw),
            "attributes": json.loads(attributes) if attributes != "{}" else {},
            "meta": json.loads(meta) if meta != "{}" else {},
        }
    )
    return Stored(record, bool(by_webhook))
