"""Record stores: one interface (base.Store), SQLite (default) and PostgreSQL."""

from .base import Outcome, Store, Stored, open_store

__all__ = ["Outcome", "Store", "Stored", "open_store"]
