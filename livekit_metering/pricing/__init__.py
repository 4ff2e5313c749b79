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

__all__ = [
    "CostLine",
    "CostReport",
    "InvalidMonth",
    "InvalidPriceBook",
    "Invoice",
    "InvoiceLine",
    "Kind",
    "Plan",
    "PriceBook",
    "PriceRow",
    "UnknownPlan",
    "cents",
    "latest_forms",
    "model_key",
    "month_bounds",
]
