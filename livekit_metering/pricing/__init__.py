"""Price book, costing and invoice preview: LiveKit Cloud plans, LiveKit Inference and phone prices.

Prices are bundled TOML data (``data/``) with an effective date and a source on every row; a user's
TOML file adds or overrides rows. Money is Decimal USD.
"""

from ..records import latest_forms
from .book import PriceBook, model_key
from .cost import CostLine, CostReport
from .errors import InvalidMonth, InvalidPriceBook, UnknownPlan
from .invoice import Invoice, InvoiceLine, cents, month_bounds
from .rows import Kind, Plan, PriceRow
from .usage import Cost, Costing, PricedUsage, PriceKey, UsageLine, price_key, price_usage, summed_record

__all__ = [
    "Cost",
    "CostLine",
    "CostReport",
    "Costing",
    "InvalidMonth",
    "InvalidPriceBook",
    "Invoice",
    "InvoiceLine",
    "Kind",
    "Plan",
    "PriceBook",
    "PriceKey",
    "PriceRow",
    "PricedUsage",
    "UnknownPlan",
    "UsageLine",
    "cents",
    "latest_forms",
    "model_key",
    "month_bounds",
    "price_key",
    "price_usage",
    "summed_record",
]
