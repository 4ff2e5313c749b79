"""Price rows and plans: the data a price book is made of, with the units prices are quoted in."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, localcontext
from enum import Enum

from ..records import REALTIME_RESOURCES, BaseUnit, Resource

__all__ = [
    "INFERENCE_RESOURCES",
    "PHONE_RESOURCES",
    "PRICE_UNITS",
    "Kind",
    "Plan",
    "PriceRow",
    "exact_amount",
]


class Kind(str, Enum):
    """What a price row prices, for listing and filtering."""

    PLAN = "plan"  # LiveKit Cloud platform resources (agent minutes, connection minutes, ...)
    PHONE = "phone"  # LiveKit Phone Numbers and SIP minutes
    STT = "stt"
    LLM = "llm"
    TTS = "tts"
    REALTIME = "realtime"  # speech-to-speech models: tokens by modality, session time


INFERENCE_RESOURCES: dict[Resource, Kind] = {
    Resource.STT: Kind.STT,
    Resource.LLM_INPUT: Kind.LLM,
    Resource.LLM_INPUT_CACHED: Kind.LLM,
    Resource.LLM_OUTPUT: Kind.LLM,
    Resource.TTS: Kind.TTS,
    **dict.fromkeys(sorted(REALTIME_RESOURCES, key=list(Resource).index), Kind.REALTIME),
}
PHONE_RESOURCES = frozenset(
    {
        Resource.PHONE_NUMBER,
        Resource.PHONE_NUMBER_TOLL_FREE,
        Resource.SIP_INBOUND,
        Resource.SIP_INBOUND_TOLL_FREE,
        Resource.SIP_TRUNK,
    }
)

# The units prices are quoted in: the base unit they count and how many base units one holds.
# 1 GB is 10^9 bytes, as LiveKit's billing docs define it (1 GB = 1000 MB).
PRICE_UNITS: dict[str, tuple[BaseUnit, int]] = {
    "minute": (BaseUnit.MILLISECOND, 60_000),
    "second": (BaseUnit.MILLISECOND, 1_000),
    "gb": (BaseUnit.BYTE, 1_000_000_000),
    "1M tokens": (BaseUnit.TOKEN, 1_000_000),
    "token": (BaseUnit.TOKEN, 1),
    "1M characters": (BaseUnit.CHARACTER, 1_000_000),
    "character": (BaseUnit.CHARACTER, 1),
    "event": (BaseUnit.EVENT, 1),
    "number_month": (BaseUnit.NUMBER_MONTH, 1),
}


def exact_amount(base_quantity: Decimal, price: Decimal, per: str) -> Decimal:
    """``base_quantity`` (in base units) times ``price`` per ``per``, computed exactly.

    Multiplication comes first so the only division is the last step; it terminates for every
    unit except seconds priced per minute, where the quotient is carried to 60 significant digits
    (far below a cent, and never at a half-cent tie, so rounding to cents is exact).
    """
    with localcontext() as ctx:
        ctx.prec = 60
        return base_quantity * price / PRICE_UNITS[per][1]


@dataclass(frozen=True)
class Plan:
    """A LiveKit Cloud plan: monthly fee and inference credits (USD).

    ``hard_caps``: included quotas are limits, not allowances (Build): usage past them is refused,
    never billed.
    """

    id: str
    name: str
    fee: Decimal
    inference_credits: Decimal
    effective: date
    source: str
    hard_caps: bool = False
    origin: str = ""


@dataclass(frozen=True)
class PriceRow:
    """One price: a resource (and model) on a plan (or every plan), from a date, with its source.

    ``price`` is USD per ``per``; None means no price is known ("unpriced"), or, on a hard-capped
    plan, that usage past ``included`` is refused rather than billed. ``included`` is the monthly
    quota in ``per`` units, shared with other resources of the same ``pool``.
    """

    kind: Kind
    resource: Resource
    price: Decimal | None
    per: str
    effective: date
    source: str
    plan: str | None = None
    provider: str = "livekit"
    model: str = ""
    language: str = ""
    included: Decimal = Decimal(0)
    pool: str = ""
    aliases: tuple[str, ...] = field(default=())
    note: str = ""
    origin: str = ""

    @property
    def key(self) -> tuple[Resource, str | None, str, str, str]:
        """Rows with the same key are versions of one price; the effective date picks among them."""
        return (self.resource, self.plan, self.provider, self.model, self.language)

    @property
    def unit_size(self) -> int:
        """Base units in one ``per`` unit."""
        return PRICE_UNITS[self.per][1]

    @property
    def quota_pool(self) -> str:
        return self.pool or self.resource.value

    def amount(self, base_quantity: Decimal) -> Decimal | None:
        """The exact cost of ``base_quantity`` base units, or None when unpriced."""
        if self.price is None:
            return None
        return exact_amount(base_quantity, self.price, self.per)

    @property
    def label(self) -> str:
        """What the row prices, for people: ``deepgram/nova-3 (multi)``, ``agent_session``."""
        if not self.model:
            return self.resource.value
        name = self.model
        if self.language:
            name += f" ({self.language})"
        if self.provider != "livekit":
            name += f" via {self.provider}"
        return name
