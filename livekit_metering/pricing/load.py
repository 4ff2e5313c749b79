"""Reading price TOML: every value is checked before anything is used.

A price file has up to five kinds of tables (see ``data/*.toml`` for the bundled ones):

- ``[[plan]]``: ``id``, ``name``, ``fee``, ``inference_credits``, ``hard_caps``;
- ``[[resource]]``: a platform resource on one plan: ``plan``, ``resource``, ``included``,
  ``price``, ``per``, ``pool``;
- ``[[stt]]``, ``[[tts]]``: ``model``, ``aliases``, ``language``, ``price``, ``scale_price``,
  ``provider`` (``livekit`` for LiveKit Inference, the default), ``plan``;
- ``[[llm]]``: as above with ``input``, ``cached``, ``output`` instead of ``price``;
- ``[[realtime]]``: ``model``, ``provider``, ``plan`` and a price per modality, each optional
  (USD per 1M tokens): ``input_text``, ``input_audio``, ``input_image``, ``cached_text``,
  ``cached_audio``, ``cached_image``, ``output_text``, ``output_audio``, ``transcription_input``,
  ``transcription_output``; and ``session`` (USD per ``session_per``, a minute by default) for
  models billed by connection time.

Every row needs ``effective`` (a TOML date) and ``source`` (where the price came from). Money is a
decimal string (``"0.0048"``) or an integer, never a TOML float; ``"unpriced"`` says that no price
is known.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from ..records import RESOURCE_BASE_UNIT, Resource
from .errors import InvalidPriceBook
from .rows import INFERENCE_RESOURCES, PHONE_RESOURCES, PRICE_UNITS, Kind, Plan, PriceRow

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["parse_price_toml"]

_COMMON = {"effective", "source", "note"}
_REALTIME_PARTS = {
    "input_text": Resource.REALTIME_INPUT_TEXT,
    "input_audio": Resource.REALTIME_INPUT_AUDIO,
    "input_image": Resource.REALTIME_INPUT_IMAGE,
    "cached_text": Resource.REALTIME_INPUT_CACHED_TEXT,
    "cached_audio": Resource.REALTIME_INPUT_CACHED_AUDIO,
    "cached_image": Resource.REALTIME_INPUT_CACHED_IMAGE,
    "output_text": Resource.REALTIME_OUTPUT_TEXT,
    "output_audio": Resource.REALTIME_OUTPUT_AUDIO,
    "transcription_input": Resource.TRANSCRIPTION_INPUT,
    "transcription_output": Resource.TRANSCRIPTION_OUTPUT,
    "session": Resource.REALTIME_SESSION,
}
_FIELDS: dict[str, set[str]] = {
    "plan": _COMMON | {"id", "name", "fee", "inference_credits", "hard_caps"},
    "resource": _COMMON | {"plan", "resource", "included", "price", "per", "pool"},
    "stt": _COMMON | {"model", "aliases", "language", "price", "scale_price", "provider", "plan", "per"},
    "tts": _COMMON | {"model", "aliases", "price", "scale_price", "provider", "plan", "per"},
    "llm": _COMMON | {"model", "aliases", "input", "cached", "output", "provider", "plan", "per"},
    "realtime": _COMMON | {"model", "aliases", "provider", "plan", "per", "session_per"} | set(_REALTIME_PARTS),
}
_DEFAULT_PER = {"stt": "minute", "tts": "1M characters", "llm": "1M tokens", "realtime": "1M tokens"}
_LLM_PARTS = {"input": Resource.LLM_INPUT, "cached": Resource.LLM_INPUT_CACHED, "output": Resource.LLM_OUTPUT}
UNPRICED = "unpriced"


class _Row:
    """One TOML table being read; knows how to name itself in an error."""

    def __init__(self, origin: str, table: str, number: int, data: Any) -> None:
        self.origin, self.table, self.number = origin, table, number
        if not isinstance(data, dict):
            raise InvalidPriceBook(f"{self.where}: must be a table ([[{table}]] with key = value lines)")
        self.data: dict[str, Any] = data

    @property
    def where(self) -> str:
        ident = ""
        if hasattr(self, "data"):
            named = [f"{k} {self.data[k]!r}" for k in ("id", "plan", "resource", "model") if k in self.data]
            ident = f" ({', '.join(named)})" if named else ""
        return f"{self.origin}: [[{self.table}]] #{self.number}{ident}"

    def fail(self, name: str, problem: str) -> InvalidPriceBook:
        return InvalidPriceBook(f"{self.where}: field {name!r}: {problem}")

    def check_fields(self) -> None:
        unknown = sorted(set(self.data) - _FIELDS[self.table])
        if unknown:
            raise self.fail(unknown[0], f"unknown field; allowed: {sorted(_FIELDS[self.table])}")

    def text(self, name: str, *, required: bool = True, default: str = "") -> str:
        value = self.data.get(name)
        if value is None:
            if required:
                raise self.fail(name, "missing; every row needs it")
            return default
        if not isinstance(value, str) or (required and not value.strip()):
            raise self.fail(name, f"must be a non-empty string, got {value!r}")
        return value.strip()

    def effective(self) -> date:
        value = self.data.get("effective")
        if value is None:
            raise self.fail(
                "effective", "missing; every price needs the date it took effect, e.g. effective = 2026-11-01"
            )
        if isinstance(value, datetime) or not isinstance(value, date):
            raise self.fail("effective", f"must be a TOML date such as 2026-11-01 (no quotes, no time), got {value!r}")
        return value

    def money(self, name: str, *, required: bool = True, unpriced: bool = True) -> Decimal | None:
        """A non-negative amount; None when ``"unpriced"`` (or absent and not required)."""
        value = self.data.get(name)
        if value is None:
            if required:
                raise self.fail(name, 'missing; write a decimal string such as "0.01" (or "unpriced")')
            return None
        if isinstance(value, float):
            raise self.fail(name, f'is a TOML float ({value!r}); write money as a decimal string, e.g. "{value}"')
        if isinstance(value, bool):
            raise self.fail(name, f"must be a decimal string, got {value!r}")
        if isinstance(value, int):
            amount = Decimal(value)
        elif isinstance(value, str):
            if value.strip().lower() == UNPRICED:
                if not unpriced:
                    raise self.fail(name, "cannot be unpriced")
                return None
            try:
                amount = Decimal(value.strip())
            except InvalidOperation:
                raise self.fail(name, f'{value!r} is not a decimal number such as "0.01" or "unpriced"') from None
        else:
            raise self.fail(name, f"must be a decimal string, got {value!r}")
        if not amount.is_finite():
            raise self.fail(name, f"must be a finite amount, got {value!r}")
        if amount < 0:
            raise self.fail(name, f"must not be negative, got {value!r}")
        return amount

    def per(self, resource: Resource, default: str) -> str:
        per = self.text("per", required=False, default=default)
        if per not in PRICE_UNITS:
            raise self.fail("per", f"unknown unit {per!r}; use one of {sorted(PRICE_UNITS)}")
        if PRICE_UNITS[per][0] is not RESOURCE_BASE_UNIT[resource]:
            fitting = sorted(u for u, (base, _) in PRICE_UNITS.items() if base is RESOURCE_BASE_UNIT[resource])
            raise self.fail("per", f"{per!r} does not fit {resource.value}; use one of {fitting}")
        return per

    def aliases(self) -> tuple[str, ...]:
        value = self.data.get("aliases", [])
        if not isinstance(value, list) or not all(isinstance(a, str) and a for a in value):
            raise self.fail(
                "aliases", f'must be a list of model ids such as ["deepgram/nova-3-general"], got {value!r}'
            )
        return tuple(a.lower() for a in value)


def _tables(doc: Mapping[str, Any], origin: str, name: str) -> Iterable[_Row]:
    entries = doc.get(name, [])
    if not isinstance(entries, list):
        raise InvalidPriceBook(f"{origin}: {name!r} must be an array of tables: write [[{name}]]")
    for number, data in enumerate(entries, 1):
        row = _Row(origin, name, number, data)
        row.check_fields()
        yield row


def _plan(row: _Row) -> Plan:
    pid = row.text("id").lower()
    hard = row.data.get("hard_caps", False)
    if not isinstance(hard, bool):
        raise row.fail("hard_caps", f"must be true or false, got {hard!r}")
    fee = row.money("fee", unpriced=False)
    credits = row.money("inference_credits", required=False, unpriced=False)
    assert fee is not None
    return Plan(
        id=pid,
        name=row.text("name", required=False, default=pid.title()),
        fee=fee,
        inference_credits=credits if credits is not None else Decimal(0),
        hard_caps=hard,
        effective=row.effective(),
        source=row.text("source"),
        origin=row.origin,
    )


def _known_plan(row: _Row, plans: Mapping[str, Plan], *, required: bool) -> str | None:
    pid = row.text("plan", required=required)
    if not pid:
        return None
    pid = pid.lower()
    if pid not in plans:
        raise row.fail("plan", f"unknown plan {pid!r}; known plans: {sorted(plans)} (or define it with [[plan]])")
    return pid


def _resource_row(row: _Row, plans: Mapping[str, Plan]) -> PriceRow:
    plan = _known_plan(row, plans, required=True)
    assert plan is not None
    name = row.text("resource")
    try:
        resource = Resource(name)
    except ValueError:
        raise row.fail("resource", f"unknown resource {name!r}; use one of {[r.value for r in Resource]}") from None
    if resource in INFERENCE_RESOURCES:
        raise row.fail("resource", f"{name!r} is priced per model: use a [[stt]], [[llm]] or [[tts]] row")
    hard = plans[plan].hard_caps
    price = row.money("price", required=not hard)
    included = row.money("included", required=False, unpriced=False)
    return PriceRow(
        kind=Kind.PHONE if resource in PHONE_RESOURCES else Kind.PLAN,
        resource=resource,
        price=price,
        per=row.per(resource, "minute"),
        effective=row.effective(),
        source=row.text("source"),
        plan=plan,
        included=included if included is not None else Decimal(0),
        pool=row.text("pool", required=False),
        note=row.text("note", required=False),
        origin=row.origin,
    )


def _model_rows(row: _Row, plans: Mapping[str, Plan]) -> list[PriceRow]:
    model = row.text("model").lower()
    provider = row.text("provider", required=False, default="livekit").lower()
    plan = _known_plan(row, plans, required=False)
    common: dict[str, Any] = {
        "kind": Kind(row.table),
        "effective": row.effective(),
        "source": row.text("source"),
        "provider": provider,
        "model": model,
        "language": row.text("language", required=False).lower() if row.table == "stt" else "",
        "aliases": row.aliases(),
        "note": row.text("note", required=False),
        "origin": row.origin,
    }
    if row.table == "realtime":
        return _realtime_rows(row, plan, common)
    if row.table == "llm":
        per = row.per(Resource.LLM_INPUT, _DEFAULT_PER["llm"])
        if not any(part in row.data for part in _LLM_PARTS):
            raise row.fail("input", "an [[llm]] row needs input, cached and output prices (per 1M tokens)")
        return [
            PriceRow(resource=res, price=row.money(part), per=per, plan=plan, **common)
            for part, res in _LLM_PARTS.items()
        ]
    resource = Resource.STT if row.table == "stt" else Resource.TTS
    per = row.per(resource, _DEFAULT_PER[row.table])
    rows = [PriceRow(resource=resource, price=row.money("price"), per=per, plan=plan, **common)]
    scale = row.money("scale_price", required=False)
    if "scale_price" in row.data:
        if "scale" not in plans:
            raise row.fail("scale_price", "no plan 'scale' is defined")
        if plan is not None:
            raise row.fail("scale_price", "a row for one plan cannot also carry a Scale price")
        rows.append(PriceRow(resource=resource, price=scale, per=per, plan="scale", **common))
    return rows


def _realtime_rows(row: _Row, plan: str | None, common: dict[str, Any]) -> list[PriceRow]:
    """One row per modality the table prices (``"unpriced"`` says no public price is known)."""
    parts = [part for part in _REALTIME_PARTS if part in row.data]
    if not parts:
        raise row.fail("input_text", f"a [[realtime]] row needs at least one price of {sorted(_REALTIME_PARTS)}")
    rows = []
    for part in parts:
        resource = _REALTIME_PARTS[part]
        if resource is Resource.REALTIME_SESSION:
            per = _per_field(row, "session_per", resource, "minute")
        else:
            per = row.per(resource, _DEFAULT_PER["realtime"])
        rows.append(PriceRow(resource=resource, price=row.money(part), per=per, plan=plan, **common))
    return rows


def _per_field(row: _Row, name: str, resource: Resource, default: str) -> str:
    per = row.text(name, required=False, default=default)
    if per not in PRICE_UNITS or PRICE_UNITS[per][0] is not RESOURCE_BASE_UNIT[resource]:
        fitting = sorted(u for u, (base, _) in PRICE_UNITS.items() if base is RESOURCE_BASE_UNIT[resource])
        raise row.fail(name, f"{per!r} does not price {resource.value}; use one of {fitting}")
    return per


def parse_price_toml(
    text: str, origin: str, plans: Mapping[str, Plan] | None = None
) -> tuple[dict[str, Plan], list[PriceRow]]:
    """Parse one price file. ``plans`` are those already known (a user file may use the bundled ones).

    Raises InvalidPriceBook naming ``origin``, the row and the field on the first mistake.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidPriceBook(f"{origin}: not valid TOML: {exc}") from None
    unknown = sorted(set(doc) - set(_FIELDS))
    if unknown:
        raise InvalidPriceBook(
            f"{origin}: unknown table {unknown[0]!r}; "
            "use [[plan]], [[resource]], [[stt]], [[llm]], [[tts]] or [[realtime]]"
        )
    new_plans = {p.id: p for p in map(_plan, _tables(doc, origin, "plan"))}
    known = {**(plans or {}), **new_plans}
    rows = [_resource_row(row, known) for row in _tables(doc, origin, "resource")]
    for table in ("stt", "llm", "tts", "realtime"):
        for row in _tables(doc, origin, table):
            rows.extend(_model_rows(row, known))
    return new_plans, rows
