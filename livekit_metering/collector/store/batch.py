"""Turn one ingest batch into the writes a store makes: rows to insert, rows to replace, and the
roll-up and session deltas that go with them. Pure Python, shared by every store, so each store only
has to run the statements inside one transaction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .base import Outcome, Stored, billable_of, epoch_ms, fold, rollup_key, session_fields

__all__ = ["BatchPlan", "plan_batch"]

RollupKey = tuple[str, str, str, str, str, str, str]


@dataclass
class SessionDelta:
    session_id: str
    room: str = ""
    room_sid: str = ""
    agent_name: str = ""
    customer: str = ""
    start_ms: int = 2**62
    end_ms: int = 0
    records: int = 0
    has_agent: bool = False
    closed: bool = False
    end_cause: str = ""
    agent_billable: int = 0
    agent_unit: str = ""

    def add(self, item: Stored, *, new_id: bool) -> None:
        r = item.record
        self.room = self.room or r.room
        self.room_sid = self.room_sid or r.room_sid
        self.agent_name = self.agent_name or r.agent_name
        self.customer = self.customer or r.customer
        self.start_ms = min(self.start_ms, epoch_ms(r.start))
        self.end_ms = max(self.end_ms, epoch_ms(r.end))
        self.records += 1 if new_id else 0
        fields = session_fields(r)
        if fields:
            self.has_agent = True
            self.closed = fields["closed"]
            self.end_cause = "webhook" if item.by_webhook and not fields["end_cause"] else fields["end_cause"]
            self.agent_billable = fields["agent_billable"]
            self.agent_unit = fields["agent_unit"]

    def row(self, project: str) -> tuple[Any, ...]:
        return (
            project,
            self.session_id,
            self.room,
            self.room_sid,
            self.agent_name,
            self.customer,
            self.start_ms,
            self.end_ms,
            self.records,
            self.has_agent,
            self.closed,
            self.end_cause,
            self.agent_billable,
            self.agent_unit,
        )


@dataclass
class BatchPlan:
    outcomes: list[Outcome]
    inserts: list[Stored] = field(default_factory=list)
    updates: list[Stored] = field(default_factory=list)
    rollups: dict[RollupKey, list[int]] = field(default_factory=dict)  # key -> [billable, raw, records]
    sessions: dict[str, SessionDelta] = field(default_factory=dict)

    def _roll(self, item: Stored, sign: int) -> None:
        r = item.record
        key = rollup_key(r)
        acc = self.rollups.get(key)
        if acc is None:
            acc = self.rollups[key] = [0, 0, 0]
        acc[0] += sign * billable_of(r)
        acc[1] += sign * r.raw
        acc[2] += sign

    def rollup_rows(self, project: str) -> list[tuple[Any, ...]]:
        # Sorted, so concurrent transactions on PostgreSQL take row locks in the same order.
        return [(project, *key, *acc) for key, acc in sorted(self.rollups.items()) if any(acc)]

    def session_rows(self, project: str) -> list[tuple[Any, ...]]:
        return [self.sessions[sid].row(project) for sid in sorted(self.sessions)]


def plan_batch(items: Sequence[Stored], existing: Mapping[str, Stored]) -> BatchPlan:
    """Decide every item's outcome against what is stored (``existing``, by id) and within the batch."""
    by_id: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        by_id.setdefault(item.record.id, []).append(i)
    plan = BatchPlan(outcomes=[Outcome.ACCEPTED] * len(items))
    for rid, positions in by_id.items():
        before = existing.get(rid)
        outcomes, after = fold(before, [items[i] for i in positions])
        for i, outcome in zip(positions, outcomes, strict=True):
            plan.outcomes[i] = outcome
        if after is None or after is before:
            continue
        if before is None:
            plan.inserts.append(after)
        else:
            plan.updates.append(after)
            plan._roll(before, -1)
        plan._roll(after, +1)
        sid = after.record.session_id
        delta = plan.sessions.get(sid)
        if delta is None:
            delta = plan.sessions[sid] = SessionDelta(session_id=sid)
        delta.add(after, new_id=before is None)
    return plan
