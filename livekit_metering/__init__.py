"""livekit-metering: meter LiveKit Agents sessions the way LiveKit Cloud bills them."""

from .pricing import CostReport, InvalidMonth, InvalidPriceBook, Invoice, PriceBook, UnknownPlan
from .rates import DEFAULT_POLICY_ID, InvalidPolicy, RatePolicy, Rule, UnknownPolicy, get_policy
from .records import InvalidRecord, MeterRecord, Resource, Status, Unit, record_id

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_POLICY_ID",
    "CostReport",
    "InvalidMonth",
    "InvalidPolicy",
    "InvalidPriceBook",
    "InvalidRecord",
    "Invoice",
    "MeterRecord",
    "PriceBook",
    "RatePolicy",
    "Resource",
    "Rule",
    "Status",
    "Unit",
    "UnknownPlan",
    "UnknownPolicy",
    "__version__",
    "get_policy",
    "record_id",
]
