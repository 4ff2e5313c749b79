"""The collector service: receives, stores, reconciles and answers meter records."""

from .app import Collector, CollectorConfig, create_app
from .auth import KeyRing
from .config import Limits
from .store.base import Store, open_store

__all__ = ["Collector", "CollectorConfig", "KeyRing", "Limits", "Store", "create_app", "open_store"]
