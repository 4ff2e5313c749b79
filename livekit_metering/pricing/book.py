"""PriceBook: plans and prices with their dates and sources, and the lookup of a record's price."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import date
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from ..records import UNIT_SIZE, MeterRecord, Resource
from .errors import InvalidPriceBook, UnknownPlan
from .load import parse_price_toml
from .rows import INFERENCE_RESOURCES, Plan, PriceRow

if TYPE_CHECKING:
    from .cost import CostReport
    from .invoice import Invoice

__all__ = [
    "BUNDLED_FILES",
    "NOT_BILLED_LABEL",
    "ModelKey",
    "PriceBook",
    "base_quantity",
    "billed_by_livekit",
    "model_key",
]

BUNDLED_FILES = ("plans.toml", "inference.toml", "direct.toml")

ModelKey = tuple[str, str, str]  # provider, model id, language


def model_key(record: MeterRecord) -> ModelKey:
    """How a record names its model in the price book: (provider, ``provider/model`` id, language).

    LiveKit Inference records carry ``provider="livekit"`` and ``model="deepgram/nova-3"``; an STT
    ``:lang`` suffix (``deepgram/nova-3:multi``) is the language, a TTS ``:voice`` suffix is
    ignored. Direct plugins carry e.g. ``provider="deepgram"``, ``model="nova-3"``, keyed as
    ``deepgram/nova-3`` under provider ``deepgram``.
    """
    provider = record.provider.strip().lower() or "livekit"
    model = record.model.strip().lower()
    language = record.language.strip().lower()
    if ":" in model:
        model, suffix = model.split(":", 1)
        if record.resource is Resource.STT and not language:
            language = suffix
    if provider != "livekit" and model and "/" not in model:
        model = f"{provider}/{model}"
    return provider, model, language


NOT_BILLED_LABEL = "not billed by LiveKit"


def billed_by_livekit(record: MeterRecord) -> bool:
    """Whether the usage is on a LiveKit invoice: its provider is LiveKit (empty or ``livekit``).

    Inference through a provider's own plugin is billed by that provider; platform usage on your own
    LiveKit server carries ``provider="self-hosted"`` and is billed by no one.
    """
    return record.provider.strip().lower() in ("", "livekit")


def not_billed(record: MeterRecord) -> bool:
    """Platform usage of your own LiveKit server: it costs $0, billed by no one (never "unpriced")."""
    return record.resource not in INFERENCE_RESOURCES and not billed_by_livekit(record)


def base_quantity(record: MeterRecord) -> Decimal:
    """The record's billable quantity in base units (ms, bytes, tokens...), exact."""
    return record.quantity * UNIT_SIZE[record.unit]


class PriceBook:
    """Plans and price rows. Immutable; ``load`` returns a new book with a user's rows on top.

    A price is picked by key (resource, plan, provider, model, language) and date: the row in
    effect at the usage's start. Usage older than every known row takes the oldest row, because
    the bundled dates are when a price was first seen in a dated source, not when it began.
    """

    def __init__(self, plans: Mapping[str, Plan], rows: Iterable[PriceRow]) -> None:
        self.plans: dict[str, Plan] = dict(plans)
        merged: dict[tuple[object, ...], PriceRow] = {}
        for row in rows:  # later rows (a user's file) replace earlier ones of the same key and date
            merged[(*row.key, row.effective)] = row
        self.rows: list[PriceRow] = sorted(
            merged.values(),
            key=lambda r: (r.kind.value, r.plan or "", r.provider != "livekit", r.model, r.resource.value, r.effective),
        )
        self._by_key: dict[tuple[Resource, str | None, str, str, str], list[PriceRow]] = {}
        self._aliases: dict[tuple[str, str], str] = {}
        for row in sorted(self.rows, key=lambda r: r.effective):
            self._by_key.setdefault(row.key, []).append(row)
            for alias in row.aliases:
                self._aliases[(row.provider, alias)] = row.model

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_toml(cls, text: str, origin: str = "<prices>", base: PriceBook | None = None) -> PriceBook:
        """A book from TOML text; with ``base``, its rows are added to (and override) ``base``'s."""
        plans, rows = parse_price_toml(text, origin, base.plans if base else None)
        if base is None:
            return cls(plans, rows)
        return cls({**base.plans, **plans}, [*base.rows, *rows])

    @classmethod
    def bundled(cls) -> PriceBook:
        """The price book shipped with the package (``livekit_metering/pricing/data``)."""
        global _BUNDLED
        if _BUNDLED is None:
            book: PriceBook | None = None
            data = resources.files(__package__).joinpath("data")
            for name in BUNDLED_FILES:
                book = cls.from_toml(data.joinpath(name).read_text(encoding="utf-8"), name, book)
            _BUNDLED = book
        assert _BUNDLED is not None
        return _BUNDLED

    @classmethod
    def load(cls, path: str | os.PathLike[str], base: PriceBook | None = None) -> PriceBook:
        """The bundled book (or ``base``) with the rows of a user's TOML file on top."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidPriceBook(f"{path}: cannot read price file: {exc}") from None
        return cls.from_toml(text, str(path), base if base is not None else cls.bundled())

    @classmethod
    def of(cls, prices: str | os.PathLike[str] | None) -> PriceBook:
        """The bundled book, or with the price file ``prices`` on top: loaded once per process and
        path (read-only data, shared safely between jobs)."""
        return _loaded(os.fspath(prices)) if prices else cls.bundled()

    # -- lookup --------------------------------------------------------------------------------

    def plan(self, plan: str) -> Plan:
        try:
            return self.plans[plan.strip().lower()]
        except KeyError:
            raise UnknownPlan(f"unknown plan {plan!r}; known plans: {', '.join(sorted(self.plans))}") from None

    def resolve_model(self, provider: str, model: str) -> str:
        """The canonical model id for an alias (``deepgram/flux`` -> ``deepgram/flux-general-en``)."""
        return self._aliases.get((provider, model), model)

    def row(
        self,
        resource: Resource,
        *,
        plan: str,
        at: date,
        provider: str = "livekit",
        model: str = "",
        language: str = "",
    ) -> PriceRow | None:
        """The row in effect at ``at`` for this usage on ``plan``, or None when nothing prices it."""
        model = self.resolve_model(provider, model)
        plan_id = self.plan(plan).id
        languages = [language, ""] if language else [""]
        for lang in languages:  # the multilingual variant first, then the model's general price
            for p in (plan_id, None):  # a plan-specific price (Scale discount) before the general one
                versions = self._by_key.get((resource, p, provider, model, lang))
                if versions:
                    current = [r for r in versions if r.effective <= at]
                    return current[-1] if current else versions[0]
        return None

    def row_of(self, record: MeterRecord, plan: str = "ship") -> PriceRow | None:
        """The row that prices ``record`` on ``plan``, or None when it is unpriced."""
        at = record.start.date()
        if not_billed(record):
            return None  # your own server's usage: no LiveKit price applies
        if record.resource in INFERENCE_RESOURCES:
            provider, model, language = model_key(record)
            if not model:
                return None
            return self.row(record.resource, plan=plan, at=at, provider=provider, model=model, language=language)
        return self.row(record.resource, plan=plan, at=at)

    def price_of(self, record: MeterRecord, plan: str = "ship") -> Decimal | None:
        """The list cost of one record on ``plan`` before quotas and credits, or None when unpriced.

        Platform resources cost their overage unit price (on a hard-capped plan such as Build, $0:
        usage past the cap is refused, not billed), and $0 on your own LiveKit server (not billed by
        LiveKit). Not rounded: round sums, not records.
        """
        return self.price_with(record, self.row_of(record, plan), plan)

    def price_with(self, record: MeterRecord, row: PriceRow | None, plan: str) -> Decimal | None:
        """``price_of`` when the row is already looked up (``row_of(record, plan)``)."""
        if row is None and not_billed(record):
            return Decimal(0)
        return self.amount_with(row, base_quantity(record), plan)

    def amount_with(self, row: PriceRow | None, base: Decimal, plan: str) -> Decimal | None:
        """The list cost of ``base`` billable base units priced by ``row`` on ``plan``, or None when unpriced
        (usage that no LiveKit invoice carries, ``not_billed``, is the caller's to tell)."""
        if row is None:
            return None
        if row.price is None:
            if row.resource not in INFERENCE_RESOURCES and self.plan(plan).hard_caps:
                return Decimal(0)
            return None
        return row.amount(base)

    def cost(self, records: Iterable[MeterRecord], plan: str = "ship") -> CostReport:
        """Cost of any set of records per resource, per model and in total (see ``cost.cost_report``)."""
        from .cost import cost_report

        return cost_report(self, records, plan)

    def invoice(self, records: Iterable[MeterRecord], plan: str = "ship", month: str = "") -> Invoice:
        """A monthly invoice preview (see ``invoice.build_invoice``)."""
        from .invoice import build_invoice

        return build_invoice(self, records, plan=plan, month=month)

    def select(
        self,
        *,
        kind: str | None = None,
        model: str | None = None,
        plan: str | None = None,
        history: bool = False,
        at: date | None = None,
    ) -> Sequence[PriceRow]:
        """Rows for listing: filtered by kind, model substring and plan; current ones unless ``history``."""
        if plan is not None:
            plan = self.plan(plan).id
        rows = self.rows
        if not history:
            day = at or date.today()
            current: dict[tuple[object, ...], PriceRow] = {}
            for row in sorted(rows, key=lambda r: r.effective):
                if row.effective <= day or row.key not in current:
                    current[row.key] = row
            rows = [r for r in rows if current.get(r.key) is r]
        if kind:
            rows = [r for r in rows if r.kind.value == kind]
        if model:
            needle = model.lower()
            rows = [r for r in rows if needle in r.model or any(needle in a for a in r.aliases)]
        if plan:
            rows = [r for r in rows if r.plan in (None, plan)]
        return rows


_BUNDLED: PriceBook | None = None


@functools.lru_cache(maxsize=8)
def _loaded(path: str) -> PriceBook:
    return PriceBook.load(path)
