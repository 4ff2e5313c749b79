"""Turn one ingest batch into the writes a store makes: rows to insert, rows to replace, and the
roll-up and session deltas that go with them. Pure Python, shared by every store, so each store only
has to run the statements inside one transaction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .base import Outcome, Stored, fold, is_session_time, rollup_keys, session_fields

__all__ = ["BatchPlan", "Deltas", "plan_batch"]

RollupKey = tuple[str, str, str, str, str, str, str, str]


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
        if item.start_ms < self.start_ms:
            self.start_ms = item.start_ms
        if item.end_ms > self.end_ms:
            self.end_ms = item.end_ms
        if new_id:
            self.records += 1
        if is_session_time(r):
            fields = session_fields(r)
            self.has_agent = True
            self.closed = fields["closed"]
            self.end_cause = "webhook" if item.by_webhook and not fields["end_cause"] else fields["end_cause"]
            self.agent_billable = fields["agent_billable"]
            self.agent_unit = fields["agent_unit"]

    def merge(self, later: SessionDelta) -> None:
        """Fold in the delta of a later batch, as if the two had been upserted one after the other."""
        self.room = self.room or later.room
        self.room_sid = self.room_sid or later.room_sid
        self.agent_name = self.agent_name or later.agent_name
        self.customer = self.customer or later.customer
        self.start_ms = min(self.start_ms, later.start_ms)
        self.end_ms = max(self.end_ms, later.end_ms)
        self.records += later.records
        if later.has_agent:
            self.has_agent = True
            self.closed = later.closed
            self.end_cause = later.end_cause
            self.agent_billable = later.agent_billable
            self.agent_unit = later.agent_unit

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
class Deltas:
    """What a batch adds to the roll-ups and the sessions. Deltas of several batches of one project
    merge into one set of upserts: the roll-up rows of consecutive batches mostly share keys."""

    rollups: dict[RollupKey, list[int]] = field(default_factory=dict)  # key -> [billable, raw, records]
    sessions: dict[str, SessionDelta] = field(default_factory=dict)

    def _add(self, key: RollupKey, billable: int, raw: int, records: int) -> None:
        acc = self.rollups.get(key)
        if acc is None:
            self.rollups[key] = [billable, raw, records]
        else:
            acc[0] += billable
            acc[1] += raw
            acc[2] += records

    def roll(self, item: Stored, sign: int) -> None:
        billable, raw = sign * item.billable, sign * item.record.raw
        for key in rollup_keys(item):
            self._add(key, billable, raw, sign)

    def merge(self, later: Deltas) -> None:
        for key, (billable, raw, records) in later.rollups.items():
            self._add(key, billable, raw, records)
        for sid, delta in later.sessions.items():
            mine = self.sessions.get(sid)
            if mine is None:
                self.sessions[sid] = delta
            else:
                mine.merge(delta)

    def rollup_rows(self, project: str) -> list[tuple[Any, ...]]:
        # Sorted, so concurrent transactions on PostgreSQL take row locks in the same order.
        return [(project, *key, *acc) for key, acc in sorted(self.rollups.items()) if any(acc)]

    def session_rows(self, project: str) -> list[tuple[Any, ...]]:
        return [self.sessions[sid].row(project) for sid in sorted(self.sessions)]


@dataclass
class BatchPlan:
    outcomes: list[Outcome]
    inserts: list[Stored] = field(default_factory=list)
    updates: list[Stored] = field(default_factory=list)
    deltas: Deltas = field(default_factory=Deltas)

    def _apply(self, before: Stored | None, after: Stored) -> None:
        deltas = self.deltas
        if before is None:
            self.inserts.append(after)
        else:
            self.updates.append(after)
            deltas.roll(before, -1)
        deltas.roll(after, +1)
        sid = after.record.session_id
        # The agent's figure for a usage a webhook reported first (same id) moves it to the agent's session.
        delta = deltas.sessions.get(sid)
        if delta is None:
            delta = deltas.sessions[sid] = SessionDelta(session_id=sid)
        if before is None:
            delta.add(after, new_id=True)
            return
        moved = before.record.session_id != sid
        delta.add(after, new_id=moved)
        if moved:
            self._session(before.record.session_id).records -= 1

    def _session(self, sid: str) -> SessionDelta:
        delta = self.deltas.sessions.get(sid)
        if delta is None:
            delta = self.deltas.sessions[sid] = SessionDelta(session_id=sid)
        return delta


def plan_batch(items: Sequence[Stored], existing: Mapping[str, Stored]) -> BatchPlan:
    """Decide every item's outcome against what is stored (``existing``, by id) and within the batch."""
    by_id: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        positions = by_id.get(item.record.id)
        if positions is None:
            by_id[item.record.id] = [i]
        else:
            positions.append(i)
    plan = BatchPlan(outcomes=[Outcome.ACCEPTED] * len(items))
    for rid, positions in by_id.items():
        before = existing.get(rid)
        if before is None and len(positions) == 1:  # the common case: a new id, once
            plan._apply(None, items[positions[0]])
            continue
        outcomes, after = fold(before, [items[i] for i in positions])
        for i, outcome in zip(positions, outcomes, strict=True):
            plan.outcomes[i] = outcome
        if after is not None and after is not before:
            plan._apply(before, after)
    return plan
