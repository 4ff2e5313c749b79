"""The Store interface and the rules every store applies in the same way.

A store keeps each record id once per project. What happens when an id arrives again is decided
by one pure function, :func:`fold`, so SQLite and PostgreSQL cannot disagree about it:

* a new id is stored (``accepted``);
* an identical resend is a ``duplicate``;
* a later checkpoint, or the final form, replaces a stored checkpoint (``accepted``);
* a stale checkpoint (older than what is stored, or arriving after the final form) is a ``duplicate``;
* a different final payload for an id whose stored form is final is a ``conflict``.

Sessions closed from LiveKit webhooks (the agent crashed and never sent its final
``agent_session`` record) get a final record marked ``by_webhook``. The agent's own final record
supersedes a webhook close, and among webhook closes the earliest end wins (the session stops when
the room ends or the agent leaves, whichever comes first). Both rules make the end state the same
whatever order the deliveries come in, so totals are stable under redelivery and reordering.

Roll-ups hold integer sums of *billable base units* (quantity x unit size: milliseconds, bytes,
tokens, ...), which are exact, so month-to-date figures never go through floats. Every stored figure
is a 64-bit integer: one record is bounded by validation (``records.MAX_RAW``), and a batch that
would take a sum past ``MAX_STORED`` raises :class:`StoreLimit` in every store, which the collector
answers as that batch's records ``rejected``: no other batch, in the same commit or not, is affected.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum
from typing import Any

from ...records import UNIT_SIZE, MeterRecord, Resource, Unit

__all__ = [
    "GROUPS",
    "MAX_STORED",
    "ClosedMonth",
    "Outcome",
    "SessionFilter",
    "SessionRow",
    "Store",
    "StoreLimit",
    "Stored",
    "UsageRow",
    "WebhookMark",
    "billable_of",
    "fold",
]


_ZERO = timedelta(0)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)
_DAY_MS = 86_400_000
_DAYS: dict[int, str] = {}  # days since the epoch -> ISO day, filled by day_of


MAX_STORED = 2**63 - 1  # SQLite INTEGER and PostgreSQL BIGINT


class StoreLimit(Exception):
    """A batch would take a stored figure out of the exact range the store keeps (``MAX_STORED``).
    The batch is not stored; the message says why, for each of its records' ``rejected`` reason."""


class Outcome(str, Enum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    REJECTED = "rejected"


class Stored:
    """A record as a store holds it: the record plus whether a webhook wrote it.

    The derived figures are computed once, here, and shared by the row, roll-up and session
    writes (ingest is a hot path: a microsecond per record matters at 50,000 records/s).
    """

    __slots__ = ("billable", "by_webhook", "day", "end_ms", "record", "start_ms")

    def __init__(self, record: MeterRecord, by_webhook: bool = False) -> None:
        self.record = record
        self.by_webhook = by_webhook
        self.start_ms = start_ms = (record.start - _EPOCH) // _MS  # record times are UTC, to the ms
        self.end_ms = (record.end - _EPOCH) // _MS
        self.day = _DAYS.get(start_ms // _DAY_MS) or day_of(record.start)
        self.billable = int(record.quantity * UNIT_SIZE[record.unit])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Stored):
            return NotImplemented
        return self.by_webhook == other.by_webhook and self.record == other.record

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Stored({self.record!r}, by_webhook={self.by_webhook})"


def _incoming_wins(stored: Stored, incoming: Stored) -> bool | None:
    """True: replace; False: keep stored (stale resend); None: a conflict."""
    old, new = stored.record, incoming.record
    if new == old and stored.by_webhook == incoming.by_webhook:
        return False
    if not old.is_final and not new.is_final:
        return new.supersedes(old)  # between checkpoints the later wins, whichever side sent it
    if incoming.by_webhook:
        if not new.is_final:
            return False  # a webhook checkpoint (a join) never reopens a final form
        if not old.is_final:
            return True
        # An agent's own final record is never replaced by a webhook. Among webhook closes, one LiveKit
        # reported beats one the collector guessed (``flag``: no leave arrived); else the earliest end wins.
        if not stored.by_webhook:
            return False
        if bool(old.meta.get("flag")) != bool(new.meta.get("flag")):
            return not new.meta.get("flag")
        return new.end < old.end
    if stored.by_webhook:
        return new.is_final  # the agent's own final figure beats a webhook estimate; its checkpoints do not
    if new.supersedes(old):
        return True
    if not new.is_final or not old.is_final:
        return False  # a stale checkpoint
    return None


_LABELS = ("session_id", "customer", "agent_name", "worker_id", "provider")


def _keep_labels(stored: Stored, incoming: Stored) -> Stored:
    """A webhook form of a usage the agent reported keeps the agent's session and labels (only the agent
    knows its job, its customer and its hosting: ``provider="self-hosted"`` on its own LiveKit server,
    which the webhooks cannot tell); the figures are the webhook's."""
    old, new = stored.record, incoming.record
    update = {k: getattr(old, k) for k in _LABELS if getattr(old, k) and getattr(old, k) != getattr(new, k)}
    return Stored(new.model_copy(update=update), by_webhook=True) if update else incoming


def fold(stored: Stored | None, incoming: Sequence[Stored]) -> tuple[list[Outcome], Stored | None]:
    """Apply ``incoming`` (same id, in arrival order) to ``stored``; return each outcome and the end state."""
    outcomes: list[Outcome] = []
    current = stored
    for item in incoming:
        if current is None:
            current = item
            outcomes.append(Outcome.ACCEPTED)
            continue
        if item.by_webhook:
            item = _keep_labels(current, item)
        wins = _incoming_wins(current, item)
        if wins is None:
            outcomes.append(Outcome.CONFLICT)
        elif wins:
            current = item
            outcomes.append(Outcome.ACCEPTED)
        else:
            outcomes.append(Outcome.DUPLICATE)
    return outcomes, current


def billable_of(record: MeterRecord) -> int:
    """The billable amount in base units (exact: quantities are whole multiples of the increment)."""
    return int(record.quantity * UNIT_SIZE[record.unit])


def quantity_of(billable: int, unit: Unit | str) -> Decimal:
    return Decimal(billable) / UNIT_SIZE[Unit(unit)]


def epoch_ms(when: datetime) -> int:
    return (when - _EPOCH) // _MS


def from_ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def day_of(when: datetime) -> str:
    """The UTC day of ``when``, in ISO form (remembered: every record of a day asks for it)."""
    utc = when if when.utcoffset() == _ZERO else when.astimezone(timezone.utc)
    day = utc.date().isoformat()
    if len(_DAYS) < 100_000:
        _DAYS[epoch_ms(utc) // _DAY_MS] = day
    return day


# group_by name -> (roll-up dimension, column). "room" is answered from the records themselves:
# room names are usually unique per call, so rolling them up would not make anything faster.
GROUPS: dict[str, tuple[str, str]] = {
    "day": ("", "day"),
    "model": ("", "model"),
    "resource": ("", "resource"),
    "agent": ("agent", "key"),
    "customer": ("customer", "key"),
    "room": ("room", "room"),
}


@dataclass(frozen=True)
class UsageRow:
    """Summed billable base units for one group key, resource, unit and model."""

    key: str
    resource: Resource
    unit: Unit
    model: str
    provider: str
    billable: int
    raw: int
    records: int
    language: str = ""
    day: str = ""  # the UTC day (ISO) of the usage: prices are taken as they were that day

    @property
    def quantity(self) -> Decimal:
        return quantity_of(self.billable, self.unit)


@dataclass(frozen=True)
class WebhookMark:
    """A webhook as remembered: its id (a redelivery has the same), its event, and the room and time
    it reports (so a join arriving after its room's ``room_finished`` is closed at once)."""

    id: str
    event: str
    room_sid: str = ""
    reported_ms: int = 0


@dataclass(frozen=True)
class ClosedMonth:
    """A month closed for billing: its invoice, or ``number = None`` when nothing was due.

    ``document`` is the invoice's JSON text exactly as issued and served (immutable), and
    ``statements`` each customer's statement JSON from the same run."""

    month: str
    number: str | None
    plan: str
    issued_ms: int
    total: str | None
    document: str
    statements: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SessionFilter:
    since: datetime | None = None
    until: datetime | None = None
    room: str | None = None
    agent: str | None = None
    customer: str | None = None
    limit: int = 100


@dataclass
class SessionRow:
    session_id: str
    room: str
    room_sid: str
    agent_name: str
    customer: str
    start: datetime
    end: datetime
    closed: bool
    end_cause: str
    agent_billable: int
    agent_unit: str
    records: int
    extra: dict[str, Any] = field(default_factory=dict)
    has_agent: bool = True  # False: no session time record (a room's usage from webhooks, say)

    @property
    def billed_minutes(self) -> Decimal:
        if not self.agent_unit:
            return Decimal(0)
        return Decimal(self.agent_billable) / UNIT_SIZE[Unit.MINUTE]


def is_session_time(record: MeterRecord) -> bool:
    """The record of the agent's own time in its session: ``agent_session`` (deployed to LiveKit Cloud),
    or a self-hosted agent's ``connection`` record marked ``meta.session_time``."""
    return record.resource is Resource.AGENT_SESSION or record.meta.get("session_time") is True


def session_fields(record: MeterRecord) -> dict[str, Any]:
    """What one stored record says about its session (the session time record decides state)."""
    out: dict[str, Any] = {}
    if is_session_time(record):
        out["closed"] = record.is_final
        cause = record.meta.get("closed_by") or record.meta.get("end_cause") or record.meta.get("reason") or ""
        out["end_cause"] = str(cause) if record.is_final else ""
        out["agent_billable"] = billable_of(record)
        out["agent_unit"] = record.unit.value
    return out


class Store(abc.ABC):
    """Durable record storage for the collector. Every method is scoped to one project."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and run schema migrations."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ingest(self, project: str, items: Sequence[Stored]) -> list[Outcome]:
        """Store a batch in one durable transaction; return one outcome per item, in order."""

    @abc.abstractmethod
    async def open_agent_sessions(
        self, project: str, *, session_id: str | None = None, room_sid: str | None = None, room: str | None = None
    ) -> list[Stored]:
        """``agent_session`` records a webhook may still close: checkpoints (open sessions) and earlier
        webhook closes (a webhook reporting an earlier end replaces them), matching every given filter."""

    @abc.abstractmethod
    async def stale_checkpoints(
        self, before: datetime, *, by_webhook: bool, limit: int = 1000
    ) -> list[tuple[str, Stored]]:
        """(project, record) of checkpoints (open usages), in every project, whose end is before ``before``:
        those the agent wrote, or those a webhook opened (a join, an egress start)."""

    @abc.abstractmethod
    async def open_usages(self, project: str, room_sid: str, resources: Sequence[Resource]) -> list[Stored]:
        """Checkpoints of ``resources`` in the room ``room_sid`` (usages still open there)."""

    @abc.abstractmethod
    async def ingest_webhook(self, project: str, mark: WebhookMark, items: Sequence[Stored]) -> list[Outcome] | None:
        """Store what one webhook produced and the webhook itself (if it has an id) in one durable
        transaction; None, with nothing stored, when the id was seen before."""

    @abc.abstractmethod
    async def room_finished_ms(self, project: str, room_sid: str) -> int | None:
        """When LiveKit reported the room ``room_sid`` finished (epoch ms), None if it has not."""

    @abc.abstractmethod
    async def close_month(self, project: str, month: str, build: Callable[[int], ClosedMonth]) -> ClosedMonth | None:
        """Close ``month`` once: in one transaction, unless the month is already closed, call ``build``
        with the project's next invoice sequence number (1, 2, ...) and store what it returns.
        None when the month was closed before (by this or another collector)."""

    @abc.abstractmethod
    async def closed_months(self, project: str, *, limit: int = 1000) -> list[ClosedMonth]:
        """The project's closed months, newest first, with their invoice documents (no statements)."""

    @abc.abstractmethod
    async def issued_invoice(self, project: str, number: str) -> ClosedMonth | None:
        """One issued invoice by number, with its statements."""

    @abc.abstractmethod
    async def sessions(self, project: str, flt: SessionFilter) -> list[SessionRow]: ...

    @abc.abstractmethod
    async def session_records(self, project: str, session_ids: Sequence[str]) -> list[MeterRecord]: ...

    @abc.abstractmethod
    async def usage(
        self, project: str, since: date, until: date, group_by: str, *, key: str | None = None
    ) -> list[UsageRow]:
        """Summed usage for days ``since`` <= day < ``until`` (UTC), grouped; ``key``: only that group's."""

    @abc.abstractmethod
    async def first_usage_day(self, project: str) -> date | None:
        """The UTC day of the project's earliest usage, None when it has none."""

    @abc.abstractmethod
    async def count(self, project: str) -> int:
        """How many records (ids) the project has."""

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def rollup_keys(item: Stored) -> tuple[tuple[str, str, str, str, str, str, str, str], ...]:
    """The roll-up rows one record adds to: (dimension, key, day, resource, unit, model, provider, language).

    The language is part of the price key (multilingual STT costs more), so sums keep it apart.

    One narrow row for day/resource/model totals (month-to-date reads a few rows per day), and one
    per extra dimension (agent, customer), so a high-cardinality dimension never slows the others.
    """
    r = item.record
    day, model, provider, language = item.day, r.model, r.provider, r.language
    # ``_value_``: the plain attribute behind ``.value`` (which is a descriptor, slower on this hot path).
    resource, unit = r.resource._value_, r.unit._value_
    return (
        ("", "", day, resource, unit, model, provider, language),
        ("agent", r.agent_name, day, resource, unit, model, provider, language),
        ("customer", r.customer, day, resource, unit, model, provider, language),
    )


def open_store(url: str) -> Store:
    """A store for a database URL: ``sqlite:///path``, a plain path, or ``postgresql://...`` (nothing
    is opened until ``open()``). Any other scheme is a ValueError, never a file named after it."""
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from .postgres import PostgresStore
        except ModuleNotFoundError as exc:
            if exc.name != "asyncpg":
                raise
            raise ModuleNotFoundError(
                "a PostgreSQL store needs asyncpg: pip install 'livekit-metering[postgres]'", name="asyncpg"
            ) from None
        return PostgresStore(url)
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme and scheme != "sqlite":
        raise ValueError(
            f"unsupported database {scheme[:20]}://...: use sqlite:///path.db (the default) or postgresql://user@host/db"
        )
    from .sqlite import SqliteStore

    return SqliteStore(sqlite_path(url) or "metering.db")


def sqlite_path(url: str) -> str:
    """The file of a SQLite URL, like SQLAlchemy: ``sqlite:///relative.db``, ``sqlite:////abs/path.db``."""
    return url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url.removeprefix("sqlite://")


def redacted(url: str) -> str:
    """A database URL without its password, for logs and messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url
