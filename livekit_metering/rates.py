"""Rate policies: how each individual usage is rounded up to its billing increment.

Policies are versioned data (``data/policies.toml``), picked by id; every record names the policy
that rounded it, so a change of rules never rewrites history.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

from .records import RESOURCE_BASE_UNIT, UNIT_BASE, UNIT_SIZE, MeterRecord, Resource, Status, Unit

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "DEFAULT_POLICY_ID",
    "InvalidPolicy",
    "RatePolicy",
    "Rule",
    "UnknownPolicy",
    "get_policy",
    "load_policies",
    "policies",
]


class UnknownPolicy(KeyError):
    """No rate policy has this id."""

    def __str__(self) -> str:
        return str(self.args[0])


class InvalidPolicy(ValueError):
    """A rate policy file is malformed; the message names the policy, the field and the fix."""


@dataclass(frozen=True)
class Rule:
    """Round one resource: bill at least ``minimum``, in whole ``increment``s (both in base units)."""

    unit: Unit
    increment: int
    minimum: int = 0

    def billable(self, raw: int) -> int:
        """The billable amount in base units: never below ``raw``, less than one increment above it."""
        if raw <= 0:
            return 0
        return -(-max(raw, self.minimum) // self.increment) * self.increment  # integers: exact at any size

    def quantity(self, raw: int) -> Decimal:
        """The billable amount in the billing unit, exact."""
        return Decimal(self.billable(raw)) / UNIT_SIZE[self.unit]


@dataclass(frozen=True)
class RatePolicy:
    id: str
    effective: date
    source: str
    rules: Mapping[Resource, Rule]
    # Whether a LiveKit Cloud-deployed agent's own participant also bills WebRTC connection minutes
    # (it bills agent session minutes either way), and where that rule comes from.
    cloud_agent_connection: bool = False
    cloud_agent_connection_source: str = ""

    def rule(self, resource: Resource) -> Rule:
        return self.rules[resource]

    def quantity(self, resource: Resource, raw: int) -> Decimal:
        return self.rules[resource].quantity(raw)

    def record(
        self,
        *,
        id: str,
        session_id: str,
        resource: Resource,
        raw: int,
        start: datetime,
        end: datetime,
        status: Status = Status.OK,
        **fields: Any,
    ) -> MeterRecord:
        """Build a MeterRecord for one usage, rounded by this policy."""
        rule = self.rules[resource]
        return MeterRecord(
            id=id,
            session_id=session_id,
            resource=resource,
            raw=raw,
            unit=rule.unit,
            quantity=rule.quantity(raw),
            policy=self.id,
            start=start,
            end=end,
            status=status,
            **fields,
        )

    def check(self, record: MeterRecord) -> str | None:
        """Why ``record`` is not rounded as this policy rounds it, or None when it is."""
        rule = self.rules[record.resource]
        if record.unit is not rule.unit:
            return (
                f"unit is {record.unit.value!r} but policy {self.id!r} bills "
                f"{record.resource.value} in {rule.unit.value!r}"
            )
        expected = rule.quantity(record.raw)
        if record.quantity != expected:
            return (
                f"quantity {format(record.quantity, 'f')} does not match raw {record.raw} rounded by policy "
                f"{self.id!r} (expected {format(expected, 'f')})"
            )
        return None


DEFAULT_POLICY_ID = "minute-increments"


def _parse_rule(policy_id: str, name: str, spec: Any) -> tuple[Resource, Rule]:
    where = f"policy {policy_id!r}, rule {name!r}"
    try:
        resource = Resource(name)
    except ValueError:
        raise InvalidPolicy(f"{where}: unknown resource; use one of {[r.value for r in Resource]}") from None
    if not isinstance(spec, dict):
        raise InvalidPolicy(f'{where}: must be a table like {{ unit = "minute", increment = 60000 }}')
    try:
        unit = Unit(spec.get("unit"))
    except ValueError:
        raise InvalidPolicy(f"{where}: unit {spec.get('unit')!r} is not one of {[u.value for u in Unit]}") from None
    if UNIT_BASE[unit] is not RESOURCE_BASE_UNIT[resource]:
        raise InvalidPolicy(f"{where}: unit {unit.value!r} does not fit {resource.value}")
    amounts: dict[str, int] = {}
    for field in ("increment", "minimum"):
        value = spec.get(field, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidPolicy(f"{where}: {field} must be a non-negative integer in base units, got {value!r}")
        amounts[field] = value
    increment, minimum = amounts["increment"], amounts["minimum"]
    if increment == 0:
        raise InvalidPolicy(f"{where}: increment must be at least 1")
    # Quantities must be exact decimals: increment / unit size may only have 2s and 5s in its denominator.
    denominator = UNIT_SIZE[unit] // math.gcd(increment, UNIT_SIZE[unit])
    for p in (2, 5):
        while denominator % p == 0:
            denominator //= p
    if denominator != 1:
        raise InvalidPolicy(f"{where}: increment {increment} does not give exact {unit.value} quantities")
    return resource, Rule(unit=unit, increment=increment, minimum=minimum)


def load_policies(text: str) -> dict[str, RatePolicy]:
    """Parse policies from TOML text; raise InvalidPolicy on any mistake, before anything is used."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidPolicy(f"rate policies are not valid TOML: {exc}") from None
    found: dict[str, RatePolicy] = {}
    for i, entry in enumerate(doc.get("policy", [])):
        pid = entry.get("id")
        if not isinstance(pid, str) or not pid:
            raise InvalidPolicy(f"policy #{i + 1}: needs a string id")
        effective = entry.get("effective")
        if not isinstance(effective, date):
            raise InvalidPolicy(f"policy {pid!r}: effective must be a TOML date such as 2026-08-24")
        rules: dict[Resource, Rule] = {}
        cloud_agent = (False, "")
        parent = entry.get("extends")
        if parent is not None:
            if parent not in found:
                raise InvalidPolicy(f"policy {pid!r}: extends {parent!r}, which is not defined above it")
            rules.update(found[parent].rules)
            cloud_agent = (found[parent].cloud_agent_connection, found[parent].cloud_agent_connection_source)
        if "cloud_agent_connection" in entry:
            counts, source = entry["cloud_agent_connection"], entry.get("cloud_agent_connection_source")
            if not isinstance(counts, bool) or not isinstance(source, str) or not source:
                raise InvalidPolicy(
                    f"policy {pid!r}: cloud_agent_connection must be true or false, with a "
                    "cloud_agent_connection_source string saying where the rule comes from"
                )
            cloud_agent = (counts, source)
        rules.update(_parse_rule(pid, name, spec) for name, spec in entry.get("rules", {}).items())
        missing = [r.value for r in Resource if r not in rules]
        if missing:
            raise InvalidPolicy(f"policy {pid!r}: no rule for {missing}")
        found[pid] = RatePolicy(
            id=pid,
            effective=effective,
            source=str(entry.get("source", "")),
            rules=rules,
            cloud_agent_connection=cloud_agent[0],
            cloud_agent_connection_source=cloud_agent[1],
        )
    return found


def _bundled() -> dict[str, RatePolicy]:
    text = resources.files(__package__).joinpath("data/policies.toml").read_text(encoding="utf-8")
    return load_policies(text)


_POLICIES = _bundled()


def policies() -> dict[str, RatePolicy]:
    """All known policies by id (the bundled ones)."""
    return dict(_POLICIES)


def get_policy(policy: str | RatePolicy | None = None, *, file: str | Path | None = None) -> RatePolicy:
    """A policy by id (None for the default), or from a user TOML file."""
    if isinstance(policy, RatePolicy):
        return policy
    pool = _POLICIES if file is None else {**_POLICIES, **load_policies(Path(file).read_text(encoding="utf-8"))}
    pid = policy or DEFAULT_POLICY_ID
    try:
        return pool[pid]
    except KeyError:
        raise UnknownPolicy(f"unknown rate policy {pid!r}; known policies: {sorted(pool)}") from None
