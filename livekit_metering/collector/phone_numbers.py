"""Phone number rental: the project's LiveKit Phone Numbers, one number-month each per month.

The numbers come from the settings (``[[phone_numbers]]``, with the dates they are rented), and,
when the project has a LiveKit URL, from its SIP dispatch rules (``livekit-api``'s
``list_dispatch_rule``: the numbers a rule answers, rented since the rule was created), read again
every ``refresh_every``. A number in both is taken from the settings.

Each number rented on any day of a month gives one ``phone_number`` (or, for a US toll-free number,
``phone_number_toll_free``) record for that month, id ``number:<E.164>/<month>/<resource>``, written
while the month runs and again when it is closed (the same record: a duplicate). The project's
numbers also decide which SIP calls are ``sip_inbound`` (see ``telephony``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import aiohttp
from livekit import api
from livekit.protocol import models, sip

from ..pricing.invoice import month_bounds
from ..rates import RatePolicy
from ..records import Resource, record_id
from ..telephony import is_toll_free, normalize_number
from .settings import PhoneNumber, Settings
from .store.base import Store, Stored

__all__ = ["PhoneBook", "rental_records"]

log = logging.getLogger("livekit_metering.collector")

_PAGE = 100
_MAX_PAGES = 100


@dataclass
class PhoneBook:
    """Each project's numbers: configured, plus those read from its dispatch rules."""

    settings: Settings
    credentials: Callable[[str], tuple[str, str] | None]  # project -> (API key, secret)
    refresh_every: float = 600.0
    _read: dict[str, tuple[PhoneNumber, ...]] = field(default_factory=dict)
    _read_at: dict[str, float] = field(default_factory=dict)
    _written: set[tuple[str, str, str, tuple[PhoneNumber, ...]]] = field(default_factory=set)

    def numbers(self, project: str) -> tuple[PhoneNumber, ...]:
        configured = self.settings.project(project).numbers
        known = {n.number for n in configured}
        return configured + tuple(n for n in self._read.get(project, ()) if n.number not in known)

    def livekit_numbers(self, project: str) -> frozenset[str]:
        return frozenset(n.number for n in self.numbers(project))

    async def refresh(self, project: str, *, force: bool = False) -> None:
        """Read the project's dispatch rules if it has a LiveKit URL and the last read is old.
        A failure is logged and the numbers read before are kept."""
        url = self.settings.project(project).livekit_url
        creds = self.credentials(project)
        if not url or creds is None:
            return
        if not force and time.monotonic() - self._read_at.get(project, -1e9) < self.refresh_every:
            return
        self._read_at[project] = time.monotonic()
        try:
            self._read[project] = await dispatch_rule_numbers(url, *creds)
        except Exception as exc:  # a LiveKit API outage must not stop billing
            log.warning("cannot read SIP dispatch rules", extra={"project": project, "error": str(exc)})

    async def write_rentals(self, store: Store, project: str, month: str, policy: RatePolicy) -> int:
        """Store the month's rental records (idempotent); returns how many were new. The same numbers
        are written once per month by this process (the sweep asks every minute)."""
        numbers = self.numbers(project)
        done = (project, month, policy.id, numbers)
        if done in self._written:
            return 0
        items = rental_records(numbers, month, policy)
        outcomes = await store.ingest(project, items) if items else []
        self._written.add(done)
        return sum(1 for o in outcomes if o.value == "accepted")


async def dispatch_rule_numbers(url: str, key: str, secret: str) -> tuple[PhoneNumber, ...]:
    """The numbers of every SIP dispatch rule of the project at ``url``, rented since the rule's creation."""
    found: dict[str, PhoneNumber] = {}
    timeout = aiohttp.ClientTimeout(total=10)
    async with api.LiveKitAPI(url, key, secret, timeout=timeout) as lk:
        after = ""
        for _ in range(_MAX_PAGES):
            request = sip.ListSIPDispatchRuleRequest(page=models.Pagination(after_id=after, limit=_PAGE))
            rules = list((await lk.sip.list_dispatch_rule(request)).items)
            for rule in rules:
                created = rule.created_at.ToDatetime(tzinfo=timezone.utc) if rule.HasField("created_at") else None
                since = created.date() if created else datetime.now(timezone.utc).date()
                for raw in rule.numbers:
                    number = normalize_number(raw)
                    if number and (number not in found or since < found[number].since):
                        found[number] = PhoneNumber(number, since, None, f"dispatch rule {rule.sip_dispatch_rule_id}")
            last = rules[-1].sip_dispatch_rule_id if rules else ""
            if len(rules) < _PAGE or not last or last == after:
                break
            after = last
    return tuple(sorted(found.values(), key=lambda n: n.number))


def rental_records(numbers: tuple[PhoneNumber, ...], month: str, policy: RatePolicy) -> list[Stored]:
    """One number-month per number rented on any day of ``month``."""
    start, end = month_bounds(month)
    first, after = start.date(), end.date()
    out: list[Stored] = []
    for n in numbers:
        if not n.active_in(first, after):
            continue
        resource = Resource.PHONE_NUMBER_TOLL_FREE if is_toll_free(n.number) else Resource.PHONE_NUMBER
        day = max(first, n.since)
        when = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
        record = policy.record(
            id=record_id(f"number:{n.number}", month, resource),
            session_id=f"phone-numbers:{month}",
            resource=resource,
            raw=1,
            start=when,
            end=when,
            meta={"source": n.source, "number": n.number},
        )
        out.append(Stored(record, by_webhook=True))
    return out
