"""livekit-metering: meter LiveKit Agents sessions the way LiveKit Cloud bills them."""

from .adapters import MeteredLLM, MeteredSTT, MeteredTTS, meter_session_models, metered_models
from .costlog import SessionSummary
from .entrypoint import MeteredEntrypoint, metered
from .pricing import CostReport, InvalidMonth, InvalidPriceBook, Invoice, PriceBook, UnknownPlan
from .rates import DEFAULT_POLICY_ID, InvalidPolicy, RatePolicy, Rule, UnknownPolicy, get_policy
from .records import InvalidRecord, MeterRecord, Resource, Status, Unit, record_id
from .session import EndCause, SessionMeter, meter_for

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_POLICY_ID",
    "CostReport",
    "EndCause",
    "InvalidMonth",
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
