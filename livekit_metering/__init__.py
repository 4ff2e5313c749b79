"""livekit-metering: meter LiveKit Agents sessions the way LiveKit Cloud bills them.

The names below are imported on first use (PEP 562), so ``import livekit_metering`` and the commands
that only price, report or serve do not load livekit-agents; ``metered`` and the Metered models do.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Each public name and the module that defines it.
_EXPORTS: dict[str, str] = {
    "MeteredLLM": ".adapters",
    "MeteredSTT": ".adapters",
    "MeteredTTS": ".adapters",
    "meter_session_models": ".adapters",
    "metered_models": ".adapters",
    "SessionSummary": ".costlog",
    "InvalidOption": ".options",
    "MeteredEntrypoint": ".entrypoint",
    "metered": ".entrypoint",
    "CostReport": ".pricing",
    "InvalidMonth": ".pricing",
    "InvalidPriceBook": ".pricing",
    "Invoice": ".pricing",
    "PriceBook": ".pricing",
    "UnknownPlan": ".pricing",
    "DEFAULT_POLICY_ID": ".rates",
    "InvalidPolicy": ".rates",
    "RatePolicy": ".rates",
    "Rule": ".rates",
    "UnknownPolicy": ".rates",
    "get_policy": ".rates",
    "InvalidRecord": ".records",
    "MeterRecord": ".records",
    "Resource": ".records",
    "Status": ".records",
    "Unit": ".records",
    "record_id": ".records",
    "EndCause": ".session",
    "SessionMeter": ".session",
    "meter_for": ".session",
}

__all__ = [
    "DEFAULT_POLICY_ID",
    "CostReport",
    "EndCause",
    "InvalidMonth",
    "InvalidOption",
    "InvalidPolicy",
    "InvalidPriceBook",
    "InvalidRecord",
    "Invoice",
    "MeterRecord",
    "MeteredEntrypoint",
    "MeteredLLM",
    "MeteredSTT",
    "MeteredTTS",
    "PriceBook",
    "RatePolicy",
    "Resource",
    "Rule",
    "SessionMeter",
    "SessionSummary",
    "Status",
    "Unit",
    "UnknownPlan",
    "UnknownPolicy",
    "__version__",
    "get_policy",
    "meter_for",
    "meter_session_models",
    "metered",
    "metered_models",
    "record_id",
]

if TYPE_CHECKING:
    from .adapters import MeteredLLM, MeteredSTT, MeteredTTS, meter_session_models, metered_models
    from .costlog import SessionSummary
    from .entrypoint import MeteredEntrypoint, metered
    from .options import InvalidOption
    from .pricing import CostReport, InvalidMonth, InvalidPriceBook, Invoice, PriceBook, UnknownPlan
    from .rates import DEFAULT_POLICY_ID, InvalidPolicy, RatePolicy, Rule, UnknownPolicy, get_policy
    from .records import InvalidRecord, MeterRecord, Resource, Status, Unit, record_id
    from .session import EndCause, SessionMeter, meter_for


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
