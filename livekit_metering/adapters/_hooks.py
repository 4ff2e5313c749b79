"""How a model is metered in place, the way OpenTelemetry instrumentations observe a library.

The model stays the same object, of the same class: its request methods (``stream``,
``recognize``, ``chat``, ``synthesize``, ``session``) are shadowed by instance attributes that call
the class's own method, looked up at call time (so a later class-level patch still applies), and
observe what it returns. ``isinstance``, ``type()``, ``label``, ``update_options()``, provider
attributes, the objects returned and every event stay the model's. Its class is never swapped: on
CPython 3.11+ a ``__class__`` assignment materializes the instance ``__dict__`` and slows every
later attribute access the provider's own code makes on it (measured: 7 % more per STT frame for a
provider that reads its model's attributes per frame); an added instance attribute does not.

Per-request objects (streams, channels, sessions) are hooked the same way (``stream.flush = ...``)
and recorded when their task completes. The hooks rely on private attributes of livekit-agents
1.8.9 (``_task``, ``_event_ch``, ``_mtc_text``, the adapters' child lists...);
``tests/test_adapters_canary.py`` pins each one.

Known limits: ``copy.copy(model)`` gives a copy whose requests are metered as the original's
(livekit-agents never copies models); dunder methods cannot be shadowed (none is hooked).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..meter import Meter
from ._usage import logger

__all__ = ["ATTR", "Hooks", "Metering", "install", "is_instrumented", "metering_of", "shadow", "unmetered"]

ATTR = "_livekit_metering"  # the Metering an instrumented model carries

Original = Callable[..., Any]
Hooks = dict[str, Callable[[Any, Original], Callable[..., Any]]]  # method name -> make(model, original)

_WARNED: set[tuple[type, str]] = set()


@dataclass(frozen=True)
class Metering:
    """How one model is metered: where its records go (None: the current meter per request) and
    how often a long usage writes a running checkpoint."""

    meter: Meter | None
    checkpoint_interval: float


# Never read an object's ``__dict__`` (``vars()``): that too materializes it, and slows every
# attribute access on the object by about 2.5x from then on. Only getattr and setattr.


def is_instrumented(model: object) -> bool:
    return isinstance(getattr(model, ATTR, None), Metering)


def metering_of(model: object) -> Metering:
    metering: Metering = getattr(model, ATTR)
    return metering


def install(model: Any, hooks: Hooks, metering: Metering) -> None:
    """Shadow ``model``'s request methods with ``hooks`` and give it its Metering; raise TypeError
    when the model cannot carry instance attributes."""
    try:
        setattr(model, ATTR, metering)
    except AttributeError:
        raise TypeError(
            f"livekit-metering cannot meter {type(model).__qualname__} in place: it takes no instance "
            "attributes (__slots__); meter the models it is built from instead"
        ) from None
    for name, make in hooks.items():
        bound = getattr(model, name)
        # the class's method, looked up per call; or what already shadows it on this instance
        original = functools.partial(_class_method, model, name) if getattr(bound, "__self__", None) is model else bound
        setattr(model, name, functools.wraps(bound)(make(model, original)))


def _class_method(model: Any, name: str, *args: Any, **kwargs: Any) -> Any:
    return getattr(type(model), name)(model, *args, **kwargs)


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
