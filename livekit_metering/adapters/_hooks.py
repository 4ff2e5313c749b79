"""How a model is metered in place, the way OpenTelemetry instrumentations observe a library.

The model stays the same object. Its class is swapped, once, for a subclass made once per class
with the same name, qualname, module and docstring and ``__slots__ = ()`` (the layout is
unchanged, so the assignment is allowed); the subclass overrides only the request methods
(``stream``, ``recognize``, ``chat``, ``synthesize``, ``session``), which call the class's own
method, looked up at call time, and observe what it returns. ``isinstance``, ``label``,
``update_options()``, provider attributes, the objects returned and every event stay the model's.

Per-request objects (streams, channels, sessions) are never class-swapped: on CPython 3.11+ a
``__class__`` assignment materializes the instance ``__dict__`` and slows every later attribute
access the provider's own code makes on it. They are hooked with instance attributes instead
(``stream.flush = ...``), and recorded when their task completes.

The hooks rely on private attributes of livekit-agents 1.8.9 (``_task``, ``_event_ch``,
``_mtc_text``, the adapters' child lists...); ``tests/test_adapters_canary.py`` pins each one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..meter import Meter
from ._usage import logger

__all__ = ["ATTR", "Metering", "is_instrumented", "metering_of", "shadow", "swap_class", "unmetered"]

ATTR = "_livekit_metering"  # the Metering an instrumented model carries

Overrides = Callable[[Any], dict[str, Any]]

_SUBCLASS: dict[type, type] = {}  # original class -> its metered subclass
_METERED: set[type] = set()  # the metered subclasses
_WARNED: set[tuple[type, str]] = set()


@dataclass(frozen=True)
class Metering:
    """How one model is metered: where its records go (None: the current meter per request) and
    how often a long usage writes a running checkpoint."""

    meter: Meter | None
    checkpoint_interval: float


def is_instrumented(model: object) -> bool:
    return type(model) in _METERED


def metering_of(model: object) -> Metering:
    metering: Metering = vars(model)[ATTR]
    return metering


def swap_class(model: object, overrides: Overrides, metering: Metering) -> None:
    """Give ``model`` its metered class and its Metering; raise TypeError when it cannot be done.

    ``overrides(cls)`` returns the request methods of the subclass; it is called once per class.
    """
    cls = type(model)
    sub = _SUBCLASS.get(cls)
    if sub is None:
        namespace = overrides(cls)
        namespace.update(__slots__=(), __module__=cls.__module__, __qualname__=cls.__qualname__, __doc__=cls.__doc__)
        metaclass: Any = type(cls)  # keep the metaclass (ABCMeta)
        try:
            sub = metaclass(cls.__name__, (cls,), namespace)
        except Exception as exc:
            raise TypeError(f"livekit-metering cannot meter {cls.__qualname__} in place: {exc}") from None
        _SUBCLASS[cls] = sub
        _METERED.add(sub)
    try:
        model.__class__ = sub
        vars(model)[ATTR] = metering
    except (TypeError, AttributeError) as exc:
        model.__class__ = cls
        raise TypeError(
            f"livekit-metering cannot meter {cls.__qualname__} in place ({exc}); "
            "meter the models it is built from instead"
        ) from None


def shadow(obj: Any, name: str, make: Callable[[Any], Callable[..., Any]]) -> None:
    """Hook one method of a per-request object with an instance attribute: ``make(original)``
    returns the hook, which calls the original (the bound method of the object's class)."""
    original = getattr(obj, name)
    setattr(obj, name, functools.wraps(original)(make(original)))


def unmetered(model: object, request: object, why: str) -> None:
    """A request that cannot be observed is left exactly as the provider made it, and said so
    once per provider class, at ERROR: metering never changes what the agent gets."""
    key = (type(request), why)
    if key in _WARNED:
        return
    _WARNED.add(key)
    logger.error(
        "livekit-metering cannot meter requests of %s: its %s %s; they go unmetered",
        type(model).__qualname__,
        type(request).__qualname__,
        why,
    )
